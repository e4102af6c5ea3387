//! Writes a case as a self-contained reproduction directory:
//!
//! ```text
//! <dir>/case.yaml               the case in the conformance format (`conformance run --cases <dir>`)
//! <dir>/manifests/*.yaml        namespaces, pods (with status.podIP) and policies where the case
//!                               stopped (`sluice explain -m <dir>/manifests ...`)
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::case::Case;
use super::world::World;
use crate::policy::model::{Namespace, Pod};

fn namespace_manifest(ns: &Namespace) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": ns.name, "labels": ns.labels },
    })
}

fn pod_manifest(p: &Pod) -> Value {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|c| {
            let mut port = json!({ "containerPort": c.port, "protocol": c.protocol });
            if let Some(n) = &c.name {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": p.name, "namespace": p.namespace, "labels": p.labels },
        "spec": {
            "containers": [{ "name": "serve", "image": "sluice-lab-serve", "ports": ports }],
        },
    });
    if let Some(node) = &p.node {
        pod["spec"]["nodeName"] = json!(node);
    }
    if let Some(ip) = p.ips.first() {
        pod["status"] = json!({
            "podIP": ip.to_string(),
            "podIPs": p.ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect::<Vec<_>>(),
        });
    }
    pod
}

/// The desired state as Kubernetes manifests: (file name, documents).
pub fn manifests(world: &World) -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (
            "namespaces.yaml",
            world
                .cluster
                .namespaces
                .values()
                .map(namespace_manifest)
                .collect(),
        ),
        (
            "pods.yaml",
            world.cluster.pods.values().map(pod_manifest).collect(),
        ),
        (
            "policies.yaml",
            world.policy_manifests.values().cloned().collect(),
        ),
        (
            "clusternetworkpolicies.yaml",
            world.cnp_manifests.values().cloned().collect(),
        ),
    ]
}

fn yaml_docs(docs: &[Value]) -> Result<String> {
    // The default serializer quotes YAML 1.1 booleans such as `y`, so kubectl reads these too.
    serde_saphyr::to_string_multiple(docs).context("cannot write YAML")
}

/// Writes `case` (and, when given, the state where it stopped) under `dir`. `header` becomes
/// the comment at the top of case.yaml.
pub fn write_case_dir(dir: &Path, case: &Case, world: Option<&World>, header: &str) -> Result<()> {
    let mdir = dir.join("manifests");
    std::fs::create_dir_all(&mdir).with_context(|| format!("cannot create {}", mdir.display()))?;
    let mut text: String = header.lines().map(|l| format!("# {l}\n")).collect();
    text.push_str(&serde_saphyr::to_string(case).context("cannot write the case as YAML")?);
    let path = dir.join("case.yaml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(world) = world {
        for (file, docs) in manifests(world) {
            if docs.is_empty() {
                continue;
            }
            let path = mdir.join(file);
            std::fs::write(&path, yaml_docs(&docs)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}
