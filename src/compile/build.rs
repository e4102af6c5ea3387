//! Cluster snapshot + node -> [`NodeRuleset`]. Pure and deterministic.
//!
//! Shape (see docs/dataplane.md): base chains per direction dispatch a local pod's packets
//! through a verdict map to its pod chain; the pod chain jumps to one chain per isolating
//! policy and ends in drop; policy chains accept on the first matching rule. Peers are sets,
//! so pod churn is set-element churn, not rule churn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::ir::*;
use super::names;
use crate::policy::model::{
    Cluster, Direction, NamespaceScope, ObjectName, Peer, Pod, Policy, Rule as PolicyRule,
};
use crate::policy::ports::{PortRef, Protocol};

/// Table names: one inet table for filtering, one bridge table for anti-spoofing.
pub const TABLE: &str = "sluice";

/// How one local pod is attached, as far as the node knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachment {
    /// Host-side interface (routed: the pod's veth; bridged: its bridge port).
    pub iface: Option<String>,
    /// The pod's MAC address (bridged anti-spoofing).
    pub mac: Option<String>,
}

pub struct CompileInput<'a> {
    pub cluster: &'a Cluster,
    pub node: &'a str,
    pub attach: Attach,
    pub attachments: &'a BTreeMap<ObjectName, Attachment>,
}

/// Base chain priorities relative to `filter`: egress first, then ingress, so an accept of
/// the egress chain still leaves the packet to the ingress chain.
const EGRESS_PRIORITY: i32 = -10;
const INGRESS_PRIORITY: i32 = -5;

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The side of the packet where the peer is: the source for ingress, the destination for egress.
fn peer_side(d: Direction) -> Side {
    match d {
        Direction::Ingress => Side::Src,
        Direction::Egress => Side::Dst,
    }
}

fn dispatch_map(d: Direction, family: Option<Family>) -> String {
    match family {
        None => format!("{}_dispatch", dir_name(d)),
        Some(f) => format!("{}_dispatch_{}", dir_name(d), f.suffix()),
    }
}

pub fn compile(input: &CompileInput) -> NodeRuleset {
    let cluster = input.cluster;
    let families = families(cluster);
    let mut inet = Table::new(TableFamily::Inet, TABLE);
    let mut warnings = Vec::new();
    add_base_chains(&mut inet, input.attach, &families);

    let local: Vec<&Pod> = cluster
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(input.node) && !p.host_network)
        .collect();

    let mut needed_policies: BTreeMap<(ObjectName, Direction), &Policy> = BTreeMap::new();
    let mut pods_out = Vec::new();
    let mut bridge = Table::new(TableFamily::Bridge, TABLE);
    if input.attach == Attach::Bridged {
        add_bridge_base(&mut bridge);
    }
    for pod in &local {
        let name = pod.object_name();
        let attachment = input.attachments.get(&name).cloned().unwrap_or_default();
        let iface = attachment
            .iface
            .clone()
            .unwrap_or_else(|| names::default_iface(&pod.namespace, &pod.name));
        let invalid = cluster.invalid_policies_for(pod);
        let mut iso = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let chain = names::pod_chain(&pod.namespace, &pod.name, dir_name(dir));
            let isolation = if !invalid.is_empty() {
                let reason = format!(
                    "{name} may be selected by invalid policies {}: failing closed until they are fixed",
                    invalid.join(", ")
                );
                warnings.push(format!("{reason} ({dir})"));
                inet.chains.insert(
                    chain.clone(),
                    Chain {
                        base: None,
                        rules: vec![Rule {
                            matches: vec![],
                            verdict: Verdict::Drop,
                            comment: Some(format!("{name}: invalid policy, fail closed")),
                        }],
                        comment: Some(reason.clone()),
                    },
                );
                Isolation::FailedClosed {
                    chain: chain.clone(),
                    reason,
                }
            } else {
                let policies = cluster.isolating(pod, dir);
                if policies.is_empty() {
                    iso.push(Isolation::Open);
                    continue;
                }
                for p in &policies {
                    needed_policies.insert((p.object_name(), dir), p);
                }
                inet.chains
                    .insert(chain.clone(), pod_chain(pod, dir, &policies));
                Isolation::Isolated {
                    chain: chain.clone(),
                    policies: policies
                        .iter()
                        .map(|p| p.object_name().to_string())
                        .collect(),
                }
            };
            // Dispatch the pod's packets to its chain.
            match input.attach {
                Attach::Routed => {
                    insert_element(
                        &mut inet,
                        &dispatch_map(dir, None),
                        Element::IfnameJump(iface.clone(), chain.clone()),
                    );
                }
                Attach::Bridged => {
                    if pod.ips.is_empty() {
                        warnings.push(format!("{name} has no IP yet: in bridged mode it cannot be dispatched until it has one"));
                    }
                    for ip in &pod.ips {
                        let map = dispatch_map(dir, Some(Family::of(ip)));
                        insert_element(&mut inet, &map, Element::AddrJump(*ip, chain.clone()));
                    }
                }
            }
            iso.push(isolation);
        }
        if input.attach == Attach::Bridged {
            add_guard(&mut bridge, pod, &iface, attachment.mac.as_deref());
        }
        let egress = iso.pop().unwrap_or(Isolation::Open);
        let ingress = iso.pop().unwrap_or(Isolation::Open);
        pods_out.push(LocalPod {
            pod: name.to_string(),
            iface: Some(iface),
            ips: pod.ips.clone(),
            ingress,
            egress,
        });
    }

    for ((_, dir), policy) in &needed_policies {
        add_policy_chain(&mut inet, cluster, policy, *dir, &local, &families);
    }

    let mut tables = vec![inet];
    if input.attach == Attach::Bridged {
        tables.push(bridge);
    }
    NodeRuleset {
        node: input.node.to_string(),
        attach: input.attach,
        tables,
        pods: pods_out,
        warnings,
    }
}

/// Address families in use anywhere in the cluster (pods and ipBlocks); IPv4 if none.
fn families(cluster: &Cluster) -> Vec<Family> {
    let mut set = BTreeSet::new();
    for p in cluster.pods.values() {
        for ip in &p.ips {
            set.insert(Family::of(ip));
        }
    }
    for policy in cluster.policies.values() {
        for rule in policy.ingress.iter().chain(policy.egress.iter()).flatten() {
            for peer in &rule.peers {
                if let Peer::IpBlock(b) = peer {
                    set.insert(Family::of(&b.cidr.addr()));
                }
            }
        }
    }
    if set.is_empty() {
        set.insert(Family::V4);
    }
    set.into_iter().collect()
}

fn insert_element(table: &mut Table, set: &str, e: Element) {
    table
        .sets
        .get_mut(set)
        .unwrap_or_else(|| panic!("set {set} is declared with the base chains"))
        .elements
        .insert(e);
}

fn ct_rules() -> Vec<Rule> {
    vec![Rule {
        matches: vec![Match::CtState(vec!["established", "related"])],
        verdict: Verdict::Accept,
        comment: Some("replies and related traffic of allowed connections".into()),
    }]
}

fn add_base_chains(t: &mut Table, attach: Attach, families: &[Family]) {
    let base = |hook: Hook, priority: i32, dir: Direction, comment: &str| {
        let side = match dir {
            Direction::Egress => Side::Src,
            Direction::Ingress => Side::Dst,
        };
        let mut rules = ct_rules();
        match attach {
            Attach::Routed => rules.push(Rule {
                matches: vec![],
                verdict: Verdict::IfnameVmap {
                    side,
                    map: dispatch_map(dir, None),
                },
                comment: None,
            }),
            Attach::Bridged => {
                for f in families {
                    rules.push(Rule {
                        matches: vec![],
                        verdict: Verdict::AddrVmap {
                            family: *f,
                            side,
                            map: dispatch_map(dir, Some(*f)),
                        },
                        comment: None,
                    });
                }
            }
        }
        Chain {
            base: Some(BaseHook { hook, priority }),
            rules,
            comment: Some(comment.to_string()),
        }
    };
    t.chains.insert(
        "base_egress".into(),
        base(
            Hook::Forward,
            EGRESS_PRIORITY,
            Direction::Egress,
            "egress of local pods: dispatch by source pod",
        ),
    );
    t.chains.insert(
        "base_ingress".into(),
        base(
            Hook::Forward,
            INGRESS_PRIORITY,
            Direction::Ingress,
            "ingress of local pods: dispatch by destination pod",
        ),
    );
    t.chains.insert(
        "base_to_node".into(),
        base(
            Hook::Input,
            EGRESS_PRIORITY,
            Direction::Egress,
            "local pods to their own node: egress applies",
        ),
    );
    for dir in [Direction::Egress, Direction::Ingress] {
        match attach {
            Attach::Routed => {
                t.sets.insert(
                    dispatch_map(dir, None),
                    Set {
                        ty: SetType::IfnameVerdict,
                        elements: BTreeSet::new(),
                        comment: Some(format!(
                            "host-side interface -> pod {} chain",
                            dir_name(dir)
                        )),
                    },
                );
            }
            Attach::Bridged => {
                for f in families {
                    t.sets.insert(
                        dispatch_map(dir, Some(*f)),
                        Set {
                            ty: SetType::AddrVerdict(*f),
                            elements: BTreeSet::new(),
                            comment: Some(format!("pod address -> pod {} chain", dir_name(dir))),
                        },
                    );
                }
            }
        }
    }
}

/// `pod_<ns>_<name>_<dir>`: invalid packets dropped, the pod may reach itself, then each
/// isolating policy's chain, then drop.
fn pod_chain(pod: &Pod, dir: Direction, policies: &[&Policy]) -> Chain {
    let name = pod.object_name();
    let mut rules = vec![Rule {
        matches: vec![Match::CtState(vec!["invalid"])],
        verdict: Verdict::Drop,
        comment: None,
    }];
    for ip in &pod.ips {
        // Hairpin through a Service: the pod reaching itself is never filtered.
        rules.push(Rule {
            matches: vec![Match::AddrIs {
                side: peer_side(dir),
                addr: *ip,
            }],
            verdict: Verdict::Accept,
            comment: Some(format!("{name} to itself")),
        });
    }
    for p in policies {
        rules.push(Rule {
            matches: vec![],
            verdict: Verdict::Jump(names::policy_chain(&p.namespace, &p.name, dir_name(dir))),
            comment: None,
        });
    }
    let by: Vec<String> = policies
        .iter()
        .map(|p| p.object_name().to_string())
        .collect();
    rules.push(Rule {
        matches: vec![],
        verdict: Verdict::Drop,
        comment: Some(format!("{name} {dir}: isolated by {}", by.join(", "))),
    });
    Chain {
        base: None,
        rules,
        comment: None,
    }
}

/// Pods a pod peer list matches, for the peer set.
fn pod_peer_matches(cluster: &Cluster, policy_ns: &str, rule: &PolicyRule, pod: &Pod) -> bool {
    rule.peers.iter().any(|peer| match peer {
        Peer::Pods { namespaces, pods } => {
            cluster.pod_peer_matches(policy_ns, namespaces, pods, pod)
        }
        Peer::IpBlock(_) => false,
    })
}

/// A canonical description of a rule's pod peers, with the policy namespace made explicit,
/// so equal peer lists of different policies share a set.
fn pod_peers_key(policy_ns: &str, rule: &PolicyRule) -> Option<String> {
    let parts: Vec<String> = rule
        .peers
        .iter()
        .filter_map(|peer| match peer {
            Peer::Pods { namespaces, pods } => Some(match namespaces {
                NamespaceScope::PolicyNamespace => {
                    format!("namespace {policy_ns}, podSelector {pods}")
                }
                NamespaceScope::Selected(ns) => {
                    format!("namespaceSelector {ns}, podSelector {pods}")
                }
            }),
            Peer::IpBlock(_) => None,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" | "))
}

fn add_policy_chain(
    t: &mut Table,
    cluster: &Cluster,
    policy: &Policy,
    dir: Direction,
    local: &[&Pod],
    families: &[Family],
) {
    let chain_name = names::policy_chain(&policy.namespace, &policy.name, dir_name(dir));
    let pname = policy.object_name();
    let rules = policy.rules(dir).unwrap_or_default();
    let mut out = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        let comment = format!("{pname} {dir} rule {r}");
        let mut push = |matches: Vec<Match>| {
            out.push(Rule {
                matches,
                verdict: Verdict::Accept,
                comment: Some(comment.clone()),
            })
        };
        let numeric = numeric_port_alts(rule);
        if rule.peers.is_empty() {
            // No peers: the numeric part is the same in every family.
            for alt in &numeric {
                push(alt.clone());
            }
            for &family in families {
                if let Some(named) =
                    named_port_match(t, cluster, policy, dir, r, rule, local, family)
                {
                    push(vec![named]);
                }
            }
            continue;
        }
        let has_named = rule
            .ports
            .iter()
            .any(|p| matches!(p.port, Some(PortRef::Name(_))));
        // Egress named ports carry their peers in the set; pod peer sets are only needed
        // for numeric ports and for ingress named ports.
        let needs_peer_sets = !numeric.is_empty() || (dir == Direction::Ingress && has_named);
        for &family in families {
            let peers = if needs_peer_sets {
                match peer_matches(t, cluster, policy, dir, rule, family) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                vec![]
            };
            for peer in &peers {
                for alt in &numeric {
                    push(peer.iter().chain(alt.iter()).cloned().collect());
                }
            }
            match (
                dir,
                named_port_match(t, cluster, policy, dir, r, rule, local, family),
            ) {
                (_, None) => {}
                // Egress named-port sets list only the peers' own addresses: no peer match needed.
                (Direction::Egress, Some(named)) => push(vec![named]),
                (Direction::Ingress, Some(named)) => {
                    for peer in &peers {
                        push(peer.iter().cloned().chain([named.clone()]).collect());
                    }
                }
            }
        }
    }
    let comment = if rules.is_empty() {
        format!("{pname}: no {dir} rules, allows nothing")
    } else {
        format!("{pname} {dir}")
    };
    t.chains.insert(
        chain_name,
        Chain {
            base: None,
            rules: out,
            comment: Some(comment),
        },
    );
}

/// Alternatives for the peer part of a rule in one family: `[[]]` when the rule has no peers
/// (everyone), one entry per set otherwise; None when no peer can match in this family.
fn peer_matches(
    t: &mut Table,
    cluster: &Cluster,
    policy: &Policy,
    dir: Direction,
    rule: &PolicyRule,
    family: Family,
) -> Option<Vec<Vec<Match>>> {
    if rule.peers.is_empty() {
        return Some(vec![vec![]]);
    }
    let side = peer_side(dir);
    let mut alts = Vec::new();
    if let Some(key) = pod_peers_key(&policy.namespace, rule) {
        let set = names::content_set("pods", &key, family.suffix());
        if !t.sets.contains_key(&set) {
            let elements = cluster
                .pods
                .values()
                .filter(|p| pod_peer_matches(cluster, &policy.namespace, rule, p))
                .flat_map(|p| p.ips.iter())
                .filter(|ip| Family::of(ip) == family)
                .map(|ip| Element::Addr(*ip))
                .collect();
            t.sets.insert(
                set.clone(),
                Set {
                    ty: SetType::Addr(family),
                    elements,
                    comment: Some(key),
                },
            );
        }
        alts.push(vec![Match::AddrInSet { family, side, set }]);
    }
    let blocks: Vec<&crate::policy::ipblock::IpBlock> = rule
        .peers
        .iter()
        .filter_map(|p| match p {
            Peer::IpBlock(b) if Family::of(&b.cidr.addr()) == family => Some(b),
            _ => None,
        })
        .collect();
    if !blocks.is_empty() {
        let prefixes: Vec<IpNet> =
            IpNet::aggregate(&blocks.iter().flat_map(|b| b.disjoint_prefixes()).collect());
        let key: Vec<String> = blocks
            .iter()
            .map(|b| {
                let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                if ex.is_empty() {
                    b.cidr.to_string()
                } else {
                    format!("{} except {}", b.cidr, ex.join(" "))
                }
            })
            .collect();
        let key = key.join(" | ");
        let set = names::content_set("cidrs", &key, family.suffix());
        t.sets.entry(set.clone()).or_insert_with(|| Set {
            ty: SetType::Prefixes(family),
            elements: prefixes.into_iter().map(Element::Prefix).collect(),
            comment: Some(format!("ipBlock {key}")),
        });
        alts.push(vec![Match::AddrInSet { family, side, set }]);
    }
    (!alts.is_empty()).then_some(alts)
}

/// Alternatives for the numeric port part of a rule: `[[]]` when the rule has no ports,
/// otherwise per protocol a protocol match with its merged port ranges. Named ports are
/// matched separately by [`named_port_match`]; a rule with only named ports has none here.
fn numeric_port_alts(rule: &PolicyRule) -> Vec<Vec<Match>> {
    if rule.ports.is_empty() {
        return vec![vec![]];
    }
    let mut alts = Vec::new();
    for proto in Protocol::ALL {
        let clauses: Vec<_> = rule.ports.iter().filter(|p| p.protocol == proto).collect();
        if clauses.iter().any(|c| c.port.is_none()) {
            alts.push(vec![Match::L4Proto(proto)]);
            continue;
        }
        let ranges: Vec<(u16, u16)> = merge_ranges(clauses.iter().filter_map(|c| match c.port {
            Some(PortRef::Number(_)) => c.numeric_range(),
            _ => None,
        }));
        if !ranges.is_empty() {
            alts.push(vec![Match::L4Proto(proto), Match::DportIn(ranges)]);
        }
    }
    alts
}

/// The named-port match of a rule in one family, declaring its set: named ports resolve on
/// the destination, so for ingress the set lists the selected local pods' resolved ports,
/// for egress every pod the rule's peers match with its resolved ports.
#[allow(clippy::too_many_arguments)]
fn named_port_match(
    t: &mut Table,
    cluster: &Cluster,
    policy: &Policy,
    dir: Direction,
    r: usize,
    rule: &PolicyRule,
    local: &[&Pod],
    family: Family,
) -> Option<Match> {
    let named: Vec<(&str, Protocol)> = rule
        .ports
        .iter()
        .filter_map(|p| match &p.port {
            Some(PortRef::Name(n)) => Some((n.as_str(), p.protocol)),
            _ => None,
        })
        .collect();
    if named.is_empty() {
        return None;
    }
    let (set, targets, comment): (String, Vec<&Pod>, String) = match dir {
        Direction::Ingress => (
            names::object_name(&format!(
                "np_{}_{}_ingress{r}_named_{}",
                policy.namespace,
                policy.name,
                family.suffix()
            )),
            local
                .iter()
                .copied()
                .filter(|p| policy.selects(p))
                .collect(),
            format!(
                "{} ingress rule {r}: named ports on selected local pods",
                policy.object_name()
            ),
        ),
        Direction::Egress => {
            let peer_key = rule_peer_key(&policy.namespace, rule);
            let ports: Vec<String> = named.iter().map(|(n, p)| format!("{n}/{p}")).collect();
            let ports = ports.join(", ");
            (
                names::content_set(
                    "named",
                    &format!("{peer_key} ports {ports}"),
                    family.suffix(),
                ),
                cluster
                    .pods
                    .values()
                    .filter(|p| egress_named_target(cluster, policy, rule, p))
                    .collect(),
                format!("named ports {ports} on pods of {peer_key}"),
            )
        }
    };
    if !t.sets.contains_key(&set) {
        let mut elements = BTreeSet::new();
        for pod in targets {
            for (name, proto) in &named {
                if let Some(port) = pod.resolve_named_port(name, *proto) {
                    for ip in pod.ips.iter().filter(|ip| Family::of(ip) == family) {
                        elements.insert(Element::NamedPort(*ip, *proto, port));
                    }
                }
            }
        }
        t.sets.insert(
            set.clone(),
            Set {
                ty: SetType::NamedPort(family),
                elements,
                comment: Some(comment),
            },
        );
    }
    Some(Match::NamedPortInSet { family, set })
}

/// Every peer of a rule, canonical (pod peers with the namespace explicit, and ipBlocks).
fn rule_peer_key(policy_ns: &str, rule: &PolicyRule) -> String {
    if rule.peers.is_empty() {
        return "all peers".into();
    }
    let mut parts: Vec<String> = pod_peers_key(policy_ns, rule).into_iter().collect();
    for p in &rule.peers {
        if let Peer::IpBlock(b) = p {
            parts.push(format!("ipBlock {} except {:?}", b.cidr, b.except));
        }
    }
    parts.join(" | ")
}

/// Whether an egress named-port set must list `pod`: a peer of the rule matches it (a pod
/// peer by selectors, an ipBlock by the pod's address), or the rule has no peers.
fn egress_named_target(cluster: &Cluster, policy: &Policy, rule: &PolicyRule, pod: &Pod) -> bool {
    if rule.peers.is_empty() {
        return true;
    }
    rule.peers.iter().any(|peer| match peer {
        Peer::Pods { namespaces, pods } => {
            cluster.pod_peer_matches(&policy.namespace, namespaces, pods, pod)
        }
        Peer::IpBlock(b) => pod.ips.iter().any(|ip| b.contains(*ip)),
    })
}

/// Sorts and merges overlapping or adjacent inclusive ranges (nft rejects overlaps).
pub fn merge_ranges(ranges: impl Iterator<Item = (u16, u16)>) -> Vec<(u16, u16)> {
    let mut v: Vec<(u16, u16)> = ranges.collect();
    v.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `table bridge sluice`: each local pod's bridge port may only send with its own MAC and IPs.
fn add_bridge_base(t: &mut Table) {
    t.chains.insert(
        "base_guard".into(),
        Chain {
            base: Some(BaseHook {
                hook: Hook::Prerouting,
                priority: 0,
            }),
            rules: vec![Rule {
                matches: vec![],
                verdict: Verdict::IfnameVmap {
                    side: Side::Src,
                    map: "guard_dispatch".into(),
                },
                comment: None,
            }],
            comment: Some("anti-spoofing: frames from a pod's bridge port".into()),
        },
    );
    t.sets.insert(
        "guard_dispatch".into(),
        Set {
            ty: SetType::IfnameVerdict,
            elements: BTreeSet::new(),
            comment: Some("bridge port -> guard chain".into()),
        },
    );
}

fn add_guard(t: &mut Table, pod: &Pod, iface: &str, mac: Option<&str>) {
    let name = pod.object_name();
    let chain = names::guard_chain(&pod.namespace, &pod.name);
    let mut rules = Vec::new();
    if let Some(mac) = mac {
        rules.push(Rule {
            matches: vec![Match::EtherSaddrNot(mac.to_ascii_lowercase())],
            verdict: Verdict::Drop,
            comment: Some(format!("{name}: foreign MAC")),
        });
    }
    let v4: Vec<IpNet> = pod
        .ips
        .iter()
        .filter(|ip| ip.is_ipv4())
        .map(|ip| IpNet::from(*ip))
        .collect();
    let mut v6: Vec<IpNet> = pod
        .ips
        .iter()
        .filter(|ip| ip.is_ipv6())
        .map(|ip| IpNet::from(*ip))
        .collect();
    // Link-local and unspecified sources are how IPv6 neighbour discovery starts.
    v6.push("fe80::/10".parse().unwrap());
    v6.push("::/128".parse().unwrap());
    let v4_match = if v4.is_empty() {
        vec![Match::EtherProto("ip")] // no IPv4 address: no IPv4 source is its own
    } else {
        vec![
            Match::EtherProto("ip"),
            Match::AddrNotIn {
                family: Family::V4,
                side: Side::Src,
                addrs: v4.clone(),
            },
        ]
    };
    rules.push(Rule {
        matches: v4_match,
        verdict: Verdict::Drop,
        comment: Some(format!("{name}: foreign IPv4 source")),
    });
    if let Some(IpNet::V4(a)) = v4.first() {
        rules.push(Rule {
            matches: vec![
                Match::EtherProto("arp"),
                Match::ArpSaddrIpNot(IpAddr::V4(a.addr())),
            ],
            verdict: Verdict::Drop,
            comment: Some(format!("{name}: foreign ARP sender")),
        });
    }
    rules.push(Rule {
        matches: vec![
            Match::EtherProto("ip6"),
            Match::AddrNotIn {
                family: Family::V6,
                side: Side::Src,
                addrs: v6,
            },
        ],
        verdict: Verdict::Drop,
        comment: Some(format!("{name}: foreign IPv6 source")),
    });
    t.chains.insert(
        chain.clone(),
        Chain {
            base: None,
            rules,
            comment: Some(format!("{name} on {iface}")),
        },
    );
    t.sets
        .get_mut("guard_dispatch")
        .expect("declared by add_bridge_base")
        .elements
        .insert(Element::IfnameJump(iface.to_string(), chain));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merge_ranges([(80, 80), (81, 85), (90, 95), (94, 100)].into_iter()),
            [(80, 85), (90, 100)]
        );
        assert_eq!(
            merge_ranges([(65535, 65535), (1, 65534)].into_iter()),
            [(1, 65535)]
        );
    }
}
