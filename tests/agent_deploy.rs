//! deploy/ is what it says: the ClusterRole only reads the three kinds, the DaemonSet runs
//! `sluice agent` with arguments the binary accepts, in the node's network namespace with
//! NET_ADMIN only, and a real API server accepts both files. The API server part needs
//! scripts/build-apiserver's binaries.

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::PostParams;
use serde_json::Value;

fn docs(file: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn daemonset() -> DaemonSet {
    serde_json::from_value(docs("daemonset.yaml").remove(0)).unwrap()
}

#[test]
fn the_cluster_role_only_reads_pods_namespaces_and_policies() {
    // ClusterNetworkPolicies included; no access to CRDs themselves (discovery is enough).
    let role: ClusterRole = docs("rbac.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(|d| serde_json::from_value(d).unwrap())
        .unwrap();
    let mut granted = Vec::new();
    for rule in role.rules.unwrap() {
        for group in rule.api_groups.unwrap() {
            for res in rule.resources.clone().unwrap() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                assert_eq!(verbs, ["get", "list", "watch"], "{res}");
                granted.push(format!("{group}/{res}"));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/namespaces",
            "/pods",
            "networking.k8s.io/networkpolicies",
            "policy.networking.k8s.io/clusternetworkpolicies"
        ]
    );
}

#[test]
fn the_daemonset_runs_the_agent_on_the_node_network_with_least_capabilities() {
    let ds = daemonset();
    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name.as_deref(), Some("sluice"));
    let c = &spec.containers[0];
    let caps = c
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    // NET_ADMIN for nftables and tc; BPF and PERFMON for the eBPF fallback; nothing else.
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_ADMIN".to_string(), "BPF".into(), "PERFMON".into()][..])
    );
    // The host's bpffs, where the eBPF fallback pins what must outlive the agent.
    let bpffs = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "bpffs")
        .unwrap();
    assert_eq!(bpffs.host_path.as_ref().unwrap().path, "/sys/fs/bpf");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let env = &c.env.as_ref().unwrap()[0];
    assert_eq!(env.name, "NODE_NAME");
    assert_eq!(
        env.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    // The arguments are ones `sluice` accepts.
    let mut argv = vec!["sluice".to_string()];
    argv.extend(c.args.clone().unwrap());
    sluice::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
}

#[test]
fn a_real_api_server_accepts_the_manifests() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // The harness installs rbac.yaml itself (the agent identity of every test uses it).
        let env = sluice::k8s::testenv::TestEnv::start().await.unwrap();
        let client = env.admin_client().await.unwrap();
        let api: kube::Api<DaemonSet> = kube::Api::namespaced(client, "kube-system");
        let created = api
            .create(&PostParams::default(), &daemonset())
            .await
            .unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("sluice"));
    });
}
