//! [`NodeDecisions`] -> nftables tables: the lowering of the decision IR to the chain and set
//! model of [`super::ir`]. Pure and deterministic; its output is what `nft` applies.
//!
//! It lives in `compile` (not `nft`) because [`NodeRuleset`] carries the lowered tables and
//! `nft` imports `compile`: the dependency goes one way, `nft -> compile`.
//!
//! Shape (see docs/nftables.md): base chains per direction accept established and related
//! traffic, then dispatch a local pod's packets through a verdict map to its pod chain; the pod
//! chain drops invalid packets, accepts the pod reaching itself, jumps to each tier's rulebook
//! chain in order and ends in the default. A rulebook chain is its clauses in order, each
//! `peer set x port clause -> verdict` (Continue is `return`: back to the pod chain's next
//! tier). Peer and named-port sets keep their decision names.

use std::collections::BTreeSet;

use super::decision::{
    Action, AntiSpoof, DirDecision, Isolation as Decided, NodeDecisions, PeerMatch, PeerMembers,
    PodDecision, PortMatch, Rulebook,
};
use super::ir::*;
use super::names;
use super::profile::{dir_name, peer_side};
use super::TABLE;
use crate::policy::model::Direction;

/// Lowers `d` to tables; the ruleset keeps `d` next to them for the other dataplanes.
pub fn lower(d: NodeDecisions) -> NodeRuleset {
    let mut inet = Table::new(TableFamily::Inet, TABLE);
    let mut warnings = Vec::new();
    add_base_chains(&mut inet, d.attach, &d.families);
    let mut bridge = Table::new(TableFamily::Bridge, TABLE);
    match d.attach {
        Attach::Bridged => add_guard_base(&mut bridge, d.attach),
        Attach::Routed => add_guard_base(&mut inet, d.attach),
    }
    for (name, s) in &d.peer_sets {
        let (ty, elements) = match &s.members {
            PeerMembers::Addrs(a) => (
                SetType::Addr(s.family),
                a.iter().map(|a| Element::Addr(*a)).collect(),
            ),
            PeerMembers::Prefixes(p) => (
                SetType::Prefixes(s.family),
                p.iter().map(|p| Element::Prefix(*p)).collect(),
            ),
        };
        inet.sets.insert(
            name.clone(),
            Set {
                ty,
                elements,
                comment: Some(s.label.clone()),
            },
        );
    }
    for (name, s) in &d.named_ports {
        inet.sets.insert(
            name.clone(),
            Set {
                ty: SetType::NamedPort(s.family),
                elements: s
                    .entries
                    .iter()
                    .map(|(a, proto, port)| Element::NamedPort(*a, *proto, *port))
                    .collect(),
                comment: Some(s.label.clone()),
            },
        );
    }
    for (name, book) in &d.rulebooks {
        inet.chains.insert(name.clone(), rulebook_chain(&d, book));
    }
    let mut pods_out = Vec::new();
    for pod in &d.pods {
        let name = &pod.pod;
        let mut iso = Vec::new();
        for (dir, dd) in pod.dirs() {
            let chain = names::pod_chain(&name.namespace, &name.name, dir_name(dir));
            let isolation = match &dd.isolation {
                Decided::Open => {
                    iso.push(Isolation::Open);
                    continue;
                }
                Decided::FailClosed { policies, reason } => {
                    warnings.push(format!("{reason} ({dir})"));
                    inet.chains.insert(
                        chain.clone(),
                        Chain {
                            base: None,
                            rules: vec![Rule {
                                matches: vec![],
                                verdict: Verdict::Drop,
                                comment: Some(if policies.iter().all(|p| p.starts_with("cnp/")) {
                                    format!(
                                        "{name}: ClusterNetworkPolicy not enforced, fail closed"
                                    )
                                } else {
                                    format!("{name}: invalid policy, fail closed")
                                }),
                            }],
                            comment: Some(reason.clone()),
                        },
                    );
                    Isolation::FailedClosed {
                        chain: chain.clone(),
                        reason: reason.clone(),
                    }
                }
                Decided::Isolated { policies } => {
                    inet.chains
                        .insert(chain.clone(), pod_chain(pod, dir, dd, policies));
                    Isolation::Isolated {
                        chain: chain.clone(),
                        policies: policies.clone(),
                    }
                }
            };
            // Dispatch the pod's packets to its chain.
            match d.attach {
                Attach::Routed => {
                    insert_element(
                        &mut inet,
                        &dispatch_map(dir, None),
                        Element::IfnameJump(pod.iface.clone(), chain.clone()),
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
        match d.attach {
            Attach::Bridged => add_guard(&mut bridge, pod),
            Attach::Routed => add_guard(&mut inet, pod),
        }
        let egress = iso.pop().unwrap_or(Isolation::Open);
        let ingress = iso.pop().unwrap_or(Isolation::Open);
        pods_out.push(LocalPod {
            pod: name.to_string(),
            iface: Some(pod.iface.clone()),
            ips: pod.ips.clone(),
            ingress,
            egress,
        });
    }
    let mut tables = vec![inet];
    if d.attach == Attach::Bridged {
        tables.push(bridge);
    }
    NodeRuleset {
        node: d.node.clone(),
        attach: d.attach,
        tables,
        pods: pods_out,
        warnings,
        decisions: d,
    }
}

fn verdict(a: Action) -> Verdict {
    match a {
        Action::Accept => Verdict::Accept,
        Action::Drop => Verdict::Drop,
        Action::Continue => Verdict::Return,
    }
}

/// A rulebook's chain: one rule per clause, peer match first, then the port match.
fn rulebook_chain(d: &NodeDecisions, book: &Rulebook) -> Chain {
    let side = peer_side(book.direction);
    let rules = book
        .clauses
        .iter()
        .map(|c| {
            let mut matches = Vec::new();
            if let PeerMatch::Set(set) = &c.peer {
                matches.push(Match::AddrInSet {
                    family: d.peer_sets[set].family,
                    side,
                    set: set.clone(),
                });
            }
            match &c.port {
                PortMatch::Any => {}
                PortMatch::Proto(p) => matches.push(Match::L4Proto(*p)),
                PortMatch::Ranges(p, r) => {
                    matches.push(Match::L4Proto(*p));
                    matches.push(Match::DportIn(r.clone()));
                }
                PortMatch::Named(set) => matches.push(Match::NamedPortInSet {
                    family: d.named_ports[set].family,
                    set: set.clone(),
                }),
            }
            Rule {
                matches,
                verdict: verdict(c.action),
                comment: Some(c.label.clone()),
            }
        })
        .collect();
    Chain {
        base: None,
        rules,
        comment: Some(book.label.clone()),
    }
}

/// Base chain priorities relative to `filter`: egress first, then ingress, so an accept of
/// the egress chain still leaves the packet to the ingress chain.
const EGRESS_PRIORITY: i32 = -10;
const INGRESS_PRIORITY: i32 = -5;

fn dispatch_map(d: Direction, family: Option<Family>) -> String {
    match family {
        None => format!("{}_dispatch", dir_name(d)),
        Some(f) => format!("{}_dispatch_{}", dir_name(d), f.suffix()),
    }
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

/// `pod_<ns>_<name>_<dir>`: invalid packets dropped, the pod may reach itself, then the
/// chain of each tier, then the default.
fn pod_chain(pod: &PodDecision, dir: Direction, dd: &DirDecision, policies: &[String]) -> Chain {
    let name = &pod.pod;
    let mut rules = Vec::new();
    if dd.drop_invalid {
        rules.push(Rule {
            matches: vec![Match::CtState(vec!["invalid"])],
            verdict: Verdict::Drop,
            comment: None,
        });
    }
    for ip in &dd.accept_peers {
        rules.push(Rule {
            matches: vec![Match::AddrIs {
                side: peer_side(dir),
                addr: *ip,
            }],
            verdict: Verdict::Accept,
            comment: Some(format!("{name} to itself")),
        });
    }
    for tier in &dd.tiers {
        rules.push(Rule {
            matches: vec![],
            verdict: Verdict::Jump(tier.clone()),
            comment: None,
        });
    }
    // Continue as a default leaves the packet to the base chain, which accepts.
    if dd.default != Action::Continue {
        rules.push(Rule {
            matches: vec![],
            verdict: verdict(dd.default),
            comment: Some(format!("{name} {dir}: isolated by {}", policies.join(", "))),
        });
    }
    Chain {
        base: None,
        rules,
        comment: None,
    }
}

/// Anti-spoofing: each local pod's interface may only send with the pod's own addresses.
///
/// Bridged: `table bridge sluice` sees the frames of each bridge port (and pins its MAC and
/// ARP sender too). Routed: the pod's host veth is its own, so the guard is a prerouting chain
/// of the inet table, at raw priority: before conntrack (a spoofed packet never creates or
/// matches a connection, so `ct state established` cannot let it by) and before the forward
/// and input hooks, so it covers traffic to other pods and to the node alike. ARP needs no
/// guard there: the node routes each pod address only to that pod's veth.
fn add_guard_base(t: &mut Table, attach: Attach) {
    let (priority, comment) = match attach {
        Attach::Bridged => (0, "anti-spoofing: frames from a pod's bridge port"),
        Attach::Routed => (
            GUARD_PRIORITY_ROUTED,
            "anti-spoofing: packets from a pod's host veth",
        ),
    };
    t.chains.insert(
        "base_guard".into(),
        Chain {
            base: Some(BaseHook {
                hook: Hook::Prerouting,
                priority,
            }),
            rules: vec![Rule {
                matches: vec![],
                verdict: Verdict::IfnameVmap {
                    side: Side::Src,
                    map: "guard_dispatch".into(),
                },
                comment: None,
            }],
            comment: Some(comment.into()),
        },
    );
    let comment = match attach {
        Attach::Bridged => "bridge port -> guard chain",
        Attach::Routed => "host-side interface -> guard chain",
    };
    t.sets.insert(
        "guard_dispatch".into(),
        Set {
            ty: SetType::IfnameVerdict,
            elements: BTreeSet::new(),
            comment: Some(comment.into()),
        },
    );
}

/// Routed guard priority relative to `filter`: -300 is nftables' `raw`, before conntrack (-200).
const GUARD_PRIORITY_ROUTED: i32 = -300;

/// The guard chain of one pod: drop what does not come from its own MAC (bridged only) and
/// addresses (see [`AntiSpoof`]).
fn add_guard(t: &mut Table, pod: &PodDecision) {
    let name = &pod.pod;
    let g: &AntiSpoof = &pod.anti_spoof;
    let chain = names::guard_chain(&name.namespace, &name.name);
    let mut rules = Vec::new();
    if let Some(mac) = &g.mac {
        rules.push(Rule {
            matches: vec![Match::EtherSaddrNot(mac.clone())],
            verdict: Verdict::Drop,
            comment: Some(format!("{name}: foreign MAC")),
        });
    }
    let v4_match = if g.v4.is_empty() {
        vec![Match::EtherProto("ip")] // no IPv4 address: no IPv4 source is its own
    } else {
        vec![
            Match::EtherProto("ip"),
            Match::AddrNotIn {
                family: Family::V4,
                side: Side::Src,
                addrs: g.v4.clone(),
            },
        ]
    };
    rules.push(Rule {
        matches: v4_match,
        verdict: Verdict::Drop,
        comment: Some(format!("{name}: foreign IPv4 source")),
    });
    // ARP is seen only by the bridge family (and matters only on a shared segment).
    if let Some(a) = g.arp {
        rules.push(Rule {
            matches: vec![Match::EtherProto("arp"), Match::ArpSaddrIpNot(a)],
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
                addrs: g.v6.clone(),
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
            comment: Some(format!("{name} on {}", pod.iface)),
        },
    );
    t.sets
        .get_mut("guard_dispatch")
        .expect("declared by add_guard_base")
        .elements
        .insert(Element::IfnameJump(pod.iface.clone(), chain));
}
