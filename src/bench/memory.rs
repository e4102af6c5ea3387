//! Peak memory of a process holding a large snapshot, as the agent does: a child process
//! builds the 150k-pod cluster, compiles its node's ruleset and reports its peak RSS.

use serde_json::json;

use super::Measurement;
use crate::bench::synth::{generate, node_name, SynthParams};
use crate::compile::{compile, Attach, CompileInput};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// In the child: hold the snapshot and one compiled ruleset, print the peak RSS.
pub fn child(pods: usize, policies: usize) {
    let cluster = generate(&SynthParams {
        pods,
        policies,
        namespaces: (pods / 15).clamp(1, 10_000),
        nodes: pods.div_ceil(110),
        seed: 7,
        unique_pod_labels: false,
    });
    let empty = Default::default();
    let rs = compile(&CompileInput {
        cluster: &cluster,
        node: &node_name(0),
        attach: Attach::Routed,
        attachments: &empty,
    });
    println!(
        "{}",
        json!({"peakRssMiB": peak_rss_mib(), "pods": cluster.pods.len(), "rules": rs.tables[0].rule_count()})
    );
}

pub fn run(quick: bool) -> anyhow::Result<Vec<Measurement>> {
    let scales: &[(usize, usize)] = if quick {
        &[(10_000, 1_000)]
    } else {
        &[(10_000, 1_000), (150_000, 10_000)]
    };
    let exe = std::env::current_exe()?;
    let mut out = Vec::new();
    for &(pods, policies) in scales {
        let o = std::process::Command::new(&exe)
            .args(["bench", "--memory-child", &format!("{pods},{policies}")])
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "memory child failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        out.push(Measurement {
            section: "memory".into(),
            name: format!("peak RSS holding {pods} pods / {policies} policies + one node ruleset"),
            params: json!({"pods": pods, "policies": policies}),
            value: v["peakRssMiB"].as_f64().unwrap_or(f64::NAN),
            unit: "MiB".into(),
            notes: v,
        });
    }
    Ok(out)
}
