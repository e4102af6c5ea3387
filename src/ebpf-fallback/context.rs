//! One rulebook (a tier) -> the classifier's *context*: clause bits on the peer side and on
//! the port side, and which bits drop or pass (Continue). Pure.
//!
//! A clause matches a packet when its bit is in both the peer bits and the port bits; the
//! first matching clause decides, and the classifier finds it as the lowest common bit. So
//! bits follow clause order, with one refinement that keeps NetworkPolicy's encoding as it
//! was: clauses are cut into *runs* of equal action (within a run, which clause matches first
//! does not change the verdict), and inside a run every distinct port clause is one bit whose
//! peers are the union of the run's clauses with that port clause. An all-accept rulebook
//! (every NetworkPolicy rulebook) is a single run: one bit per distinct port clause, no drop
//! or pass bits.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::compile::decision::{Action, NodeDecisions, PeerMatch, PeerMembers, PeerSet, PortMatch};
use crate::policy::model::Direction;
use crate::policy::Protocol;

/// Clause bits per context (the classifier's `BITS_WORDS` 64-bit words).
pub const BITS: usize = 256;
pub const BITS_WORDS: usize = BITS / 64;

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
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    /// The lowest set bit, as the classifier's `m & -m` finds it.
    pub fn lowest(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }
}

/// The maps' contents for one context. Prefix values are already closed under containment
/// (an LPM trie answers only the longest match, so a /32 inside a /16 carries both bits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Context {
    pub any_peer: Bits,
    pub any_port: Bits,
    pub peers: BTreeMap<IpNet, Bits>,
    /// (protocol number, first port, prefix length over the 16 port bits) -> bits.
    pub ports: BTreeMap<(u8, u16, u8), Bits>,
    /// (destination address, protocol number, port) -> bits: named ports resolved per pod.
    pub named: BTreeMap<(IpAddr, u8, u16), Bits>,
    /// Bits of clauses that drop; of clauses that pass to the next tier (Continue). The other
    /// bits accept.
    pub drop: Bits,
    pub pass: Bits,
    /// What each bit means, for `status` and for people reading a dump.
    pub bit_names: Vec<String>,
}

impl Context {
    /// What this tier says about a packet with these peer and port bits, as the classifier
    /// decides it: the action of the lowest common bit, None when no clause matches.
    pub fn verdict(&self, peer: &Bits, port: &Bits) -> Option<Action> {
        let first = Bits::bit(peer.and(port).lowest()?);
        Some(if first.meets(&self.drop) {
            Action::Drop
        } else if first.meets(&self.pass) {
            Action::Continue
        } else {
            Action::Accept
        })
    }

    /// A digest of everything in the context, stable across runs (FNV-1a), for keys of
    /// contexts that must never be patched in place (see `translate`).
    pub fn digest(&self) -> u64 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        self.hash(&mut h);
        h.0
    }
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// What a clause asks of the port side. Clauses of one run with equal port clauses share one
/// bit (their peers are a union), which keeps the bit count at the number of distinct port
/// clauses per run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PortCond {
    Any,
    Proto(u8),
    Ranges(u8, Vec<(u16, u16)>),
    Named(String),
}

/// port clause -> (peer sets, any peer)
type Groups = BTreeMap<PortCond, (BTreeSet<String>, bool)>;

/// Whether a rulebook only accepts (NetworkPolicy's): its context can be patched in place.
pub fn accept_only(d: &NodeDecisions, name: &str) -> bool {
    d.rulebooks
        .get(name)
        .is_some_and(|b| b.clauses.iter().all(|c| c.action == Action::Accept))
}

/// The context of one rulebook, or why it cannot be encoded.
pub fn context(d: &NodeDecisions, name: &str, dir: Direction) -> Result<Context, String> {
    let book = d
        .rulebooks
        .get(name)
        .ok_or_else(|| format!("rulebook {name} is missing"))?;
    if book.direction != dir {
        return Err(format!("rulebook {name} is for {}", book.direction));
    }
    let mut runs: Vec<(Action, Groups)> = Vec::new();
    for c in &book.clauses {
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
        if runs.last().is_none_or(|(a, _)| *a != c.action) {
            runs.push((c.action, Groups::new()));
        }
        let g = runs.last_mut().expect("pushed").1.entry(port).or_default();
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
    let needed: usize = runs.iter().map(|(_, g)| g.len()).sum();
    if needed > BITS {
        return Err(format!(
            "rulebook {name} needs {needed} clause bits, the classifier holds {BITS}"
        ));
    }
    let mut c = Context::default();
    let mut k = 0;
    for (action, groups) in runs {
        for (port, (peer_sets, any_peer)) in groups {
            let bit = Bits::bit(k);
            k += 1;
            match action {
                Action::Accept => {}
                Action::Drop => c.drop.or(&bit),
                Action::Continue => c.pass.or(&bit),
            }
            c.bit_names.push(format!(
                "{action:?} {} from {}",
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

    #[test]
    fn lowest_bit_across_words() {
        assert_eq!(Bits::default().lowest(), None);
        let mut b = Bits::bit(200);
        b.or(&Bits::bit(70));
        assert_eq!(b.lowest(), Some(70));
        assert_eq!(Bits::bit(0).lowest(), Some(0));
        assert_eq!(Bits::bit(255).lowest(), Some(255));
    }
}
