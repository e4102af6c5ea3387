//! Rulebooks: one per distinct set of policies isolating a pod in a direction, shared by
//! every local pod with that set (nftables makes each a chain).
//!
//! Per packet the cost must not grow with the number of policies, so rules of all those
//! policies that allow the same ports are merged: their peers become one union set and the
//! rulebook has one clause per distinct port clause (and per family), not one per policy rule.
//! Named ports resolve per pod and stay per rule for ingress; egress named ports merge into
//! one `addr . proto . port` set of the peers' own resolutions.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::decision::{
    Action, Clause, NamedPortSet, NodeDecisions, PeerMatch, PeerMembers, PeerSet, PortMatch,
    Rulebook,
};
use super::ir::{Family, Side};
use super::names;
use super::select::PodIndex;
use crate::policy::ipblock::IpBlock;
use crate::policy::model::{Direction, NamespaceScope, Peer, Pod, Policy, Rule as PolicyRule};
use crate::policy::ports::{PortRef, Protocol};

pub fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The side of the packet where the peer is: the source for ingress, the destination for egress.
pub fn peer_side(d: Direction) -> Side {
    match d {
        Direction::Ingress => Side::Src,
        Direction::Egress => Side::Dst,
    }
}

/// The rulebook (and nft chain) name for `policies` (sorted by name, all in one namespace) in `dir`.
pub fn chain_name(policies: &[&Policy], dir: Direction) -> String {
    let first = policies[0];
    if policies.len() == 1 {
        return names::policy_chain(&first.namespace, &first.name, dir_name(dir));
    }
    let all: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
    let hash = names::fnv1a(all.join(",").as_bytes()) & 0xffff_ffff;
    names::object_name(&format!(
        "np_{}_{}.and{}_{hash:08x}_{}",
        first.namespace,
        first.name,
        policies.len() - 1,
        dir_name(dir)
    ))
}

/// One rule of one policy, with its name for comments.
struct Contributor<'a> {
    label: String,
    policy: &'a Policy,
    index: usize,
    rule: &'a PolicyRule,
}

fn comment_for(members: &[&Contributor]) -> String {
    let shown: Vec<&str> = members.iter().take(3).map(|c| c.label.as_str()).collect();
    let more = members.len().saturating_sub(3);
    if more > 0 {
        format!("{} (+{more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

pub struct ProfileInput<'a, 'b> {
    pub index: &'b PodIndex<'a>,
    pub policies: &'b [&'a Policy],
    pub dir: Direction,
    pub local: &'b [&'a Pod],
    pub families: &'b [Family],
}

/// Builds the rulebook (and its sets) into `d` unless it is already there.
pub fn add_rulebook(d: &mut NodeDecisions, input: &ProfileInput) -> String {
    let name = chain_name(input.policies, input.dir);
    if d.rulebooks.contains_key(&name) {
        return name;
    }
    let dir = input.dir;
    let contributors: Vec<Contributor> = input
        .policies
        .iter()
        .flat_map(|p| {
            p.rules(dir)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(move |(i, rule)| Contributor {
                    label: format!("{} {dir} rule {i}", p.object_name()),
                    policy: p,
                    index: i,
                    rule,
                })
        })
        .collect();
    let mut clauses = Vec::new();
    let accept = |peer: PeerMatch, port: PortMatch, label: String| Clause {
        peer,
        port,
        action: Action::Accept,
        label,
    };
    // Numeric ports: group rules by their port clause, merge their peers.
    let mut groups: Vec<(PortMatch, Vec<&Contributor>)> = Vec::new();
    for c in &contributors {
        for alt in numeric_port_alts(c.rule) {
            match groups.iter_mut().find(|(a, _)| *a == alt) {
                Some((_, members)) => members.push(c),
                None => groups.push((alt, vec![c])),
            }
        }
    }
    for (alt, members) in &groups {
        let comment = comment_for(members);
        if members.iter().any(|c| c.rule.peers.is_empty()) {
            clauses.push(accept(PeerMatch::Any, alt.clone(), comment));
            continue;
        }
        for &family in input.families {
            for set in union_peer_sets(d, input.index, members, family) {
                clauses.push(accept(PeerMatch::Set(set), alt.clone(), comment.clone()));
            }
        }
    }
    // Named ports.
    let named: Vec<&Contributor> = contributors.iter().filter(|c| has_named(c.rule)).collect();
    if !named.is_empty() {
        for &family in input.families {
            match dir {
                Direction::Egress => {
                    let set = egress_named_set(d, input.index, &named, family);
                    clauses.push(accept(
                        PeerMatch::Any,
                        PortMatch::Named(set),
                        comment_for(&named),
                    ));
                }
                Direction::Ingress => {
                    for c in &named {
                        let set = ingress_named_set(d, c, input.local, family);
                        let peers = if c.rule.peers.is_empty() {
                            vec![PeerMatch::Any]
                        } else {
                            union_peer_sets(d, input.index, &[c], family)
                                .into_iter()
                                .map(PeerMatch::Set)
                                .collect()
                        };
                        for peer in peers {
                            clauses.push(accept(
                                peer,
                                PortMatch::Named(set.clone()),
                                c.label.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    let listed: Vec<String> = input
        .policies
        .iter()
        .map(|p| p.object_name().to_string())
        .collect();
    let label = if contributors.is_empty() {
        format!("{}: no {dir} rules, allows nothing", listed.join(", "))
    } else {
        format!("{dir} of {}", listed.join(", "))
    };
    d.rulebooks.insert(
        name.clone(),
        Rulebook {
            direction: dir,
            policies: listed,
            clauses,
            label,
        },
    );
    name
}

fn has_named(rule: &PolicyRule) -> bool {
    rule.ports
        .iter()
        .any(|p| matches!(p.port, Some(PortRef::Name(_))))
}

/// A canonical description of one pod peer, with the policy namespace made explicit, so
/// equal peers of different policies share a set.
fn pod_peer_key(
    policy_ns: &str,
    scope: &NamespaceScope,
    pods: &crate::policy::labels::Selector,
) -> String {
    match scope {
        NamespaceScope::PolicyNamespace => format!("namespace {policy_ns}, podSelector {pods}"),
        NamespaceScope::Selected(ns) => format!("namespaceSelector {ns}, podSelector {pods}"),
    }
}

fn block_key(b: &IpBlock) -> String {
    let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
    if ex.is_empty() {
        b.cidr.to_string()
    } else {
        format!("{} except {}", b.cidr, ex.join(" "))
    }
}

/// Set names of long unions are hashes; their comments list what they hold, shortened.
fn short(parts: &[String]) -> String {
    let shown: Vec<&str> = parts.iter().take(4).map(|s| s.as_str()).collect();
    let more = parts.len().saturating_sub(4);
    if more > 0 {
        format!("{} | (+{more} more)", shown.join(" | "))
    } else {
        shown.join(" | ")
    }
}

/// Peer sets of rules merged together, in one family: a set of pod addresses and a set of
/// ipBlock prefixes (either may be absent). Empty when nothing can match here.
fn union_peer_sets(
    d: &mut NodeDecisions,
    index: &PodIndex,
    members: &[&Contributor],
    family: Family,
) -> Vec<String> {
    let mut alts = Vec::new();
    let mut pod_keys = BTreeSet::new();
    let mut blocks: Vec<&IpBlock> = Vec::new();
    for c in members {
        for peer in &c.rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    pod_keys.insert((
                        pod_peer_key(&c.policy.namespace, namespaces, pods),
                        &c.policy.namespace,
                        namespaces,
                        pods,
                    ));
                }
                Peer::IpBlock(b) if Family::of(&b.cidr.addr()) == family => blocks.push(b),
                Peer::IpBlock(_) => {}
            }
        }
    }
    if !pod_keys.is_empty() {
        let keys: Vec<String> = pod_keys.iter().map(|(k, ..)| k.clone()).collect();
        let set = names::content_set("pods", &keys.join(" | "), family.suffix());
        if !d.peer_sets.contains_key(&set) {
            let mut addrs = BTreeSet::new();
            for (_, ns, scope, sel) in &pod_keys {
                let pods = index.peer(ns, scope, sel);
                addrs.extend(index.addresses(&pods, family == Family::V4));
            }
            d.peer_sets.insert(
                set.clone(),
                PeerSet {
                    family,
                    members: PeerMembers::Addrs(addrs),
                    label: short(&keys),
                },
            );
        }
        alts.push(set);
    }
    if !blocks.is_empty() {
        let mut keys: Vec<String> = blocks.iter().map(|b| block_key(b)).collect();
        keys.sort();
        keys.dedup();
        let set = names::content_set("cidrs", &keys.join(" | "), family.suffix());
        if !d.peer_sets.contains_key(&set) {
            let prefixes: Vec<IpNet> =
                IpNet::aggregate(&blocks.iter().flat_map(|b| b.disjoint_prefixes()).collect());
            d.peer_sets.insert(
                set.clone(),
                PeerSet {
                    family,
                    members: PeerMembers::Prefixes(prefixes.into_iter().collect()),
                    label: format!("ipBlock {}", short(&keys)),
                },
            );
        }
        alts.push(set);
    }
    alts
}

/// Alternatives for the numeric port part of a rule: `[Any]` when the rule has no ports,
/// otherwise per protocol the protocol with its merged port ranges. A rule with only named
/// ports has none.
fn numeric_port_alts(rule: &PolicyRule) -> Vec<PortMatch> {
    if rule.ports.is_empty() {
        return vec![PortMatch::Any];
    }
    let mut alts = Vec::new();
    for proto in Protocol::ALL {
        let clauses: Vec<_> = rule.ports.iter().filter(|p| p.protocol == proto).collect();
        if clauses.iter().any(|c| c.port.is_none()) {
            alts.push(PortMatch::Proto(proto));
            continue;
        }
        let ranges: Vec<(u16, u16)> =
            super::merge_ranges(clauses.iter().filter_map(|c| match c.port {
                Some(PortRef::Number(_)) => c.numeric_range(),
                _ => None,
            }));
        if !ranges.is_empty() {
            alts.push(PortMatch::Ranges(proto, ranges));
        }
    }
    alts
}

fn named_ports(rule: &PolicyRule) -> Vec<(&str, Protocol)> {
    rule.ports
        .iter()
        .filter_map(|p| match &p.port {
            Some(PortRef::Name(n)) => Some((n.as_str(), p.protocol)),
            _ => None,
        })
        .collect()
}

type Resolved = BTreeSet<(std::net::IpAddr, Protocol, u16)>;

fn resolved(pod: &Pod, named: &[(&str, Protocol)], family: Family, out: &mut Resolved) {
    for (name, proto) in named {
        if let Some(port) = pod.resolve_named_port(name, *proto) {
            for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
                out.insert((*ip, *proto, port));
            }
        }
    }
}

/// Ingress named ports resolve on the destination: the selected local pods.
fn ingress_named_set(
    d: &mut NodeDecisions,
    c: &Contributor,
    local: &[&Pod],
    family: Family,
) -> String {
    let p = c.policy;
    let set = names::object_name(&format!(
        "np_{}_{}_ingress{}_named_{}",
        p.namespace,
        p.name,
        c.index,
        family.suffix()
    ));
    if !d.named_ports.contains_key(&set) {
        let named = named_ports(c.rule);
        let mut entries = BTreeSet::new();
        for pod in local.iter().filter(|pod| p.selects(pod)) {
            resolved(pod, &named, family, &mut entries);
        }
        d.named_ports.insert(
            set.clone(),
            NamedPortSet {
                family,
                entries,
                label: format!("{}: named ports on selected local pods", c.label),
            },
        );
    }
    set
}

/// Egress named ports resolve on the destination: every pod a rule's peers match (a pod peer
/// by selectors, an ipBlock by the pod's address, or every pod when the rule has no peers).
/// The set carries the peers, so the rule needs no separate peer match.
fn egress_named_set(
    d: &mut NodeDecisions,
    index: &PodIndex,
    members: &[&Contributor],
    family: Family,
) -> String {
    let keys: Vec<String> = members
        .iter()
        .map(|c| {
            let mut peers: Vec<String> = c
                .rule
                .peers
                .iter()
                .map(|peer| match peer {
                    Peer::Pods { namespaces, pods } => {
                        pod_peer_key(&c.policy.namespace, namespaces, pods)
                    }
                    Peer::IpBlock(b) => format!("ipBlock {}", block_key(b)),
                })
                .collect();
            if peers.is_empty() {
                peers.push("all peers".into());
            }
            let ports: Vec<String> = named_ports(c.rule)
                .iter()
                .map(|(n, p)| format!("{n}/{p}"))
                .collect();
            format!("{} ports {}", peers.join(" | "), ports.join(", "))
        })
        .collect();
    let set = names::content_set("named", &keys.join(" ; "), family.suffix());
    if d.named_ports.contains_key(&set) {
        return set;
    }
    let mut elements = BTreeSet::new();
    for c in members {
        let named = named_ports(c.rule);
        if c.rule.peers.is_empty() {
            for pod in index.all() {
                resolved(pod, &named, family, &mut elements);
            }
            continue;
        }
        for peer in &c.rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    for &i in index.peer(&c.policy.namespace, namespaces, pods).iter() {
                        resolved(index.pod(i), &named, family, &mut elements);
                    }
                }
                Peer::IpBlock(b) => {
                    for pod in index
                        .all()
                        .filter(|pod| pod.ips.iter().any(|ip| b.contains(*ip)))
                    {
                        resolved(pod, &named, family, &mut elements);
                    }
                }
            }
        }
    }
    d.named_ports.insert(
        set.clone(),
        NamedPortSet {
            family,
            entries: elements,
            label: format!("named ports on {}", short(&keys)),
        },
    );
    set
}
