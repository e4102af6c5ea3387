//! The agent's reconcile loop on the real kernel, fed by hand (no API server): it waits for
//! a complete snapshot, finds how pods attach on the node (routed: /32 routes; bridged:
//! neighbour + bridge FDB), enforces, restores a flushed table, and leaves its rules in place
//! when stopped. Needs root.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use sluice::agent::{Agent, AgentConfig, ChangeFeed};
use sluice::compile::Attach;
use sluice::k8s::convert::{Change, Kind, Object};
use sluice::lab::enforce::EnforcedLab;
use sluice::lab::PodSpec;
use sluice::nft::Nft;
use sluice::policy::model::{Namespace, ObjectName, Pod};
use sluice::policy::{networkpolicy, Protocol};

static SERIAL: Mutex<()> = Mutex::new(());

fn pod(lab: &EnforcedLab, ns: &str, name: &str, app: &str) -> Pod {
    let info = lab.pod(&ObjectName::new(ns, name)).unwrap();
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ports: vec![],
        node: Some(format!("node-{}", info.node)),
        host_network: false,
        ips: vec![IpAddr::V4(info.ip)],
    }
}

/// x/a accepts only from app=b.
fn policy() -> Object {
    let np = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "only-b", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}
    }))
    .unwrap();
    Object::Policy(networkpolicy::convert(&np, "x").policy.unwrap())
}

fn lab_with_pods(name: &str, attach: Attach) -> EnforcedLab {
    let mut lab = EnforcedLab::up(name, 1, attach).unwrap();
    for p in ["a", "b", "c"] {
        lab.guard.add_pod(&PodSpec::new("x", p, 0, &[80])).unwrap();
    }
    for info in lab.lab().pods().to_vec() {
        lab.lab()
            .wait_served(&info, Duration::from_secs(5))
            .unwrap();
    }
    lab
}

fn feed_all(lab: &EnforcedLab, feed: &ChangeFeed) {
    feed.send(Change::Relisted(
        Kind::Namespaces,
        vec![Object::Namespace(Namespace::new("x", Default::default()))],
    ));
    feed.send(Change::Relisted(
        Kind::Pods,
        ["a", "b", "c"]
            .iter()
            .map(|p| Object::Pod(pod(lab, "x", p, p)))
            .collect(),
    ));
    feed.send(Change::Relisted(Kind::Policies, vec![policy()]));
    feed.send(Change::Relisted(Kind::ClusterPolicies, vec![]));
}

fn probe(lab: &EnforcedLab, from: &str, to: &str, expect: bool) -> bool {
    let r = lab.probe(
        &ObjectName::new("x", from),
        &ObjectName::new("x", to),
        false,
        80,
        Protocol::Tcp,
        expect,
    );
    matches!(r, sluice::lab::ProbeResult::Connected { .. })
}

fn config(lab: &EnforcedLab) -> AgentConfig {
    AgentConfig {
        netns: Some(lab.lab().node_netns(0).to_string()),
        drift_interval: Duration::from_millis(500),
        publish_snapshot: true,
        ..AgentConfig::new("node-0")
    }
}

fn enforces_and_detects(attach: Attach, lab_name: &str) {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with_pods(lab_name, attach);
    let (agent, feed) = Agent::start_fed(config(&lab)).unwrap();
    // Two of four kinds listed: nothing may be applied from half a snapshot.
    feed.send(Change::Relisted(Kind::Policies, vec![policy()]));
    feed.send(Change::Relisted(Kind::Namespaces, vec![]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.status().syncs, 0);
    let nft = Nft::in_netns(lab.lab().node_netns(0));
    assert!(nft.list_table("inet", "sluice").unwrap().is_none());

    feed_all(&lab, &feed);
    assert!(agent.shared().wait_for(Duration::from_secs(10), |s| s.ready
        && s.unattached.is_empty()));
    let s = agent.status();
    let rs = s.ruleset.unwrap();
    assert_eq!(rs.attach, attach, "detected attachment");
    for p in &rs.pods {
        let info = lab.pod(&ObjectName::parse(&p.pod)).unwrap();
        assert_eq!(
            p.iface.as_deref(),
            Some(info.host_iface.as_str()),
            "{}",
            p.pod
        );
    }
    assert!(probe(&lab, "b", "a", true));
    assert!(!probe(&lab, "c", "a", false));
    assert!(probe(&lab, "a", "c", true));

    // A flushed table is restored by the drift check.
    nft.apply_text("flush table inet sluice\n").unwrap();
    let repaired = agent.shared().wait_for(Duration::from_secs(5), |_| {
        agent.shared().metrics.drift_repairs.get() >= 1
    });
    assert!(repaired, "no drift repair within 5 s");
    assert!(!probe(&lab, "c", "a", false), "restored after the flush");

    // A label change takes effect; stopping leaves the rules in place.
    feed.send(Change::Upsert(Object::Pod(pod(&lab, "x", "c", "b"))));
    assert!(agent.shared().wait_for(Duration::from_secs(5), |s| {
        s.snapshot
            .as_ref()
            .is_some_and(|c| c.pods[&ObjectName::new("x", "c")].labels["app"] == "b")
    }));
    assert!(probe(&lab, "c", "a", true));
    drop(agent);
    assert!(nft.list_table("inet", "sluice").unwrap().is_some());
    lab.down().unwrap();
}

#[test]
fn routed_pods_are_found_by_their_host_routes() {
    enforces_and_detects(
        Attach::Routed,
        &format!("ar{}", std::process::id() % 100_000),
    );
}

#[test]
fn bridged_pods_are_found_behind_the_bridge() {
    enforces_and_detects(
        Attach::Bridged,
        &format!("ab{}", std::process::id() % 100_000),
    );
}

/// A second agent takes over the table of a stopped one with one atomic replacement: a probe
/// running all along never sees a wrong verdict.
#[test]
fn a_new_agent_adopts_the_table_without_a_gap() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with_pods(
        &format!("aa{}", std::process::id() % 100_000),
        Attach::Routed,
    );
    let (agent, feed) = Agent::start_fed(config(&lab)).unwrap();
    feed_all(&lab, &feed);
    assert!(agent
        .shared()
        .wait_for(Duration::from_secs(10), |s| s.ready));
    drop(agent);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let wrong = std::sync::atomic::AtomicUsize::new(0);
    let probes = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for (from, expect) in [("b", true), ("c", false)] {
            let (lab, stop, wrong, probes) = (&lab, &stop, &wrong, &probes);
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = lab.lab().probe(
                        lab.pod(&ObjectName::new("x", from)).unwrap(),
                        lab.pod(&ObjectName::new("x", "a")).unwrap().ip,
                        80,
                        sluice::lab::Proto::Tcp,
                        Duration::from_millis(300),
                    );
                    probes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let connected = matches!(r, sluice::lab::ProbeResult::Connected { .. });
                    if connected != expect {
                        wrong.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
        for _ in 0..3 {
            let (agent, feed) = Agent::start_fed(config(&lab)).unwrap();
            feed_all(&lab, &feed);
            assert!(agent
                .shared()
                .wait_for(Duration::from_secs(10), |s| s.ready));
            std::thread::sleep(Duration::from_millis(300));
            drop(agent);
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert!(probes.into_inner() > 4);
    assert_eq!(wrong.into_inner(), 0, "a probe saw a wrong verdict");
    lab.down().unwrap();
}

#[test]
fn cleanup_removes_the_tables() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with_pods(
        &format!("ac{}", std::process::id() % 100_000),
        Attach::Bridged,
    );
    let (agent, feed) = Agent::start_fed(config(&lab)).unwrap();
    feed_all(&lab, &feed);
    assert!(agent
        .shared()
        .wait_for(Duration::from_secs(10), |s| s.ready));
    drop(agent);
    let ns = lab.lab().node_netns(0).to_string();
    let nft = Nft::in_netns(&ns);
    assert!(nft.list_table("bridge", "sluice").unwrap().is_some());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["agent", "--cleanup", "--netns", &ns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(nft.list_table("inet", "sluice").unwrap().is_none());
    assert!(nft.list_table("bridge", "sluice").unwrap().is_none());
    lab.down().unwrap();
}
