//! The agent under stress, through a real kube-apiserver + etcd: the API server gone for
//! 30 s, the agent process SIGKILLed and restarted under a continuous probe, and a burst of
//! pod events. Needs root and scripts/build-apiserver's binaries.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::agent::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use sluice::compile::Attach;
use sluice::conformance::apiserver::{AgentMode, AgentSlot, ApiClusterOptions};
use sluice::conformance::case::{Action, LabelPod};

/// The API server is killed for 30 s: the rules stay exactly as they were (a continuous
/// probe sees no change), the agents keep retrying, and after the restart they reconnect and
/// enforce a change made through the API.
#[test]
fn api_server_down_for_30_seconds() {
    let _serial = serial();
    let (mut c, mut world) = up(ApiClusterOptions::new(2, Attach::Routed));
    create(&mut world, only_b_to_xa());
    c.sync(&mut world.cluster).unwrap();
    let flows = [
        flow("x/b", "x/a", true),
        flow("x/c", "x/a", false),
        flow("y/c", "x/a", false),
    ];
    eventually(c.lab.lab(), &flows, Duration::from_secs(10));

    let prober = Prober::new();
    let started = Instant::now();
    let lab = c.lab.lab().clone();
    std::thread::scope(|s| {
        for f in &flows {
            let (p, lab) = (&prober, &lab);
            s.spawn(move || p.run(lab, f, started));
        }
        c.env.stop_apiserver();
        std::thread::sleep(Duration::from_secs(30));
        // Still ready: the rules the agent holds are the last known truth.
        let agent = c.in_process(0).unwrap();
        assert!(agent.shared().readiness().is_ok());
        let text = agent.shared().metrics.render();
        assert!(
            metric(&text, "sluice_errors_total{stage=\"watch\"}").unwrap_or(0.0) >= 1.0,
            "watch errors are counted:\n{text}"
        );
        c.rt.block_on(c.env.start_apiserver()).unwrap();
        prober.stop.store(true, Ordering::SeqCst);
    });
    let wrong = prober.wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "verdicts changed while the API server was down: {wrong:?}"
    );
    assert!(prober.probes.load(Ordering::SeqCst) > 30);

    // A change made after the restart reaches the kernel: x/c becomes a `pod=b`.
    world
        .apply(&Action::LabelPod(LabelPod {
            pod: "x/c".into(),
            labels: [("pod".to_string(), Some("b".to_string()))].into(),
        }))
        .unwrap();
    let t = Instant::now();
    c.sync(&mut world.cluster)
        .expect("agents reconnect and converge");
    eprintln!(
        "converged {:.1}s after the API server came back",
        t.elapsed().as_secs_f64()
    );
    eventually(
        c.lab.lab(),
        &[flow("x/c", "x/a", true), flow("y/c", "x/a", false)],
        Duration::from_secs(10),
    );
}

/// node-0's agent is the real `sluice agent` process. SIGKILL it and start it again, three
/// times, while probes run: the rules stay while it is dead, and the new process takes the
/// table over atomically, so no probe ever sees a wrong verdict.
#[test]
fn agent_sigkill_and_restart_under_a_continuous_probe() {
    let _serial = serial();
    let mut opts = ApiClusterOptions::new(2, Attach::Routed);
    opts.agents = vec![
        AgentMode::External(env!("CARGO_BIN_EXE_sluice").into()),
        AgentMode::InProcess,
    ];
    let (mut c, mut world) = up(opts);
    create(&mut world, only_b_to_xa());
    c.sync(&mut world.cluster).unwrap();
    // x/a is on node-0; probes from both nodes.
    let flows = [
        flow("x/b", "x/a", true),
        flow("x/c", "x/a", false),
        flow("y/b", "x/a", false),
        flow("x/a", "y/a", true),
    ];
    eventually(c.lab.lab(), &flows, Duration::from_secs(10));

    let prober = Prober::new();
    let started = Instant::now();
    let lab = c.lab.lab().clone();
    let AgentSlot::External(agent) = &mut c.agents[0] else {
        panic!("node-0 runs the external agent")
    };
    std::thread::scope(|s| {
        for f in &flows {
            let (p, lab) = (&prober, &lab);
            s.spawn(move || p.run(lab, f, started));
        }
        for round in 0..3 {
            std::thread::sleep(Duration::from_secs(1));
            let pid = agent.pid().unwrap();
            agent.kill();
            eprintln!(
                "round {round}: killed agent pid {pid} at {:.1}s",
                started.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_secs(2));
            agent.start().unwrap();
            agent.wait_ready(Duration::from_secs(30)).unwrap();
            eprintln!(
                "round {round}: new agent ready at {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        prober.stop.store(true, Ordering::SeqCst);
    });
    let wrong = prober.wrong.into_inner().unwrap();
    let probes = prober.probes.load(Ordering::SeqCst);
    assert!(probes > 40, "only {probes} probes");
    assert!(
        wrong.is_empty(),
        "wrong verdicts across SIGKILL/restart: {wrong:?}"
    );
    // The restarted process serves its metrics.
    let (code, text) = agent.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        metric(&text, "sluice_local_pods_selected"),
        Some(1.0),
        "{text}"
    );
}

/// 1,000 pods are created through the API and given addresses (2,000 watch events, as fast
/// as the API server takes them). Every one is a peer of a policy on node-0; the agent must
/// hold all of them in the kernel within 1 s of the last write.
#[test]
fn a_burst_of_1000_pod_events_converges_within_a_second() {
    let _serial = serial();
    let (mut c, mut world) = up(ApiClusterOptions::new(2, Attach::Routed));
    create(
        &mut world,
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "from-burst", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "burst"}},
                                            "podSelector": {"matchLabels": {"burst": "yes"}}}]}]}
        }),
    );
    c.sync(&mut world.cluster).unwrap();
    const N: usize = 1000;
    let admin = c.admin().clone();
    let last_write = c.rt.block_on(async {
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some("burst".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        kube::Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let api: kube::Api<Pod> = kube::Api::namespaced(admin, "burst");
        // On a node outside the lab (peers elsewhere in the cluster) with made-up addresses:
        // no lab pods needed.
        let results: Vec<Instant> = futures::stream::iter(0..N)
            .map(|i| {
                let api = api.clone();
                async move {
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": format!("p{i}"), "labels": {"burst": "yes"}},
                        "spec": {"nodeName": "elsewhere", "automountServiceAccountToken": false,
                                 "containers": [{"name": "c", "image": "none"}]}
                    }))
                    .unwrap();
                    api.create(&PostParams::default(), &pod).await.unwrap();
                    let ip = Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250 + 1) as u8);
                    let status = json!({"status": {"phase": "Running", "podIP": ip.to_string(),
                                                   "podIPs": [{"ip": ip.to_string()}]}});
                    api.patch_status(
                        &format!("p{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                    .unwrap();
                    Instant::now()
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().max().unwrap()
    });
    let writes_started = last_write; // for the message only
    let agent = c.in_process(0).unwrap();
    let burst_ips = |s: &sluice::agent::AgentStatus| {
        s.snapshot.as_ref().map_or(0, |c| {
            c.pods
                .values()
                .filter(|p| p.namespace == "burst" && !p.ips.is_empty())
                .count()
        })
    };
    let ok = agent.shared().wait_for(Duration::from_secs(30), |s| {
        burst_ips(s) == N && s.last_error.is_none()
    });
    let converged = Instant::now();
    assert!(
        ok,
        "only {} of {N} pods enforced",
        burst_ips(&agent.status())
    );
    let lag = converged.saturating_duration_since(last_write);
    eprintln!(
        "1000 pods / 2000 events: enforced {:.0} ms after the last write ({} syncs)",
        lag.as_secs_f64() * 1000.0,
        agent.status().syncs
    );
    // The kernel holds them: node-0's peer set of the policy has every address.
    let nft = sluice::nft::Nft::in_netns(c.lab.lab().node_netns(0));
    let table = nft
        .list_table("inet", "sluice")
        .unwrap()
        .unwrap()
        .to_string();
    for i in [0usize, 499, 999] {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250 + 1) as u8));
        assert!(
            table.contains(&format!("\"{ip}\"")),
            "{ip} not in the kernel"
        );
    }
    assert!(
        lag <= Duration::from_secs(1),
        "converged {lag:?} after the last write (writes done at {writes_started:?})"
    );
}
