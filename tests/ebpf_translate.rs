//! The eBPF translation, held against the oracle without a kernel: the fixture that covers
//! every feature the compiler handles (dual stack, ipBlock except, named ports, endPort, UDP,
//! SCTP, egress to IPv6 blocks) is compiled and translated, and a model of the classifier's
//! lookups (the same steps as classifier.bpf.c) must give each local pod's side the oracle's
//! verdict for every address pair, port and protocol. This covers what the IPv4-only,
//! SCTP-less lab cannot probe.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use sluice::compile::decision::{
    Action, Clause, DirDecision, Isolation as Isolation2, NodeDecisions, PeerMatch, PeerMembers,
    PeerSet, PortMatch, Rulebook,
};
use sluice::compile::ir::Isolation;
use sluice::compile::net::Family;
use sluice::compile::NodeRuleset;
use sluice::compile::{compile, Attach, Attachment, CompileInput};
use sluice::ebpf::translate::{proto_number, translate, Bits, Context, CtxRef, Translation};
use sluice::policy::model::Direction;
use sluice::policy::model::ObjectName;
use sluice::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};

const INGRESS: usize = 0;
const EGRESS: usize = 1;

/// What the classifier decides for a new packet at one pod's veth in one direction.
pub fn model(
    t: &Translation,
    iface: &str,
    dir: usize,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let pod = &t.pods[iface];
    let (ctxs, accept_default) = match &pod.ctx[dir] {
        CtxRef::Open => return true,
        CtxRef::FailClosed(_) => return false,
        CtxRef::Tiers {
            ctxs,
            accept_default,
        } => (ctxs, *accept_default),
    };
    let peer = if dir == INGRESS { src } else { dst };
    if pod.self_addrs[dir].contains(&peer) {
        return true;
    }
    for key in ctxs {
        match tier(&t.contexts[key], peer, dst, proto, port) {
            Some(Action::Accept) => return true,
            Some(Action::Drop) => return false,
            Some(Action::Continue) | None => {}
        }
    }
    accept_default
}

/// One tier, step by step as classifier.bpf.c's tier_verdict: the lowest common bit decides.
fn tier(c: &Context, peer: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Option<Action> {
    let mut peer_bits = c.any_peer;
    // Longest prefix match, as the LPM trie answers.
    if let Some((_, b)) = c
        .peers
        .iter()
        .filter(|(n, _)| n.contains(&peer))
        .max_by_key(|(n, _)| n.prefix_len())
    {
        peer_bits.or(b);
    }
    let mut port_bits = c.any_port;
    if let Some((_, b)) = c
        .ports
        .iter()
        .filter(|((p, first, plen), _)| {
            let mask = if *plen == 0 {
                0
            } else {
                u16::MAX << (16 - plen)
            };
            *p == proto && port & mask == *first
        })
        .max_by_key(|((_, _, plen), _)| *plen)
    {
        port_bits.or(b);
    }
    if let Some(b) = c.named.get(&(dst, proto, port)) {
        port_bits.or(b);
    }
    for w in 0..4 {
        let m = peer_bits.0[w] & port_bits.0[w];
        if m != 0 {
            let first = m & m.wrapping_neg();
            return Some(if first & c.drop.0[w] != 0 {
                Action::Drop
            } else if first & c.pass.0[w] != 0 {
                Action::Continue
            } else {
                Action::Accept
            });
        }
    }
    None
}

fn check(attach: Attach) {
    let cluster = common::fixture("dataplane/cluster.yaml");
    let mut att = BTreeMap::new();
    for (pod, iface, mac) in [
        ("x/a", "veth-xa", "02:00:00:00:00:0a"),
        ("x/b", "veth-xb", "02:00:00:00:00:0b"),
        ("y/dual", "veth-ydual", "02:00:00:00:00:0c"),
    ] {
        att.insert(
            ObjectName::parse(pod),
            Attachment {
                iface: Some(iface.into()),
                mac: Some(mac.into()),
            },
        );
    }
    let rs = compile(&CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach,
        attachments: &att,
    });
    let t = translate(&rs);
    assert!(t.warnings.is_empty(), "{attach}: {:?}", t.warnings);
    // Local pods by address, for the sides the classifier judges (fail-closed pods are the
    // compiler's decision, not the oracle's, and are left out).
    let mut local: BTreeMap<IpAddr, (String, [bool; 2])> = BTreeMap::new();
    for p in &rs.pods {
        let judged = |i: &Isolation| !matches!(i, Isolation::FailedClosed { .. });
        for ip in &p.ips {
            local.insert(
                *ip,
                (
                    p.iface.clone().unwrap(),
                    [judged(&p.ingress), judged(&p.egress)],
                ),
            );
        }
        // Every pod carries its anti-spoofing guard (issue 17, class 14): its own addresses;
        // MAC and ARP sender only on a bridge.
        let g = t.pods[p.iface.as_ref().unwrap()]
            .guard
            .clone()
            .unwrap_or_else(|| panic!("{attach}: {} has no guard", p.pod));
        assert!(!g.drop_all, "{attach}: {}", p.pod);
        let v4: Vec<IpAddr> = g.v4.unwrap().iter().map(|n| IpAddr::V4(n.addr())).collect();
        let own_v4: Vec<IpAddr> = p.ips.iter().filter(|i| i.is_ipv4()).copied().collect();
        assert_eq!(v4, own_v4, "{attach}: {}", p.pod);
        assert_eq!(g.mac.is_some(), attach == Attach::Bridged);
        assert_eq!(
            g.arp.is_some(),
            attach == Attach::Bridged && !own_v4.is_empty()
        );
    }
    let mut addrs: Vec<IpAddr> = cluster
        .pods
        .values()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.clone())
        .collect();
    for a in [
        "10.1.2.3",
        "10.244.1.5",
        "10.244.0.3",
        "11.0.0.1",
        "fd00::1",
        "fd00:10:244::9",
        "2001:db8::1",
    ] {
        addrs.push(a.parse().unwrap());
    }
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for &src in &addrs {
        for &dst in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for proto in Protocol::ALL {
                for port in [53u16, 80, 1234, 8000, 8005, 8010, 8011, 8080, 9090, 9999] {
                    let flow = Flow {
                        from: Endpoint::Ip(src),
                        to: Endpoint::Ip(dst),
                        port: PortRef::Number(port),
                        protocol: proto,
                    };
                    let v = evaluate(&cluster, &flow).unwrap();
                    for (dir, at, want) in [
                        (EGRESS, src, v.egress.allowed),
                        (INGRESS, dst, v.ingress.allowed),
                    ] {
                        let Some((iface, judged)) = local.get(&at) else {
                            continue;
                        };
                        if !judged[dir] {
                            continue;
                        }
                        let got = model(&t, iface, dir, src, dst, proto_number(proto), port);
                        checked += 1;
                        if got != want {
                            mismatches.push(format!(
                                "{attach} {} {src} -> {dst} {port}/{proto}: ebpf {got}, oracle {want}",
                                if dir == INGRESS { "ingress" } else { "egress" }
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "{checked}");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn translation_agrees_with_the_oracle_routed() {
    check(Attach::Routed);
}

#[test]
fn translation_agrees_with_the_oracle_bridged() {
    check(Attach::Bridged);
}

#[test]
fn bits_meet_only_on_a_common_rule() {
    let mut a = Bits::bit(3);
    a.or(&Bits::bit(200));
    assert!(a.meets(&Bits::bit(200)));
    assert!(!a.meets(&Bits::bit(4)));
}

// ---- Ordered tiers, hand-built as the compiler emits them for ClusterNetworkPolicy ----

const X: &str = "10.1.0.1";
const Y: &str = "10.1.0.2";
const Z: &str = "10.1.0.3";

/// Two local pods (srv, adm) compiled without policies, so every decision is ours to write.
fn bare() -> NodeRuleset {
    let cluster = common::cluster_from(
        "kind: Pod\napiVersion: v1\nmetadata: {name: srv, namespace: x}\nspec: {nodeName: node-0, containers: [{name: c}]}\nstatus: {podIP: 10.244.0.2}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: adm, namespace: x}\nspec: {nodeName: node-0, containers: [{name: c}]}\nstatus: {podIP: 10.244.0.3}\n",
    );
    compile(&CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach: Attach::Routed,
        attachments: &BTreeMap::new(),
    })
}

fn clause(peer: Option<&str>, port: Option<u16>, action: Action) -> Clause {
    Clause {
        peer: peer.map_or(PeerMatch::Any, |s| PeerMatch::Set(s.into())),
        port: port.map_or(PortMatch::Any, |p| {
            PortMatch::Ranges(Protocol::Tcp, vec![(p, p)])
        }),
        action,
        label: format!("{action:?}"),
    }
}

fn book(d: &mut NodeDecisions, name: &str, dir: Direction, clauses: Vec<Clause>) {
    d.rulebooks.insert(
        name.into(),
        Rulebook {
            direction: dir,
            policies: vec![name.into()],
            clauses,
            label: name.into(),
        },
    );
}

fn peers(d: &mut NodeDecisions, name: &str, addrs: &[&str]) {
    d.peer_sets.insert(
        name.into(),
        PeerSet {
            family: Family::V4,
            members: PeerMembers::Addrs(addrs.iter().map(|a| a.parse().unwrap()).collect()),
            label: name.into(),
        },
    );
}

fn tiered(d: &mut NodeDecisions, pod: &str, dir: Direction, tiers: &[&str], default: Action) {
    let p = d.pods.iter_mut().find(|p| p.pod.name == pod).expect("pod");
    let own = p.ips.clone();
    let dd = match dir {
        Direction::Ingress => &mut p.ingress,
        Direction::Egress => &mut p.egress,
    };
    *dd = DirDecision {
        isolation: Isolation2::Isolated {
            policies: tiers.iter().map(|t| t.to_string()).collect(),
        },
        drop_invalid: true,
        accept_peers: own,
        tiers: tiers.iter().map(|t| t.to_string()).collect(),
        default,
    };
}

/// srv ingress: admin [drop X on 80, pass Y, accept anyone], then NetworkPolicy-like [accept
/// Y on 80], default drop. adm egress: admin [drop X] only, default accept.
fn scenario() -> NodeRuleset {
    let mut rs = bare();
    let d = &mut rs.decisions;
    peers(d, "X", &[X]);
    peers(d, "Y", &[Y]);
    book(
        d,
        "admin-in",
        Direction::Ingress,
        vec![
            clause(Some("X"), Some(80), Action::Drop),
            clause(Some("Y"), None, Action::Continue),
            clause(None, None, Action::Accept),
        ],
    );
    book(
        d,
        "np-in",
        Direction::Ingress,
        vec![clause(Some("Y"), Some(80), Action::Accept)],
    );
    book(
        d,
        "admin-out",
        Direction::Egress,
        vec![clause(Some("X"), None, Action::Drop)],
    );
    tiered(
        d,
        "srv",
        Direction::Ingress,
        &["admin-in", "np-in"],
        Action::Drop,
    );
    tiered(d, "adm", Direction::Egress, &["admin-out"], Action::Accept);
    rs
}

fn iface(rs: &NodeRuleset, pod: &str) -> String {
    rs.decisions
        .pods
        .iter()
        .find(|p| p.pod.name == pod)
        .unwrap()
        .iface
        .clone()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn tiers_decide_in_order_first_match_wins() {
    let rs = scenario();
    let t = translate(&rs);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let (srv, adm) = (iface(&rs, "srv"), iface(&rs, "adm"));
    let me = ip("10.244.0.2");
    // (peer, proto, port, srv ingress allows?), written from the tiers above by hand.
    for (peer, proto, port, want) in [
        (X, 6, 80, false),  // admin drops X on 80
        (X, 6, 81, true),   // admin's last clause accepts anyone
        (X, 17, 80, true),  // the drop is TCP only
        (Y, 6, 80, true),   // admin passes Y, NetworkPolicy accepts it on 80
        (Y, 6, 81, false),  // ... and nothing else: default drop
        (Y, 17, 80, false), // ... not UDP either
        (Z, 6, 80, true),   // admin accepts anyone else
        (Z, 17, 53, true),
    ] {
        let got = model(&t, &srv, INGRESS, ip(peer), me, proto, port);
        assert_eq!(got, want, "{peer} -> srv {port}/{proto}");
    }
    // The pod's own address is accepted before any tier, as the accept_peers guard says.
    assert!(model(&t, &srv, INGRESS, me, me, 6, 81));
    // adm egress: admin drops X, everything else reaches the default, accept.
    let from = ip("10.244.0.3");
    for (peer, port, want) in [(X, 80, false), (X, 9, false), (Y, 80, true), (Z, 1, true)] {
        assert_eq!(
            model(&t, &adm, EGRESS, from, ip(peer), 6, port),
            want,
            "adm -> {peer}:{port}"
        );
    }
    // Untouched directions stay open.
    assert_eq!(t.pods[&srv].ctx[EGRESS], CtxRef::Open);
    assert_eq!(t.pods[&adm].ctx[INGRESS], CtxRef::Open);
}

/// The encoding itself: clause order is bit order, actions are masks, and the ordered
/// direction's contexts are keyed by content (never patched in place) while a pure
/// NetworkPolicy direction keeps its plain `<direction>:<rulebook>` key.
#[test]
fn tier_contexts_keep_clause_order_in_bits() {
    let mut rs = scenario();
    let t = translate(&rs);
    let CtxRef::Tiers {
        ctxs,
        accept_default,
    } = &t.pods[&iface(&rs, "srv")].ctx[INGRESS]
    else {
        panic!("srv ingress not tiered")
    };
    assert!(!accept_default);
    assert_eq!(ctxs.len(), 2);
    assert!(ctxs[0].starts_with("ingress:admin-in#"), "{ctxs:?}");
    assert!(ctxs[1].starts_with("ingress:np-in#"), "{ctxs:?}");
    let admin = &t.contexts[&ctxs[0]];
    assert_eq!(admin.drop, Bits::bit(0));
    assert_eq!(admin.pass, Bits::bit(1));
    assert_eq!(admin.any_peer, Bits::bit(2));
    let mut any_port = Bits::bit(1);
    any_port.or(&Bits::bit(2));
    assert_eq!(admin.any_port, any_port);
    assert_eq!(admin.peers[&"10.1.0.1/32".parse().unwrap()], Bits::bit(0));
    assert_eq!(admin.peers[&"10.1.0.2/32".parse().unwrap()], Bits::bit(1));
    assert_eq!(admin.ports[&(6, 80, 16)], Bits::bit(0));
    // A change to an ordered rulebook is a new context (new key); the old one stays intact.
    rs.decisions.rulebooks.get_mut("admin-in").unwrap().clauses[0].action = Action::Accept;
    let t2 = translate(&rs);
    let CtxRef::Tiers { ctxs: ctxs2, .. } = &t2.pods[&iface(&rs, "srv")].ctx[INGRESS] else {
        panic!()
    };
    assert_ne!(ctxs2[0], ctxs[0]);
    assert_eq!(t2.contexts[&ctxs2[0]].drop, Bits::default());
    // X on 80 now meets the accept first.
    assert!(model(
        &t2,
        &iface(&rs, "srv"),
        INGRESS,
        ip(X),
        ip("10.244.0.2"),
        6,
        80
    ));
    // The same NetworkPolicy rulebook alone, default drop: the plain key, no drop/pass bits.
    tiered(
        &mut rs.decisions,
        "srv",
        Direction::Ingress,
        &["np-in"],
        Action::Drop,
    );
    let t3 = translate(&rs);
    assert_eq!(
        t3.pods[&iface(&rs, "srv")].ctx[INGRESS],
        CtxRef::Tiers {
            ctxs: vec!["ingress:np-in".into()],
            accept_default: false
        }
    );
    assert_eq!(t3.contexts["ingress:np-in"].drop, Bits::default());
    assert_eq!(t3.contexts["ingress:np-in"].pass, Bits::default());
}

/// Equal-action neighbours share bits (NetworkPolicy's 300 rules on one port are one bit), but
/// an ordered rulebook needing more bits than the classifier holds fails its pods closed, with
/// a warning naming the pod and the rulebook; so do more tiers than it holds.
#[test]
fn what_does_not_fit_fails_closed_with_a_warning() {
    let mut rs = scenario();
    let d = &mut rs.decisions;
    let many: Vec<Clause> = (0..300)
        .map(|i| clause(Some("Y"), Some(1000 + i), Action::Accept))
        .collect();
    book(d, "wide", Direction::Egress, many);
    tiered(d, "adm", Direction::Egress, &["wide"], Action::Drop);
    let t = translate(&rs);
    assert!(
        matches!(&t.pods[&iface(&rs, "adm")].ctx[EGRESS], CtxRef::FailClosed(m) if m.contains("wide") && m.contains("x/adm")),
        "{:?}",
        t.pods[&iface(&rs, "adm")].ctx[EGRESS]
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    // 300 clauses with one port each alternate nothing: merged by port they are still 300
    // bits. The same peers on one port range, 300 times: one bit.
    let same: Vec<Clause> = (0..300)
        .map(|_| clause(Some("Y"), Some(80), Action::Accept))
        .collect();
    book(&mut rs.decisions, "wide", Direction::Egress, same);
    let t = translate(&rs);
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.contexts["egress:wide"].bit_names.len(), 1);
    // Alternating actions cannot merge: 257 runs of one clause each.
    let alternating: Vec<Clause> = (0..257)
        .map(|i| {
            let a = if i % 2 == 0 {
                Action::Drop
            } else {
                Action::Accept
            };
            clause(Some("Y"), Some(80), a)
        })
        .collect();
    book(&mut rs.decisions, "wide", Direction::Egress, alternating);
    let t = translate(&rs);
    assert!(matches!(
        &t.pods[&iface(&rs, "adm")].ctx[EGRESS],
        CtxRef::FailClosed(m) if m.contains("257")
    ));
    // Five tiers: more than the classifier's four.
    tiered(
        &mut rs.decisions,
        "adm",
        Direction::Egress,
        &["admin-out"; 5],
        Action::Accept,
    );
    let t = translate(&rs);
    assert!(matches!(
        &t.pods[&iface(&rs, "adm")].ctx[EGRESS],
        CtxRef::FailClosed(m) if m.contains("5 tiers")
    ));
    // srv, untouched, is still enforced.
    assert!(matches!(
        &t.pods[&iface(&rs, "srv")].ctx[INGRESS],
        CtxRef::Tiers { .. }
    ));
}

/// The pod entry the classifier reads: state, tier ids in order, default (struct dir_val).
#[test]
fn pod_entries_carry_tier_ids_and_default() {
    use sluice::ebpf::entries;
    use sluice::ebpf::layout::{self, MapId};
    let rs = scenario();
    let t = translate(&rs);
    let ids = entries::assign_ids(&t, &BTreeMap::new(), &entries::Entries::new());
    let ifx: BTreeMap<String, u32> = [(iface(&rs, "srv"), 7), (iface(&rs, "adm"), 8)].into();
    let e = entries::entries(&t, &ids, &ifx, &[]);
    let CtxRef::Tiers { ctxs, .. } = &t.pods[&iface(&rs, "srv")].ctx[INGRESS] else {
        panic!()
    };
    let srv = &e[&MapId::Pods][&layout::pod_key(7)];
    assert_eq!(&srv[0..4], &ids[&ctxs[0]].to_ne_bytes());
    assert_eq!(&srv[4..8], &ids[&ctxs[1]].to_ne_bytes());
    // ingress: state 1 (tiers), 2 tiers, default drop; egress: state 0 (open).
    assert_eq!(&srv[16..20], &[1, 2, 0, 0]);
    assert_eq!(&srv[36..40], &[0, 0, 0, 0]);
    let adm = &e[&MapId::Pods][&layout::pod_key(8)];
    // adm egress: 1 tier, default accept.
    assert_eq!(&adm[36..40], &[1, 1, 1, 0]);
    // Every context's value: any_peer, any_port, drop, pass.
    let admin_val = &e[&MapId::Ctxs][&layout::ctx_key(ids[&ctxs[0]])];
    assert_eq!(admin_val.len(), 128);
    assert_eq!(admin_val[64], 1, "drop bit 0");
    assert_eq!(admin_val[96], 2, "pass bit 1");
}
