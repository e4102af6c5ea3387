//! The classifier's map layouts, byte for byte (mirrors classifier.bpf.c; the sizes are
//! checked against the loaded maps, so a drift between the two fails loudly at load).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::translate::{
    Bits, Context, Guard, BITS_WORDS, MAX_GUARD4, MAX_GUARD6, MAX_SELF, MAX_TIERS,
};

/// The maps, by the names the C program gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapId {
    Pods,
    Ctxs,
    Peers4,
    Peers6,
    Ports,
    Named,
    /// Destinations the node's NAT rewrites (Service ranges).
    Nat,
}

impl MapId {
    pub const ALL: [MapId; 7] = [
        MapId::Pods,
        MapId::Ctxs,
        MapId::Peers4,
        MapId::Peers6,
        MapId::Ports,
        MapId::Named,
        MapId::Nat,
    ];
    /// Maps whose values are rule bits (updated in two phases, see `entries`).
    pub const BITS_MAPS: [MapId; 5] = [
        MapId::Ctxs,
        MapId::Peers4,
        MapId::Peers6,
        MapId::Ports,
        MapId::Named,
    ];
    pub fn name(self) -> &'static str {
        match self {
            MapId::Pods => "sluice_pods",
            MapId::Ctxs => "sluice_ctxs",
            MapId::Peers4 => "sluice_peers4",
            MapId::Peers6 => "sluice_peers6",
            MapId::Ports => "sluice_ports",
            MapId::Named => "sluice_named",
            MapId::Nat => "sluice_nat",
        }
    }
    pub fn key_size(self) -> usize {
        match self {
            MapId::Pods | MapId::Ctxs => 4,
            MapId::Peers4 | MapId::Ports => 12,
            MapId::Peers6 | MapId::Named => 24,
            MapId::Nat => 20,
        }
    }
    pub fn value_size(self) -> usize {
        match self {
            MapId::Pods => POD_VAL_SIZE,
            MapId::Ctxs => 4 * BITS_SIZE,
            MapId::Nat => 4,
            _ => BITS_SIZE,
        }
    }
    /// The context id a key belongs to (None for pods).
    pub fn ctx_of(self, key: &[u8]) -> Option<u32> {
        match self {
            MapId::Pods | MapId::Nat => None,
            MapId::Ctxs | MapId::Named => Some(u32::from_ne_bytes(key[0..4].try_into().ok()?)),
            MapId::Peers4 | MapId::Peers6 | MapId::Ports => {
                Some(u32::from_be_bytes(key[4..8].try_into().ok()?))
            }
        }
    }
}

pub const BITS_SIZE: usize = 8 * BITS_WORDS;
/// `struct dir_val`: MAX_TIERS ctx ids, state, ntiers, accept_default, pad.
pub const DIR_VAL_SIZE: usize = 4 * MAX_TIERS + 4;
pub const POD_VAL_SIZE: usize = 2 * DIR_VAL_SIZE + 340;
/// Other maps the loader checks (flows, fragments): key and value sizes.
pub const FLOW_KEY_SIZE: usize = 44;
pub const FLOW_VAL_SIZE: usize = 16;
pub const FRAG_KEY_SIZE: usize = 44;
pub const PENDING_KEY_SIZE: usize = 8;

const STATE_OPEN: u8 = 0;
const STATE_TIERS: u8 = 1;
const STATE_FAIL_CLOSED: u8 = 2;

/// One pod direction as the classifier reads it (`struct dir_val`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirVal {
    Open,
    FailClosed,
    /// Context ids in tier order (at most MAX_TIERS), then the default.
    Tiers {
        ctxs: Vec<u32>,
        accept_default: bool,
    },
}

const GUARD_MAC: u32 = 1 << 0;
const GUARD_V4: u32 = 1 << 1;
const GUARD_ARP: u32 = 1 << 2;
const GUARD_V6: u32 = 1 << 3;
const GUARD_DROP: u32 = 1 << 4;

pub fn bits(b: &Bits) -> Vec<u8> {
    b.0.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// `struct ctx_val`: any_peer, any_port, drop, pass.
pub fn ctx_val(c: &Context) -> Vec<u8> {
    let mut v = bits(&c.any_peer);
    v.extend(bits(&c.any_port));
    v.extend(bits(&c.drop));
    v.extend(bits(&c.pass));
    v
}

pub fn ctx_key(ctx: u32) -> Vec<u8> {
    ctx.to_ne_bytes().to_vec()
}

/// IPv4 as ::ffff:a.b.c.d, as the classifier compares addresses.
pub fn addr16(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An LPM key of peers4/peers6 (which one follows the prefix's family).
pub fn peer_key(ctx: u32, net: &IpNet) -> (MapId, Vec<u8>) {
    let mut k = (32 + u32::from(net.prefix_len())).to_ne_bytes().to_vec();
    k.extend(ctx.to_be_bytes());
    match net.addr() {
        IpAddr::V4(a) => {
            k.extend(a.octets());
            (MapId::Peers4, k)
        }
        IpAddr::V6(a) => {
            k.extend(a.octets());
            (MapId::Peers6, k)
        }
    }
}

pub fn port_key(ctx: u32, proto: u8, first: u16, plen: u8) -> Vec<u8> {
    let mut k = (32 + 8 + u32::from(plen)).to_ne_bytes().to_vec();
    k.extend(ctx.to_be_bytes());
    k.push(proto);
    k.extend(first.to_be_bytes());
    k.push(0);
    k
}

pub fn named_key(ctx: u32, addr: &IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = ctx.to_ne_bytes().to_vec();
    k.push(proto);
    k.push(0);
    k.extend(port.to_ne_bytes());
    k.extend(addr16(addr));
    k
}

/// A Service range of `sluice_nat`: IPv4 as ::ffff:a.b.c.d/(96 + prefix).
pub fn nat_key(net: &IpNet) -> Vec<u8> {
    let plen = match net {
        IpNet::V4(n) => 96 + u32::from(n.prefix_len()),
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    let mut k = plen.to_ne_bytes().to_vec();
    k.extend(addr16(&net.network()));
    k
}

pub fn nat_val() -> Vec<u8> {
    1u32.to_ne_bytes().to_vec()
}

pub fn pod_key(ifindex: u32) -> Vec<u8> {
    ifindex.to_ne_bytes().to_vec()
}

/// `struct pod_val`.
pub fn pod_val(
    dirs: &[DirVal; 2],
    self_addrs: &[Vec<IpAddr>; 2],
    guard: Option<&Guard>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(POD_VAL_SIZE);
    for d in dirs {
        let (state, ctxs, accept_default) = match d {
            DirVal::Open => (STATE_OPEN, &[][..], false),
            // More tiers than the classifier holds cannot be encoded: fail closed.
            DirVal::Tiers { ctxs, .. } if ctxs.len() > MAX_TIERS => {
                (STATE_FAIL_CLOSED, &[][..], false)
            }
            DirVal::Tiers {
                ctxs,
                accept_default,
            } => (STATE_TIERS, &ctxs[..], *accept_default),
            DirVal::FailClosed => (STATE_FAIL_CLOSED, &[][..], false),
        };
        for i in 0..MAX_TIERS {
            v.extend(ctxs.get(i).copied().unwrap_or(0).to_ne_bytes());
        }
        v.extend([state, ctxs.len() as u8, u8::from(accept_default), 0]);
    }
    let mut flags = 0u32;
    if let Some(g) = guard {
        if g.drop_all {
            flags |= GUARD_DROP;
        }
        if g.mac.is_some() {
            flags |= GUARD_MAC;
        }
        if g.v4.is_some() {
            flags |= GUARD_V4;
        }
        if g.arp.is_some() {
            flags |= GUARD_ARP;
        }
        if g.v6.is_some() {
            flags |= GUARD_V6;
        }
    }
    v.extend(flags.to_ne_bytes());
    let g = guard.cloned().unwrap_or_default();
    let g4 = g.v4.clone().unwrap_or_default();
    let g6 = g.v6.clone().unwrap_or_default();
    v.push(self_addrs[0].len().min(MAX_SELF) as u8);
    v.push(self_addrs[1].len().min(MAX_SELF) as u8);
    v.push(g4.len().min(MAX_GUARD4) as u8);
    v.push(g6.len().min(MAX_GUARD6) as u8);
    for dir in self_addrs {
        for i in 0..MAX_SELF {
            v.extend(dir.get(i).map(addr16).unwrap_or([0; 16]));
        }
    }
    v.extend(g.mac.unwrap_or([0; 6]));
    v.extend([0u8; 2]);
    v.extend(g.arp.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
    for i in 0..MAX_GUARD4 {
        v.extend(g4.get(i).map(|n| n.addr().octets()).unwrap_or([0; 4]));
    }
    for i in 0..MAX_GUARD4 {
        v.extend(
            g4.get(i)
                .map(|n| u32::from(n.prefix_len()))
                .unwrap_or(0)
                .to_ne_bytes(),
        );
    }
    for i in 0..MAX_GUARD6 {
        let (a, l) = g6
            .get(i)
            .map(|n| (n.addr().octets(), u32::from(n.prefix_len())))
            .unwrap_or(([0; 16], 0));
        v.extend(a);
        v.extend(l.to_ne_bytes());
    }
    debug_assert_eq!(v.len(), POD_VAL_SIZE);
    v
}

/// The ctx ids a pod value refers to (its tiers, both directions).
pub fn pod_val_ctx(v: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for d in 0..2 {
        let dv = &v[d * DIR_VAL_SIZE..(d + 1) * DIR_VAL_SIZE];
        let (state, n) = (dv[4 * MAX_TIERS], usize::from(dv[4 * MAX_TIERS + 1]));
        if state == STATE_TIERS {
            for i in 0..n.min(MAX_TIERS) {
                out.push(u32::from_ne_bytes(
                    dv[4 * i..4 * i + 4].try_into().expect("pod value"),
                ));
            }
        }
    }
    out
}

/// Byte-wise AND of two bit values (same length): the first phase of an update.
pub fn and_bytes(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x & y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_structs() {
        let dirs = [
            DirVal::Tiers {
                ctxs: vec![1, 3],
                accept_default: true,
            },
            DirVal::Tiers {
                ctxs: vec![2],
                accept_default: false,
            },
        ];
        let v = pod_val(&dirs, &[vec![], vec![]], None);
        assert_eq!(v.len(), POD_VAL_SIZE);
        // struct dir_val: ctx[4], state, ntiers, accept_default, pad (offsetof by hand).
        assert_eq!(&v[0..4], &1u32.to_ne_bytes());
        assert_eq!(&v[4..8], &3u32.to_ne_bytes());
        assert_eq!(&v[16..20], &[STATE_TIERS, 2, 1, 0]);
        assert_eq!(&v[20..24], &2u32.to_ne_bytes());
        assert_eq!(&v[36..40], &[STATE_TIERS, 1, 0, 0]);
        assert_eq!(pod_val_ctx(&v), [1, 3, 2]);
        let closed = pod_val(&[DirVal::FailClosed, DirVal::Open], &[vec![], vec![]], None);
        assert_eq!(&closed[16..20], &[STATE_FAIL_CLOSED, 0, 0, 0]);
        assert_eq!(&closed[36..40], &[STATE_OPEN, 0, 0, 0]);
        assert!(pod_val_ctx(&closed).is_empty());
        assert_eq!(ctx_val(&Context::default()).len(), MapId::Ctxs.value_size());
        for m in MapId::ALL {
            let k = match m {
                MapId::Pods => pod_key(1),
                MapId::Ctxs => ctx_key(1),
                MapId::Peers4 => peer_key(1, &"10.0.0.0/8".parse().unwrap()).1,
                MapId::Peers6 => peer_key(1, &"fd00::/8".parse().unwrap()).1,
                MapId::Ports => port_key(1, 6, 80, 16),
                MapId::Named => named_key(1, &"10.0.0.1".parse().unwrap(), 6, 80),
                MapId::Nat => nat_key(&"10.96.0.0/12".parse().unwrap()),
            };
            assert_eq!(k.len(), m.key_size(), "{m:?}");
            let has_ctx = !matches!(m, MapId::Pods | MapId::Nat);
            assert_eq!(m.ctx_of(&k), has_ctx.then_some(1), "{m:?}");
        }
    }
}
