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
#[path = "reconcile_tests.rs"]
mod tests;
