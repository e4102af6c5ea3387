//! A translation as map entries (bytes), and the ordered updates that move the maps from one
//! set of entries to another without ever allowing what neither allows. Pure.
//!
//! Map updates are not one transaction the way an nftables batch is. Rule bits make that
//! safe where allowing is monotone in the bits (accept-only tiers before a dropping default,
//! NetworkPolicy): a packet is allowed when its peer bits meet its port bits, so if every value
//! first shrinks to `old & new` (phase 1) and only then grows to `new` (phase 2), each moment's
//! values are bitwise within the old ones or within the new ones, and so is what they allow.
//! (Between the phases, traffic both allow may see a few microseconds of denial when bits were
//! renumbered.) Where a bit can drop or pass, fewer bits can allow more, so those contexts are
//! keyed by content (`translate`): they never change in place, a change is a new context.
//! Pods switch contexts with one atomic update of their entry (phase 3), after the new
//! contexts are complete; contexts no pod uses any more go last (phase 4).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::layout::{self, DirVal, MapId};
use super::translate::{CtxRef, Translation};

pub type Entries = BTreeMap<MapId, BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Update(MapId, Vec<u8>, Vec<u8>),
    Delete(MapId, Vec<u8>),
}

/// Updates to make before attaching to new interfaces, and after detaching from old ones.
#[derive(Debug, Default)]
pub struct Plan {
    pub before_attach: Vec<Op>,
    pub after_detach: Vec<Op>,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.before_attach.len() + self.after_detach.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every entry a translation needs, given context ids and the interfaces' indexes (pods
/// whose interface has no index yet are left out: nothing to attach to), and the Service
/// ranges whose egress check waits for NAT.
pub fn entries(
    t: &Translation,
    ids: &BTreeMap<String, u32>,
    ifindex: &BTreeMap<String, u32>,
    nat: &[IpNet],
) -> Entries {
    let mut e: Entries = MapId::ALL.iter().map(|m| (*m, BTreeMap::new())).collect();
    let mut put = |m: MapId, k: Vec<u8>, v: Vec<u8>| {
        e.get_mut(&m).expect("every map").insert(k, v);
    };
    for net in nat {
        put(MapId::Nat, layout::nat_key(net), layout::nat_val());
    }
    for (key, c) in &t.contexts {
        let Some(&id) = ids.get(key) else { continue };
        put(MapId::Ctxs, layout::ctx_key(id), layout::ctx_val(c));
        for (net, b) in &c.peers {
            let (m, k) = layout::peer_key(id, net);
            put(m, k, layout::bits(b));
        }
        for (&(proto, first, plen), b) in &c.ports {
            put(
                MapId::Ports,
                layout::port_key(id, proto, first, plen),
                layout::bits(b),
            );
        }
        for ((addr, proto, port), b) in &c.named {
            put(
                MapId::Named,
                layout::named_key(id, addr, *proto, *port),
                layout::bits(b),
            );
        }
    }
    for (iface, p) in &t.pods {
        let Some(&idx) = ifindex.get(iface) else {
            continue;
        };
        let dirs = p.ctx.clone().map(|c| match c {
            CtxRef::Open => DirVal::Open,
            CtxRef::FailClosed(_) => DirVal::FailClosed,
            CtxRef::Tiers {
                ctxs,
                accept_default,
            } => {
                // A context without an id cannot be referred to: fail closed.
                match ctxs.iter().map(|k| ids.get(k).copied()).collect() {
                    Some(ctxs) => DirVal::Tiers {
                        ctxs,
                        accept_default,
                    },
                    None => DirVal::FailClosed,
                }
            }
        });
        put(
            MapId::Pods,
            layout::pod_key(idx),
            layout::pod_val(&dirs, &p.self_addrs, p.guard.as_ref()),
        );
    }
    e
}

/// Ids for the translation's contexts: a context keeps its id while its key (direction and
/// policy chains) stays, so a changed policy is patched in place; new keys get ids that no
/// installed entry uses.
pub fn assign_ids(
    t: &Translation,
    previous: &BTreeMap<String, u32>,
    installed: &Entries,
) -> BTreeMap<String, u32> {
    let mut used: BTreeSet<u32> = installed
        .get(&MapId::Pods)
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| layout::pod_val_ctx(v))
        .collect();
    for m in MapId::BITS_MAPS {
        if let Some(es) = installed.get(&m) {
            used.extend(es.keys().filter_map(|k| m.ctx_of(k)));
        }
    }
    used.extend(previous.values());
    let mut out = BTreeMap::new();
    let mut next = 1u32;
    for key in t.contexts.keys() {
        if let Some(&id) = previous.get(key) {
            out.insert(key.clone(), id);
            continue;
        }
        // 0 and ~0 were the open and fail-closed markers of older layouts: never ids.
        while used.contains(&next) || next == 0 || next == u32::MAX {
            next = next.wrapping_add(1);
        }
        used.insert(next);
        out.insert(key.clone(), next);
    }
    out
}

/// The ordered updates from `old` (installed) to `new`.
pub fn plan(old: &Entries, new: &Entries) -> Plan {
    let empty = BTreeMap::new();
    let live: BTreeSet<u32> = new
        .get(&MapId::Ctxs)
        .unwrap_or(&empty)
        .keys()
        .filter_map(|k| MapId::Ctxs.ctx_of(k))
        .collect();
    let mut p = Plan::default();
    let mut phase2 = Vec::new();
    let mut dead = Vec::new();
    for m in MapId::BITS_MAPS {
        let o = old.get(&m).unwrap_or(&empty);
        let n = new.get(&m).unwrap_or(&empty);
        for (k, ov) in o {
            let ctx_live = m.ctx_of(k).is_some_and(|c| live.contains(&c));
            match n.get(k) {
                Some(nv) => {
                    let shrunk = layout::and_bytes(ov, nv);
                    if shrunk != *ov {
                        p.before_attach
                            .push(Op::Update(m, k.clone(), shrunk.clone()));
                    }
                    if shrunk != *nv {
                        phase2.push(Op::Update(m, k.clone(), nv.clone()));
                    }
                }
                // Entries of contexts that live on go now; of dead contexts after the pods
                // have moved away from them.
                None if ctx_live => p.before_attach.push(Op::Delete(m, k.clone())),
                None => dead.push(Op::Delete(m, k.clone())),
            }
        }
        for (k, nv) in n {
            if !o.contains_key(k) {
                phase2.push(Op::Update(m, k.clone(), nv.clone()));
            }
        }
    }
    p.before_attach.extend(phase2);
    let o = old.get(&MapId::Pods).unwrap_or(&empty);
    let n = new.get(&MapId::Pods).unwrap_or(&empty);
    for (k, nv) in n {
        if o.get(k) != Some(nv) {
            p.before_attach
                .push(Op::Update(MapId::Pods, k.clone(), nv.clone()));
        }
    }
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        p.after_detach.push(Op::Delete(MapId::Pods, k.clone()));
    }
    // Service ranges: deferring starts only once the post-NAT hooks are attached (after
    // attaching), and stops before they are detached.
    let o = old.get(&MapId::Nat).unwrap_or(&empty);
    let n = new.get(&MapId::Nat).unwrap_or(&empty);
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        p.before_attach.push(Op::Delete(MapId::Nat, k.clone()));
    }
    for (k, nv) in n {
        if o.get(k) != Some(nv) {
            p.after_detach
                .push(Op::Update(MapId::Nat, k.clone(), nv.clone()));
        }
    }
    // Contexts themselves last, so no pod ever points at a missing one on purpose.
    dead.sort_by_key(|op| matches!(op, Op::Delete(MapId::Ctxs, _)));
    p.after_detach.extend(dead);
    p
}

/// Applies ops to an in-memory copy (what the kernel holds afterwards, for tests).
pub fn apply_ops(e: &mut Entries, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Update(m, k, v) => {
                e.entry(*m).or_default().insert(k.clone(), v.clone());
            }
            Op::Delete(m, k) => {
                e.entry(*m).or_default().remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::translate::{Bits, Context, PodEntry, Translation};

    fn ctx(peers: &[(&str, usize)], ports: &[(u16, usize)]) -> Context {
        let mut c = Context::default();
        for (p, b) in peers {
            c.peers.insert(p.parse().unwrap(), Bits::bit(*b));
        }
        for (port, b) in ports {
            c.ports.insert((6, *port, 16), Bits::bit(*b));
        }
        c
    }

    fn world(c: Context, pod_ctx: &str) -> Translation {
        let mut t = Translation::default();
        t.contexts.insert(pod_ctx.into(), c);
        t.pods.insert(
            "veth0".into(),
            PodEntry {
                pod: "x/a".into(),
                ctx: [
                    CtxRef::Tiers {
                        ctxs: vec![pod_ctx.into()],
                        accept_default: false,
                    },
                    CtxRef::Open,
                ],
                self_addrs: [vec![], vec![]],
                guard: None,
            },
        );
        t
    }

    /// Every value in the maps, at every step, is bitwise within the old value or within the
    /// new one: nothing both rulesets deny is ever allowed.
    #[test]
    fn updates_never_over_allow() {
        let ifx: BTreeMap<String, u32> = [("veth0".to_string(), 7)].into();
        // Bits renumbered: bit 0 moves from (10.0.0.1, port 80) to (10.0.0.2, port 81).
        let old_t = world(ctx(&[("10.0.0.1/32", 0)], &[(80, 0)]), "ingress:a");
        let new_t = world(
            ctx(
                &[("10.0.0.2/32", 0), ("10.0.0.1/32", 1)],
                &[(81, 0), (80, 1)],
            ),
            "ingress:a",
        );
        let ids = assign_ids(&old_t, &BTreeMap::new(), &Entries::new());
        let old = entries(&old_t, &ids, &ifx, &[]);
        let ids2 = assign_ids(&new_t, &ids, &old);
        assert_eq!(ids, ids2, "same policy list, same context id");
        let new = entries(&new_t, &ids2, &ifx, &[]);
        let p = plan(&old, &new);
        let mut now = old.clone();
        let within =
            |v: &[u8], bound: Option<&Vec<u8>>| bound.is_some_and(|b| layout::and_bytes(v, b) == v);
        for op in p.before_attach.iter().chain(&p.after_detach) {
            apply_ops(&mut now, std::slice::from_ref(op));
            for m in MapId::BITS_MAPS {
                for (k, v) in &now[&m] {
                    assert!(
                        within(v, old[&m].get(k)) || within(v, new[&m].get(k)),
                        "{m:?} {k:?} = {v:?}"
                    );
                }
            }
        }
        assert_eq!(now, new);
    }

    #[test]
    fn a_new_context_gets_a_fresh_id_and_the_old_goes_last() {
        let ifx: BTreeMap<String, u32> = [("veth0".to_string(), 7)].into();
        let a = world(ctx(&[("10.0.0.1/32", 0)], &[(80, 0)]), "ingress:a");
        let b = world(ctx(&[("10.0.0.3/32", 0)], &[(80, 0)]), "ingress:b");
        let ids_a = assign_ids(&a, &BTreeMap::new(), &Entries::new());
        let old = entries(&a, &ids_a, &ifx, &[]);
        let ids_b = assign_ids(&b, &BTreeMap::new(), &old);
        assert_ne!(ids_a["ingress:a"], ids_b["ingress:b"]);
        let new = entries(&b, &ids_b, &ifx, &[]);
        let p = plan(&old, &new);
        // The pod moves before the old context's entries go.
        assert!(p
            .before_attach
            .iter()
            .any(|op| matches!(op, Op::Update(MapId::Pods, ..))));
        assert!(p.after_detach.iter().all(|op| matches!(op, Op::Delete(..))));
        assert!(matches!(
            p.after_detach.last(),
            Some(Op::Delete(MapId::Ctxs, _))
        ));
        let mut now = old;
        apply_ops(&mut now, &p.before_attach);
        apply_ops(&mut now, &p.after_detach);
        assert_eq!(now, new);
    }

    /// Deferring to the post-NAT hook starts only after it is attached, and stops before it
    /// is detached: Service ranges are added after attaching and removed before detaching.
    #[test]
    fn service_ranges_wait_for_the_post_nat_hooks() {
        let ifx: BTreeMap<String, u32> = [("veth0".to_string(), 7)].into();
        let t = world(ctx(&[("10.0.0.1/32", 0)], &[(80, 0)]), "egress:a");
        let ids = assign_ids(&t, &BTreeMap::new(), &Entries::new());
        let old: IpNet = "10.96.0.0/16".parse().unwrap();
        let new: IpNet = "10.97.0.0/16".parse().unwrap();
        let before = entries(&t, &ids, &ifx, &[old]);
        let after = entries(&t, &ids, &ifx, &[new]);
        let p = plan(&before, &after);
        assert_eq!(
            p.before_attach,
            vec![Op::Delete(MapId::Nat, layout::nat_key(&old))]
        );
        assert_eq!(
            p.after_detach,
            vec![Op::Update(
                MapId::Nat,
                layout::nat_key(&new),
                layout::nat_val()
            )]
        );
        // IPv4 ranges are keyed as IPv4-mapped IPv6 prefixes, as the classifier looks them up.
        let k = layout::nat_key(&old);
        assert_eq!(u32::from_ne_bytes(k[0..4].try_into().unwrap()), 96 + 16);
        assert_eq!(
            &k[4..20],
            &"::ffff:10.96.0.0"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }
}
