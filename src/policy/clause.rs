//! One predicate per semantic clause of the Kubernetes NetworkPolicy API
//! (`networking.k8s.io/v1`, <https://kubernetes.io/docs/concepts/services-networking/network-policies/>
//! and the field documentation of `NetworkPolicySpec`, `NetworkPolicyPeer` and
//! `NetworkPolicyPort`).
//!
//! Every place that decides one of these clauses calls the function here: the oracle
//! ([`super::evaluate`]), the truth table ([`super::matrix`]) and the compiler's pod index
//! (`compile::select`). The indexes and bitsets there are fast paths over these predicates,
//! and property tests hold them equal on generated clusters. Explanations (why a clause
//! failed) live with the oracle; they are consulted only after a predicate said no.
//!
//! All functions are pure over the validated model ([`super::model`]).

use std::net::IpAddr;

use super::ipblock::IpBlock;
use super::labels::Selector;
use super::model::{Cluster, Direction, NamespaceScope, Peer, Pod, Policy, Rule};
use super::ports::{PortRef, PortRule, Protocol};

/// Model methods that are clauses of the API, so that the model itself uses nothing above it:
/// each calls the predicate here that decides it.
impl Policy {
    /// Whether this policy isolates `pod` in `dir` (selects it and has that policy type):
    /// [`policy_isolates`].
    pub fn isolates(&self, pod: &Pod, dir: Direction) -> bool {
        policy_isolates(self, pod, dir)
    }

    /// Whether this policy's podSelector selects `pod`. Host-network pods are never selected:
    /// [`policy_selects`].
    pub fn selects(&self, pod: &Pod) -> bool {
        policy_selects(self, pod)
    }
}

impl Cluster {
    /// Whether a pod peer of a policy in `policy_ns` matches `pod`: [`pod_peer_selects`].
    pub fn pod_peer_matches(
        &self,
        policy_ns: &str,
        namespaces: &NamespaceScope,
        pods: &Selector,
        pod: &Pod,
    ) -> bool {
        pod_peer_selects(self, policy_ns, namespaces, pods, pod)
    }
}

/// `spec.podSelector`: "Selects the pods to which this NetworkPolicy object applies ... An
/// empty podSelector selects all pods in this namespace." A policy only ever selects pods of
/// its own namespace, and pods on the host network are not selected by any NetworkPolicy
/// ("NetworkPolicy behavior for hostNetwork pods is undefined"; sluice never selects them, as
/// most implementations).
pub fn policy_selects(policy: &Policy, pod: &Pod) -> bool {
    !pod.host_network
        && pod.namespace == policy.namespace
        && policy.pod_selector.matches(&pod.labels)
}

/// `spec.policyTypes` as written: "If this field is not specified, it will default based on
/// the existence of ingress or egress rules; policies that contain an egress section are
/// assumed to affect egress, and all policies (whether or not they contain an ingress
/// section) are assumed to affect ingress." An empty list is treated as not specified.
/// Unknown entries are the caller's to reject; they affect no direction here.
pub fn policy_types_include<S: AsRef<str>>(
    policy_types: Option<&[S]>,
    has_egress_rules: bool,
    dir: Direction,
) -> bool {
    match policy_types {
        Some(types) if !types.is_empty() => {
            let want = match dir {
                Direction::Ingress => "Ingress",
                Direction::Egress => "Egress",
            };
            types.iter().any(|t| t.as_ref() == want)
        }
        _ => match dir {
            Direction::Ingress => true,
            Direction::Egress => has_egress_rules,
        },
    }
}

/// Whether a (validated, defaulted) policy applies to `dir`: its defaulted `policyTypes`
/// contains that direction. Such a policy isolates the pods it selects in that direction,
/// even with an empty rule list (which then allows nothing).
pub fn policy_applies(policy: &Policy, dir: Direction) -> bool {
    policy.rules(dir).is_some()
}

/// A pod is isolated in `dir` by `policy` when the policy selects it and applies to `dir`
/// ("a pod is isolated for ingress if there is any NetworkPolicy that both selects the pod and
/// has "Ingress" in its policyTypes"; likewise for egress).
pub fn policy_isolates(policy: &Policy, pod: &Pod, dir: Direction) -> bool {
    policy_applies(policy, dir) && policy_selects(policy, pod)
}

/// The namespace half of a pod peer (`NetworkPolicyPeer.namespaceSelector`): "Selects
/// namespaces using cluster-scoped labels ... If present but empty, it selects all
/// namespaces"; when absent, the peer's pods are looked for "in the policy's own namespace".
/// A namespace the snapshot does not know has no labels to match, so no selector selects it.
pub fn peer_namespace_selects(
    cluster: &Cluster,
    policy_ns: &str,
    scope: &NamespaceScope,
    namespace: &str,
) -> bool {
    match scope {
        NamespaceScope::PolicyNamespace => namespace == policy_ns,
        NamespaceScope::Selected(sel) => namespace_selector_selects(cluster, sel, namespace),
    }
}

/// A namespace selector (`namespaceSelector`, and a ClusterNetworkPolicy's `namespaces`)
/// selects a namespace by its labels, which always include `kubernetes.io/metadata.name`. A
/// namespace the snapshot does not know has no labels to match, so it is never selected
/// (not even by `{}`).
pub fn namespace_selector_selects(cluster: &Cluster, sel: &Selector, namespace: &str) -> bool {
    cluster
        .namespace_labels(namespace)
        .is_some_and(|l| sel.matches(l))
}

/// The pod half of a pod peer (`NetworkPolicyPeer.podSelector`): "selects pods ... If present
/// but empty, it selects all pods" (an absent podSelector is the empty selector in the
/// model). Host-network pods are never selected by label selectors.
pub fn peer_pod_selector_selects(pods: &Selector, pod: &Pod) -> bool {
    !pod.host_network && pods.matches(&pod.labels)
}

/// A pod peer selects `pod`: "If namespaceSelector is also set, then the NetworkPolicyPeer as
/// a whole selects the pods matching podSelector in the Namespaces selected by
/// NamespaceSelector" (both halves must hold).
pub fn pod_peer_selects(
    cluster: &Cluster,
    policy_ns: &str,
    scope: &NamespaceScope,
    pods: &Selector,
    pod: &Pod,
) -> bool {
    peer_pod_selector_selects(pods, pod)
        && peer_namespace_selects(cluster, policy_ns, scope, &pod.namespace)
}

/// `NetworkPolicyPeer.ipBlock`: the address is in `cidr` and in none of `except` ("IPBlock
/// describes a particular CIDR ... that is allowed ... Except is a slice of CIDRs that should
/// not be included within an IPBlock").
pub fn ip_block_selects(block: &IpBlock, ip: IpAddr) -> bool {
    block.contains(ip)
}

/// One `NetworkPolicyPeer` selects the far end of a flow: a pod peer matches a pod of the
/// snapshot (`pod`), an ipBlock matches its address (`ip`, the address of the pod or the
/// explicit address of an outside end).
pub fn peer_selects(
    cluster: &Cluster,
    policy_ns: &str,
    peer: &Peer,
    pod: Option<&Pod>,
    ip: Option<IpAddr>,
) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            pod.is_some_and(|p| pod_peer_selects(cluster, policy_ns, namespaces, pods, p))
        }
        Peer::IpBlock(block) => ip.is_some_and(|ip| ip_block_selects(block, ip)),
    }
}

/// The peers of a rule (`from` / `to`): "If this field is empty or missing, this rule matches
/// all sources (destinations). If this field is present and contains at least one item, this
/// rule allows traffic only if the traffic matches at least one item in the list." The index
/// of the first matching peer (`Some(None)` for a rule without peers), None when none matches.
pub fn rule_peer(
    cluster: &Cluster,
    policy_ns: &str,
    rule: &Rule,
    pod: Option<&Pod>,
    ip: Option<IpAddr>,
) -> Option<Option<usize>> {
    if rule.peers.is_empty() {
        return Some(None);
    }
    rule.peers
        .iter()
        .position(|p| peer_selects(cluster, policy_ns, p, pod, ip))
        .map(Some)
}

/// One `NetworkPolicyPort` matches `(protocol, port)` towards the destination pod `dst`:
/// the protocol is equal (defaulted to TCP); "If this field [port] is not provided, this
/// matches all port names and numbers"; a numeric port matches itself, or every port up to
/// `endPort` inclusive ("indicates that the range of ports from port to endPort if set,
/// inclusive, should be allowed"); a named port matches when the destination pod declares a
/// container port of that name and protocol with that number (named ports always resolve on
/// the destination of the connection, in both directions). Without a destination pod a named
/// port matches nothing.
pub fn port_clause_matches(
    clause: &PortRule,
    protocol: Protocol,
    port: u16,
    dst: Option<&Pod>,
) -> bool {
    if clause.protocol != protocol {
        return false;
    }
    match (&clause.port, clause.numeric_range()) {
        // No port: 1-65535; a number: itself, or through endPort.
        (_, Some((lo, hi))) => lo <= port && port <= hi,
        (Some(PortRef::Name(name)), None) => {
            dst.and_then(|d| d.resolve_named_port(name, protocol)) == Some(port)
        }
        (_, None) => false,
    }
}

/// The ports of a rule: "If this field is empty or missing, this rule matches all ports ... If
/// this field is present and contains at least one item, then this rule allows traffic only if
/// the traffic matches at least one port in the list." The index of the first matching
/// clause (`Some(None)` for a rule without ports), None when none matches.
pub fn rule_port(
    ports: &[PortRule],
    protocol: Protocol,
    port: u16,
    dst: Option<&Pod>,
) -> Option<Option<usize>> {
    if ports.is_empty() {
        return Some(None);
    }
    ports
        .iter()
        .position(|c| port_clause_matches(c, protocol, port, dst))
        .map(Some)
}
