//! Cluster snapshot + node -> [`NodeRuleset`]. Pure and deterministic.
//!
//! Shape (see docs/dataplane.md): base chains per direction dispatch a local pod's packets
//! through a verdict map to its pod chain; the pod chain jumps to the chain of its isolating
//! policies (shared by pods with the same policies, see [`super::profile`]) and ends in drop.
//! Peers are sets, so pod churn is set-element churn, not rule churn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::ir::*;
use super::names;
use super::profile::{add_profile_chain, dir_name, peer_side, ProfileInput};
use super::select::PodIndex;
use crate::policy::model::{Cluster, Direction, ObjectName, Peer, Pod, Policy};

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

    let index = PodIndex::new(cluster);
    let mut pods_out = Vec::new();
    let mut bridge = Table::new(TableFamily::Bridge, TABLE);
    match input.attach {
        Attach::Bridged => add_guard_base(&mut bridge, input.attach),
        Attach::Routed => add_guard_base(&mut inet, input.attach),
    }
    for pod in &local {
        let name = pod.object_name();
        let attachment = input.attachments.get(&name).cloned().unwrap_or_default();
        let iface = attachment
            .iface
            .clone()
            .unwrap_or_else(|| names::default_iface(&pod.namespace, &pod.name));
        let fails_closed = cluster.fails_closed(pod);
        let mut iso = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let chain = names::pod_chain(&pod.namespace, &pod.name, dir_name(dir));
            let isolation = if let Some(fc) = &fails_closed {
                let reason = format!("{name} fails closed: {}", fc.reason);
                warnings.push(format!("{reason} ({dir})"));
                inet.chains.insert(
                    chain.clone(),
                    Chain {
                        base: None,
                        rules: vec![Rule {
                            matches: vec![],
                            verdict: Verdict::Drop,
                            comment: Some(if fc.policies.iter().all(|p| p.starts_with("cnp/")) {
                                format!("{name}: ClusterNetworkPolicy not enforced, fail closed")
                            } else {
                                format!("{name}: invalid policy, fail closed")
                            }),
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
                let profile = add_profile_chain(
                    &mut inet,
                    &ProfileInput {
                        index: &index,
                        policies: &policies,
                        dir,
                        local: &local,
                        families: &families,
                    },
                );
                inet.chains
                    .insert(chain.clone(), pod_chain(pod, dir, &policies, &profile));
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
        // Every packet the pod sends must carry one of its own addresses, whatever its
        // policies: spoofing is the one way around a correct policy.
        match input.attach {
            Attach::Bridged => add_guard(
                &mut bridge,
                input.attach,
                pod,
                &iface,
                attachment.mac.as_deref(),
            ),
            Attach::Routed => add_guard(&mut inet, input.attach, pod, &iface, None),
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

/// `pod_<ns>_<name>_<dir>`: invalid packets dropped, the pod may reach itself, then the
/// chain of its isolating policies, then drop.
fn pod_chain(pod: &Pod, dir: Direction, policies: &[&Policy], profile: &str) -> Chain {
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
    rules.push(Rule {
        matches: vec![],
        verdict: Verdict::Jump(profile.to_string()),
        comment: None,
    });
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
/// addresses. A pod without an IPv4 address may send no IPv4 at all, and without an IPv6
/// address only link-local and unspecified IPv6 (neighbour discovery): fail closed.
fn add_guard(t: &mut Table, attach: Attach, pod: &Pod, iface: &str, mac: Option<&str>) {
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
    // ARP is seen only by the bridge family (and matters only on a shared segment).
    if let (Some(IpNet::V4(a)), Attach::Bridged) = (v4.first(), attach) {
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
        .expect("declared by add_guard_base")
        .elements
        .insert(Element::IfnameJump(iface.to_string(), chain));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(text: &str) -> NodeRuleset {
        let mut b = crate::policy::objects::ClusterBuilder::new();
        b.add_text("test", text);
        let (cluster, _) = b.build();
        compile(&CompileInput {
            cluster: &cluster,
            node: "node-0",
            attach: Attach::Routed,
            attachments: &BTreeMap::new(),
        })
    }

    /// Routed pods are guarded against spoofing too (issue 17, class 14): every local pod,
    /// isolated or not, and a pod without an address may send no IPv4 at all.
    #[test]
    fn routed_pods_may_send_only_their_own_sources() {
        let rs = routed(
            "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: x}\nspec: {nodeName: node-0, containers: [{name: c}]}\nstatus: {podIP: 10.244.0.2}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: b, namespace: x}\nspec: {nodeName: node-0, containers: [{name: c}]}\n",
        );
        assert!(rs.table(TableFamily::Bridge).is_none());
        let inet = rs.table(TableFamily::Inet).unwrap();
        let base = &inet.chains["base_guard"];
        assert_eq!(
            base.base,
            Some(BaseHook {
                hook: Hook::Prerouting,
                priority: -300
            })
        );
        let dispatch: Vec<&Element> = inet.sets["guard_dispatch"].elements.iter().collect();
        assert_eq!(dispatch.len(), 2, "{dispatch:?}");
        let rules = |chain: &str| -> Vec<Vec<Match>> {
            inet.chains[chain]
                .rules
                .iter()
                .inspect(|r| assert_eq!(r.verdict, Verdict::Drop))
                .map(|r| r.matches.clone())
                .collect()
        };
        let a = rules("guard_x_a");
        assert!(a.contains(&vec![
            Match::EtherProto("ip"),
            Match::AddrNotIn {
                family: Family::V4,
                side: Side::Src,
                addrs: vec!["10.244.0.2/32".parse().unwrap()],
            }
        ]));
        assert!(a
            .iter()
            .flatten()
            .all(|m| !matches!(m, Match::ArpSaddrIpNot(_) | Match::EtherSaddrNot(_))));
        let b = rules("guard_x_b");
        assert!(b.contains(&vec![Match::EtherProto("ip")]), "{b:?}");
        assert!(b.contains(&vec![
            Match::EtherProto("ip6"),
            Match::AddrNotIn {
                family: Family::V6,
                side: Side::Src,
                addrs: vec!["fe80::/10".parse().unwrap(), "::/128".parse().unwrap()],
            }
        ]));
    }

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
