//! Root-free: the reconciler on the fake dataplane and a detector that finds every local
//! pod's interface.
use super::*;
use crate::compile::ir::Isolation;
use crate::compile::{Attach, Attachment};
use crate::dataplane::fake::{Fake, TxKind};
use crate::k8s::convert::Object;
use crate::policy::model::Namespace;

/// Every local pod is routed through `veth-<name>`.
struct Found;

impl Detect for Found {
    fn detect(&mut self, local: &[LocalPod]) -> Result<Detection> {
        Ok(Detection {
            attach: Attach::Routed,
            attachments: local
                .iter()
                .map(|p| {
                    let a = Attachment {
                        iface: Some(format!("veth-{}", p.name.name)),
                        mac: None,
                    };
                    (p.name.clone(), a)
                })
                .collect(),
            missing: vec![],
        })
    }
}

fn on_fake() -> (Reconciler, Fake) {
    let cfg = AgentConfig {
        debounce: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        drift_interval: Duration::from_secs(3600),
        ..AgentConfig::new("node-0")
    };
    let fake = Fake::new();
    let r = Reconciler::with(
        cfg,
        Arc::new(Shared::new()),
        Box::new(fake.clone()),
        Box::new(Found),
    );
    (r, fake)
}

fn reconciler() -> Reconciler {
    on_fake().0
}

fn ns(name: &str) -> Change {
    Change::Upsert(Object::Namespace(Namespace::new(name, Default::default())))
}

fn pod(name: &str, node: &str, ip: &str) -> Object {
    let p = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": name, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap();
    convert::pod(&p).unwrap().unwrap()
}

fn policy(name: &str, app: &str, cidr: &str) -> Object {
    let np = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "default", "name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}],
        },
    }))
    .unwrap();
    convert::policy(&np)
}

/// Every kind listed: the default namespace, pod `web` here and `db` elsewhere, no policies.
fn listed(r: &mut Reconciler) {
    r.on_change(Change::Relisted(Kind::ClusterPolicies, vec![]));
    r.on_change(Change::Relisted(Kind::Namespaces, vec![ns_obj("default")]));
    r.on_change(Change::Relisted(
        Kind::Pods,
        vec![
            pod("web", "node-0", "10.0.0.2"),
            pod("db", "node-1", "10.0.1.2"),
        ],
    ));
    r.on_change(Change::Relisted(Kind::Policies, vec![]));
}

fn ns_obj(name: &str) -> Object {
    Object::Namespace(Namespace::new(name, Default::default()))
}

/// Runs what is due once the debounce has passed.
fn settle(r: &mut Reconciler) {
    let later = r.last_change.max(Instant::now()) + r.cfg.debounce;
    r.tick(later);
}

fn kinds(fake: &Fake) -> Vec<(TxKind, bool)> {
    fake.transactions()
        .iter()
        .map(|t| (t.kind, t.failed))
        .collect()
}

fn web(rs: &NodeRuleset) -> &crate::compile::ir::LocalPod {
    rs.pods.iter().find(|p| p.pod.ends_with("web")).unwrap()
}

#[test]
fn first_sync_is_full_then_deltas_coalesce_and_noops_stay_noops() {
    let (mut r, fake) = on_fake();
    listed(&mut r);
    r.tick(Instant::now());
    assert_eq!(kinds(&fake), [(TxKind::Full, false)]);
    assert_eq!(r.shared.status().last_kind, "full");
    // Three changes inside the debounce window: one delta.
    r.on_change(Change::Upsert(policy("p1", "web", "10.1.0.0/16")));
    r.on_change(Change::Upsert(policy("p2", "web", "10.2.0.0/16")));
    r.tick(Instant::now());
    assert_eq!(fake.transactions().len(), 1, "debounced");
    r.on_change(Change::Upsert(policy("p3", "web", "10.3.0.0/16")));
    settle(&mut r);
    let tx = fake.transactions();
    assert_eq!(kinds(&fake)[1..], [(TxKind::Delta, false)]);
    assert!(
        tx[1].base_matched && !tx[1].changed.is_empty(),
        "{:?}",
        tx[1]
    );
    let rs = fake.installed().unwrap();
    assert!(
        matches!(&web(&rs).ingress, Isolation::Isolated { policies, .. } if policies.len() == 3)
    );
    assert_eq!(r.shared.status().last_kind, "delta");
    // Another node's pod changes nothing here.
    r.on_change(Change::Upsert(pod("db", "node-1", "10.0.1.3")));
    settle(&mut r);
    assert_eq!(r.shared.status().last_kind, "noop");
    assert!(fake.transactions()[2].changed.is_empty());
    assert_eq!(fake.installed().unwrap(), rs);
}

#[test]
fn drift_is_repaired_with_a_full_apply() {
    let (mut r, fake) = on_fake();
    listed(&mut r);
    r.on_change(Change::Upsert(policy("p1", "web", "10.1.0.0/16")));
    r.tick(Instant::now());
    let want = fake.installed().unwrap();
    // Nothing changed: the drift check does nothing.
    r.drift_check();
    assert_eq!(fake.transactions().len(), 1);
    fake.flush_a_table();
    assert_ne!(fake.installed().unwrap(), want);
    let now = Instant::now();
    r.next_drift = now;
    r.tick(now);
    assert_eq!(kinds(&fake), [(TxKind::Full, false), (TxKind::Full, false)]);
    assert_eq!(fake.installed().unwrap(), want);
    assert_eq!(r.shared.metrics.drift_repairs.get(), 1);
    fake.delete_everything();
    r.drift_check();
    assert_eq!(fake.installed().unwrap(), want);
    assert_eq!(r.shared.metrics.drift_repairs.get(), 2);
}

#[test]
fn a_failed_apply_is_retried_and_the_next_one_is_full() {
    let (mut r, fake) = on_fake();
    listed(&mut r);
    fake.fail_next("first");
    r.tick(Instant::now());
    assert_eq!(kinds(&fake), [(TxKind::Full, true)]);
    let s = r.shared.status();
    assert_eq!(s.failed_syncs, 1);
    assert!(s.last_error.unwrap().contains("first"));
    let retry = r.retry_at.expect("a retry is scheduled");
    assert!(!r.sync_due(retry - Duration::from_millis(1)));
    r.tick(retry);
    assert_eq!(kinds(&fake)[1..], [(TxKind::Full, false)]);
    assert!(r.retry_at.is_none());
    assert!(r.shared.status().last_error.is_none());

    // A failed delta is replaced by a full apply at once.
    fake.fail_next("delta");
    r.on_change(Change::Upsert(policy("p1", "web", "10.1.0.0/16")));
    settle(&mut r);
    assert_eq!(
        kinds(&fake)[2..],
        [(TxKind::Delta, true), (TxKind::Full, false)]
    );
    assert_eq!(r.shared.status().last_kind, "full");

    // Both fail: nothing is known of the kernel, the retry is full.
    fake.fail_next("delta");
    fake.fail_next("full");
    r.on_change(Change::Upsert(policy("p2", "web", "10.2.0.0/16")));
    settle(&mut r);
    assert_eq!(
        kinds(&fake)[4..],
        [(TxKind::Delta, true), (TxKind::Full, true)]
    );
    assert!(r.installed.is_none());
    let retry = r.retry_at.unwrap();
    r.tick(retry);
    assert_eq!(kinds(&fake)[6..], [(TxKind::Full, false)]);
    assert_eq!(r.shared.status().failed_syncs, 2);
}

#[test]
fn a_delta_on_a_changed_base_is_caught_by_the_read_back() {
    let (mut r, fake) = on_fake();
    listed(&mut r);
    r.tick(Instant::now());
    // Someone edits the table between two syncs, before the drift check sees it.
    fake.flush_a_table();
    r.on_change(Change::Upsert(policy("p1", "web", "10.1.0.0/16")));
    settle(&mut r);
    let tx = fake.transactions();
    assert_eq!(
        kinds(&fake)[1..],
        [(TxKind::Delta, false), (TxKind::Full, false)]
    );
    assert!(!tx[1].base_matched);
    assert_eq!(fake.installed().as_ref(), tx[2].ruleset.as_ref());
}

#[test]
fn an_invalid_policy_makes_its_pods_fail_closed() {
    let (mut r, fake) = on_fake();
    listed(&mut r);
    r.on_change(Change::Upsert(policy("bad", "web", "not-a-cidr")));
    r.tick(Instant::now());
    let rs = fake.installed().unwrap();
    assert!(
        matches!(web(&rs).ingress, Isolation::FailedClosed { .. }),
        "{:?}",
        web(&rs).ingress
    );
    // Fixed: the pod is isolated by the policy again.
    r.on_change(Change::Upsert(policy("bad", "web", "10.9.0.0/16")));
    settle(&mut r);
    let rs = fake.installed().unwrap();
    assert!(matches!(web(&rs).ingress, Isolation::Isolated { .. }));
}

#[test]
fn stopping_leaves_the_rules_in_place() {
    let (mut r, fake) = on_fake();
    listed(&mut r);
    r.tick(Instant::now());
    let (tx, rx) = std::sync::mpsc::channel();
    tx.send(Msg::Stop).unwrap();
    r.run(rx);
    assert_eq!(kinds(&fake), [(TxKind::Full, false)]);
    assert!(fake.installed().is_some());
}

#[test]
fn nothing_is_applied_before_every_kind_is_listed() {
    let mut r = reconciler();
    r.on_change(Change::Relisted(Kind::Pods, vec![]));
    r.on_change(Change::Relisted(Kind::Policies, vec![]));
    r.on_change(Change::Relisted(Kind::Namespaces, vec![]));
    // ClusterNetworkPolicies not listed yet (or their CRD's discovery failing): a snapshot
    // without them could lack a Deny that exists.
    assert!(!r.sync_due(Instant::now() + Duration::from_secs(5)));
    r.on_change(Change::Relisted(Kind::ClusterPolicies, vec![]));
    assert!(r.sync_due(Instant::now()), "the first sync adopts at once");
}

#[test]
fn changes_are_debounced_and_bursts_bounded() {
    let mut r = reconciler();
    for k in Kind::ALL {
        r.on_change(Change::Relisted(k, vec![]));
    }
    let empty = compile(&CompileInput {
        cluster: &Cluster::default(),
        node: "node-0",
        attach: Attach::Routed,
        attachments: &Default::default(),
    });
    r.installed = Some(Arc::new(empty));
    r.dirty = false;
    r.first_dirty = None;
    let t0 = Instant::now();
    r.on_change(ns("a"));
    assert!(!r.sync_due(t0));
    assert!(r.sync_due(r.last_change + Duration::from_millis(50)));
    // A change every 10 ms never goes quiet: the sync still happens by max_delay.
    let first = r.first_dirty.unwrap();
    for i in 0..40 {
        r.on_change(ns(&format!("n{i}")));
        r.last_change = first + Duration::from_millis(10 * i);
    }
    assert!(!r.sync_due(first + Duration::from_millis(299)));
    assert!(r.sync_due(first + Duration::from_millis(300)));
    assert!(r.next_deadline().unwrap() <= first + Duration::from_millis(300));
    // A change that changes nothing does not make the loop dirty.
    r.dirty = false;
    r.first_dirty = None;
    r.on_change(ns("a"));
    assert!(!r.dirty);
}
