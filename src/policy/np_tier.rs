//! The NetworkPolicy tier of one side of a flow, with the clause that allowed or why each
//! isolating policy did not. The decisions are the predicates of [`super::clause`]; the
//! explanations here only say which part of a clause failed once a predicate said no.

use super::clause;
use super::model::{Cluster, Direction, NamespaceScope, Peer, Pod, Policy, Rule};
use super::ports::{PortRef, PortRule};
use super::verdict::{AllowedBy, Denial, End, FlowPort, SideVerdict};

/// The NetworkPolicy tier of one side: a pod not isolated in `dir` is allowed.
pub(crate) fn np_side(
    cluster: &Cluster,
    dir: Direction,
    pod: &Pod,
    other: &End,
    fp: &FlowPort,
) -> SideVerdict {
    let policies = cluster.isolating(pod, dir);
    let isolated_by: Vec<String> = policies
        .iter()
        .map(|p| p.object_name().to_string())
        .collect();
    if policies.is_empty() {
        return SideVerdict {
            pod: Some(pod.object_name().to_string()),
            allowed: true,
            isolated: false,
            isolated_by,
            reason: format!(
                "{} is not isolated for {dir}: no policy selects it with policyType {}",
                pod.object_name(),
                if dir == Direction::Ingress {
                    "Ingress"
                } else {
                    "Egress"
                }
            ),
            ..Default::default()
        };
    }
    let mut denials = Vec::new();
    for policy in &policies {
        match first_allowing_rule(cluster, policy, dir, other, fp) {
            Ok(by) => {
                let clause = match (by.peer, by.port) {
                    (Some(peer), Some(port)) => format!("peer {peer} and port {port} match"),
                    (Some(peer), None) => {
                        format!("peer {peer} matches, the rule allows every port")
                    }
                    (None, Some(port)) => {
                        format!("port {port} matches, the rule allows every peer")
                    }
                    (None, None) => "the rule allows every peer and port".to_string(),
                };
                let reason = format!("{} {dir} rule {}: {clause}", by.policy, by.rule);
                return SideVerdict {
                    pod: Some(pod.object_name().to_string()),
                    allowed: true,
                    isolated: true,
                    isolated_by,
                    allowed_by: Some(by),
                    reason,
                    ..Default::default()
                };
            }
            Err(d) => denials.push(d),
        }
    }
    SideVerdict {
        pod: Some(pod.object_name().to_string()),
        allowed: false,
        isolated: true,
        reason: format!(
            "{} is isolated for {dir} by {} and no rule allows {} {}",
            pod.object_name(),
            isolated_by.join(", "),
            if dir == Direction::Ingress {
                "from"
            } else {
                "to"
            },
            other.label
        ),
        isolated_by,
        denials,
        ..Default::default()
    }
}

/// The first rule of `policy` that allows, or the closest rule and why it failed.
fn first_allowing_rule(
    cluster: &Cluster,
    policy: &Policy,
    dir: Direction,
    other: &End,
    fp: &FlowPort,
) -> Result<AllowedBy, Denial> {
    let name = policy.object_name().to_string();
    let rules = policy.rules(dir).unwrap_or_default();
    if rules.is_empty() {
        return Err(Denial {
            policy: name,
            rule: None,
            reason: format!("has no {dir} rules, so it allows no {dir} traffic"),
        });
    }
    let mut closest: Option<(usize, usize, String)> = None; // (failures, rule, reason)
    for (i, rule) in rules.iter().enumerate() {
        let peer = clause::rule_peer(cluster, &policy.namespace, rule, other.pod, other.ip)
            .ok_or_else(|| explain_peers(cluster, &policy.namespace, rule, other));
        let port = clause::rule_port(&rule.ports, fp.protocol, fp.port, fp.dst)
            .ok_or_else(|| explain_ports(&rule.ports, fp));
        match (peer, port) {
            (Ok(peer), Ok(port)) => {
                return Ok(AllowedBy {
                    policy: name,
                    rule: i,
                    peer,
                    port,
                })
            }
            (peer, port) => {
                let reasons: Vec<String> = [peer.err(), port.err()].into_iter().flatten().collect();
                if closest.as_ref().is_none_or(|(n, _, _)| reasons.len() < *n) {
                    closest = Some((reasons.len(), i, reasons.join("; ")));
                }
            }
        }
    }
    let (_, rule, reason) = closest.expect("at least one rule");
    Err(Denial {
        policy: name,
        rule: Some(rule),
        reason,
    })
}

/// Why no peer of `rule` selects the far end (the rule has peers and none matches).
fn explain_peers(cluster: &Cluster, policy_ns: &str, rule: &Rule, other: &End) -> String {
    let mut reasons: Vec<String> = rule
        .peers
        .iter()
        .map(|peer| explain_peer(cluster, policy_ns, peer, other))
        .collect();
    if reasons.len() == 1 {
        return reasons.remove(0);
    }
    let listed: Vec<String> = reasons
        .iter()
        .enumerate()
        .take(3)
        .map(|(j, r)| format!("peer {j}: {r}"))
        .collect();
    let more = reasons.len().saturating_sub(3);
    let tail = if more > 0 {
        format!("; and {more} more peers")
    } else {
        String::new()
    };
    format!("no peer matches ({}{tail})", listed.join("; "))
}

/// Which half of a pod peer fails for `pod` ([`clause::pod_peer_selects`] said no).
fn explain_pod_peer(
    cluster: &Cluster,
    policy_ns: &str,
    namespaces: &NamespaceScope,
    pods: &super::labels::Selector,
    pod: &Pod,
) -> String {
    if pod.host_network {
        return format!(
            "{} uses the host network, and selectors never match host-network pods",
            pod.object_name()
        );
    }
    if !clause::peer_namespace_selects(cluster, policy_ns, namespaces, &pod.namespace) {
        return match (namespaces, cluster.namespace_labels(&pod.namespace)) {
            (NamespaceScope::PolicyNamespace, _) => format!(
                "without a namespaceSelector the peer is in namespace {policy_ns}, {} is in {}",
                pod.object_name(),
                pod.namespace
            ),
            (NamespaceScope::Selected(sel), Some(labels)) => match sel.first_failure(labels) {
                Some(req) => format!(
                    "namespaceSelector {}",
                    req.explain_failure(&format!("namespace {}", pod.namespace), labels)
                ),
                None => format!(
                    "namespaceSelector {sel} does not select namespace {}",
                    pod.namespace
                ),
            },
            (NamespaceScope::Selected(_), None) => format!(
                "namespace {} is not in the snapshot, so no namespaceSelector selects it",
                pod.namespace
            ),
        };
    }
    match pods.first_failure(&pod.labels) {
        Some(req) => format!(
            "podSelector {}",
            req.explain_failure(&format!("pod {}", pod.object_name()), &pod.labels)
        ),
        None => format!("podSelector {pods} does not select {}", pod.object_name()),
    }
}

/// Why one peer does not select the far end of the flow.
fn explain_peer(cluster: &Cluster, policy_ns: &str, peer: &Peer, other: &End) -> String {
    match peer {
        Peer::Pods { namespaces, pods } => match other.pod {
            Some(pod) => explain_pod_peer(cluster, policy_ns, namespaces, pods, pod),
            None => format!(
                "podSelector and namespaceSelector match pods, and {} is not a pod in the snapshot",
                other.label
            ),
        },
        Peer::IpBlock(block) => match other.ip {
            Some(ip) => block.explain_miss(ip),
            None => format!(
                "{} has no IP in the snapshot (status.podIP), so ipBlock {} cannot match it",
                other.label, block.cidr
            ),
        },
    }
}

/// Why no port clause matches (the rule has ports and none matches).
fn explain_ports(ports: &[PortRule], fp: &FlowPort) -> String {
    let same: Vec<&PortRule> = ports.iter().filter(|p| p.protocol == fp.protocol).collect();
    if same.is_empty() {
        let mut protos: Vec<&str> = ports.iter().map(|p| p.protocol.as_str()).collect();
        protos.dedup();
        return format!(
            "protocol {}, rule allows {}",
            fp.protocol,
            protos.join(", ")
        );
    }
    let mut parts = Vec::new();
    let numeric: Vec<String> = same
        .iter()
        .filter_map(|p| match (&p.port, p.end_port) {
            (Some(PortRef::Number(n)), Some(e)) if e != *n => Some(format!("{n}-{e}")),
            (Some(PortRef::Number(n)), _) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    if !numeric.is_empty() {
        parts.push(format!("port {} is not in {}", fp.port, numeric.join(", ")));
    }
    for p in &same {
        if let Some(PortRef::Name(name)) = &p.port {
            parts.push(match fp.dst {
                Some(d) => d.describe_named_port(name),
                None => format!(
                    "named port {name} resolves on the destination pod, and {} is not a pod",
                    fp.dst_label
                ),
            });
        }
    }
    parts.join("; ")
}
