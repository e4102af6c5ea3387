//! The review tools at scale: `diff` of two 10k-policy sets, and the truth table of 150,000
//! pods x 10,000 policies (time, and peak memory in a child process of its own).

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::json;

use super::Measurement;
use crate::bench::synth::{generate, SynthParams};
use crate::policy::matrix::{compute, PortProto};
use crate::policy::Cluster;
use crate::review::{diff, AbsentPods};

fn params(pods: usize, policies: usize, namespaces: usize) -> SynthParams {
    SynthParams {
        pods,
        policies,
        namespaces,
        nodes: pods.div_ceil(110),
        seed: 7,
        unique_pod_labels: false,
    }
}

/// Every declared containerPort with its protocol: the default columns of matrix and diff.
fn declared(c: &Cluster) -> Vec<PortProto> {
    let set: BTreeSet<PortProto> = c
        .pods
        .values()
        .flat_map(|p| p.ports.iter())
        .map(|p| PortProto {
            port: p.port,
            protocol: p.protocol,
        })
        .collect();
    set.into_iter().collect()
}

/// `old` with every `every`-th policy changed: its first rule of each direction dropped.
fn changed(old: &Cluster, every: usize) -> (Cluster, usize) {
    let mut new = old.clone();
    let mut n = 0;
    for (i, p) in new.policies.values_mut().enumerate() {
        if i % every != 0 {
            continue;
        }
        n += 1;
        for rules in [p.ingress.as_mut(), p.egress.as_mut()]
            .into_iter()
            .flatten()
        {
            if !rules.is_empty() {
                rules.remove(0);
            }
        }
    }
    (new, n)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// In a child process: build the snapshot, compute its matrix on the declared columns, and
/// print the times and the peak RSS as JSON.
pub fn matrix_child(pods: usize, policies: usize) {
    let t = Instant::now();
    let cluster = generate(&params(pods, policies, (pods / 15).clamp(1, 10_000)));
    let build = t.elapsed().as_secs_f64();
    let rss_snapshot = peak_rss_mib();
    let cols = declared(&cluster);
    let t = Instant::now();
    let m = compute(&cluster, &cols);
    let secs = t.elapsed().as_secs_f64();
    // Read a row per group pair's worth: one full row of the table, to show cells are usable.
    let t = Instant::now();
    let allowed: usize = (0..m.pods.len()).filter(|&j| m.allowed(0, j, 0)).count();
    let row = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"seconds": secs, "snapshotSeconds": build, "rowSeconds": row, "rowAllowed": allowed,
               "groups": m.group_count, "columns": cols.len(), "pods": m.pods.len(),
               "peakRssMiB": peak_rss_mib(), "snapshotPeakRssMiB": rss_snapshot})
    );
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Measurement>> {
    let mut out = Vec::new();
    // diff: two 10k-policy sets, 1% of the policies changed.
    let (pods, policies) = if quick {
        (2_000, 1_000)
    } else {
        (10_000, 10_000)
    };
    let old = generate(&params(pods, policies, (pods / 50).max(1)));
    let (new, n_changed) = changed(&old, 100);
    let cols = declared(&old);
    let t = Instant::now();
    let d = diff(&old, &new, &cols, AbsentPods::Skip);
    let secs = t.elapsed().as_secs_f64();
    out.push(Measurement {
        section: "review".into(),
        name: format!("diff {pods} pods, {policies} policies vs {n_changed} of them changed"),
        params: json!({"pods": pods, "policies": policies, "changedPolicies": n_changed, "columns": cols.len()}),
        value: secs,
        unit: "s".into(),
        notes: json!({"changedCells": d.cell_count(), "lines": d.lines.len()}),
    });

    // matrix at 150k pods x 10k policies, in a child so its peak RSS is its own.
    let (pods, policies) = if quick {
        (10_000, 1_000)
    } else {
        (150_000, 10_000)
    };
    let exe = std::env::current_exe()?;
    let o = std::process::Command::new(&exe)
        .args(["bench", "--matrix-child", &format!("{pods},{policies}")])
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "matrix child failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    out.push(Measurement {
        section: "review".into(),
        name: format!("matrix {pods} pods x {policies} policies, declared ports"),
        params: json!({"pods": pods, "policies": policies}),
        value: v["seconds"].as_f64().unwrap_or(f64::NAN),
        unit: "s".into(),
        notes: v.clone(),
    });
    out.push(Measurement {
        section: "review".into(),
        name: format!("matrix {pods} pods x {policies} policies, peak RSS"),
        params: json!({"pods": pods, "policies": policies}),
        value: v["peakRssMiB"].as_f64().unwrap_or(f64::NAN),
        unit: "MiB".into(),
        notes: v,
    });
    Ok(out)
}
