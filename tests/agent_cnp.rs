//! ClusterNetworkPolicies reach the agent through a real kube-apiserver (CRDs from
//! sigs.k8s.io/network-policy-api v0.3.0): both served versions, updates, deletions, an
//! invalid CNP reported by name and field while everything else keeps working, a CRD
//! installed after the agent started, and the conformance backend writing CNPs.
//!
//! Until the dataplanes enforce CNPs their subjects fail closed in the kernel, so these tests
//! assert on what the agent holds and compiled from (its snapshot and status), not on traffic.

mod common;

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use sluice::agent::{Agent, AgentConfig, AgentStatus};
use sluice::dataplane::DataplaneKind;
use sluice::k8s::cnp_watch::api_resource;
use sluice::k8s::crds::Channel;
use sluice::k8s::testenv::TestEnv;
use sluice::k8s::watch::WatchOptions;
use sluice::policy::cnp::{Action, Tier};
use sluice::policy::objects::ClusterBuilder;

use common::agent::serial;
use common::Netns;

const WAIT: Duration = Duration::from_secs(20);

fn config(netns: &Netns) -> AgentConfig {
    AgentConfig {
        netns: Some(netns.name.clone()),
        publish_snapshot: true,
        dataplane: DataplaneKind::Nftables,
        watch: WatchOptions {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(1),
            rediscover: Duration::from_millis(500),
        },
        ..AgentConfig::new("node-0")
    }
}

fn cnp(version: &str, name: &str, tier: &str, priority: u32, ingress: Value) -> Value {
    json!({
        "apiVersion": format!("policy.networking.k8s.io/{version}"),
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "tier": tier, "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"team": "x"}}},
            "ingress": ingress,
        }
    })
}

async fn create(client: &Client, version: &str, doc: &Value) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(version));
    let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("creating {doc}: {e}"));
}

async fn delete(client: &Client, name: &str) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource("v1beta1"));
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

fn wait(agent: &Agent, what: &str, pred: impl Fn(&AgentStatus) -> bool) {
    if !agent.shared().wait_for(WAIT, &pred) {
        let s = agent.status();
        panic!(
            "{what}: not within {WAIT:?}; snapshot CNPs {:?}, invalid CNPs {:?}, status.invalid {:?}, last error {:?}",
            s.snapshot.as_ref().map(|c| c.cluster_policies.keys().collect::<Vec<_>>()),
            s.snapshot.as_ref().map(|c| c.invalid_cluster_policies.clone()),
            s.invalid,
            s.last_error
        );
    }
}

fn cnps(s: &AgentStatus) -> Vec<String> {
    s.snapshot
        .as_ref()
        .map(|c| c.cluster_policies.keys().cloned().collect())
        .unwrap_or_default()
}

async fn namespace_and_policy(client: &Client) {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"team": "x"}}}))
            .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "np", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
    }))
    .unwrap();
    Api::<NetworkPolicy>::namespaced(client.clone(), "x")
        .create(&PostParams::default(), &np)
        .await
        .unwrap();
}

fn has_np(s: &AgentStatus) -> bool {
    s.snapshot
        .as_ref()
        .is_some_and(|c| c.policies.keys().any(|k| k.to_string() == "x/np"))
}

#[test]
fn cluster_network_policies_from_the_api_reach_the_agent() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(TestEnv::start()).expect(
        "kube-apiserver and etcd: run scripts/build-apiserver or set SLUICE_KUBE_APISERVER and SLUICE_ETCD",
    );
    rt.block_on(env.install_cnp_crds(Channel::Experimental))
        .expect(
            "the ClusterNetworkPolicy CRDs (scripts/fetch-network-policy-api or SLUICE_NPAPI_DIR)",
        );
    let admin = rt.block_on(env.admin_client()).unwrap();
    rt.block_on(namespace_and_policy(&admin));

    let beta = cnp(
        "v1beta1",
        "beta",
        "Admin",
        10,
        json!([{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {"destinationNamedPort": "http"}]}]),
    );
    let alpha = cnp(
        "v1alpha2",
        "alpha",
        "Baseline",
        3,
        json!([{"action": "Accept", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "a"}}}}]}]),
    );
    rt.block_on(create(&admin, "v1beta1", &beta));
    rt.block_on(create(&admin, "v1alpha2", &alpha));

    let netns = Netns::new("cnpapi");
    let agent = rt
        .block_on(Agent::start(
            rt.block_on(env.agent_client()).unwrap(),
            config(&netns),
            None,
        ))
        .unwrap();
    wait(&agent, "both CNPs in the snapshot", |s| {
        cnps(s) == ["alpha", "beta"] && has_np(s) && s.last_error.is_none()
    });

    // What the agent holds is what the same manifests give (the manifest path is the
    // reference: the API path must not differ from it), and what they say, written out.
    let mut b = ClusterBuilder::new();
    b.add_text(
        "api.yaml",
        &format!(
            "{}\n---\n{}",
            serde_json::to_string(&beta).unwrap(),
            serde_json::to_string(&alpha).unwrap()
        ),
    );
    let (from_files, _) = b.build();
    let s = agent.status();
    let snap = s.snapshot.clone().unwrap();
    assert_eq!(snap.cluster_policies, from_files.cluster_policies);
    let b = &snap.cluster_policies["beta"];
    assert_eq!((b.tier, b.priority), (Tier::Admin, 10));
    assert_eq!(b.ingress.len(), 1);
    assert_eq!(b.ingress[0].action, Action::Deny);
    // destinationNamedPort is experimental: the CRD kept it and the agent saw it.
    assert_eq!(b.ingress[0].ports.len(), 2);
    let a = &snap.cluster_policies["alpha"];
    assert_eq!((a.tier, a.priority), (Tier::Baseline, 3));
    assert!(s.invalid.is_empty(), "{:?}", s.invalid);
    // Compiled from it: the ruleset exists and the sync succeeded.
    assert!(s.ruleset.is_some() && s.ready);

    // Update.
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &api_resource("v1beta1"));
    rt.block_on(api.patch(
        "beta",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"priority": 20}})),
    ))
    .unwrap();
    wait(&agent, "the update", |s| {
        s.snapshot
            .as_ref()
            .and_then(|c| c.cluster_policies.get("beta").map(|p| p.priority))
            == Some(20)
    });

    // Invalid for sluice, admitted by the CRD (it does not check label keys): reported by
    // name and field, its subject fails closed, the rest keeps working.
    let bad = cnp(
        "v1beta1",
        "bad",
        "Admin",
        5,
        json!([{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"not a key!": "v"}}}]}]),
    );
    rt.block_on(create(&admin, "v1beta1", &bad));
    wait(&agent, "the invalid CNP reported", |s| {
        s.invalid.contains_key("clusternetworkpolicies bad")
            && s.snapshot
                .as_ref()
                .is_some_and(|c| c.invalid_cluster_policies.contains_key("bad"))
    });
    let s = agent.status();
    let problems = &s.invalid["clusternetworkpolicies bad"];
    assert!(
        problems
            .iter()
            .all(|p| p.object == "ClusterNetworkPolicy bad"
                && p.field.starts_with("spec.ingress[0].from[0].namespaces")),
        "{problems:?}"
    );
    let snap = s.snapshot.unwrap();
    // Its subject alone is valid: only those pods fail closed.
    assert!(snap.invalid_cluster_policies["bad"].is_some());
    assert_eq!(
        snap.cluster_policies.keys().collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    assert!(has_np(&agent.status()) && agent.status().last_error.is_none());

    // Deletions.
    rt.block_on(delete(&admin, "bad"));
    rt.block_on(delete(&admin, "beta"));
    wait(&agent, "the deletions", |s| {
        cnps(s) == ["alpha"]
            && s.snapshot
                .as_ref()
                .is_some_and(|c| c.invalid_cluster_policies.is_empty())
            && s.invalid.is_empty()
    });

    // Only v1alpha2 served: the agent moves to it (a CNP created now is seen only by a
    // v1alpha2 watch).
    rt.block_on(env.set_cnp_version_served("v1beta1", false))
        .unwrap();
    rt.block_on(create(
        &admin,
        "v1alpha2",
        &cnp(
            "v1alpha2",
            "late",
            "Admin",
            1,
            json!([{"action": "Pass", "from": [{"namespaces": {}}]}]),
        ),
    ));
    wait(&agent, "v1alpha2 followed", |s| {
        cnps(s) == ["alpha", "late"]
    });
    assert!(has_np(&agent.status()));
    drop(agent);
    drop(env);
}

#[test]
fn without_the_crd_the_agent_runs_and_picks_it_up_later() {
    let _serial = serial();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(TestEnv::start()).expect(
        "kube-apiserver and etcd: run scripts/build-apiserver or set SLUICE_KUBE_APISERVER and SLUICE_ETCD",
    );
    let admin = rt.block_on(env.admin_client()).unwrap();
    rt.block_on(namespace_and_policy(&admin));
    let netns = Netns::new("cnpapi");
    let agent = rt
        .block_on(Agent::start(
            rt.block_on(env.agent_client()).unwrap(),
            config(&netns),
            None,
        ))
        .unwrap();
    wait(&agent, "ready with NetworkPolicies only", |s| {
        s.ready && has_np(s) && cnps(s).is_empty()
    });

    rt.block_on(env.install_cnp_crds(Channel::Experimental))
        .expect(
            "the ClusterNetworkPolicy CRDs (scripts/fetch-network-policy-api or SLUICE_NPAPI_DIR)",
        );
    rt.block_on(create(
        &admin,
        "v1beta1",
        &cnp(
            "v1beta1",
            "later",
            "Admin",
            1,
            json!([{"action": "Deny", "from": [{"namespaces": {}}]}]),
        ),
    ));
    wait(&agent, "the CRD installed later is picked up", |s| {
        cnps(s) == ["later"]
    });

    // Removing the CRD removes its objects: the snapshot follows.
    rt.block_on(env.remove_cnp_crds()).unwrap();
    wait(&agent, "the CRD removed", |s| {
        cnps(s).is_empty() && has_np(s)
    });
}

/// The conformance backend through the API server writes, updates and deletes the desired
/// state's ClusterNetworkPolicies, and waits until every agent holds exactly them.
#[test]
fn the_apiserver_backend_writes_updates_and_deletes_cluster_network_policies() {
    use sluice::compile::Attach;
    use sluice::conformance::apiserver::ApiClusterOptions;
    let _serial = serial();
    let (mut c, mut world) = common::agent::up(ApiClusterOptions::new(2, Attach::Routed));
    let text = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-y}
spec:
  tier: Admin
  priority: 4
  subject: {namespaces: {matchLabels: {"kubernetes.io/metadata.name": x}}}
  ingress:
  - {action: Deny, from: [{namespaces: {matchLabels: {"kubernetes.io/metadata.name": y}}}]}
  egress:
  - {action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{udp: {destinationPort: {range: {start: 53, end: 60}}}}]}
"#;
    let mut b = ClusterBuilder::new();
    b.add_text("cnp.yaml", text);
    let (manifests, _) = b.build();
    let deny_y = manifests.cluster_policies["deny-y"].clone();
    world
        .cluster
        .cluster_policies
        .insert("deny-y".into(), deny_y.clone());
    c.sync(&mut world.cluster)
        .expect("the CNP is written and held by every agent");
    let snap = c.in_process(0).unwrap().status().snapshot.unwrap();
    assert_eq!(snap.cluster_policies["deny-y"], deny_y);

    let mut changed = deny_y.clone();
    changed.priority = 9;
    changed.egress.clear();
    world
        .cluster
        .cluster_policies
        .insert("deny-y".into(), changed.clone());
    c.sync(&mut world.cluster).expect("the update");
    let snap = c.in_process(1).unwrap().status().snapshot.unwrap();
    assert_eq!(snap.cluster_policies["deny-y"], changed);
    assert!(snap.cluster_policies["deny-y"].egress.is_empty());

    world.cluster.cluster_policies.clear();
    c.sync(&mut world.cluster).expect("the deletion");
    let snap = c.in_process(0).unwrap().status().snapshot.unwrap();
    assert!(snap.cluster_policies.is_empty());
}
