//! Matrix time for growing clusters, realistic (replicas share labels) and worst case
//! (every pod distinct).

use std::time::Instant;

use serde_json::json;

use super::{median, Measurement};
use crate::bench::synth::{generate, SynthParams};
use crate::policy::matrix::{compute, PortProto};
use crate::policy::Protocol;

pub fn run(quick: bool) -> Vec<Measurement> {
    let scales: &[(usize, usize)] = if quick {
        &[(1_000, 1_000), (10_000, 1_000)]
    } else {
        &[(1_000, 1_000), (10_000, 1_000), (10_000, 10_000)]
    };
    let columns = [
        PortProto {
            port: 8080,
            protocol: Protocol::Tcp,
        },
        PortProto {
            port: 5432,
            protocol: Protocol::Tcp,
        },
    ];
    let mut out = Vec::new();
    for &(pods, policies) in scales {
        for unique in [false, true] {
            let params = SynthParams {
                pods,
                policies,
                namespaces: (pods / 50).max(1),
                nodes: 10,
                seed: 1,
                unique_pod_labels: unique,
            };
            let cluster = generate(&params);
            let runs = if quick { 1 } else { 3 };
            let mut times = Vec::new();
            let mut groups = 0;
            let mut allowed = 0u64;
            for _ in 0..runs {
                let t = Instant::now();
                let m = compute(&cluster, &columns);
                times.push(t.elapsed().as_secs_f64());
                groups = m.group_count;
                // Touch every cell so the figure includes reading the table out.
                allowed = 0;
                let t = Instant::now();
                for i in 0..m.pods.len() {
                    for j in 0..m.pods.len() {
                        for c in 0..columns.len() {
                            allowed += m.allowed(i, j, c) as u64;
                        }
                    }
                }
                let read = t.elapsed().as_secs_f64();
                *times.last_mut().unwrap() += read;
            }
            out.push(Measurement {
                section: "matrix".into(),
                name: format!(
                    "matrix {pods} pods x {policies} policies x 2 ports ({})",
                    if unique { "all pods distinct" } else { "replicas share labels" }
                ),
                params: json!({"pods": pods, "policies": policies, "ports": 2, "uniquePodLabels": unique}),
                value: median(times),
                unit: "s".into(),
                notes: json!({"groups": groups, "cells": (pods * pods * 2), "allowedCells": allowed}),
            });
        }
    }
    out
}
