//! Lab integration tests: real namespaces, real CNI plugins, real connections. Need root.
//! Each test builds its own uniquely named lab inside a `LabGuard`, which removes it even when
//! an assertion fails.

use sluice::lab::{
    self, exec_in, netns, Attach, BlockReason, Lab, LabGuard, LabSpec, PodSpec, ProbeResult, Proto,
};
use std::net::Ipv4Addr;
use std::time::Duration;

const T: Duration = Duration::from_millis(1000);

/// Unique per test and per process, so parallel test runs never collide.
fn lab_name(tag: &str) -> String {
    format!("t{tag}{}", std::process::id())
}

/// Nothing of lab `name` is left: no namespace, no state.
fn assert_gone(name: &str) {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let listing = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("sl{name}-");
    assert!(
        !listing.lines().any(|l| l.starts_with(&prefix)),
        "namespaces of {name} left:\n{listing}"
    );
    assert!(!lab::state_dir(name).exists(), "state dir of {name} left");
}

fn six_pods() -> Vec<PodSpec> {
    vec![
        PodSpec::new("x", "a", 0, &[80, 81]).with_ip(Ipv4Addr::new(10, 244, 0, 10)),
        PodSpec::new("x", "b", 0, &[80, 81]),
        PodSpec::new("y", "c", 0, &[80, 81]),
        PodSpec::new("x", "d", 1, &[80, 81]),
        PodSpec::new("y", "e", 1, &[80, 81]).with_ip(Ipv4Addr::new(10, 244, 1, 20)),
        PodSpec::new("z", "f", 1, &[80, 81]),
    ]
}

fn who(l: &Lab, ns: &str, name: &str) -> String {
    let p = l.pod(ns, name).unwrap();
    format!("{}/{}", p.namespace, p.name)
}

fn expect_connected(r: &ProbeResult, answered_by: &str, what: &str) {
    assert!(r.is_connected(), "{what}: {r}");
    assert_eq!(r.answered_by(), Some(answered_by), "{what}: {r}");
}

fn cluster(attach: Attach, tag: &str) {
    let name = lab_name(tag);
    let spec = LabSpec {
        name: name.clone(),
        nodes: 2,
        attach,
        pods: six_pods(),
    };
    let mut l = LabGuard::up(&spec).expect("lab up");
    l.serve().expect("serve");

    // Requested IPs honoured, others inside their node's CIDR; host veths found.
    assert_eq!(l.pod("x", "a").unwrap().ip, Ipv4Addr::new(10, 244, 0, 10));
    assert_eq!(l.pod("y", "e").unwrap().ip, Ipv4Addr::new(10, 244, 1, 20));
    for p in l.pods() {
        assert!(l.node_cidr(p.node).contains(&p.ip), "{p:?}");
        assert!(p.host_iface.starts_with("veth"), "{p:?}");
        assert!(l.node_cidr(0) != l.node_cidr(1));
    }

    // Full matrix, both protocols: every pod reaches every pod (same node and cross-node).
    let pods = l.pods().to_vec();
    for from in &pods {
        for to in &pods {
            for proto in [Proto::Tcp, Proto::Udp] {
                let r = l.probe(from, to.ip, 80, proto, T);
                expect_connected(
                    &r,
                    &format!("{}/{}", to.namespace, to.name),
                    &format!(
                        "{}/{} -> {}/{} {proto}",
                        from.namespace, from.name, to.namespace, to.name
                    ),
                );
            }
        }
    }

    // A port nobody serves is refused (RST / ICMP port unreachable) = Blocked.
    let a = l.pod("x", "a").unwrap().clone();
    let d = l.pod("x", "d").unwrap().clone();
    let b = l.pod("x", "b").unwrap().clone();
    for (to, proto) in [
        (&b, Proto::Tcp),
        (&b, Proto::Udp),
        (&d, Proto::Tcp),
        (&d, Proto::Udp),
    ] {
        let r = l.probe(&a, to.ip, 9999, proto, T);
        assert!(
            matches!(
                r,
                ProbeResult::Blocked {
                    reason: BlockReason::Refused,
                    ..
                }
            ),
            "unserved port {proto} to {}: {r}",
            to.name
        );
    }

    // Services: same node, cross node, own service (hairpin), and from a node.
    for proto in [Proto::Tcp, Proto::Udp] {
        for (from, to) in [(&a, &b), (&a, &d), (&d, &a), (&a, &a), (&d, &d)] {
            let r = l.probe(from, to.service_ip, 81, proto, T);
            expect_connected(
                &r,
                &who(&l, &to.namespace, &to.name),
                &format!("{} -> svc of {} {proto}", from.name, to.name),
            );
        }
        let r = l.probe_from_node(0, d.service_ip, 80, proto, T);
        expect_connected(&r, "x/d", &format!("node0 -> svc of d {proto}"));
        let r = l.probe_from_node(1, d.ip, 80, proto, T);
        expect_connected(&r, "x/d", &format!("node1 -> d {proto}"));
    }

    // Cross-node traffic goes through flannel.1: its tx counter on the sender's node and rx
    // counter on the receiver's node grow with cross-node probes, by at least one per probe.
    let (tx0, _) = l.vxlan_packets(0).unwrap();
    let (_, rx1) = l.vxlan_packets(1).unwrap();
    for _ in 0..5 {
        assert!(l.probe(&a, d.ip, 80, Proto::Udp, T).is_connected());
    }
    let (tx0b, _) = l.vxlan_packets(0).unwrap();
    let (_, rx1b) = l.vxlan_packets(1).unwrap();
    assert!(tx0b >= tx0 + 5, "flannel.1 tx on node0: {tx0} -> {tx0b}");
    assert!(rx1b >= rx1 + 5, "flannel.1 rx on node1: {rx1} -> {rx1b}");
    // ... and same-node traffic does not.
    let (tx0, _) = l.vxlan_packets(0).unwrap();
    for _ in 0..5 {
        assert!(l.probe(&a, b.ip, 80, Proto::Udp, T).is_connected());
    }
    assert_eq!(
        l.vxlan_packets(0).unwrap().0,
        tx0,
        "same-node traffic used vxlan"
    );

    // The state file lets another process attach to the same lab.
    let again = Lab::load(&name).unwrap();
    assert_eq!(again.pods(), l.pods());
    assert_eq!(again.resolve("x/d").unwrap(), d.ip);
    assert_eq!(again.resolve("svc:x/d").unwrap(), d.service_ip);
    assert_eq!(
        again.resolve("10.1.2.3").unwrap(),
        Ipv4Addr::new(10, 1, 2, 3)
    );
    assert!(again.resolve("x/nope").is_err());

    l.down().expect("down");
    assert_gone(&name);
}

#[test]
fn lab_routed_cluster() {
    cluster(Attach::Routed, "r");
}

#[test]
fn lab_bridged_cluster() {
    cluster(Attach::Bridged, "b");
}

fn add_remove(attach: Attach, tag: &str) {
    let name = lab_name(tag);
    let spec = LabSpec {
        name: name.clone(),
        nodes: 2,
        attach,
        pods: vec![
            PodSpec::new("x", "a", 0, &[80]),
            PodSpec::new("x", "b", 1, &[80]),
        ],
    };
    let mut l = LabGuard::up(&spec).expect("lab up");
    l.serve().unwrap();
    let a = l.pod("x", "a").unwrap().clone();

    // Added to a running lab (servers already started): served, reachable, has a service.
    let want = Ipv4Addr::new(10, 244, 1, 77);
    let n = l
        .add_pod(&PodSpec::new("y", "new", 1, &[8080]).with_ip(want))
        .unwrap();
    assert_eq!(n.ip, want);
    expect_connected(&l.probe(&a, n.ip, 8080, Proto::Tcp, T), "y/new", "a -> new");
    expect_connected(
        &l.probe(&a, n.service_ip, 8080, Proto::Udp, T),
        "y/new",
        "a -> svc new",
    );

    // Removed: unreachable, namespace and IPAM reservation gone.
    l.remove_pod("y", "new").unwrap();
    assert!(l.pod("y", "new").is_none());
    assert!(!netns::exists(&n.netns));
    let r = l.probe(&a, n.ip, 8080, Proto::Tcp, T);
    assert!(r.is_blocked(), "removed pod still reachable: {r}");
    let r = l.probe(&a, n.service_ip, 8080, Proto::Tcp, T);
    assert!(r.is_blocked(), "removed pod's service still reachable: {r}");
    let ipam = lab::state_dir(&name).join("ipam/n1").join(want.to_string());
    assert!(!ipam.exists(), "IPAM reservation left: {}", ipam.display());

    // IP reuse: a different pod takes the same address; fresh namespace, served again.
    let m = l
        .add_pod(&PodSpec::new("y", "other", 1, &[8080]).with_ip(want))
        .unwrap();
    assert_eq!(m.ip, want);
    expect_connected(
        &l.probe(&a, want, 8080, Proto::Tcp, T),
        "y/other",
        "a -> reused IP",
    );
    // Same name re-created: a new namespace instance (servers must follow it).
    l.remove_pod("y", "other").unwrap();
    let n2 = l
        .add_pod(&PodSpec::new("y", "new", 1, &[8080]).with_ip(want))
        .unwrap();
    // (Its namespace inode may equal the old one: the kernel reuses inode numbers of freed
    // namespaces, so only the answer proves the servers followed.)
    assert!(netns::exists(&n2.netns));
    expect_connected(
        &l.probe(&a, want, 8080, Proto::Udp, T),
        "y/new",
        "a -> re-created",
    );

    // Bad requests are refused without side effects.
    assert!(
        l.add_pod(&PodSpec::new("y", "new", 1, &[80])).is_err(),
        "duplicate"
    );
    assert!(
        l.add_pod(&PodSpec::new("y", "z", 5, &[80])).is_err(),
        "no such node"
    );
    let outside = PodSpec::new("y", "z", 0, &[80]).with_ip(Ipv4Addr::new(10, 244, 1, 9));
    assert!(l.add_pod(&outside).is_err(), "IP outside node CIDR");
    let taken = PodSpec::new("y", "z", 1, &[80]).with_ip(want);
    assert!(l.add_pod(&taken).is_err(), "IP in use");
    assert_eq!(l.pods().len(), 3);
    assert!(!netns::exists(&format!("sl{name}-y-z")));

    l.down().expect("down");
    assert_gone(&name);
}

#[test]
fn lab_add_remove_pod_routed() {
    add_remove(Attach::Routed, "ar");
}

#[test]
fn lab_add_remove_pod_bridged() {
    add_remove(Attach::Bridged, "ab");
}

#[test]
fn lab_failed_up_cleans_up() {
    let name = lab_name("f");
    let spec = LabSpec {
        name: name.clone(),
        nodes: 2,
        attach: Attach::Routed,
        pods: vec![
            PodSpec::new("x", "a", 0, &[80]),
            // Outside node 1's CIDR: fails after the nodes and the first pod exist.
            PodSpec::new("x", "b", 1, &[80]).with_ip(Ipv4Addr::new(10, 244, 0, 5)),
        ],
    };
    let err = Lab::up(&spec).expect_err("must fail");
    assert!(format!("{err:#}").contains("10.244.0.5"), "{err:#}");
    assert_gone(&name);
    assert!(Lab::up(&LabSpec {
        name: "Bad-Name".into(),
        ..spec
    })
    .is_err());
}

#[test]
fn lab_down_by_name_after_crash() {
    let name = lab_name("c");
    let spec = LabSpec {
        name: name.clone(),
        nodes: 1,
        attach: Attach::Bridged,
        pods: vec![PodSpec::new("x", "a", 0, &[80])],
    };
    // Simulate a crash: the handle is forgotten, only the machine state remains.
    let l = Lab::up(&spec).unwrap();
    assert!(Lab::up(&spec).is_err(), "second lab with the same name");
    std::mem::forget(l);
    assert!(lab::list().contains(&name));
    lab::down_by_name(&name).unwrap();
    assert_gone(&name);
    // Idempotent, also without any state.
    lab::down_by_name(&name).unwrap();

    // State file lost too: the prefix still finds everything.
    let l = Lab::up(&spec).unwrap();
    std::fs::remove_dir_all(l.state_dir()).unwrap();
    std::mem::forget(l);
    lab::down_by_name(&name).unwrap();
    assert_gone(&name);
}

#[test]
fn lab_exec_in_node_namespace() {
    let name = lab_name("e");
    let spec = LabSpec {
        name: name.clone(),
        nodes: 1,
        attach: Attach::Routed,
        pods: vec![],
    };
    let l = LabGuard::up(&spec).unwrap();
    // Per-thread namespace: /proc/thread-self/net, not /proc/net (that is the main thread's).
    let dev = exec_in(l.node_netns(0), || {
        std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
    })
    .unwrap();
    assert!(dev.contains("flannel.1"), "{dev}");
    let here = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    // The caller's thread is untouched.
    assert!(!here.contains("flannel.1"), "{here}");
    assert!(exec_in("sl-no-such-netns", || ()).is_err());
    // SCTP is reported as skipped (no SCTP sockets on these kernels) or probed; never Blocked
    // for a missing protocol.
    let r = lab::probe::probe_from(l.node_netns(0), Ipv4Addr::LOCALHOST, 80, Proto::Sctp, T);
    assert!(!matches!(r, ProbeResult::Error { .. }), "{r}");
}

/// A detached server process serves the lab until it is torn down. The "process" is this test
/// binary re-run with only `lab_serve_helper`, which serves the lab named in its environment.
#[test]
fn lab_detached_server() {
    let name = lab_name("s");
    let spec = LabSpec {
        name: name.clone(),
        nodes: 2,
        attach: Attach::Routed,
        pods: vec![
            PodSpec::new("x", "a", 0, &[80]),
            PodSpec::new("x", "b", 1, &[80]),
        ],
    };
    let mut l = LabGuard::up(&spec).unwrap();
    let exe = std::env::current_exe().unwrap();
    let pid = l
        .spawn_server(
            &exe,
            &["--ignored", "--exact", "lab_serve_helper", "--nocapture"],
        )
        .unwrap();
    // Another process (here: a reloaded handle) probes.
    let other = Lab::load(&name).unwrap();
    let a = other.pod("x", "a").unwrap();
    let b = other.pod("x", "b").unwrap();
    expect_connected(&other.probe(a, b.ip, 80, Proto::Tcp, T), "x/b", "a -> b");
    // A pod added later is picked up by the running server.
    let c = l.add_pod(&PodSpec::new("x", "c", 1, &[90])).unwrap();
    l.wait_served(&c, Duration::from_secs(5)).unwrap();
    expect_connected(&l.probe(a, c.ip, 90, Proto::Udp, T), "x/c", "a -> c");
    l.down().unwrap();
    assert_gone(&name);
    // The server is gone (signalled by teardown).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "server {pid} alive: {stat}"
    );
}

#[test]
#[ignore = "helper: run by lab_detached_server as a separate process"]
fn lab_serve_helper() {
    if let Ok(name) = std::env::var("SLUICE_LAB_SERVE") {
        Lab::load(&name).unwrap().serve_forever().unwrap();
    }
}

/// Install an nft script in a namespace, from a thread inside it (exercises `exec_in` with a
/// child process, which inherits the thread's namespace, as the dataplane will use it).
fn nft_in(netns: &str, script: &str) {
    use std::io::Write;
    let script = script.to_string();
    exec_in(netns, move || {
        let mut c = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success(), "nft failed:\n{script}");
    })
    .unwrap();
}

/// A drop/reject in a node's forward hook is seen by probes as Timeout/Refused, for same-node
/// traffic (for bridged pods this is br_netfilter at work) and cross-node traffic alike.
fn netfilter_verdicts(attach: Attach, tag: &str) {
    let name = lab_name(tag);
    let spec = LabSpec {
        name: name.clone(),
        nodes: 2,
        attach,
        pods: vec![
            PodSpec::new("x", "a", 0, &[80]),
            PodSpec::new("x", "b", 0, &[80]),
            PodSpec::new("x", "d", 1, &[80]),
        ],
    };
    let mut l = LabGuard::up(&spec).unwrap();
    l.serve().unwrap();
    let a = l.pod("x", "a").unwrap().clone();
    let b = l.pod("x", "b").unwrap().clone();
    let d = l.pod("x", "d").unwrap().clone();
    let short = Duration::from_millis(300);
    let rules = |verdict: &str, ip: Ipv4Addr| {
        format!(
            "table inet labtest {{\n chain labfwd {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {ip} {verdict}\n }}\n}}\n"
        )
    };
    nft_in(l.node_netns(0), &rules("drop", b.ip));
    nft_in(l.node_netns(1), &rules("reject with tcp reset", d.ip));
    for proto in [Proto::Tcp, Proto::Udp] {
        let r = l.probe(&a, b.ip, 80, proto, short);
        assert!(
            matches!(
                r,
                ProbeResult::Blocked {
                    reason: BlockReason::Timeout,
                    ..
                }
            ),
            "same-node drop {proto}: {r}"
        );
    }
    let r = l.probe(&a, d.ip, 80, Proto::Tcp, short);
    assert!(
        matches!(
            r,
            ProbeResult::Blocked {
                reason: BlockReason::Refused,
                ..
            }
        ),
        "cross-node reject: {r}"
    );
    // Through the service too: policy sees the translated (pod) address.
    let r = l.probe(&a, b.service_ip, 80, Proto::Tcp, short);
    assert!(r.is_blocked(), "service to dropped pod: {r}");
    // Retry stops as soon as the expectation is met, and reports the last result otherwise.
    let r = l.probe_with_retry(&a, b.ip, 80, Proto::Tcp, short, false, 5);
    assert!(r.is_blocked(), "{r}");
    nft_in(l.node_netns(0), "delete table inet labtest\n");
    let r = l.probe_with_retry(&a, b.ip, 80, Proto::Tcp, T, true, 3);
    expect_connected(&r, "x/b", "after rules removed");
    l.down().unwrap();
    assert_gone(&name);
}

#[test]
fn lab_netfilter_verdicts_routed() {
    netfilter_verdicts(Attach::Routed, "vr");
}

#[test]
fn lab_netfilter_verdicts_bridged() {
    netfilter_verdicts(Attach::Bridged, "vb");
}

/// Issue 17 class 12: a cluster export (its own node names, 10.244.7.x / 10.244.9.x pod
/// addresses, one Pending pod without an address) replays in the lab as is, and what the
/// kernel lets through equals `sluice matrix` on the same files.
#[test]
fn lab_replays_a_cluster_export() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/export");
    let sluice = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .output()
            .expect("run sluice");
        assert!(
            out.status.success(),
            "sluice {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let key = |c: &serde_json::Value| {
        (
            c["from"].as_str().unwrap().to_string(),
            c["to"].as_str().unwrap().to_string(),
            c["port"].as_u64().unwrap(),
            c["protocol"].as_str().unwrap().to_ascii_uppercase(),
        )
    };
    let matrix = sluice(&["matrix", "-m", dir, "--output", "json"]);
    let want: std::collections::BTreeMap<_, bool> = matrix
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["from"] != c["to"])
        .map(|c| (key(c), c["allowed"].as_bool().unwrap()))
        .collect();
    assert!(want.values().any(|a| *a) && want.values().any(|a| !*a));
    let run = sluice(&["lab", "run", "-m", dir, "--output", "json"]);
    let got: std::collections::BTreeMap<_, Option<bool>> = run["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (key(c), c["observed"].as_bool()))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let differ: Vec<String> = want
        .iter()
        .filter(|(k, a)| got[*k] != Some(**a))
        .map(|(k, a)| format!("{k:?}: matrix {a}, lab {:?}", got[k]))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
