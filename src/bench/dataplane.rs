//! Control-plane cost: full compile + apply for one node's pods in a large cluster, and the
//! cost of one pod event (elements changed, apply time), at growing cluster sizes.

use std::time::Instant;

use serde_json::json;

use super::{percentile, Measurement};
use crate::bench::synth::{generate, node_name, Rng, SynthParams};
use crate::compile::{compile, Attach, CompileInput};
use crate::dataplane::Dataplane;
use crate::nft::{Nft, NftDataplane};
use crate::policy::model::ObjectName;

/// A network namespace for the bench, removed on drop.
struct Scratch(String);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let name = format!("slbench-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()?
            .success();
        anyhow::ensure!(
            ok,
            "cannot create a network namespace (the bench needs root)"
        );
        Ok(Scratch(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

const LOCAL_PODS: usize = 110;

#[derive(Clone, Copy, PartialEq, Eq)]
enum EventKind {
    PodAdded,
    PodRelabelled,
    NamespaceRelabelled,
    PolicyChanged,
}

impl EventKind {
    const ALL: [EventKind; 4] = [
        EventKind::PodAdded,
        EventKind::PodRelabelled,
        EventKind::NamespaceRelabelled,
        EventKind::PolicyChanged,
    ];
    fn name(self) -> &'static str {
        match self {
            EventKind::PodAdded => "pod added",
            EventKind::PodRelabelled => "pod relabelled",
            EventKind::NamespaceRelabelled => "namespace relabelled",
            EventKind::PolicyChanged => "policy changed",
        }
    }
}

fn compile_node(
    cluster: &crate::policy::Cluster,
    node: &str,
    attachments: &std::collections::BTreeMap<ObjectName, crate::compile::Attachment>,
) -> crate::compile::NodeRuleset {
    compile(&CompileInput {
        cluster,
        node,
        attach: Attach::Routed,
        attachments,
    })
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Measurement>> {
    let scales: &[(usize, usize)] = if quick {
        &[(1_000, 100), (10_000, 1_000)]
    } else {
        &[(1_000, 100), (10_000, 1_000), (150_000, 10_000)]
    };
    // Every event recompiles the node's ruleset from the whole snapshot (see BENCHMARKS.md),
    // so at 150k pods fewer events keep the run in minutes; the count is in the results.
    let events_at = |pods: usize| match (quick, pods) {
        (true, _) => 200,
        (false, p) if p > 50_000 => 300,
        (false, _) => 1_000,
    };
    let mut out = Vec::new();
    let empty = std::collections::BTreeMap::new();
    for &(pods, policies) in scales {
        let params = SynthParams {
            pods,
            policies,
            namespaces: (pods / 15).clamp(1, 10_000),
            nodes: pods.div_ceil(LOCAL_PODS),
            seed: 7,
            unique_pod_labels: false,
        };
        let t = Instant::now();
        let mut cluster = generate(&params);
        let gen_s = t.elapsed().as_secs_f64();
        let node = node_name(0);
        let t = Instant::now();
        let mut rs = compile_node(&cluster, &node, &empty);
        let compile_s = t.elapsed().as_secs_f64();
        let scratch = Scratch::new()?;
        let mut dp = NftDataplane::new(Nft::in_netns(&scratch.0));
        let t = Instant::now();
        dp.apply_full(&rs)?;
        let apply_s = t.elapsed().as_secs_f64();
        let rules: usize = rs.tables.iter().map(|t| t.rule_count()).sum();
        let elements: usize = rs.tables.iter().map(|t| t.element_count()).sum();
        let p = json!({"pods": pods, "policies": policies, "namespaces": params.namespaces, "localPods": rs.pods.len()});
        out.push(Measurement {
            section: "dataplane".into(),
            name: format!(
                "full compile, {pods} pods / {policies} policies, {} local pods",
                rs.pods.len()
            ),
            params: p.clone(),
            value: compile_s,
            unit: "s".into(),
            notes: json!({"rules": rules, "elements": elements, "generateSeconds": gen_s}),
        });
        out.push(Measurement {
            section: "dataplane".into(),
            name: format!("full apply (nft, one transaction), {pods} pods / {policies} policies"),
            params: p.clone(),
            value: apply_s,
            unit: "s".into(),
            notes: json!({"rules": rules, "elements": elements}),
        });
        // Events of four kinds, each applied as a delta: half the pod events on the measured
        // node (they change its own chains' sets), half elsewhere (peer sets only).
        let mut rng = Rng::new(11);
        let names: Vec<ObjectName> = cluster.pods.keys().cloned().collect();
        let local: Vec<ObjectName> = cluster
            .pods
            .values()
            .filter(|p| p.node.as_deref() == Some(node.as_str()))
            .map(|p| p.object_name())
            .collect();
        let namespaces: Vec<String> = cluster.namespaces.keys().cloned().collect();
        let policy_names: Vec<ObjectName> = cluster.policies.keys().cloned().collect();
        let events = events_at(pods);
        for kind in EventKind::ALL {
            let (mut compile_t, mut apply_t, mut changed, mut chains) =
                (vec![], vec![], vec![], vec![]);
            for i in 0..events {
                let template = if i % 2 == 0 {
                    &local[rng.below(local.len())]
                } else {
                    &names[rng.below(names.len())]
                };
                match kind {
                    EventKind::PodAdded | EventKind::PodRelabelled => {
                        let mut pod = cluster.pods[template].clone();
                        let tier = ["web", "backend", "data"][rng.below(3)];
                        pod.labels.insert("tier".into(), tier.into());
                        if kind == EventKind::PodAdded {
                            pod.name = format!("event-{i}");
                            pod.ips = vec![std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                                100,
                                64,
                                (i / 250) as u8,
                                (i % 250) as u8 + 1,
                            ))];
                        }
                        cluster.upsert_pod(pod);
                    }
                    EventKind::NamespaceRelabelled => {
                        let ns = &namespaces[rng.below(namespaces.len())];
                        let env = ["prod", "dev"][rng.below(2)];
                        if let Some(n) = cluster.namespaces.get_mut(ns) {
                            n.labels.insert("env".into(), env.into());
                        }
                    }
                    EventKind::PolicyChanged => {
                        let name = &policy_names[rng.below(policy_names.len())];
                        if let Some(mut p) = cluster.policies.get(name).cloned() {
                            // Flip the first rule's first numeric port (or add port 8443).
                            if let Some(rule) = p.ingress.as_mut().and_then(|r| r.first_mut()) {
                                rule.ports = match rule.ports.first() {
                                    Some(crate::policy::ports::PortRule {
                                        port: Some(crate::policy::PortRef::Number(8443)),
                                        ..
                                    }) => vec![],
                                    _ => vec![crate::policy::ports::PortRule {
                                        protocol: crate::policy::Protocol::Tcp,
                                        port: Some(crate::policy::PortRef::Number(8443)),
                                        end_port: None,
                                    }],
                                };
                            }
                            cluster.upsert_policy(p);
                        }
                    }
                }
                let t = Instant::now();
                let next = compile_node(&cluster, &node, &empty);
                compile_t.push(t.elapsed().as_secs_f64() * 1e3);
                let report = dp.apply_delta(&rs, &next)?;
                apply_t.push(report.seconds * 1e3);
                let stats = report.stats.unwrap_or_default();
                changed.push(stats.elements_changed() as f64);
                chains.push(stats.chains_touched() as f64);
                rs = next;
            }
            let status = dp.status(&rs)?;
            anyhow::ensure!(
                status.in_sync,
                "after {events} deltas the kernel drifted: {:?}",
                status.differences
            );
            out.push(Measurement {
                section: "dataplane".into(),
                name: format!("{} -> kernel, {pods} pods / {policies} policies", kind.name()),
                params: json!({"pods": pods, "policies": policies, "events": events, "event": kind.name()}),
                value: percentile(&apply_t, 0.99),
                unit: "ms (p99 apply)".into(),
                notes: json!({
                    "applyP50Ms": percentile(&apply_t, 0.5),
                    "compileP50Ms": percentile(&compile_t, 0.5),
                    "compileP99Ms": percentile(&compile_t, 0.99),
                    "elementsChangedP50": percentile(&changed, 0.5),
                    "elementsChangedP99": percentile(&changed, 0.99),
                    "chainsTouchedP50": percentile(&chains, 0.5),
                    "chainsTouchedP99": percentile(&chains, 0.99),
                }),
            });
        }
    }
    Ok(out)
}
