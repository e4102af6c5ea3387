//! [`NodeRuleset`]'s per-pod decisions ([`crate::compile::decision`]) -> what the classifier's
//! maps must hold. Pure.
//!
//! Each pod direction's tiers become a *context*: rule bits that a packet must find both on
//! its peer side and on its port side (see classifier.bpf.c); every distinct port clause is a
//! bit, its peers the union of the clauses' peer sets. What the classifier cannot express
//! (a clause that drops or continues, more bits or own addresses than it holds) is an error
//! for the pods that use it, and those pods fail closed: the eBPF dataplane never allows what
//! it cannot encode.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::compile::decision::{
    Action, AntiSpoof, Isolation, NodeDecisions, PeerMatch, PeerMembers, PeerSet, PortMatch,
};
use crate::compile::ir::NodeRuleset;
use crate::compile::names;
use crate::policy::model::Direction;
use crate::policy::Protocol;

/// Rule bits per context (the classifier's `BITS_WORDS` 64-bit words).
pub const BITS: usize = 256;
pub const BITS_WORDS: usize = BITS / 64;
/// Addresses per pod and direction that are always allowed (the pod itself).
pub const MAX_SELF: usize = 4;
pub const MAX_GUARD4: usize = 4;
pub const MAX_GUARD6: usize = 8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bits(pub [u64; BITS_WORDS]);

impl Bits {
    pub fn bit(k: usize) -> Bits {
        let mut b = Bits::default();
        b.0[k / 64] |= 1 << (k % 64);
        b
    }
    pub fn or(&mut self, o: &Bits) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a |= b;
        }
    }
    pub fn and(&self, o: &Bits) -> Bits {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0) {
            *a &= b;
        }
        r
    }
    pub fn meets(&self, o: &Bits) -> bool {
        self.0.iter().zip(o.0).any(|(a, b)| a & b != 0)
    }
}

/// Which policy a pod gets in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtxRef {
    /// Not isolated: everything passes (and is remembered for replies).
    Open,
    /// Everything dropped, with the reason.
    FailClosed(String),
    /// Filtered by the context with this key (see [`Translation::contexts`]).
    Ctx(String),
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

/// The maps' contents for one context. Prefix values are already closed under containment
/// (an LPM trie answers only the longest match, so a /32 inside a /16 carries both bits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub any_peer: Bits,
    pub any_port: Bits,
    pub peers: BTreeMap<IpNet, Bits>,
    /// (protocol number, first port, prefix length over the 16 port bits) -> bits.
    pub ports: BTreeMap<(u8, u16, u8), Bits>,
    /// (destination address, protocol number, port) -> bits: named ports resolved per pod.
    pub named: BTreeMap<(IpAddr, u8, u16), Bits>,
    /// What each bit means, for `status` and for people reading a dump.
    pub bit_names: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// Host-side interface -> pod entry.
    pub pods: BTreeMap<String, PodEntry>,
    /// Context key (direction + the policy chains it jumps to) -> contents.
    pub contexts: BTreeMap<String, Context>,
    /// Pods that fail closed because of this translator (not because of the compiler).
    pub warnings: Vec<String>,
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
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
    let mut failed_contexts: BTreeMap<String, String> = BTreeMap::new();
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
                    if dd.default != Action::Drop {
                        fail(
                            &mut out,
                            &pod_name,
                            dname,
                            format!("{chain} does not end in drop"),
                        )
                    } else if dd.accept_peers.len() > MAX_SELF {
                        fail(
                            &mut out,
                            &pod_name,
                            dname,
                            format!("{chain}: more than {MAX_SELF} own addresses"),
                        )
                    } else {
                        entry.self_addrs[i] = dd.accept_peers.clone();
                        let key = format!("{dname}:{}", dd.tiers.join(","));
                        if !out.contexts.contains_key(&key) && !failed_contexts.contains_key(&key) {
                            match context(d, &dd.tiers, dir) {
                                Ok(c) => {
                                    out.contexts.insert(key.clone(), c);
                                }
                                Err(e) => {
                                    failed_contexts.insert(key.clone(), e);
                                }
                            }
                        }
                        match failed_contexts.get(&key) {
                            Some(e) => fail(&mut out, &pod_name, dname, e.clone()),
                            None => CtxRef::Ctx(key),
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

/// What a clause asks of the port side. Clauses with equal port clauses share one bit (their
/// peers are a union), which keeps the bit count at the number of distinct port clauses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortCond {
    Any,
    Proto(u8),
    Ranges(u8, Vec<(u16, u16)>),
    Named(String),
}

/// The context of a pod direction's tiers. The classifier accepts on any common bit and
/// otherwise drops, so only Accept clauses are expressible (today's NetworkPolicy tiers).
fn context(d: &NodeDecisions, tiers: &[String], dir: Direction) -> Result<Context, String> {
    // port clause -> (peer sets, any peer)
    let mut groups: BTreeMap<PortCond, (BTreeSet<String>, bool)> = BTreeMap::new();
    for name in tiers {
        let book = d
            .rulebooks
            .get(name)
            .ok_or_else(|| format!("rulebook {name} is missing"))?;
        if book.direction != dir {
            return Err(format!("rulebook {name} is for {}", book.direction));
        }
        for c in &book.clauses {
            if c.action != Action::Accept {
                return Err(format!(
                    "{name}: {:?} clause {} ({})",
                    c.action,
                    describe(&c.peer, &c.port),
                    c.label
                ));
            }
            let port = match &c.port {
                PortMatch::Any => PortCond::Any,
                PortMatch::Proto(p) => PortCond::Proto(proto_number(*p)),
                PortMatch::Ranges(p, rs) => PortCond::Ranges(proto_number(*p), rs.clone()),
                PortMatch::Named(set) => {
                    if !d.named_ports.contains_key(set) {
                        return Err(format!("{name}: named-port set {set} is missing"));
                    }
                    PortCond::Named(set.clone())
                }
            };
            let g = groups.entry(port).or_default();
            match &c.peer {
                PeerMatch::Any => g.1 = true,
                PeerMatch::Set(set) => {
                    if !d.peer_sets.contains_key(set) {
                        return Err(format!("{name}: peer set {set} is missing"));
                    }
                    g.0.insert(set.clone());
                }
            }
        }
    }
    if groups.len() > BITS {
        return Err(format!(
            "{} distinct port clauses, the classifier holds {BITS}",
            groups.len()
        ));
    }
    let mut c = Context::default();
    for (k, (port, (peer_sets, any_peer))) in groups.into_iter().enumerate() {
        let bit = Bits::bit(k);
        c.bit_names.push(format!(
            "{} from {}",
            match &port {
                PortCond::Any => "any port".to_string(),
                PortCond::Proto(p) => format!("proto {p}"),
                PortCond::Ranges(p, r) => format!("proto {p} ports {r:?}"),
                PortCond::Named(s) => format!("named ports @{s}"),
            },
            if any_peer {
                "anyone".to_string()
            } else {
                peer_sets
                    .iter()
                    .map(|s| format!("@{s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        ));
        if any_peer {
            c.any_peer.or(&bit);
        } else {
            for s in &peer_sets {
                for net in peer_prefixes(&d.peer_sets[s]) {
                    c.peers.entry(net).or_default().or(&bit);
                }
            }
        }
        match port {
            PortCond::Any => c.any_port.or(&bit),
            PortCond::Proto(p) => c.ports.entry((p, 0, 0)).or_default().or(&bit),
            PortCond::Ranges(p, ranges) => {
                for (lo, hi) in ranges {
                    for (first, plen) in port_prefixes(lo, hi) {
                        c.ports.entry((p, first, plen)).or_default().or(&bit);
                    }
                }
            }
            PortCond::Named(set) => {
                for (addr, proto, port) in &d.named_ports[&set].entries {
                    c.named
                        .entry((*addr, proto_number(*proto), *port))
                        .or_default()
                        .or(&bit);
                }
            }
        }
    }
    close_peers(&mut c.peers);
    close_ports(&mut c.ports);
    Ok(c)
}

fn peer_prefixes(set: &PeerSet) -> Vec<IpNet> {
    match &set.members {
        PeerMembers::Addrs(a) => a.iter().map(|a| IpNet::from(*a)).collect(),
        PeerMembers::Prefixes(p) => p.iter().map(|p| p.trunc()).collect(),
    }
}

/// An inclusive port range as prefixes over the 16 port bits: (first port, prefix length).
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

/// Every prefix also carries the bits of the prefixes containing it (LPM answers one entry).
fn close_peers(peers: &mut BTreeMap<IpNet, Bits>) {
    let snapshot = peers.clone();
    for (net, bits) in peers.iter_mut() {
        let mut up = *net;
        while let Some(s) = up.supernet() {
            if let Some(b) = snapshot.get(&s) {
                bits.or(b);
            }
            up = s;
        }
    }
}

fn close_ports(ports: &mut BTreeMap<(u8, u16, u8), Bits>) {
    let snapshot = ports.clone();
    for (&(proto, first, plen), bits) in ports.iter_mut() {
        for l in 0..plen {
            let mask = if l == 0 { 0 } else { u16::MAX << (16 - l) };
            if let Some(b) = snapshot.get(&(proto, first & mask, l)) {
                bits.or(b);
            }
        }
    }
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

fn describe(peer: &PeerMatch, port: &PortMatch) -> String {
    format!("{peer:?} x {port:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifier only accepts on a common bit: a tier that drops or continues cannot be
    /// encoded yet, and its pods fail closed rather than open.
    #[test]
    fn clauses_other_than_accept_fail_closed() {
        use crate::compile::{compile, Attach, CompileInput};
        let mut b = crate::policy::objects::ClusterBuilder::new();
        b.add_text(
            "test",
            "kind: Pod\napiVersion: v1\nmetadata: {name: a, namespace: x}\nspec: {nodeName: node-0, containers: [{name: c}]}\nstatus: {podIP: 10.244.0.2}\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n",
        );
        let (cluster, _) = b.build();
        let mut rs = compile(&CompileInput {
            cluster: &cluster,
            node: "node-0",
            attach: Attach::Routed,
            attachments: &BTreeMap::new(),
        });
        let t = translate(&rs);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        let iface = rs.decisions.pods[0].iface.clone();
        assert!(matches!(t.pods[&iface].ctx[0], CtxRef::Ctx(_)));
        for book in rs.decisions.rulebooks.values_mut() {
            book.clauses[0].action = Action::Continue;
        }
        let t = translate(&rs);
        assert!(
            matches!(&t.pods[&iface].ctx[0], CtxRef::FailClosed(m) if m.contains("Continue")),
            "{:?}",
            t.pods[&iface]
        );
        assert_eq!(t.pods[&iface].ctx[1], CtxRef::Open);
        assert_eq!(t.warnings.len(), 1);
    }

    #[test]
    fn port_ranges_become_prefixes() {
        assert_eq!(port_prefixes(80, 80), [(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), [(0, 0)]);
        assert_eq!(port_prefixes(8000, 8003), [(8000, 14)]);
        assert_eq!(port_prefixes(1, 65535).len(), 16);
        // Every port of a range is covered exactly once.
        for (lo, hi) in [(1u16, 1000u16), (1023, 1025), (65534, 65535), (7, 7)] {
            let ps = port_prefixes(lo, hi);
            let covered: u32 = ps.iter().map(|(_, l)| 1u32 << (16 - l)).sum();
            assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1, "{lo}-{hi}");
            for (first, l) in ps {
                let size = 1u32 << (16 - l);
                assert_eq!(u32::from(first) % size, 0);
                assert!(u32::from(first) >= u32::from(lo));
                assert!(u32::from(first) + size - 1 <= u32::from(hi));
            }
        }
    }

    #[test]
    fn nested_prefixes_carry_outer_bits() {
        let mut m = BTreeMap::new();
        m.insert("10.0.0.0/8".parse().unwrap(), Bits::bit(0));
        m.insert("10.1.0.0/16".parse().unwrap(), Bits::bit(1));
        m.insert("10.1.2.3/32".parse().unwrap(), Bits::bit(2));
        close_peers(&mut m);
        let b = m[&"10.1.2.3/32".parse::<IpNet>().unwrap()];
        assert!(b.meets(&Bits::bit(0)) && b.meets(&Bits::bit(1)) && b.meets(&Bits::bit(2)));
        assert!(!m[&"10.0.0.0/8".parse::<IpNet>().unwrap()].meets(&Bits::bit(1)));
    }
}
