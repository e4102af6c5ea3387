//! [`NodeRuleset`]'s per-pod decisions ([`crate::compile::decision`]) -> what the classifier's
//! maps must hold. Pure.
//!
//! Each pod direction's tiers (rulebooks, in order) become *contexts* (`context.rs`: clause
//! bits that a packet must find both on its peer side and on its port side, the first match
//! deciding), referenced by the pod's entry with the direction's default. What the classifier
//! cannot express (more tiers, clause bits or own addresses than it holds) is an error for the
//! pods that use it, and those pods fail closed: the eBPF dataplane never allows what it cannot
//! encode.
//!
//! Context keys decide what may be patched in place (`entries.rs`). Updates are safe in place
//! only while allowing is monotone in the bits: every tier only accepts and the default drops
//! (NetworkPolicy). Such a tier's key is `<direction>:<rulebook>`, as before tiers existed, so a
//! changed peer set is a few map updates. Any other direction (drop or pass clauses, a default
//! that accepts) keys its tiers by content too (`<direction>:<rulebook>#<digest>`): a change
//! is a new context, written completely before the pod's entry switches to it in one update.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use super::context::{port_prefixes, proto_number, Bits, Context, BITS, BITS_WORDS};
use crate::compile::decision::{Action, AntiSpoof, Isolation};
use crate::compile::ir::NodeRuleset;
use crate::compile::names;

use super::context;

/// Addresses per pod and direction that are always allowed (the pod itself).
pub const MAX_SELF: usize = 4;
pub const MAX_GUARD4: usize = 4;
pub const MAX_GUARD6: usize = 8;
/// Tiers per pod and direction (the classifier's `MAX_TIERS`).
pub const MAX_TIERS: usize = 4;

/// Which policy a pod gets in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtxRef {
    /// Not isolated: everything passes (and is remembered for replies).
    Open,
    /// Everything dropped, with the reason.
    FailClosed(String),
    /// Judged by these contexts in order (keys of [`Translation::contexts`]), then the
    /// default: accept when `accept_default`, else drop.
    Tiers {
        ctxs: Vec<String>,
        accept_default: bool,
    },
}

/// One pod's entry, keyed by its host-side interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub pod: String,
    /// [ingress, egress], the classifier's DIR_INGRESS = 0, DIR_EGRESS = 1.
    pub ctx: [CtxRef; 2],
    /// Peer addresses always allowed, per direction (the pod reaching itself).
    pub self_addrs: [Vec<IpAddr>; 2],
    pub guard: Option<Guard>,
}

/// Anti-spoofing (the nftables dataplane's guard chains: `table bridge sluice` when bridged,
/// `base_guard` of the inet table when routed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    /// The guard chain could not be read: drop everything the pod sends.
    pub drop_all: bool,
    pub mac: Option<[u8; 6]>,
    /// Some(list): IPv4 sources must be in the list (an empty list drops all IPv4).
    pub v4: Option<Vec<Ipv4Net>>,
    pub arp: Option<Ipv4Addr>,
    pub v6: Option<Vec<Ipv6Net>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// Host-side interface -> pod entry.
    pub pods: BTreeMap<String, PodEntry>,
    /// Context key (direction + rulebook, see the module doc) -> contents.
    pub contexts: BTreeMap<String, Context>,
    /// Pods that fail closed because of this translator (not because of the compiler).
    pub warnings: Vec<String>,
}

const DIRS: [(usize, &str); 2] = [(0, "ingress"), (1, "egress")];

pub fn translate(rs: &NodeRuleset) -> Translation {
    let d = &rs.decisions;
    let mut out = Translation::default();
    // The anti-spoofing guard per interface; should two pods claim one interface, the one
    // whose guard chain name sorts last wins, as in nftables' guard_dispatch map.
    let mut by_guard: Vec<(String, &str, &AntiSpoof)> = d
        .pods
        .iter()
        .map(|p| {
            let chain = names::guard_chain(&p.pod.namespace, &p.pod.name);
            (chain, p.iface.as_str(), &p.anti_spoof)
        })
        .collect();
    by_guard.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let guards: BTreeMap<&str, Result<Guard, String>> = by_guard
        .into_iter()
        .map(|(_, iface, g)| (iface, guard(g)))
        .collect();
    // (direction, rulebook) -> its context, built once however many pods use it.
    let mut built: BTreeMap<(usize, String), Result<Context, String>> = BTreeMap::new();
    for pod in &d.pods {
        let pod_name = pod.pod.to_string();
        let mut entry = PodEntry {
            pod: pod_name.clone(),
            ctx: [CtxRef::Open, CtxRef::Open],
            self_addrs: [vec![], vec![]],
            guard: None,
        };
        for ((i, dname), (dir, dd)) in DIRS.into_iter().zip(pod.dirs()) {
            entry.ctx[i] = match &dd.isolation {
                Isolation::Open => CtxRef::Open,
                Isolation::FailClosed { reason, .. } => CtxRef::FailClosed(reason.clone()),
                Isolation::Isolated { .. } => {
                    let chain = names::pod_chain(&pod.pod.namespace, &pod.pod.name, dname);
                    if dd.default == Action::Continue {
                        fail(
                            &mut out,
                            &pod_name,
                            dname,
                            format!("{chain}: default Continue"),
                        )
                    } else if dd.accept_peers.len() > MAX_SELF {
                        fail(
                            &mut out,
                            &pod_name,
                            dname,
                            format!("{chain}: more than {MAX_SELF} own addresses"),
                        )
                    } else if dd.tiers.len() > MAX_TIERS {
                        fail(
                            &mut out,
                            &pod_name,
                            dname,
                            format!(
                                "{chain}: {} tiers, the classifier holds {MAX_TIERS}",
                                dd.tiers.len()
                            ),
                        )
                    } else {
                        // Monotone: only accepting tiers before a dropping default.
                        let monotone = dd.default == Action::Drop
                            && dd.tiers.iter().all(|t| context::accept_only(d, t));
                        let mut ctxs = Vec::new();
                        let mut error = None;
                        for name in &dd.tiers {
                            let tier = built
                                .entry((i, name.clone()))
                                .or_insert_with(|| context::context(d, name, dir));
                            match tier {
                                Ok(c) => {
                                    let key = if monotone {
                                        format!("{dname}:{name}")
                                    } else {
                                        format!("{dname}:{name}#{:016x}", c.digest())
                                    };
                                    out.contexts.entry(key.clone()).or_insert_with(|| c.clone());
                                    ctxs.push(key);
                                }
                                Err(e) => {
                                    error = Some(e.clone());
                                    break;
                                }
                            }
                        }
                        match error {
                            Some(e) => fail(&mut out, &pod_name, dname, e),
                            None => {
                                entry.self_addrs[i] = dd.accept_peers.clone();
                                CtxRef::Tiers {
                                    ctxs,
                                    accept_default: dd.default == Action::Accept,
                                }
                            }
                        }
                    }
                }
            };
        }
        if let Some(g) = guards.get(pod.iface.as_str()) {
            entry.guard = Some(match g {
                Ok(g) => g.clone(),
                Err(e) => {
                    out.warnings.push(format!(
                        "{pod_name}: anti-spoofing guard not expressible in eBPF ({e}): dropping everything it sends"
                    ));
                    Guard {
                        drop_all: true,
                        ..Guard::default()
                    }
                }
            });
        }
        out.pods.insert(pod.iface.clone(), entry);
    }
    out
}

fn fail(out: &mut Translation, pod: &str, dir: &str, reason: String) -> CtxRef {
    let msg = format!("{pod} {dir}: not expressible in eBPF ({reason}): failing closed");
    out.warnings.push(msg.clone());
    CtxRef::FailClosed(msg)
}

fn guard(a: &AntiSpoof) -> Result<Guard, String> {
    let mut g = Guard::default();
    if let Some(mac) = &a.mac {
        g.mac = Some(parse_mac(mac)?);
    }
    let v4: Vec<Ipv4Net> =
        a.v4.iter()
            .filter_map(|a| match a {
                IpNet::V4(n) => Some(n.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
    if v4.len() != a.v4.len() || v4.len() > MAX_GUARD4 {
        return Err(format!("{} IPv4 sources", a.v4.len()));
    }
    g.v4 = Some(v4);
    g.arp = match a.arp {
        Some(IpAddr::V4(ip)) => Some(ip),
        Some(IpAddr::V6(ip)) => return Err(format!("ARP sender {ip}")),
        None => None,
    };
    let v6: Vec<Ipv6Net> =
        a.v6.iter()
            .filter_map(|a| match a {
                IpNet::V6(n) => Some(n.trunc()),
                IpNet::V4(_) => None,
            })
            .collect();
    if v6.len() != a.v6.len() || v6.len() > MAX_GUARD6 {
        return Err(format!("{} IPv6 sources", a.v6.len()));
    }
    g.v6 = Some(v6);
    Ok(g)
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err(format!("bad MAC {s}"));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s}"))?;
    }
    Ok(mac)
}
