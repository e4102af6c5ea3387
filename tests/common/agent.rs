//! Helpers of the agent tests that run a real API server: a cluster with the default
//! topology (namespaces x, y, z; pods a, b, c in each, spread over two lab nodes), policies
//! written as the conformance cases write them, and continuous probes.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use sluice::conformance::apiserver::{ApiCluster, ApiClusterOptions};
use sluice::conformance::case::{Action, Topology};
use sluice::conformance::world::World;
use sluice::lab::{Lab, ProbeResult, Proto};
use sluice::policy::ObjectName;

/// One API server at a time: each is a few hundred MB and two cores are shared.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn up(opts: ApiClusterOptions) -> (ApiCluster, World) {
    let mut c = ApiCluster::up(opts).expect("API server, lab and agents come up");
    let mut world = World::new(&Topology::Default, 2).unwrap();
    c.sync(&mut world.cluster)
        .expect("the topology is enforced");
    (c, world)
}

/// `x/a` accepts ingress only from pods labelled `pod=b` in its namespace.
pub fn only_b_to_xa() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "only-b", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })
}

pub fn create(world: &mut World, manifest: Value) {
    world.apply(&Action::Create(manifest)).unwrap();
}

/// A probe flow and the verdict it must always have.
#[derive(Clone)]
pub struct Flow {
    pub from: ObjectName,
    pub to: ObjectName,
    pub port: u16,
    pub allowed: bool,
}

pub fn flow(from: &str, to: &str, allowed: bool) -> Flow {
    Flow {
        from: ObjectName::parse(from),
        to: ObjectName::parse(to),
        port: 80,
        allowed,
    }
}

pub fn connects(lab: &Lab, f: &Flow) -> bool {
    probe_flow(lab, f, false)
}

/// Like [`connects`], through the destination's ClusterIP (the lab's kube-proxy-style DNAT).
pub fn connects_via_service(lab: &Lab, f: &Flow) -> bool {
    probe_flow(lab, f, true)
}

fn probe_flow(lab: &Lab, f: &Flow, via_service: bool) -> bool {
    let from = lab
        .pod(&f.from.namespace, &f.from.name)
        .expect("source pod");
    let to = lab
        .pod(&f.to.namespace, &f.to.name)
        .expect("destination pod");
    let target = if via_service { to.service_ip } else { to.ip };
    let r = lab.probe(from, target, f.port, Proto::Tcp, Duration::from_millis(400));
    matches!(r, ProbeResult::Connected { .. })
}

/// Probes each flow in a loop until `stop`; counts probes and wrong verdicts (with when).
pub struct Prober {
    pub stop: AtomicBool,
    pub probes: AtomicUsize,
    pub wrong: Mutex<Vec<String>>,
}

impl Prober {
    pub fn new() -> Prober {
        Prober {
            stop: AtomicBool::new(false),
            probes: AtomicUsize::new(0),
            wrong: Mutex::new(Vec::new()),
        }
    }

    pub fn run(&self, lab: &Lab, f: &Flow, started: std::time::Instant) {
        while !self.stop.load(Ordering::SeqCst) {
            let got = connects(lab, f);
            self.probes.fetch_add(1, Ordering::SeqCst);
            if got != f.allowed {
                self.wrong.lock().unwrap().push(format!(
                    "{} -> {}: {} at {:.1}s",
                    f.from,
                    f.to,
                    if got { "connected" } else { "blocked" },
                    started.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls until every flow has its verdict (the agents converge asynchronously).
pub fn eventually(lab: &Lab, flows: &[Flow], timeout: Duration) {
    eventually_with(lab, flows, timeout, connects)
}

/// [`eventually`], probing with `probe`.
pub fn eventually_with(
    lab: &Lab,
    flows: &[Flow],
    timeout: Duration,
    probe: fn(&Lab, &Flow) -> bool,
) {
    let start = std::time::Instant::now();
    loop {
        let bad: Vec<String> = flows
            .iter()
            .filter(|f| probe(lab, f) != f.allowed)
            .map(|f| format!("{} -> {} should be {}", f.from, f.to, f.allowed))
            .collect();
        if bad.is_empty() {
            return;
        }
        assert!(start.elapsed() < timeout, "after {timeout:?}: {bad:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a metric line (`name{labels} value`) in a text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
