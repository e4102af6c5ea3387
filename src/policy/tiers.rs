//! ClusterNetworkPolicy tiers in the oracle: which Admin or Baseline rule decides one side of
//! a flow.
//!
//! Per direction (egress of the source, ingress of the destination), the policies of a tier
//! whose subject selects the pod and that have rules in that direction are taken in priority
//! order (lower first); policies with the same priority are taken in name order (the API
//! leaves that order to the implementation; sluice's is by name, and a warning says when it
//! matters). Rules are taken in written order; the first rule whose peers and protocols match
//! decides: Accept or Deny end the evaluation of that direction, Pass skips the rest of the
//! tier. A rule that fails closed (see [`super::cnp`]) matches nothing if it is an Accept rule
//! and matches everything as a Deny otherwise.

use super::clause;
use super::cnp::{networks_contain, Action, ClusterPolicy, CnpPeer, CnpPort, CnpRule, Tier};
use super::labels::Selector;
use super::model::{Cluster, Direction, Pod};
pub use super::verdict::TierDecision;
use super::verdict::{End, FlowPort};

/// What one tier said about one side.
#[derive(Debug, Clone, Default)]
pub struct TierWalk {
    /// The first matching rule (Accept, Deny or Pass), if any.
    pub decision: Option<TierDecision>,
    /// Same-priority policies that both select the pod (order decided by name).
    pub warnings: Vec<String>,
    /// How many policies of the tier select the pod in this direction.
    pub considered: usize,
}

/// Policies of `tier` that select `pod` and have rules in `dir`, in evaluation order:
/// priority, then name.
pub fn ordered<'a>(
    cluster: &'a Cluster,
    tier: Tier,
    pod: &Pod,
    dir: Direction,
) -> Vec<&'a ClusterPolicy> {
    let mut v: Vec<&ClusterPolicy> = cluster
        .cluster_policies
        .values()
        .filter(|p| p.tier == tier && !p.rules(dir).is_empty() && p.subject.selects(cluster, pod))
        .collect();
    v.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
    v
}

/// Walks `tier` for `pod` (the subject) in `dir`; `other` is the far end of the flow.
pub(crate) fn walk(
    cluster: &Cluster,
    tier: Tier,
    pod: &Pod,
    dir: Direction,
    other: &End,
    fp: &FlowPort,
) -> TierWalk {
    let policies = ordered(cluster, tier, pod, dir);
    let mut out = TierWalk {
        considered: policies.len(),
        ..Default::default()
    };
    for w in policies.windows(2) {
        if w[0].priority == w[1].priority {
            out.warnings.push(format!(
                "{} and {} are both {tier} tier at priority {} and both select {} for {dir}: the API leaves their order to the implementation; sluice evaluates same-priority policies in name order ({} first). Give them different priorities if the order matters",
                w[0].label(),
                w[1].label(),
                w[0].priority,
                pod.object_name(),
                w[0].label()
            ));
        }
    }
    for p in policies {
        for (i, rule) in p.rules(dir).iter().enumerate() {
            if let Some((action, reason)) = rule_matches(cluster, rule, other, fp) {
                out.decision = Some(TierDecision {
                    tier,
                    policy: p.label(),
                    priority: p.priority,
                    rule: i,
                    rule_name: rule.name.clone(),
                    action,
                    fail_closed: rule.fail_closed.clone(),
                    reason,
                });
                return out;
            }
        }
    }
    out
}

/// Whether `rule` matches the flow: the action it takes and why, or None.
fn rule_matches(
    cluster: &Cluster,
    rule: &CnpRule,
    other: &End,
    fp: &FlowPort,
) -> Option<(Action, String)> {
    if let Some(why) = &rule.fail_closed {
        return match rule.action {
            Action::Accept => None,
            Action::Deny | Action::Pass => Some((
                Action::Deny,
                format!("fails closed as a deny-all rule ({why})"),
            )),
        };
    }
    let peer = rule
        .peers
        .iter()
        .enumerate()
        .find(|(_, p)| peer_matches(cluster, p, other))
        .map(|(j, _)| j)?;
    let port = if rule.ports.is_empty() {
        None
    } else {
        Some(
            rule.ports
                .iter()
                .enumerate()
                .find(|(_, p)| port_matches(p, fp))
                .map(|(k, _)| k)?,
        )
    };
    let reason = match port {
        Some(k) => format!("peer {peer} matches {}, protocol {k} matches", other.label),
        None => format!(
            "peer {peer} matches {}, the rule matches every port",
            other.label
        ),
    };
    Some((rule.action, reason))
}

/// The selector halves are the NetworkPolicy peer's ([`clause`]): a `namespaces` peer is a
/// pod peer with an empty podSelector.
fn peer_matches(cluster: &Cluster, peer: &CnpPeer, other: &End) -> bool {
    match peer {
        CnpPeer::Namespaces(sel) => other.pod.is_some_and(|p| {
            clause::peer_pod_selector_selects(&Selector::everything(), p)
                && clause::namespace_selector_selects(cluster, sel, &p.namespace)
        }),
        CnpPeer::Pods { namespaces, pods } => other.pod.is_some_and(|p| {
            clause::peer_pod_selector_selects(pods, p)
                && clause::namespace_selector_selects(cluster, namespaces, &p.namespace)
        }),
        CnpPeer::Networks(nets) => other.ip.is_some_and(|ip| networks_contain(nets, ip)),
    }
}

fn port_matches(port: &CnpPort, fp: &FlowPort) -> bool {
    match port {
        CnpPort::Range { protocol, lo, hi } => {
            *protocol == fp.protocol && *lo <= fp.port && fp.port <= *hi
        }
        CnpPort::Named(name) => {
            fp.dst.and_then(|d| d.resolve_named_port(name, fp.protocol)) == Some(fp.port)
        }
    }
}
