//! End to end through a real kube-apiserver + etcd (built by scripts/build-apiserver): the
//! conformance suite with policies, labels and pods written with the API and one sluice agent
//! per lab node enforcing them (the same pass bar as the direct lab), and the agent's metrics,
//! health and RBAC during such a run. Needs root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::*;
use serde_json::Value;
use sluice::compile::Attach;
use sluice::conformance::apiserver::{http_get, AgentMode, ApiClusterOptions};

fn suite(attach: &str) {
    suite_with(attach, &[]);
}

fn suite_with(attach: &str, extra: &[&str]) {
    let _serial = serial();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "conformance",
            "run",
            "--via-apiserver",
            "--attach",
            attach,
            "--nodes",
            "2",
            "--output",
            "json",
        ])
        .args(extra)
        .output()
        .expect("run sluice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let cases = report["cases"].as_array().unwrap();
    let failed: Vec<String> = cases
        .iter()
        .filter(|c| c["result"] != "pass" && c["result"] != "skip")
        .map(|c| format!("{}: {}", c["id"], c["reason"]))
        .collect();
    assert!(
        failed.is_empty(),
        "{attach}: failed cases:\n{}\n{stderr}",
        failed.join("\n")
    );
    let skipped: Vec<&str> = cases
        .iter()
        .filter(|c| c["result"] == "skip")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        skipped,
        ["upstream-46", "upstream-47", "upstream-48"],
        "only SCTP is skipped"
    );
    let upstream_passed = cases
        .iter()
        .filter(|c| c["result"] == "pass" && c["id"].as_str().unwrap().starts_with("upstream-"))
        .count();
    assert_eq!(upstream_passed, 45);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn conformance_through_the_apiserver_routed() {
    suite("routed");
}

/// The same suite with every agent enforcing through the eBPF fallback, probed through the
/// pods' ClusterIPs as the upstream suite probes.
#[test]
fn conformance_through_the_apiserver_ebpf_via_service() {
    if !common::ebpf_built() {
        return;
    }
    suite_with("routed", &["--dataplane", "ebpf", "--via", "service"]);
}

#[test]
fn conformance_through_the_apiserver_bridged() {
    suite("bridged");
}

#[test]
fn metrics_health_and_rbac_during_an_e2e_run() {
    let _serial = serial();
    let (mut c, mut world) = up(ApiClusterOptions::new(2, Attach::Routed));
    create(&mut world, only_b_to_xa());
    c.sync(&mut world.cluster).unwrap();
    eventually(
        c.lab.lab(),
        &[
            flow("x/b", "x/a", true),
            flow("x/c", "x/a", false),
            flow("y/a", "x/b", true),
        ],
        Duration::from_secs(10),
    );
    // x/a is on node-0 (round robin over the sorted pods).
    let agent = c.in_process(0).unwrap();
    let addr = agent.metrics_addr().unwrap();
    let (code, text) = http_get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    for series in [
        "sluice_sync_duration_seconds_count",
        "sluice_deltas_applied_total{kind=\"full\"}",
        "sluice_ruleset_rules",
        "sluice_ruleset_sets",
        "sluice_ruleset_elements",
        "sluice_last_successful_sync_timestamp_seconds",
        "sluice_local_pods_selected",
        "sluice_local_pods",
        "sluice_watch_events_total{resource=\"pods\"}",
    ] {
        let v = metric(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
        assert!(v > 0.0, "{series} = {v}");
    }
    assert_eq!(metric(&text, "sluice_local_pods_selected"), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "sluice_dataplane_info{dataplane=\"nftables\",requested=\"nftables\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 200);

    // The ClusterRole of deploy/rbac.yaml lets the agent read and nothing else.
    c.rt.block_on(async {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{DeleteParams, ListParams};
        let client = c.env.agent_client().await.unwrap();
        let pods: kube::Api<Pod> = kube::Api::all(client.clone());
        assert_eq!(
            pods.list(&ListParams::default()).await.unwrap().items.len(),
            9
        );
        let in_x: kube::Api<Pod> = kube::Api::namespaced(client, "x");
        match in_x.delete("a", &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
            other => panic!("the agent may delete pods: {other:?}"),
        }
    });
}

/// `sluice agent --dataplane ebpf` as a process per node: egress rules hold for traffic sent to
/// a ClusterIP (judged after the node's DNAT, against the backend), and the agent says which
/// dataplane it runs. `auto` picks nftables here, where nft works.
#[test]
fn ebpf_agents_enforce_egress_through_services() {
    if !common::ebpf_built() {
        return;
    }
    let _serial = serial();
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let mut opts = ApiClusterOptions::new(2, Attach::Routed);
    opts.dataplane = sluice::dataplane::DataplaneKind::Ebpf;
    opts.agents = vec![AgentMode::External(bin.clone()), AgentMode::External(bin)];
    let (mut c, mut world) = up(opts);
    // x/b (node-1) may open connections only to x/a.
    create(
        &mut world,
        serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "b-to-a-only", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}
        }),
    );
    c.sync(&mut world.cluster).unwrap();
    let flows = [
        flow("x/b", "x/a", true),
        flow("x/b", "x/c", false),
        flow("x/b", "y/a", false),
        flow("x/c", "x/b", true),
        flow("x/a", "x/c", true),
    ];
    eventually_with(
        c.lab.lab(),
        &flows,
        Duration::from_secs(20),
        connects_via_service,
    );
    eventually(c.lab.lab(), &flows, Duration::from_secs(5));
    let agent = c.external(1).expect("node-1 runs an external agent");
    let (code, text) = agent.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &text,
            "sluice_dataplane_info{dataplane=\"ebpf\",requested=\"ebpf\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // SIGKILL: the pinned links keep enforcing while no agent runs ...
    let lab = c.lab.lab();
    let xb = lab.pod("x", "b").unwrap().clone();
    let node_ns = lab.node_netns(1).to_string();
    let ours_on_xb = || {
        let iface = xb.host_iface.clone();
        sluice::lab::netns::exec_in(&node_ns, move || {
            use aya::programs::{SchedClassifier, TcAttachType};
            [TcAttachType::Ingress, TcAttachType::Egress]
                .iter()
                .map(|t| {
                    SchedClassifier::query_tcx(&iface, *t)
                        .map(|(_, progs)| progs.len())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
        .unwrap()
    };
    assert_eq!(ours_on_xb(), 2, "one program per direction on x/b's veth");
    c.external(1).unwrap().kill();
    std::thread::sleep(Duration::from_millis(500));
    for f in &flows {
        assert_eq!(
            connects_via_service(c.lab.lab(), f),
            f.allowed,
            "{} -> {} with node-1's agent down",
            f.from,
            f.to
        );
    }
    // ... and the next agent adopts them: its links replace the old ones, none is left over.
    let agent = c.external(1).unwrap();
    agent.start().unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    eventually_with(
        c.lab.lab(),
        &flows,
        Duration::from_secs(5),
        connects_via_service,
    );
    assert_eq!(ours_on_xb(), 2, "the old links were unpinned");

    assert_eq!(
        sluice::dataplane::choose(sluice::dataplane::DataplaneKind::Auto)
            .unwrap()
            .0,
        sluice::dataplane::DataplaneKind::Nftables
    );
}
