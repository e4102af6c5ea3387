//! The agent's loop: watch changes in, snapshot updated, and after a short quiet period (or a
//! bounded delay during long bursts) one sync: find attachments, compile, apply the delta,
//! read back and check. A periodic drift check restores a table someone flushed or edited.
//!
//! It runs on its own thread: applying is `nft` processes and a compile is CPU work, neither
//! belongs on the async runtime that keeps the watches alive.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tracing::{debug, error, info, warn};

use super::attach::{Detection, Detector, LocalPod};
use super::{AgentConfig, Msg, Shared};
use crate::compile::ir::Isolation;
use crate::compile::{compile, CompileInput, NodeRuleset};
use crate::dataplane::{self, Dataplane, DataplaneKind, DataplaneOptions};
use crate::k8s::convert::{self, Change, Kind};
use crate::policy::Cluster;

/// How often the loop wakes with nothing to do, so /healthz can tell it is alive.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// After a failed sync (or a pod whose interface is not there yet), try again this soon.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Finds how the node's local pods attach (the node's interfaces; a fixed answer in tests).
pub trait Detect {
    fn detect(&mut self, local: &[LocalPod]) -> Result<Detection>;
}

impl Detect for Detector {
    fn detect(&mut self, local: &[LocalPod]) -> Result<Detection> {
        Detector::detect(self, local)
    }
}

pub struct Reconciler {
    cfg: AgentConfig,
    shared: Arc<Shared>,
    cluster: Cluster,
    listed: std::collections::BTreeSet<Kind>,
    detector: Box<dyn Detect + Send>,
    /// Reads back after each apply ([`Dataplane::verify`]) and checks for drift
    /// ([`Dataplane::drift`]) itself: nftables compares fingerprints, eBPF its status.
    dataplane: Box<dyn Dataplane + Send>,
    /// What the kernel holds as far as we know (None: unknown, the next apply is full).
    installed: Option<Arc<NodeRuleset>>,
    /// The last apply was read back and found to be what was meant.
    verified: bool,
    dirty: bool,
    first_dirty: Option<Instant>,
    last_change: Instant,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// Local pods whose interface was missing at the last sync, and how long to wait before
    /// looking again: short while the set changes (CNI ADD in progress), doubling while it
    /// stays the same (a pod on an interface sluice cannot see should not make it spin).
    missing: Vec<crate::policy::ObjectName>,
    missing_delay: Duration,
    next_drift: Instant,
}

impl Reconciler {
    /// A reconciler enforcing with `kind` (already resolved from `auto`, see `Agent::start`).
    pub fn new(cfg: AgentConfig, shared: Arc<Shared>, kind: DataplaneKind) -> Result<Reconciler> {
        let opts = DataplaneOptions {
            service_cidrs: cfg.service_cidrs.clone(),
            // Pods keep their isolation while the agent restarts or upgrades.
            persist: true,
        };
        let dp = dataplane::make(kind, cfg.netns.as_deref(), &opts)?;
        let detector = Detector::new(cfg.netns.clone(), cfg.attach, &cfg.bridge);
        Ok(Reconciler::with(cfg, shared, dp, Box::new(detector)))
    }

    /// A reconciler on a given dataplane and attachment detector (tests: a fake of each).
    pub fn with(
        cfg: AgentConfig,
        shared: Arc<Shared>,
        dataplane: Box<dyn Dataplane + Send>,
        detector: Box<dyn Detect + Send>,
    ) -> Reconciler {
        Reconciler {
            detector,
            dataplane,
            verified: false,
            next_drift: Instant::now() + cfg.drift_interval,
            cfg,
            shared,
            cluster: Cluster::default(),
            listed: Default::default(),
            installed: None,
            dirty: false,
            first_dirty: None,
            last_change: Instant::now(),
            retry_at: None,
            retry_delay: RETRY_MIN,
            missing: Vec::new(),
            missing_delay: RETRY_MIN,
        }
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        info!(
            node = %self.cfg.node,
            netns = self.cfg.netns.as_deref().unwrap_or("(current)"),
            dataplane = self.dataplane.name(),
            "reconciler started"
        );
        loop {
            self.shared.beat();
            let now = Instant::now();
            let wait = self
                .next_deadline()
                .map_or(HEARTBEAT, |d| d.saturating_duration_since(now))
                .min(HEARTBEAT);
            match rx.recv_timeout(wait) {
                Ok(Msg::Change(c)) => {
                    self.on_change(c);
                    // Take everything already queued before deciding anything.
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Change(c)) => self.on_change(c),
                            Ok(Msg::Stop) => return self.stopped(),
                            Err(_) => break,
                        }
                    }
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return self.stopped(),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.tick(Instant::now());
        }
    }

    /// What is due at `now`: a sync (debounced changes, a retry), the drift check.
    fn tick(&mut self, now: Instant) {
        if self.sync_due(now) {
            self.sync();
        }
        if now >= self.next_drift {
            self.next_drift = now + self.cfg.drift_interval;
            self.drift_check();
        }
    }

    fn stopped(&self) {
        // Rules stay (nftables tables; eBPF links and maps pinned in bpffs): pods keep their
        // isolation while the agent restarts or upgrades.
        info!(node = %self.cfg.node, dataplane = self.dataplane.name(), "reconciler stopped; rules left in place");
    }

    fn on_change(&mut self, c: Change) {
        if let Change::Relisted(kind, _) = &c {
            if self.listed.insert(*kind) {
                debug!(resource = kind.as_str(), "initial list complete");
            }
        }
        if convert::apply(&mut self.cluster, c) {
            self.dirty = true;
            self.first_dirty.get_or_insert_with(Instant::now);
            self.last_change = Instant::now();
        }
    }

    fn all_listed(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed.contains(k))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d = Some(self.next_drift);
        if self.dirty && self.all_listed() {
            let quiet = self.last_change + self.cfg.debounce;
            let bounded = self.first_dirty.map(|f| f + self.cfg.max_delay);
            let due = bounded.map_or(quiet, |b| b.min(quiet));
            d = d.map(|x| x.min(due));
        }
        if let Some(r) = self.retry_at {
            d = d.map(|x| x.min(r));
        }
        d
    }

    fn sync_due(&self, now: Instant) -> bool {
        // Nothing is applied before all three kinds are listed: a ruleset from half a
        // snapshot (policies but no pods yet) would drop traffic it should allow.
        if !self.all_listed() {
            return false;
        }
        if self.installed.is_none() && self.retry_at.is_none() {
            return true; // first sync (adopting whatever table exists)
        }
        let debounced = self.dirty
            && (now >= self.last_change + self.cfg.debounce
                || self
                    .first_dirty
                    .is_some_and(|f| now >= f + self.cfg.max_delay));
        debounced || self.retry_at.is_some_and(|r| now >= r)
    }

    fn sync(&mut self) {
        let start = Instant::now();
        self.dirty = false;
        self.first_dirty = None;
        match self.try_sync() {
            Ok(missing) => {
                let secs = start.elapsed().as_secs_f64();
                self.shared.metrics.sync_duration.observe(secs);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.shared.metrics.last_success.set(now);
                if missing.is_empty() {
                    self.retry_at = None;
                    self.missing_delay = RETRY_MIN;
                } else {
                    // A pod whose CNI ADD is still running: look again soon, then less often.
                    if missing == self.missing {
                        self.missing_delay = (self.missing_delay * 2).min(RETRY_MAX);
                    } else {
                        self.missing_delay = RETRY_MIN;
                    }
                    self.retry_at = Some(Instant::now() + self.missing_delay);
                }
                self.missing = missing;
                self.retry_delay = RETRY_MIN;
            }
            Err(e) => {
                error!(node = %self.cfg.node, error = %format!("{e:#}"), "sync failed");
                self.retry_at = Some(Instant::now() + self.retry_delay);
                self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
                self.shared.update(|s| {
                    s.last_error = Some(format!("{e:#}"));
                    s.failed_syncs += 1;
                });
            }
        }
    }

    /// One sync; returns the local pods whose interface is still missing.
    fn try_sync(&mut self) -> Result<Vec<crate::policy::ObjectName>> {
        let local: Vec<LocalPod> = self
            .cluster
            .pods
            .values()
            .filter(|p| !p.host_network && p.node.as_deref() == Some(self.cfg.node.as_str()))
            .map(|p| LocalPod {
                name: p.object_name(),
                ips: p.ips.clone(),
            })
            .collect();
        let detection = self.detector.detect(&local).inspect_err(|_| {
            self.shared.metrics.error("detect");
        })?;
        if !detection.missing.is_empty() {
            debug!(pods = ?detection.missing, "interfaces not found yet");
        }
        let rs = Arc::new(compile(&CompileInput {
            cluster: &self.cluster,
            node: &self.cfg.node,
            attach: detection.attach,
            attachments: &detection.attachments,
        }));
        for w in &rs.warnings {
            debug!(warning = %w, "compile");
        }
        let kind = self.apply(&rs)?;
        if kind == "noop" && self.verified {
            // Most changes in a cluster are about other nodes' pods and change nothing here:
            // no need to read the table back (the drift check still watches it).
            self.installed = Some(rs.clone());
            self.verified = true;
            self.publish(&rs, kind, &detection.missing);
            return Ok(detection.missing);
        }
        // Check: the kernel must hold what we meant, or we say so and replace it whole.
        self.verified = false;
        let diff = self.differences(&rs)?;
        if !diff.is_empty() {
            self.shared.metrics.error("check");
            warn!(differences = ?diff, "installed ruleset differs after apply; replacing it");
            self.dataplane.apply_full(&rs)?;
            let diff = self.differences(&rs)?;
            if !diff.is_empty() {
                self.installed = None;
                bail!("the kernel does not hold the ruleset after a full apply: {diff:?}");
            }
        }
        self.verified = true;
        self.installed = Some(rs.clone());
        self.publish(&rs, kind, &detection.missing);
        Ok(detection.missing)
    }

    /// How what the kernel holds differs from `rs` (empty: as meant); the dataplane keeps
    /// what it read for the drift check.
    fn differences(&mut self, rs: &NodeRuleset) -> Result<Vec<String>> {
        self.dataplane.verify(rs)
    }

    /// Applies `rs` (delta when possible); returns which kind of apply it was.
    fn apply(&mut self, rs: &NodeRuleset) -> Result<&'static str> {
        let m = &self.shared.metrics;
        let kind = match &self.installed {
            None => {
                // First apply (or after a failure): one atomic replacement, so whatever table
                // a previous agent left keeps enforcing until this very transaction.
                self.dataplane
                    .apply_full(rs)
                    .inspect_err(|_| m.error("apply"))?;
                info!(node = %self.cfg.node, attach = %rs.attach, "ruleset installed (full, atomic)");
                "full"
            }
            Some(old) => match self.dataplane.apply_delta(old, rs) {
                Ok(r) if r.full => "full",
                Ok(r) if r.commands == 0 => "noop",
                Ok(_) => "delta",
                Err(e) => {
                    m.error("apply");
                    warn!(error = %format!("{e:#}"), "delta failed; replacing the table");
                    self.installed = None;
                    self.dataplane
                        .apply_full(rs)
                        .inspect_err(|_| m.error("apply"))
                        .context("full replacement after a failed delta")?;
                    "full"
                }
            },
        };
        m.syncs.get_or_create(&vec![("kind", kind)]).inc();
        Ok(kind)
    }

    fn publish(
        &self,
        rs: &Arc<NodeRuleset>,
        kind: &'static str,
        missing: &[crate::policy::ObjectName],
    ) {
        let m = &self.shared.metrics;
        let (mut rules, mut chains, mut sets, mut elements) = (0, 0, 0, 0);
        for t in &rs.tables {
            rules += t.rule_count();
            chains += t.chains.len();
            sets += t.sets.len();
            elements += t.element_count();
        }
        m.rules.set(rules as i64);
        m.chains.set(chains as i64);
        m.sets.set(sets as i64);
        m.elements.set(elements as i64);
        m.local_pods.set(rs.pods.len() as i64);
        let selected = rs
            .pods
            .iter()
            .filter(|p| {
                !matches!(p.ingress, Isolation::Open) || !matches!(p.egress, Isolation::Open)
            })
            .count();
        m.local_pods_selected.set(selected as i64);
        m.local_pods_unattached.set(missing.len() as i64);
        m.ready.set(1);
        let snapshot = self
            .cfg
            .publish_snapshot
            .then(|| Arc::new(self.cluster.clone()));
        self.shared.update(|s| {
            if !s.ready {
                info!(node = %self.cfg.node, "ready: the full snapshot is enforced");
            }
            s.ready = true;
            s.syncs += 1;
            s.last_kind = kind;
            s.last_error = None;
            s.ruleset = Some(rs.clone());
            s.snapshot = snapshot;
            s.unattached = missing.to_vec();
        });
    }

    /// Someone flushed or edited our table: put back what we last applied (recompiled from
    /// the current snapshot, which is at least as new).
    fn drift_check(&mut self) {
        let Some(rs) = self.installed.clone() else {
            return;
        };
        let differences = match self.dataplane.drift(&rs) {
            Ok(None) => return,
            Ok(Some(d)) => d,
            Err(e) => {
                self.shared.metrics.error("drift");
                warn!(error = %format!("{e:#}"), "cannot read the installed ruleset back");
                return;
            }
        };
        if !differences.is_empty() {
            debug!(?differences, "drift");
        }
        warn!(node = %self.cfg.node, dataplane = self.dataplane.name(),
            "installed ruleset drifted from the last applied one; restoring it");
        self.shared.metrics.drift_repairs.inc();
        self.installed = None;
        self.verified = false;
        self.sync();
    }
}

#[cfg(test)]
mod tests {
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

    /// All three kinds listed: the default namespace, pod `web` here and `db` elsewhere.
    fn listed(r: &mut Reconciler) {
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
        assert!(!r.sync_due(Instant::now() + Duration::from_secs(5)));
        r.on_change(Change::Relisted(Kind::Namespaces, vec![]));
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
}
