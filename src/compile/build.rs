//! Cluster snapshot + node -> [`NodeDecisions`] -> [`NodeRuleset`]. Pure and deterministic.
//!
//! [`decide`] says per local pod and direction whether it is isolated and by which rulebook
//! (shared by pods with the same policies, see [`super::profile`]); [`super::lower`] gives the
//! decisions their nftables shape. Peers are sets, so pod churn is set-element churn, not rule
//! churn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::cnp_book::{add_rulebook as add_cnp_rulebook, CnpInput};
use super::decision::{Action, AntiSpoof, DirDecision, Isolation, NodeDecisions, PodDecision};
use super::ir::{Attach, Family, NodeRuleset};
use super::names;
use super::profile::{add_rulebook, ProfileInput};
use super::select::PodIndex;
use crate::policy::cnp::{CnpPeer, Tier};
use crate::policy::model::{Cluster, Direction, ObjectName, Peer, Pod};

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

/// Decides, then lowers the decisions to nftables tables (see [`super::lower`]).
pub fn compile(input: &CompileInput) -> NodeRuleset {
    super::lower::lower(decide(input))
}

/// The per-pod decisions of one node (see [`super::decision`]).
pub fn decide(input: &CompileInput) -> NodeDecisions {
    let cluster = input.cluster;
    let families = families(cluster);
    let mut d = NodeDecisions {
        node: input.node.to_string(),
        attach: input.attach,
        families: families.clone(),
        accept_established: true,
        pods: Vec::new(),
        rulebooks: BTreeMap::new(),
        peer_sets: BTreeMap::new(),
        named_ports: BTreeMap::new(),
    };
    let local: Vec<&Pod> = cluster
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(input.node) && !p.host_network)
        .collect();

    let index = PodIndex::new(cluster);
    for pod in &local {
        let name = pod.object_name();
        let attachment = input.attachments.get(&name).cloned().unwrap_or_default();
        let iface = attachment
            .iface
            .clone()
            .unwrap_or_else(|| names::default_iface(&pod.namespace, &pod.name));
        let fails_closed = cluster.fails_closed(pod);
        let mut dirs = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            dirs.push(if let Some(fc) = &fails_closed {
                DirDecision {
                    isolation: Isolation::FailClosed {
                        policies: fc.policies.clone(),
                        reason: format!("{name} fails closed: {}", fc.reason),
                    },
                    drop_invalid: false,
                    accept_peers: vec![],
                    tiers: vec![],
                    default: Action::Drop,
                }
            } else {
                decide_dir(&mut d, &index, &local, &families, pod, dir)
            });
        }
        let egress = dirs.pop().expect("two directions");
        let ingress = dirs.pop().expect("two directions");
        // Every packet the pod sends must carry one of its own addresses, whatever its
        // policies: spoofing is the one way around a correct policy.
        let anti_spoof = anti_spoof(input.attach, pod, attachment.mac.as_deref());
        d.pods.push(PodDecision {
            pod: name,
            iface,
            ips: pod.ips.clone(),
            ingress,
            egress,
            anti_spoof,
        });
    }
    d
}

/// One local pod in one direction: its tiers in evaluation order (see [`super::decision`]):
/// Admin, then NetworkPolicy when it isolates the pod, else Baseline. An isolated pod's
/// NetworkPolicy tier decides everything that reaches it, so Baseline is never consulted then.
fn decide_dir<'a>(
    d: &mut NodeDecisions,
    index: &PodIndex<'a>,
    local: &[&'a Pod],
    families: &[Family],
    pod: &'a Pod,
    dir: Direction,
) -> DirDecision {
    let cluster = index.cluster();
    let np = cluster.isolating(pod, dir);
    let mut tiers = Vec::new();
    let mut policies = Vec::new();
    let cnp_tier = |d: &mut NodeDecisions, tier: Tier, policies: &mut Vec<String>| {
        let ordered = crate::policy::tiers::ordered(cluster, tier, pod, dir);
        if ordered.is_empty() {
            return None;
        }
        policies.extend(ordered.iter().map(|p| p.label()));
        Some(add_cnp_rulebook(
            d,
            &CnpInput {
                index,
                tier,
                policies: &ordered,
                dir,
                local,
                families,
            },
        ))
    };
    tiers.extend(cnp_tier(d, Tier::Admin, &mut policies));
    if !np.is_empty() {
        tiers.push(add_rulebook(
            d,
            &ProfileInput {
                index,
                policies: &np,
                dir,
                local,
                families,
            },
        ));
        policies.extend(np.iter().map(|p| p.object_name().to_string()));
    } else {
        tiers.extend(cnp_tier(d, Tier::Baseline, &mut policies));
    }
    if tiers.is_empty() {
        return DirDecision {
            isolation: Isolation::Open,
            drop_invalid: false,
            accept_peers: vec![],
            tiers: vec![],
            default: Action::Accept,
        };
    }
    DirDecision {
        isolation: Isolation::Isolated { policies },
        drop_invalid: true,
        // Hairpin through a Service: the pod reaching itself is never filtered (the oracle:
        // loopback is never filtered, whatever the tiers say).
        accept_peers: pod.ips.clone(),
        tiers,
        // Nothing decided: NetworkPolicy isolation denies, otherwise the API allows.
        default: if np.is_empty() {
            Action::Accept
        } else {
            Action::Drop
        },
    }
}

/// What a pod may send from. A pod without an IPv4 address may send no IPv4 at all, and
/// without an IPv6 address only link-local and unspecified IPv6 (neighbour discovery): fail
/// closed. MAC and ARP sender are pinned only on a bridge (routed: the node routes each pod
/// address only to that pod's veth).
fn anti_spoof(attach: Attach, pod: &Pod, mac: Option<&str>) -> AntiSpoof {
    let bridged = attach == Attach::Bridged;
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
    let arp = match v4.first() {
        Some(IpNet::V4(a)) if bridged => Some(IpAddr::V4(a.addr())),
        _ => None,
    };
    AntiSpoof {
        mac: mac.filter(|_| bridged).map(|m| m.to_ascii_lowercase()),
        v4,
        arp,
        v6,
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
    for policy in cluster.cluster_policies.values() {
        for rule in policy.ingress.iter().chain(policy.egress.iter()) {
            for peer in &rule.peers {
                if let CnpPeer::Networks(nets) = peer {
                    set.extend(nets.iter().map(|n| Family::of(&n.addr())));
                }
            }
        }
    }
    if set.is_empty() {
        set.insert(Family::V4);
    }
    set.into_iter().collect()
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

#[cfg(test)]
mod tests {
    use super::super::ir::*;
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
