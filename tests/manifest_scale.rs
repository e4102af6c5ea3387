//! Files the size of a real cluster load (issue 17, class 2): a synthetic cluster written as
//! one `kind: List` JSON, as `kubectl get ns,pods,netpol -A -o json` would print it, read by
//! the sluice binary. CI runs a tenth of a 150k-pod / 10k-policy cluster; the full size is
//! `cargo test --release --test manifest_scale -- --ignored --nocapture` (it prints the file
//! size, the time and the peak memory).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sluice::bench::synth::{generate, SynthParams};
use sluice::k8s::export;

fn write_cluster(path: &Path, pods: usize, policies: usize) {
    let cluster = generate(&SynthParams {
        pods,
        policies,
        namespaces: (pods / 15).clamp(1, 10_000),
        nodes: pods.div_ceil(110),
        seed: 17,
        unique_pod_labels: false,
    });
    let mut items: Vec<serde_json::Value> = Vec::new();
    for ns in cluster.namespaces.values() {
        items.push(serde_json::to_value(export::namespace(ns)).unwrap());
    }
    for pod in cluster.pods.values() {
        items.push(serde_json::to_value(export::pod(pod, "registry.example/app:1.0")).unwrap());
    }
    for p in cluster.policies.values() {
        items.push(serde_json::to_value(export::policy(p)).unwrap());
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut f = BufWriter::new(std::fs::File::create(path).unwrap());
    serde_json::to_writer(&mut f, &list).unwrap();
    f.flush().unwrap();
}

/// Loads `path` with `sluice compile` for one node; returns (seconds, peak RSS in MiB, when
/// /usr/bin/time can tell it: the test process's own memory would be counted otherwise).
fn load(path: &Path) -> (f64, Option<f64>) {
    let timed = Path::new("/usr/bin/time").exists();
    let mut cmd = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "peak-kib %M", env!("CARGO_BIN_EXE_sluice")]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
    };
    let begin = Instant::now();
    let out = cmd
        .args(["compile", "-m"])
        .arg(path)
        .args(["--node", "node-0", "--output", "ir"])
        .output()
        .unwrap();
    let seconds = begin.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("unknown field"), "{err}");
    assert!(!err.contains("invalid objects"), "{err}");
    let ir: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !ir["pods"].as_array().unwrap().is_empty(),
        "node-0 has pods"
    );
    let peak = err
        .lines()
        .find_map(|l| l.strip_prefix("peak-kib "))
        .and_then(|k| k.trim().parse::<f64>().ok())
        .map(|k| k / 1024.0);
    (seconds, peak)
}

fn run(tag: &str, pods: usize, policies: usize) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "target/manifest-scale-{tag}-{}.json",
        std::process::id()
    ));
    write_cluster(&path, pods, policies);
    let size = std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64;
    let (seconds, peak) = load(&path);
    if std::env::var_os("SLUICE_SCALE_KEEP").is_none() {
        let _ = std::fs::remove_file(&path);
    }
    eprintln!(
        "scale: {pods} pods, {policies} policies: {size:.0} MiB of JSON loaded and compiled for one node in {seconds:.1} s, peak {}",
        peak.map(|p| format!("{p:.0} MiB")).unwrap_or_else(|| "not measured (no /usr/bin/time)".into())
    );
}

#[test]
fn a_tenth_of_a_large_cluster_loads() {
    run("tenth", 15_000, 1_000);
}

#[test]
#[ignore = "150k pods / 10k policies: about a minute and a few GiB; run by hand"]
fn a_large_cluster_loads() {
    run("full", 150_000, 10_000);
}
