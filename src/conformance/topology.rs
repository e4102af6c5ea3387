//! Topologies into `policy` objects: the default 3x3 layout, explicit layouts, node placement.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::case::{parse_pod_name, ExplicitTopology, NamespaceSpec, PodSpec, PortSpec, Topology};
use crate::policy::labels::{validate_label_key, validate_label_value, Labels};
use crate::policy::model::{Namespace, Pod};
use crate::policy::ports::{validate_port_name, ContainerPort};
use crate::policy::Protocol;

pub const DEFAULT_NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const DEFAULT_PODS: [&str; 3] = ["a", "b", "c"];
pub const DEFAULT_PORTS: [u16; 2] = [80, 81];

/// Node `i` of the lab is called `node-i`; pods carry that name in `Pod::node`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// The index of a node named by [`node_name`].
pub fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok()
}

/// Ports 80 and 81 for each of TCP, UDP and SCTP, named `serve-<port>-<proto>`.
pub fn default_ports() -> Vec<PortSpec> {
    let mut out = Vec::new();
    for port in DEFAULT_PORTS {
        for protocol in Protocol::ALL {
            out.push(PortSpec {
                name: Some(format!(
                    "serve-{port}-{}",
                    protocol.as_str().to_ascii_lowercase()
                )),
                port,
                protocol,
            });
        }
    }
    out
}

/// The default topology written out: namespaces x, y, z with only their name label; pods
/// a, b, c in each, labelled `pod=<name>`, default ports, placed round-robin.
pub fn default_topology() -> ExplicitTopology {
    let namespaces = DEFAULT_NAMESPACES
        .iter()
        .map(|ns| (ns.to_string(), NamespaceSpec::default()))
        .collect();
    let mut pods = Vec::new();
    for ns in DEFAULT_NAMESPACES {
        for pod in DEFAULT_PODS {
            pods.push(PodSpec {
                pod: format!("{ns}/{pod}"),
                labels: BTreeMap::from([("pod".to_string(), pod.to_string())]),
                node: None,
                ports: None,
                ip: None,
            });
        }
    }
    ExplicitTopology { namespaces, pods }
}

pub fn expand(t: &Topology) -> ExplicitTopology {
    match t {
        Topology::Default => default_topology(),
        Topology::Explicit(e) => e.clone(),
    }
}

pub fn check_labels(what: &str, labels: &Labels) -> Result<(), String> {
    for (k, v) in labels {
        validate_label_key(k)
            .and_then(|_| validate_label_value(v))
            .map_err(|e| format!("{what}: label {k}={v}: {e}"))?;
    }
    Ok(())
}

pub fn namespace(name: &str, spec: &NamespaceSpec) -> Result<Namespace, String> {
    crate::policy::labels::validate_dns_label(name)
        .map_err(|e| format!("namespace {name}: {e}"))?;
    check_labels(&format!("namespace {name}"), &spec.labels)?;
    Ok(Namespace::new(name, spec.labels.clone()))
}

/// A pod on node `node`. `ip` is the requested address, already substituted.
pub fn pod(spec: &PodSpec, node: usize, ip: Option<IpAddr>) -> Result<Pod, String> {
    let name = parse_pod_name(&spec.pod)?;
    check_labels(&format!("pod {name}"), &spec.labels)?;
    let specs = spec.ports.clone().unwrap_or_else(default_ports);
    let mut ports = Vec::with_capacity(specs.len());
    for p in specs {
        if p.port == 0 {
            return Err(format!("pod {name}: port 0"));
        }
        if let Some(n) = &p.name {
            validate_port_name(n).map_err(|e| format!("pod {name}: {e}"))?;
        }
        ports.push(ContainerPort {
            name: p.name,
            port: p.port,
            protocol: p.protocol,
        });
    }
    // Same normal form as pods read from manifests (objects.rs sorts and dedups too).
    ports.sort();
    ports.dedup();
    Ok(Pod {
        namespace: name.namespace,
        name: name.name,
        labels: spec.labels.clone(),
        ports,
        node: Some(node_name(node)),
        host_network: false,
        ips: ip.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_has_nine_pods_with_six_named_ports() {
        let t = default_topology();
        assert_eq!(t.namespaces.len(), 3);
        assert_eq!(t.pods.len(), 9);
        let p = pod(&t.pods[0], 1, None).unwrap();
        assert_eq!(p.ports.len(), 6);
        assert_eq!(
            p.resolve_named_port("serve-81-udp", Protocol::Udp),
            Some(81)
        );
        assert_eq!(p.resolve_named_port("serve-81-udp", Protocol::Tcp), None);
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(node_index("node-12"), Some(12));
    }
}
