//! The eBPF translation, held against the oracle without a kernel: the fixture that covers
//! every feature the compiler handles (dual stack, ipBlock except, named ports, endPort, UDP,
//! SCTP, egress to IPv6 blocks) is compiled and translated, and a model of the classifier's
//! lookups (the same steps as classifier.bpf.c) must give each local pod's side the oracle's
//! verdict for every address pair, port and protocol. This covers what the IPv4-only,
//! SCTP-less lab cannot probe.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use sluice::compile::ir::Isolation;
use sluice::compile::{compile, Attach, Attachment, CompileInput};
use sluice::ebpf::translate::{proto_number, translate, Bits, CtxRef, Translation};
use sluice::policy::model::ObjectName;
use sluice::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};

const INGRESS: usize = 0;
const EGRESS: usize = 1;

/// What the classifier decides for a new packet at one pod's veth in one direction.
fn model(
    t: &Translation,
    iface: &str,
    dir: usize,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let pod = &t.pods[iface];
    let key = match &pod.ctx[dir] {
        CtxRef::Open => return true,
        CtxRef::FailClosed(_) => return false,
        CtxRef::Ctx(k) => k,
    };
    let peer = if dir == INGRESS { src } else { dst };
    if pod.self_addrs[dir].contains(&peer) {
        return true;
    }
    let c = &t.contexts[key];
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
    peer_bits.meets(&port_bits)
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
