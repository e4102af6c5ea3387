//! The eBPF dataplane on the real kernel: a small lab enforced by the tc classifier, probed
//! with real connections (both attachments), then checked for leftovers. Skipped (and said
//! so) only when this sluice was built without clang, i.e. without the classifier, and then
//! failed instead when `SLUICE_REQUIRE_EBPF=1` (scripts/test).

mod common;

use std::time::Duration;

use common::{ebpf_built, ebpf_skip};
use sluice::dataplane::{Dataplane, DataplaneKind};
use sluice::ebpf::EbpfDataplane;
use sluice::lab::enforce::EnforcedLab;
use sluice::lab::{Attach, Proto};
use sluice::policy::{ObjectName, Protocol};

const WORLD: &str = r#"
kind: Namespace
apiVersion: v1
metadata: {name: x, labels: {ns: x}}
---
kind: Pod
apiVersion: v1
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: other, namespace: x, labels: {app: other}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: server, namespace: x, labels: {app: server}}
spec:
  nodeName: node-0
  containers: [{name: c, ports: [{containerPort: 80, name: http}, {containerPort: 81}, {containerPort: 8080}, {containerPort: 53, protocol: UDP}]}]
---
kind: Pod
apiVersion: v1
metadata: {name: locked, namespace: x, labels: {app: locked}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}, {port: 8000, endPort: 8080}]
  - from: [{podSelector: {matchLabels: {app: other}}}]
    ports: [{port: 53, protocol: UDP}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: lock, namespace: x}
spec:
  podSelector: {matchLabels: {app: locked}}
  policyTypes: [Ingress, Egress]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: client-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: server}}}]}]
"#;

fn n(s: &str) -> ObjectName {
    ObjectName::parse(s)
}

fn check(attach: Attach) {
    let name = format!("eb{}{}", std::process::id() % 10_000, attach as u8);
    let mut lab = EnforcedLab::up_with(&name, 2, attach, DataplaneKind::Ebpf).unwrap();
    assert_eq!(lab.dataplane_kind(), DataplaneKind::Ebpf);
    let mut cluster = common::cluster_from(WORLD);
    lab.serve_also(&[80, 81, 8080, 53]);
    lab.sync(&mut cluster).unwrap();
    let probe =
        |lab: &EnforcedLab, from: &str, to: &str, port: u16, proto: Protocol, want: bool| {
            let r = lab.probe(&n(from), &n(to), false, port, proto, want);
            assert_eq!(
                r.is_connected(),
                want,
                "{attach}: {from} -> {to} {port}/{proto}: {r}"
            );
        };
    // Named port (http = 80) and endPort range for the client; nothing else.
    probe(&lab, "x/client", "x/server", 80, Protocol::Tcp, true);
    probe(&lab, "x/client", "x/server", 8080, Protocol::Tcp, true);
    probe(&lab, "x/client", "x/server", 81, Protocol::Tcp, false);
    // UDP 53 only from `other`, across nodes; a UDP rule never opens TCP.
    probe(&lab, "x/other", "x/server", 53, Protocol::Udp, true);
    probe(&lab, "x/other", "x/server", 80, Protocol::Tcp, false);
    probe(&lab, "x/client", "x/server", 53, Protocol::Udp, false);
    // The client is egress-isolated: only the server; replies of allowed flows pass.
    probe(&lab, "x/client", "x/other", 80, Protocol::Tcp, false);
    // Default deny both ways.
    probe(&lab, "x/other", "x/locked", 80, Protocol::Tcp, false);
    probe(&lab, "x/locked", "x/other", 80, Protocol::Tcp, false);
    // The node reaches its pods whatever their policy; pods reach what policy lets them.
    let locked = lab.pod(&n("x/locked")).unwrap().clone();
    let r = lab
        .lab()
        .probe_from_node(1, locked.ip, 80, Proto::Tcp, Duration::from_millis(800));
    assert!(r.is_connected(), "{attach}: node-1 -> locked: {r}");

    // A policy change is a map update: open `locked` to everyone in x.
    let open: &str = r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: lock, namespace: x}
spec:
  podSelector: {matchLabels: {app: locked}}
  policyTypes: [Ingress]
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]
"#;
    for p in common::cluster_from(open).policies.into_values() {
        cluster.upsert_policy(p);
    }
    let report = lab.sync(&mut cluster).unwrap();
    assert_eq!(report.full_applies, 0, "{report:?}");
    probe(&lab, "x/other", "x/locked", 80, Protocol::Tcp, true);
    probe(&lab, "x/locked", "x/other", 80, Protocol::Tcp, true);

    // Status agrees with what was applied, on every node.
    for node in 0..2 {
        let rs = lab.ruleset(&cluster, node);
        let st = lab.with_node_dataplane(node, |dp| dp.status(&rs)).unwrap();
        assert!(st.in_sync, "{attach} node {node}: {:?}", st.differences);
    }
    lab.down().unwrap();
    assert!(
        !sluice::lab::netns::list()
            .iter()
            .any(|n| n.starts_with(&format!("sl{name}-"))),
        "namespaces left"
    );
}

#[test]
fn ebpf_enforces_a_small_lab_routed() {
    if ebpf_built() {
        check(Attach::Routed);
    }
}

#[test]
fn ebpf_enforces_a_small_lab_bridged() {
    if ebpf_built() {
        check(Attach::Bridged);
    }
}

/// Issue 17 class 14 for the eBPF fallback: see `common::spoof`.
#[test]
fn ebpf_stops_spoofed_sources_routed() {
    if ebpf_built() {
        common::spoof::check("spe", Attach::Routed, DataplaneKind::Ebpf);
    }
}

#[test]
fn ebpf_stops_spoofed_sources_bridged() {
    if ebpf_built() {
        common::spoof::check("spe", Attach::Bridged, DataplaneKind::Ebpf);
    }
}

/// remove() detaches from every interface and is idempotent; nothing stays attached.
#[test]
fn ebpf_remove_detaches_everything() {
    if !ebpf_built() {
        return;
    }
    let ns = common::Netns::new("ebpfrm");
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns.name])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    };
    run(&[
        "link", "add", "slveth0", "type", "veth", "peer", "name", "slveth1",
    ]);
    run(&["link", "set", "slveth0", "up"]);
    let cluster = common::cluster_from(
        r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n, containers: [{name: c}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
"#,
    );
    let mut attachments = std::collections::BTreeMap::new();
    attachments.insert(
        n("x/a"),
        sluice::compile::Attachment {
            iface: Some("slveth0".into()),
            mac: None,
        },
    );
    let rs = sluice::compile::compile(&sluice::compile::CompileInput {
        cluster: &cluster,
        node: "n",
        attach: Attach::Routed,
        attachments: &attachments,
    });
    let mut dp = EbpfDataplane::in_netns(&ns.name).unwrap();
    dp.apply_full(&rs).unwrap();
    assert_eq!(dp.attached_interfaces(), ["slveth0"]);
    assert!(dp.status(&rs).unwrap().in_sync);
    dp.remove().unwrap();
    dp.remove().unwrap();
    assert!(dp.attached_interfaces().is_empty());
    // The kernel agrees: no tcx program on either hook of the veth.
    if dp.attach_mode() != sluice::ebpf::AttachMode::Tcx {
        return;
    }
    let left = sluice::lab::netns::exec_in(&ns.name, || {
        [
            aya::programs::TcAttachType::Ingress,
            aya::programs::TcAttachType::Egress,
        ]
        .iter()
        .map(|t| {
            aya::programs::SchedClassifier::query_tcx("slveth0", *t)
                .map(|(_, p)| p.len())
                .unwrap_or(0)
        })
        .sum::<usize>()
    })
    .unwrap();
    assert_eq!(left, 0, "programs still attached");
}

/// Sets or clears CAP_SYS_ADMIN in this thread's effective set (capabilities are per thread).
fn sys_admin_effective(on: bool) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_SYS_ADMIN: u32 = 21;
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data elements, as the ABI wants.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        if on {
            d[0].effective |= 1 << CAP_SYS_ADMIN;
        } else {
            d[0].effective &= !(1 << CAP_SYS_ADMIN);
        }
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
}

/// The DaemonSet grants the agent NET_ADMIN, BPF and PERFMON, not SYS_ADMIN. Status must still
/// see the programs the agent attached: on a real cluster it read them through an API that
/// opens programs by id (CAP_SYS_ADMIN), reported "0 of 2 programs attached" for every pod and
/// re-applied the ruleset in a loop.
#[test]
fn ebpf_status_needs_no_cap_sys_admin() {
    if !ebpf_built() {
        return;
    }
    let ns = common::Netns::new("ebpfcap");
    for args in [
        &[
            "link", "add", "slveth0", "type", "veth", "peer", "name", "slveth1",
        ][..],
        &["link", "set", "slveth0", "up"][..],
    ] {
        let ok = std::process::Command::new("ip")
            .args(["-n", &ns.name])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args:?}");
    }
    let cluster = common::cluster_from(
        r#"
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n, containers: [{name: c}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
"#,
    );
    let mut attachments = std::collections::BTreeMap::new();
    attachments.insert(
        n("x/a"),
        sluice::compile::Attachment {
            iface: Some("slveth0".into()),
            mac: None,
        },
    );
    let rs = sluice::compile::compile(&sluice::compile::CompileInput {
        cluster: &cluster,
        node: "n",
        attach: Attach::Routed,
        attachments: &attachments,
    });
    // The agent's case: the dataplane of the current namespace (a DaemonSet pod's).
    let (mode, aya_query, status) = sluice::lab::netns::exec_in(&ns.name, || {
        let mut dp = EbpfDataplane::new(None).unwrap();
        dp.apply_full(&rs).unwrap();
        sys_admin_effective(false);
        let aya_query = aya::programs::SchedClassifier::query_tcx(
            "slveth0",
            aya::programs::TcAttachType::Ingress,
        )
        .map(|(_, p)| p.len());
        let status = dp.status(&rs).unwrap();
        sys_admin_effective(true);
        dp.remove().unwrap();
        (dp.attach_mode(), aya_query, status)
    })
    .unwrap();
    if mode != sluice::ebpf::AttachMode::Tcx {
        ebpf_skip("clsact attachment (no tcx on this kernel): status does not query");
        return;
    }
    // Without CAP_SYS_ADMIN, opening programs by id is refused: the condition of the bug.
    assert!(aya_query.is_err(), "expected EPERM, got {aya_query:?}");
    assert!(status.in_sync, "{:?}", status.differences);
}

/// The clsact path (kernels before 6.6), forced on this kernel: the example shop through its
/// ClusterIPs, every cell as the oracle says, routed and bridged (`sluice lab run` compares).
#[test]
fn ebpf_clsact_attachment_enforces_like_tcx() {
    if !ebpf_built() {
        return;
    }
    for attach in ["routed", "bridged"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["lab", "run", "-m", "examples/shop", "--dataplane", "ebpf"])
            .args(["--via", "service", "--attach", attach])
            .env("SLUICE_EBPF_ATTACH", "clsact")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("140 cells: 140 matched, 0 mismatched"),
            "{attach}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The eBPF dataplane enforces ClusterNetworkPolicy tiers in the API's order, the same
/// scenario as nftables (tests/common/cnp.rs), on both attachments.
#[test]
fn cnp_tiers_are_enforced_in_the_api_order() {
    if !ebpf_built() {
        return;
    }
    for attach in [Attach::Routed, Attach::Bridged] {
        let name = format!("ebtier{}{}", std::process::id() % 10_000, attach as u8);
        common::cnp::check_tiers(&name, attach, DataplaneKind::Ebpf);
    }
}

// ---- Ordered tiers (ClusterNetworkPolicy's shape), hand-built decisions on the real kernel ----

const TIER_WORLD: &str = r#"
kind: Namespace
apiVersion: v1
metadata: {name: x}
---
kind: Pod
apiVersion: v1
metadata: {name: srv, namespace: x}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: adm, namespace: x}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: py, namespace: x}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: px, namespace: x}
spec: {nodeName: node-1, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: pz, namespace: x}
spec: {nodeName: node-1, containers: [{name: c}]}
"#;

mod tiers {
    use sluice::compile::decision::{
        Action, Clause, DirDecision, Isolation, NodeDecisions, PeerMatch, PeerMembers, PeerSet,
        PortMatch, Rulebook,
    };
    use sluice::compile::net::Family;
    use sluice::policy::model::Direction;
    use sluice::policy::Protocol;
    use std::net::IpAddr;

    pub fn clause(peer: Option<&str>, port: Option<u16>, action: Action) -> Clause {
        Clause {
            peer: peer.map_or(PeerMatch::Any, |s| PeerMatch::Set(s.into())),
            port: port.map_or(PortMatch::Any, |p| {
                PortMatch::Ranges(Protocol::Tcp, vec![(p, p)])
            }),
            action,
            label: format!("{action:?}"),
        }
    }

    pub fn book(d: &mut NodeDecisions, name: &str, dir: Direction, clauses: Vec<Clause>) {
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

    pub fn peers(d: &mut NodeDecisions, name: &str, addr: IpAddr) {
        d.peer_sets.insert(
            name.into(),
            PeerSet {
                family: Family::V4,
                members: PeerMembers::Addrs([addr].into()),
                label: name.into(),
            },
        );
    }

    pub fn tiered(
        d: &mut NodeDecisions,
        pod: &str,
        dir: Direction,
        tiers: &[&str],
        default: Action,
    ) {
        let p = d.pods.iter_mut().find(|p| p.pod.name == pod).expect("pod");
        let own = p.ips.clone();
        let dd = match dir {
            Direction::Ingress => &mut p.ingress,
            Direction::Egress => &mut p.egress,
        };
        *dd = DirDecision {
            isolation: Isolation::Isolated {
                policies: tiers.iter().map(|t| t.to_string()).collect(),
            },
            drop_invalid: true,
            accept_peers: own,
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            default,
        };
    }
}

/// srv ingress: admin tier [drop px on 80, pass py, accept anyone], then a NetworkPolicy-like
/// tier [accept py on 80], default drop; srv egress: [drop anyone], default accept (so its
/// replies pass only as replies). adm egress: admin tier [drop px] alone, default accept.
/// Expectations are written by hand from those tiers.
fn check_tiers(attach: Attach) {
    use sluice::compile::decision::Action;
    use sluice::policy::model::Direction;
    use tiers::{book, clause, peers, tiered};

    let name = format!("ebpft{}{}", std::process::id() % 100_000, attach as u8);
    let mut lab = EnforcedLab::up_with(&name, 2, attach, DataplaneKind::Ebpf).unwrap();
    let mut cluster = common::cluster_from(TIER_WORLD);
    lab.serve_also(&[80, 81, 53]);
    lab.sync(&mut cluster).unwrap();
    let ip = |p: &str| std::net::IpAddr::V4(lab.pod(&n(&format!("x/{p}"))).unwrap().ip);
    let mut rs = lab.ruleset(&cluster, 0);
    let d = &mut rs.decisions;
    peers(d, "X", ip("px"));
    peers(d, "Y", ip("py"));
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
        "srv-out",
        Direction::Egress,
        vec![clause(None, None, Action::Drop)],
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
    tiered(d, "srv", Direction::Egress, &["srv-out"], Action::Accept);
    tiered(d, "adm", Direction::Egress, &["admin-out"], Action::Accept);
    lab.with_node_dataplane(0, |dp| dp.apply_full(&rs)).unwrap();
    let st = lab.with_node_dataplane(0, |dp| dp.status(&rs)).unwrap();
    assert!(st.in_sync, "{attach}: {:?}", st.differences);

    let probe = |from: &str, to: &str, svc: bool, port: u16, proto: Protocol, want: bool| {
        let r = lab.probe(&n(from), &n(to), svc, port, proto, want);
        assert_eq!(
            r.is_connected(),
            want,
            "{attach}: {from} -> {to}{} {port}/{proto}: {r}",
            if svc { " (service)" } else { "" }
        );
    };
    use Protocol::{Tcp, Udp};
    // Allowed by the admin tier's last clause; the replies cross srv's drop-everything egress.
    probe("x/pz", "x/srv", false, 80, Tcp, true);
    probe("x/pz", "x/srv", false, 53, Udp, true);
    probe("x/px", "x/srv", false, 81, Tcp, true);
    // The admin drop, right after another flow of the same peer was allowed.
    probe("x/px", "x/srv", false, 80, Tcp, false);
    probe("x/px", "x/srv", false, 81, Tcp, true);
    // Passed to the next tier: 80 only.
    probe("x/py", "x/srv", false, 80, Tcp, true);
    probe("x/py", "x/srv", false, 81, Tcp, false);
    probe("x/py", "x/srv", false, 53, Udp, false);
    // srv's egress drops what it starts.
    probe("x/srv", "x/pz", false, 80, Tcp, false);
    // adm: only the admin tier, default accept; the same tiers judge after the Service NAT.
    probe("x/adm", "x/px", false, 80, Tcp, false);
    probe("x/adm", "x/py", false, 80, Tcp, true);
    probe("x/adm", "x/pz", false, 81, Tcp, true);
    probe("x/adm", "x/px", true, 80, Tcp, false);
    probe("x/adm", "x/py", true, 80, Tcp, true);
    probe("x/adm", "x/pz", true, 53, Udp, true);

    // A changed ordered tier is a new context, switched to in one pod update: px on 80 is
    // now accepted by the admin tier.
    rs.decisions.rulebooks.get_mut("admin-in").unwrap().clauses[0].action = Action::Accept;
    let old = lab.ruleset(&cluster, 0);
    lab.with_node_dataplane(0, |dp| dp.apply_delta(&old, &rs))
        .unwrap();
    probe("x/px", "x/srv", false, 80, Tcp, true);
    probe("x/py", "x/srv", false, 81, Tcp, false);
    let st = lab.with_node_dataplane(0, |dp| dp.status(&rs)).unwrap();
    assert!(st.in_sync, "{attach}: {:?}", st.differences);
    lab.down().unwrap();
    assert!(
        !sluice::lab::netns::list()
            .iter()
            .any(|n| n.starts_with(&format!("sl{name}-"))),
        "namespaces left"
    );
}

#[test]
fn ebpf_enforces_ordered_tiers_routed() {
    if ebpf_built() {
        check_tiers(Attach::Routed);
    }
}

#[test]
fn ebpf_enforces_ordered_tiers_bridged() {
    if ebpf_built() {
        check_tiers(Attach::Bridged);
    }
}
