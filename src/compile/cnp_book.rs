//! ClusterNetworkPolicy rulebooks: one per tier, direction and distinct ordered list of
//! selecting CNPs, shared by every local pod with that list (nftables makes each a chain).
//!
//! The oracle ([`crate::policy::tiers`]) takes a tier's selecting policies by priority, then
//! name, and their rules in written order; the first matching rule decides. A rulebook is the
//! same list of rules as clauses in the same order, so "first matching clause" is the oracle's
//! "first matching rule": Accept -> [`Action::Accept`], Deny -> [`Action::Drop`], Pass ->
//! [`Action::Continue`] (the rest of the tier is skipped). Unlike NetworkPolicy, rules of
//! different CNPs are not merged across actions: order between actions is the semantics.
//!
//! A rule is the cross product of its peers and its protocols (one clause per peer, port
//! alternative and family). A rule without peers matches nothing (the oracle finds no peer);
//! a rule without protocols matches every port. A rule that fails closed (see
//! [`crate::policy::cnp`]) gives no clause if it is an Accept rule and a drop-everything clause
//! otherwise, at its position.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::decision::{
    Action, Clause, NamedPortSet, NodeDecisions, PeerMatch, PeerMembers, PeerSet, PortMatch,
    Rulebook,
};
use super::ir::Family;
use super::names;
use super::profile::dir_name;
use super::select::PodIndex;
use crate::policy::cnp::{self, ClusterPolicy, CnpPeer, CnpPort, CnpRule, Tier};
use crate::policy::labels::Selector;
use crate::policy::model::{Direction, NamespaceScope, Pod};
use crate::policy::ports::Protocol;

/// The rulebook name for `policies` (evaluation order) of `tier` in `dir`.
pub fn chain_name(tier: Tier, policies: &[&ClusterPolicy], dir: Direction) -> String {
    let tier = match tier {
        Tier::Admin => "admin",
        Tier::Baseline => "baseline",
    };
    let first = &policies[0].name;
    if policies.len() == 1 {
        return names::object_name(&format!("cnp_{tier}_{first}_{}", dir_name(dir)));
    }
    let all: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let hash = names::fnv1a(all.join(",").as_bytes()) & 0xffff_ffff;
    names::object_name(&format!(
        "cnp_{tier}_{first}.and{}_{hash:08x}_{}",
        policies.len() - 1,
        dir_name(dir)
    ))
}

pub struct CnpInput<'a, 'b> {
    pub index: &'b PodIndex<'a>,
    pub tier: Tier,
    /// Evaluation order (priority, then name): see [`crate::policy::tiers::ordered`].
    pub policies: &'b [&'a ClusterPolicy],
    pub dir: Direction,
    pub local: &'b [&'a Pod],
    pub families: &'b [Family],
}

/// `cnp/<name> rule N 'name' (Deny)`.
fn rule_label(p: &ClusterPolicy, i: usize, rule: &CnpRule) -> String {
    format!("{} {} ({})", p.label(), rule.label(i), rule.action)
}

/// Builds the rulebook (and its sets) into `d` unless it is already there; returns its name.
pub fn add_rulebook(d: &mut NodeDecisions, input: &CnpInput) -> String {
    let name = chain_name(input.tier, input.policies, input.dir);
    if d.rulebooks.contains_key(&name) {
        return name;
    }
    let dir = input.dir;
    let mut clauses = Vec::new();
    for p in input.policies {
        for (i, rule) in p.rules(dir).iter().enumerate() {
            let label = rule_label(p, i, rule);
            if rule.fail_closed.is_some() {
                // Per the API: an Accept rule sluice cannot implement matches nothing; a Deny
                // or Pass rule denies everything.
                if rule.action != cnp::Action::Accept {
                    clauses.push(Clause {
                        peer: PeerMatch::Any,
                        port: PortMatch::Any,
                        action: Action::Drop,
                        label: format!("{label}: fails closed, drops everything"),
                    });
                }
                continue;
            }
            let action = match rule.action {
                cnp::Action::Accept => Action::Accept,
                cnp::Action::Deny => Action::Drop,
                cnp::Action::Pass => Action::Continue,
            };
            rule_clauses(d, input, rule, action, &label, &mut clauses);
        }
    }
    let listed: Vec<String> = input.policies.iter().map(|p| p.label()).collect();
    d.rulebooks.insert(
        name.clone(),
        Rulebook {
            direction: dir,
            policies: listed.clone(),
            clauses,
            label: format!("{} tier {dir} of {}", input.tier, listed.join(", ")),
        },
    );
    name
}

/// The numeric port alternatives of a rule: `[Any]` without protocols, else per protocol its
/// merged ranges. Named ports are handled per peer.
fn numeric_alts(rule: &CnpRule) -> Vec<PortMatch> {
    if rule.ports.is_empty() {
        return vec![PortMatch::Any];
    }
    let mut alts = Vec::new();
    for proto in Protocol::ALL {
        let ranges = super::merge_ranges(rule.ports.iter().filter_map(|p| match p {
            CnpPort::Range { protocol, lo, hi } if *protocol == proto => Some((*lo, *hi)),
            _ => None,
        }));
        if !ranges.is_empty() {
            alts.push(PortMatch::Ranges(proto, ranges));
        }
    }
    alts
}

fn rule_clauses(
    d: &mut NodeDecisions,
    input: &CnpInput,
    rule: &CnpRule,
    action: Action,
    label: &str,
    out: &mut Vec<Clause>,
) {
    let numeric = numeric_alts(rule);
    let named: Vec<&str> = rule
        .ports
        .iter()
        .filter_map(|p| match p {
            CnpPort::Named(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    for peer in &rule.peers {
        for &family in input.families {
            let Some(set) = peer_set(d, input.index, peer, family) else {
                continue;
            };
            for alt in &numeric {
                out.push(Clause {
                    peer: PeerMatch::Set(set.clone()),
                    port: alt.clone(),
                    action,
                    label: label.to_string(),
                });
            }
            if !named.is_empty() {
                let ports = named_set(d, input, peer, &named, family);
                out.push(Clause {
                    peer: PeerMatch::Set(set.clone()),
                    port: PortMatch::Named(ports),
                    action,
                    label: label.to_string(),
                });
            }
        }
    }
}

/// The pod-peer form NetworkPolicy's rulebooks key their sets by, so equal peers share a set.
fn pod_key(namespaces: &Selector, pods: &Selector) -> String {
    format!("namespaceSelector {namespaces}, podSelector {pods}")
}

/// Pods a `namespaces` or `pods` peer selects (never host-network ones), as index entries.
fn peer_pods(index: &PodIndex, peer: &CnpPeer) -> Option<std::rc::Rc<Vec<u32>>> {
    match peer {
        CnpPeer::Namespaces(ns) => Some(index.peer(
            "",
            &NamespaceScope::Selected(ns.clone()),
            &Selector::everything(),
        )),
        CnpPeer::Pods { namespaces, pods } => {
            Some(index.peer("", &NamespaceScope::Selected(namespaces.clone()), pods))
        }
        CnpPeer::Networks(_) => None,
    }
}

/// The peer set of one peer in one family; None when the peer has nothing in this family
/// (networks of the other family only).
fn peer_set(
    d: &mut NodeDecisions,
    index: &PodIndex,
    peer: &CnpPeer,
    family: Family,
) -> Option<String> {
    match peer {
        CnpPeer::Namespaces(ns) => Some(pod_set(
            d,
            index,
            peer,
            &pod_key(ns, &Selector::everything()),
            family,
        )),
        CnpPeer::Pods { namespaces, pods } => {
            Some(pod_set(d, index, peer, &pod_key(namespaces, pods), family))
        }
        CnpPeer::Networks(nets) => {
            let mine: Vec<IpNet> = nets
                .iter()
                .filter(|n| Family::of(&n.addr()) == family)
                .copied()
                .collect();
            if mine.is_empty() {
                return None;
            }
            let mut keys: Vec<String> = mine.iter().map(|n| n.to_string()).collect();
            keys.sort();
            keys.dedup();
            let set = names::content_set("cidrs", &keys.join(" | "), family.suffix());
            if !d.peer_sets.contains_key(&set) {
                d.peer_sets.insert(
                    set.clone(),
                    PeerSet {
                        family,
                        members: PeerMembers::Prefixes(
                            IpNet::aggregate(&mine).into_iter().collect(),
                        ),
                        label: format!("networks {}", keys.join(" | ")),
                    },
                );
            }
            Some(set)
        }
    }
}

fn pod_set(
    d: &mut NodeDecisions,
    index: &PodIndex,
    peer: &CnpPeer,
    key: &str,
    family: Family,
) -> String {
    let set = names::content_set("pods", key, family.suffix());
    if !d.peer_sets.contains_key(&set) {
        let pods = peer_pods(index, peer).expect("a pod peer");
        let addrs: BTreeSet<_> = index.addresses(&pods, family == Family::V4).collect();
        d.peer_sets.insert(
            set.clone(),
            PeerSet {
                family,
                members: PeerMembers::Addrs(addrs),
                label: key.to_string(),
            },
        );
    }
    set
}

/// Named ports resolve on the destination pod, with each port's declared protocol: for
/// ingress the subject (a local pod), for egress the pods the peer selects.
fn named_set(
    d: &mut NodeDecisions,
    input: &CnpInput,
    peer: &CnpPeer,
    named: &[&str],
    family: Family,
) -> String {
    let on = match (input.dir, peer) {
        (Direction::Ingress, _) => "local pods".to_string(),
        (Direction::Egress, CnpPeer::Namespaces(ns)) => pod_key(ns, &Selector::everything()),
        (Direction::Egress, CnpPeer::Pods { namespaces, pods }) => pod_key(namespaces, pods),
        // Validation refuses named ports with networks peers; resolve on every pod if ever.
        (Direction::Egress, CnpPeer::Networks(_)) => "every pod".to_string(),
    };
    let key = format!("cnp ports {} on {on}", named.join(","));
    let set = names::content_set("named", &key, family.suffix());
    if d.named_ports.contains_key(&set) {
        return set;
    }
    let pods: Vec<&Pod> = match (input.dir, peer_pods(input.index, peer)) {
        (Direction::Ingress, _) => input.local.to_vec(),
        (Direction::Egress, Some(ix)) => ix.iter().map(|&i| input.index.pod(i)).collect(),
        (Direction::Egress, None) => input.index.all().filter(|p| !p.host_network).collect(),
    };
    let mut entries = BTreeSet::new();
    for pod in pods {
        for name in named {
            for proto in Protocol::ALL {
                if let Some(port) = pod.resolve_named_port(name, proto) {
                    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
                        entries.insert((*ip, proto, port));
                    }
                }
            }
        }
    }
    d.named_ports.insert(
        set.clone(),
        NamedPortSet {
            family,
            entries,
            label: format!("named ports {} on {on}", named.join(", ")),
        },
    );
    set
}
