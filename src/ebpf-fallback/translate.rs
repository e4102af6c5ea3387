//! [`NodeRuleset`] -> what the classifier's maps must hold. Pure.
//!
//! The IR speaks nftables (chains of rules over sets); this reads it back as the few shapes
//! the compiler emits and turns each pod's policy chains into a *context*: rule bits that a
//! packet must find both on its peer side and on its port side (see classifier.bpf.c). A shape
//! this translator does not know is an error for the pods that use it, and those pods fail
//! closed: the eBPF dataplane never allows what it cannot read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::compile::ir::{
    Chain, Element, Family, Isolation, Match, NodeRuleset, Rule, Set, SetType, Side, Table,
    TableFamily, Verdict,
};
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

const DIRS: [(usize, &str, Side); 2] = [(0, "ingress", Side::Src), (1, "egress", Side::Dst)];

pub fn translate(rs: &NodeRuleset) -> Translation {
    let mut out = Translation::default();
    let empty = Table::new(TableFamily::Inet, crate::compile::TABLE);
    let inet = rs.table(TableFamily::Inet).unwrap_or(&empty);
    // The anti-spoofing guard: `table bridge sluice` when bridged, the inet table when routed.
    let guards = guards_by_iface(rs.table(TableFamily::Bridge).unwrap_or(inet));
    let mut failed_contexts: BTreeMap<String, String> = BTreeMap::new();
    for pod in &rs.pods {
        let Some(iface) = pod.iface.clone() else {
            out.warnings.push(format!(
                "{}: no host interface, not enforced by eBPF",
                pod.pod
            ));
            continue;
        };
        let mut entry = PodEntry {
            pod: pod.pod.clone(),
            ctx: [CtxRef::Open, CtxRef::Open],
            self_addrs: [vec![], vec![]],
            guard: None,
        };
        for (d, dname, peer_side) in DIRS {
            let iso = if d == 0 { &pod.ingress } else { &pod.egress };
            entry.ctx[d] = match iso {
                Isolation::Open => CtxRef::Open,
                Isolation::FailedClosed { reason, .. } => CtxRef::FailClosed(reason.clone()),
                Isolation::Isolated { chain, .. } => match pod_chain(inet, chain, peer_side) {
                    Err(e) => fail(&mut out, &pod.pod, dname, e),
                    Ok((selfs, jumps)) => {
                        entry.self_addrs[d] = selfs;
                        let key = format!("{dname}:{}", jumps.join(","));
                        if !out.contexts.contains_key(&key) && !failed_contexts.contains_key(&key) {
                            match context(inet, &jumps, peer_side) {
                                Ok(c) => {
                                    out.contexts.insert(key.clone(), c);
                                }
                                Err(e) => {
                                    failed_contexts.insert(key.clone(), e);
                                }
                            }
                        }
                        match failed_contexts.get(&key) {
                            Some(e) => fail(&mut out, &pod.pod, dname, e.clone()),
                            None => CtxRef::Ctx(key),
                        }
                    }
                },
            };
        }
        if let Some(g) = guards.get(&iface) {
            entry.guard = Some(match g {
                Ok(g) => g.clone(),
                Err(e) => {
                    out.warnings.push(format!(
                        "{}: anti-spoofing guard not expressible in eBPF ({e}): dropping everything it sends",
                        pod.pod
                    ));
                    Guard {
                        drop_all: true,
                        ..Guard::default()
                    }
                }
            });
        }
        out.pods.insert(iface, entry);
    }
    out
}

fn fail(out: &mut Translation, pod: &str, dir: &str, reason: String) -> CtxRef {
    let msg = format!("{pod} {dir}: not expressible in eBPF ({reason}): failing closed");
    out.warnings.push(msg.clone());
    CtxRef::FailClosed(msg)
}

/// A pod chain: `ct state invalid drop`, accepts of the pod's own addresses, jumps to policy
/// chains, a final drop. Returns (own addresses, policy chains).
fn pod_chain(
    inet: &Table,
    name: &str,
    peer_side: Side,
) -> Result<(Vec<IpAddr>, Vec<String>), String> {
    let chain = inet
        .chains
        .get(name)
        .ok_or_else(|| format!("pod chain {name} is missing"))?;
    let mut selfs = Vec::new();
    let mut jumps = Vec::new();
    let n = chain.rules.len();
    for (i, r) in chain.rules.iter().enumerate() {
        match (r.matches.as_slice(), &r.verdict) {
            // Our flow table stands for conntrack and has no "invalid": such packets are
            // judged by the policy like new ones (docs/ebpf.md).
            ([Match::CtState(states)], Verdict::Drop) if states == &["invalid"] => {}
            ([Match::AddrIs { side, addr }], Verdict::Accept) if *side == peer_side => {
                selfs.push(*addr)
            }
            ([], Verdict::Jump(target)) => jumps.push(target.clone()),
            ([], Verdict::Drop) if i + 1 == n => {}
            _ => return Err(format!("{name}: unexpected rule {}", describe(r))),
        }
    }
    if chain.rules.last().map(|r| &r.verdict) != Some(&Verdict::Drop) {
        return Err(format!("{name} does not end in drop"));
    }
    if selfs.len() > MAX_SELF {
        return Err(format!("{name}: more than {MAX_SELF} own addresses"));
    }
    Ok((selfs, jumps))
}

/// What a rule asks of the port side. Rules with equal port clauses share one bit (their peers
/// are a union), which keeps the bit count at the number of distinct port clauses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortCond {
    Any,
    Proto(u8),
    Ranges(u8, Vec<(u16, u16)>),
    Named(String),
}

fn context(inet: &Table, jumps: &[String], peer_side: Side) -> Result<Context, String> {
    // port clause -> (peer sets, any peer)
    let mut groups: BTreeMap<PortCond, (BTreeSet<String>, bool)> = BTreeMap::new();
    for chain_name in jumps {
        let chain: &Chain = inet
            .chains
            .get(chain_name)
            .ok_or_else(|| format!("policy chain {chain_name} is missing"))?;
        for r in &chain.rules {
            if r.verdict != Verdict::Accept {
                return Err(format!(
                    "{chain_name}: unexpected verdict in {}",
                    describe(r)
                ));
            }
            let (peer, port) = split_rule(inet, chain_name, r, peer_side)?;
            let g = groups.entry(port).or_default();
            match peer {
                None => g.1 = true,
                Some(set) => {
                    g.0.insert(set);
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
                for net in peer_prefixes(&inet.sets[s]) {
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
                for e in &inet.sets[&set].elements {
                    if let Element::NamedPort(addr, proto, port) = e {
                        c.named
                            .entry((*addr, proto_number(*proto), *port))
                            .or_default()
                            .or(&bit);
                    }
                }
            }
        }
    }
    close_peers(&mut c.peers);
    close_ports(&mut c.ports);
    Ok(c)
}

/// A policy-chain rule as (peer set or anyone, port clause).
fn split_rule(
    inet: &Table,
    chain: &str,
    r: &Rule,
    peer_side: Side,
) -> Result<(Option<String>, PortCond), String> {
    let bad = || format!("{chain}: unexpected rule {}", describe(r));
    let mut peer = None;
    let mut proto = None;
    let mut ranges = None;
    let mut named = None;
    for m in &r.matches {
        match m {
            Match::AddrInSet { family, side, set } if *side == peer_side && peer.is_none() => {
                match inet.sets.get(set).map(|s| s.ty) {
                    Some(SetType::Addr(f) | SetType::Prefixes(f)) if f == *family => {}
                    _ => return Err(format!("{chain}: set {set} is not an address set")),
                }
                peer = Some(set.clone());
            }
            Match::L4Proto(p) if proto.is_none() => proto = Some(proto_number(*p)),
            Match::DportIn(rs) if ranges.is_none() => ranges = Some(rs.clone()),
            Match::NamedPortInSet { family, set } if named.is_none() => {
                match inet.sets.get(set).map(|s| s.ty) {
                    Some(SetType::NamedPort(f)) if f == *family => {}
                    _ => return Err(format!("{chain}: set {set} is not a named-port set")),
                }
                named = Some(set.clone());
            }
            _ => return Err(bad()),
        }
    }
    let port = match (proto, ranges, named) {
        (None, None, None) => PortCond::Any,
        (Some(p), None, None) => PortCond::Proto(p),
        (Some(p), Some(rs), None) => {
            if rs.iter().any(|(lo, hi)| lo > hi) {
                return Err(bad());
            }
            PortCond::Ranges(p, rs)
        }
        (None, None, Some(set)) => PortCond::Named(set),
        _ => return Err(bad()),
    };
    Ok((peer, port))
}

fn peer_prefixes(set: &Set) -> Vec<IpNet> {
    set.elements
        .iter()
        .filter_map(|e| match e {
            Element::Addr(a) => Some(IpNet::from(*a)),
            Element::Prefix(p) => Some(p.trunc()),
            _ => None,
        })
        .collect()
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

fn guards_by_iface(table: &Table) -> BTreeMap<String, Result<Guard, String>> {
    let mut out = BTreeMap::new();
    let Some(dispatch) = table.sets.get("guard_dispatch") else {
        return out;
    };
    for e in &dispatch.elements {
        if let Element::IfnameJump(iface, chain) = e {
            let g = match table.chains.get(chain) {
                Some(c) => guard(c),
                None => Err(format!("guard chain {chain} is missing")),
            };
            out.insert(iface.clone(), g);
        }
    }
    out
}

fn guard(chain: &Chain) -> Result<Guard, String> {
    let mut g = Guard::default();
    for r in &chain.rules {
        if r.verdict != Verdict::Drop {
            return Err(format!("unexpected rule {}", describe(r)));
        }
        match r.matches.as_slice() {
            [Match::EtherSaddrNot(mac)] => g.mac = Some(parse_mac(mac)?),
            [Match::EtherProto("ip")] => g.v4 = Some(vec![]),
            [Match::EtherProto("ip"), Match::AddrNotIn {
                family: Family::V4,
                side: Side::Src,
                addrs,
            }] => {
                let v: Vec<Ipv4Net> = addrs
                    .iter()
                    .filter_map(|a| match a {
                        IpNet::V4(n) => Some(n.trunc()),
                        IpNet::V6(_) => None,
                    })
                    .collect();
                if v.len() != addrs.len() || v.len() > MAX_GUARD4 {
                    return Err(format!("{} IPv4 sources", addrs.len()));
                }
                g.v4 = Some(v);
            }
            [Match::EtherProto("arp"), Match::ArpSaddrIpNot(IpAddr::V4(a))] => g.arp = Some(*a),
            [Match::EtherProto("ip6"), Match::AddrNotIn {
                family: Family::V6,
                side: Side::Src,
                addrs,
            }] => {
                let v: Vec<Ipv6Net> = addrs
                    .iter()
                    .filter_map(|a| match a {
                        IpNet::V6(n) => Some(n.trunc()),
                        IpNet::V4(_) => None,
                    })
                    .collect();
                if v.len() != addrs.len() || v.len() > MAX_GUARD6 {
                    return Err(format!("{} IPv6 sources", addrs.len()));
                }
                g.v6 = Some(v);
            }
            _ => return Err(format!("unexpected rule {}", describe(r))),
        }
    }
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

fn describe(r: &Rule) -> String {
    format!("{:?} -> {:?}", r.matches, r.verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

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
