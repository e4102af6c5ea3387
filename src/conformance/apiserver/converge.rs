//! When the agents have enforced the desired state: what "converged" means, and what to say
//! when they have not.

use std::collections::BTreeMap;

use crate::agent::AgentStatus;
use crate::conformance::backend::AttachMode;
use crate::policy::model::Pod;
use crate::policy::Cluster;

/// Pods compare on what policy sees (ports in any order).
fn same_pod(a: &Pod, b: &Pod) -> bool {
    let mut pa = a.ports.clone();
    let mut pb = b.ports.clone();
    pa.sort();
    pa.dedup();
    pb.sort();
    pb.dedup();
    a.labels == b.labels
        && a.node == b.node
        && a.ips == b.ips
        && a.host_network == b.host_network
        && pa == pb
}

/// The agent's last enforced snapshot holds exactly the desired pods, policies and
/// ClusterNetworkPolicies, and the
/// desired namespaces with their labels (the API server's own namespaces may be there too).
pub(super) fn agrees(s: &AgentStatus, want: &Cluster) -> bool {
    let Some(have) = &s.snapshot else {
        return false;
    };
    s.last_error.is_none()
        && want.namespaces.iter().all(|(n, ns)| {
            have.namespaces
                .get(n)
                .is_some_and(|h| h.labels == ns.labels)
        })
        && have.pods.len() == want.pods.len()
        && want
            .pods
            .iter()
            .all(|(n, p)| have.pods.get(n).is_some_and(|h| same_pod(h, p)))
        && have.policies == want.policies
        && have.invalid_policies.is_empty()
        && have.cluster_policies == want.cluster_policies
        && have.invalid_cluster_policies.is_empty()
}

/// The agent found every local pod's interface, and found what the lab (the CNI plugin) made.
pub(super) fn attached_as_lab(
    s: &AgentStatus,
    attach: AttachMode,
    ifaces: &BTreeMap<String, String>,
) -> bool {
    let Some(rs) = &s.ruleset else { return false };
    s.unattached.is_empty()
        && rs.attach == attach
        && rs.pods.iter().all(|p| {
            ifaces
                .get(&p.pod)
                .is_none_or(|want| p.iface.as_deref() == Some(want))
        })
}

pub(super) fn explain_disagreement(
    s: &AgentStatus,
    want: &Cluster,
    attach: AttachMode,
    ifaces: &BTreeMap<String, String>,
) -> String {
    let mut out = Vec::new();
    if let Some(e) = &s.last_error {
        out.push(format!("last sync failed: {e}"));
    }
    match &s.snapshot {
        None => out.push("no sync yet".into()),
        Some(have) => {
            for (n, p) in &want.pods {
                match have.pods.get(n) {
                    None => out.push(format!("pod {n} missing")),
                    Some(h) if !same_pod(h, p) => {
                        out.push(format!("pod {n}: has {h:?}, want {p:?}"))
                    }
                    _ => {}
                }
            }
            for n in have.pods.keys().filter(|n| !want.pods.contains_key(n)) {
                out.push(format!("pod {n} should be gone"));
            }
            for n in want
                .policies
                .keys()
                .filter(|n| have.policies.get(n) != want.policies.get(n))
            {
                out.push(format!("policy {n} differs or is missing"));
            }
            for n in have
                .policies
                .keys()
                .filter(|n| !want.policies.contains_key(n))
            {
                out.push(format!("policy {n} should be gone"));
            }
            for n in want
                .cluster_policies
                .keys()
                .chain(have.cluster_policies.keys())
                .filter(|n| have.cluster_policies.get(*n) != want.cluster_policies.get(*n))
            {
                out.push(format!(
                    "ClusterNetworkPolicy {n} differs, is missing or should be gone"
                ));
            }
            for n in have.invalid_cluster_policies.keys() {
                out.push(format!(
                    "ClusterNetworkPolicy {n} is invalid in the agent's snapshot"
                ));
            }
            for (n, ns) in &want.namespaces {
                if have.namespaces.get(n).map(|h| &h.labels) != Some(&ns.labels) {
                    out.push(format!("namespace {n} labels differ"));
                }
            }
        }
    }
    if !s.unattached.is_empty() {
        out.push(format!("interfaces not found: {:?}", s.unattached));
    }
    if let Some(rs) = &s.ruleset {
        if rs.attach != attach {
            out.push(format!(
                "detected {} attachment, the lab is {attach}",
                rs.attach
            ));
        }
        for p in &rs.pods {
            if let Some(want) = ifaces.get(&p.pod) {
                if p.iface.as_deref() != Some(want) {
                    out.push(format!(
                        "{}: interface {:?}, the lab made {want}",
                        p.pod, p.iface
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        "no difference (timing)".into()
    } else {
        out.join("; ")
    }
}
