//! Checks about what selectors and named ports match in the snapshot.

use super::{directed, object, peer_field, rule_field, selected, Raw};
use crate::policy::model::{NamespaceScope, Peer};
use crate::policy::ports::PortRef;
use crate::policy::{Cluster, Direction, Pod};

pub fn namespace_not_declared(cluster: &Cluster) -> Vec<Raw> {
    cluster
        .policies
        .values()
        .filter(|p| cluster.undeclared_namespaces.contains(&p.namespace))
        .map(|p| Raw {
            object: object(p),
            field: "metadata.namespace".into(),
            message: format!(
                "namespace {} is not declared: the API server refuses objects in a namespace that does not exist",
                p.namespace
            ),
            fix: format!(
                "add a Namespace manifest for {} (or correct metadata.namespace)",
                p.namespace
            ),
        })
        .collect()
}

pub fn selects_no_pod(cluster: &Cluster) -> Vec<Raw> {
    let mut out = Vec::new();
    for p in cluster.policies.values() {
        if !selected(cluster, p).is_empty() {
            continue;
        }
        let in_ns = cluster
            .pods
            .values()
            .filter(|pod| pod.namespace == p.namespace)
            .count();
        out.push(Raw {
            object: object(p),
            field: "spec.podSelector".into(),
            message: format!(
                "selects no pod: none of the {in_ns} pods in namespace {} matches it, so the policy has no effect",
                p.namespace
            ),
            fix: "set spec.podSelector to the labels of the pods it should apply to, or delete the policy".into(),
        });
    }
    out
}

fn matches_any(
    cluster: &Cluster,
    policy_ns: &str,
    ns: &NamespaceScope,
    pods: &crate::policy::labels::Selector,
) -> bool {
    cluster
        .pods
        .values()
        .any(|pod| cluster.pod_peer_matches(policy_ns, ns, pods, pod))
}

pub fn peer_selects_nothing(cluster: &Cluster) -> Vec<Raw> {
    let mut out = Vec::new();
    for (p, dir, rules) in directed(cluster) {
        for (i, rule) in rules.iter().enumerate() {
            for (j, peer) in rule.peers.iter().enumerate() {
                let Peer::Pods { namespaces, pods } = peer else {
                    continue;
                };
                if matches_any(cluster, &p.namespace, namespaces, pods) {
                    continue;
                }
                let why = match namespaces {
                    NamespaceScope::Selected(sel)
                        if !cluster.namespaces.values().any(|n| sel.matches(&n.labels)) =>
                    {
                        "its namespaceSelector matches no namespace (namespaces carry the label kubernetes.io/metadata.name=<name>)".to_string()
                    }
                    _ => "no pod matches its selectors".to_string(),
                };
                out.push(Raw {
                    object: object(p),
                    field: peer_field(dir, i, j),
                    message: format!("this peer selects nothing: {why}, so it allows nothing"),
                    fix: "correct the selectors to the labels the peers carry, or remove the peer"
                        .into(),
                });
            }
        }
    }
    out
}

/// Pods a rule's peers match (all pods for a rule without peers).
fn peer_pods<'a>(cluster: &'a Cluster, policy_ns: &str, peers: &[Peer]) -> Vec<&'a Pod> {
    cluster
        .pods
        .values()
        .filter(|pod| {
            peers.is_empty()
                || peers.iter().any(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        cluster.pod_peer_matches(policy_ns, namespaces, pods, pod)
                    }
                    Peer::IpBlock(b) => pod.ips.iter().any(|ip| b.contains(*ip)),
                })
        })
        .collect()
}

pub fn named_port_undeclared(cluster: &Cluster) -> Vec<Raw> {
    let mut out = Vec::new();
    for (p, dir, rules) in directed(cluster) {
        for (i, rule) in rules.iter().enumerate() {
            // Named ports resolve on the destination: the selected pods for ingress, the
            // peers for egress.
            let (on, whose) = match dir {
                Direction::Ingress => (selected(cluster, p), "selected by this policy"),
                Direction::Egress => (
                    peer_pods(cluster, &p.namespace, &rule.peers),
                    "this rule's peers",
                ),
            };
            if on.is_empty() {
                continue; // selects-no-pod / peer-selects-nothing say why
            }
            for (k, port) in rule.ports.iter().enumerate() {
                let Some(PortRef::Name(name)) = &port.port else {
                    continue;
                };
                if on
                    .iter()
                    .any(|pod| pod.resolve_named_port(name, port.protocol).is_some())
                {
                    continue;
                }
                let other: Vec<String> = on
                    .iter()
                    .flat_map(|pod| pod.ports.iter())
                    .filter(|c| c.name.as_deref() == Some(name.as_str()))
                    .map(|c| c.protocol.to_string())
                    .collect();
                let hint = match other.first() {
                    Some(proto) => format!(
                        " (it is declared with protocol {proto}, the clause says {})",
                        port.protocol
                    ),
                    None => String::new(),
                };
                out.push(Raw {
                    object: object(p),
                    field: format!("{}.ports[{k}].port", rule_field(dir, i)),
                    message: format!(
                        "no pod {whose} declares a {} port named {name}{hint}, so this clause matches nothing",
                        port.protocol
                    ),
                    fix: "use the containerPort name (or number) the destination pods declare, with its protocol".into(),
                });
            }
        }
    }
    out
}
