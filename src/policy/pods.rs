//! Namespaces, Pods and workload pod templates into the model, validated the way the API
//! server validates them (names, labels, ports), with the object and field in every problem.
//!
//! Used by the manifest loader and by the agent's API watchers alike.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod, PodSpec};

use super::labels::{validate_dns_label, validate_dns_subdomain, Labels};
use super::labels::{validate_label_key, validate_label_value};
use super::model::{Namespace, Pod, Problem};
use super::ports::{validate_port_name, validate_port_number, ContainerPort, Protocol};

pub fn namespace_from_k8s(ns: &K8sNamespace) -> Result<Namespace, Vec<Problem>> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let object = format!("Namespace {name}");
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    let mut problems = check_labels(&object, &labels);
    if name.is_empty() {
        problems.push(problem(&object, "metadata.name", "is required".into()));
    } else if let Err(e) = validate_dns_label(&name) {
        problems.push(problem(&object, "metadata.name", e));
    }
    if problems.is_empty() {
        Ok(Namespace::new(&name, labels))
    } else {
        Err(problems)
    }
}

pub fn pod_from_k8s(pod: &K8sPod) -> Result<Pod, Vec<Problem>> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let object = format!("Pod {ns}/{name}");
    let mut problems = check_names(&object, "Pod", &ns, &name);
    let mut ips = Vec::new();
    if let Some(status) = &pod.status {
        let (field, listed): (&str, Vec<String>) = match &status.pod_ips {
            Some(list) if !list.is_empty() => {
                ("status.podIPs", list.iter().map(|p| p.ip.clone()).collect())
            }
            _ => ("status.podIP", status.pod_ip.iter().cloned().collect()),
        };
        for (i, s) in listed.iter().enumerate() {
            let field = if field == "status.podIP" {
                field.to_string()
            } else {
                format!("{field}[{i}].ip")
            };
            match s.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => problems.push(problem(
                    &object,
                    &field,
                    format!("{s:?} is not an IP address"),
                )),
            }
        }
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let built = build_pod(&object, &ns, &name, labels, pod.spec.as_ref(), ips);
    match built {
        Ok(p) if problems.is_empty() => Ok(p),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more);
            Err(problems)
        }
    }
}

/// Names the API server requires: the namespace is a DNS label, the name of `kind` a DNS
/// subdomain (a CronJob's at most 52 characters, so its Jobs' names fit).
pub fn check_names(object: &str, kind: &str, ns: &str, name: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Err(e) = validate_dns_label(ns) {
        out.push(problem(object, "metadata.namespace", e));
    }
    if name.is_empty() {
        out.push(problem(object, "metadata.name", "is required".into()));
    } else if let Err(e) = validate_dns_subdomain(name) {
        out.push(problem(object, "metadata.name", e));
    } else if kind == "CronJob" && name.len() > 52 {
        out.push(problem(
            object,
            "metadata.name",
            format!("{name:?} is longer than 52 characters (a CronJob's limit)"),
        ));
    }
    out
}

/// The model pod for a Pod or a workload's template. `object` names it in problems;
/// warnings (things the API server accepts but that deserve a look) go to `warnings`.
pub fn build_pod(
    object: &str,
    ns: &str,
    name: &str,
    labels: Labels,
    spec: Option<&PodSpec>,
    ips: Vec<IpAddr>,
) -> Result<Pod, Vec<Problem>> {
    let mut problems = check_labels(object, &labels);
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        for (i, c) in spec.containers.iter().enumerate() {
            let mut names: BTreeMap<&str, usize> = BTreeMap::new();
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{i}].ports[{j}]");
                let protocol = match p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
                    Ok(pr) => pr,
                    Err(e) => {
                        problems.push(problem(object, &format!("{field}.protocol"), e));
                        continue;
                    }
                };
                let port = match validate_port_number(i64::from(p.container_port)) {
                    Ok(n) => n,
                    Err(e) => {
                        problems.push(problem(object, &format!("{field}.containerPort"), e));
                        continue;
                    }
                };
                if let Some(n) = &p.name {
                    if let Err(e) = validate_port_name(n) {
                        problems.push(problem(object, &format!("{field}.name"), e));
                        continue;
                    }
                    if let Some(first) = names.insert(n, j) {
                        names.insert(n, first);
                        problems.push(problem(
                            object,
                            &format!("{field}.name"),
                            format!(
                                "duplicate port name {n:?} (also spec.containers[{i}].ports[{first}]): port names must be unique in a container"
                            ),
                        ));
                        continue;
                    }
                }
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    ports.sort();
    ports.dedup();
    Ok(Pod {
        namespace: ns.to_string(),
        name: name.to_string(),
        labels,
        ports,
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
    })
}

/// Port names declared by more than one container of a pod: the API server accepts them
/// (with a warning), but which port a policy's named port means is then ambiguous.
pub fn shared_port_names(object: &str, spec: Option<&PodSpec>) -> Vec<String> {
    let mut first: BTreeMap<&str, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, c) in spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let Some(n) = p.name.as_deref() else { continue };
            let here = format!("spec.containers[{i}].ports[{j}]");
            match first.get(n) {
                Some(there) if !there.starts_with(&format!("spec.containers[{i}].")) => {
                    out.push(format!(
                        "{object}: {here}.name: port name {n:?} is also declared by {there}: a policy naming it matches both ports"
                    ))
                }
                Some(_) => {}
                None => {
                    first.insert(n, here);
                }
            }
        }
    }
    out
}

pub fn problem(object: &str, field: &str, message: String) -> Problem {
    Problem {
        object: object.into(),
        field: field.into(),
        message,
    }
}

pub fn check_labels(object: &str, labels: &Labels) -> Vec<Problem> {
    let mut out = Vec::new();
    for (k, v) in labels {
        let field = format!("metadata.labels.{k}");
        if let Err(e) = validate_label_key(k).and_then(|_| validate_label_value(v)) {
            out.push(problem(object, &field, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Result<Pod, Vec<Problem>> {
        pod_from_k8s(&serde_json::from_value(v).unwrap())
    }

    fn fields(r: Result<Pod, Vec<Problem>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .iter()
            .map(|p| p.field.clone())
            .collect()
    }

    #[test]
    fn pod_and_namespace_names_follow_the_api_rules() {
        for bad in ["deployment_web", "a/b", "Web", "wéb", "-a", "a..b", ""] {
            let r = pod(json!({"metadata": {"name": bad, "namespace": "x"}}));
            assert_eq!(fields(r), ["metadata.name"], "{bad:?}");
        }
        for ok in ["web", "web-0", "a.b.c", &"a".repeat(253)] {
            assert!(pod(json!({"metadata": {"name": ok, "namespace": "x"}})).is_ok());
        }
        for bad in ["a.b", "X", "a_b", &"a".repeat(64)] {
            let r = pod(json!({"metadata": {"name": "p", "namespace": bad}}));
            assert_eq!(fields(r), ["metadata.namespace"], "{bad:?}");
        }
        let ns: K8sNamespace =
            serde_json::from_value(json!({"metadata": {"name": "a.b"}})).unwrap();
        assert!(namespace_from_k8s(&ns).is_err());
        assert_eq!(
            check_names("CronJob x/c", "CronJob", "x", &"c".repeat(53)).len(),
            1
        );
    }

    #[test]
    fn duplicate_port_names_in_a_container_are_errors_across_containers_warnings() {
        let r = pod(
            json!({"metadata": {"name": "p", "namespace": "x"}, "spec": {"containers": [
            {"name": "c", "ports": [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}]}]}}),
        );
        assert_eq!(fields(r), ["spec.containers[0].ports[1].name"]);
        let spec: PodSpec = serde_json::from_value(json!({"containers": [
            {"name": "a", "ports": [{"name": "http", "containerPort": 80}]},
            {"name": "b", "ports": [{"name": "http", "containerPort": 81}]}]}))
        .unwrap();
        let w = shared_port_names("Pod x/p", Some(&spec));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("spec.containers[1].ports[0].name")
                && w[0].contains("spec.containers[0].ports[0]")
        );
    }
}
