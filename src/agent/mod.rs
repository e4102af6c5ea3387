//! The node agent: watches the API, keeps a `policy::Cluster` snapshot current, and keeps the
//! node's nftables ruleset equal to what the compiler makes of it.
//!
//! ```text
//!  kube watchers (tokio) ──Change──> reconciler thread ──compile──> delta ──nft──> kernel
//!   pods, namespaces,                 snapshot, debounce             read back + check
//!   networkpolicies,                  drift check                    metrics, /readyz
//!   clusternetworkpolicies (CRD)
//! ```
//!
//! On start the first apply is one atomic replacement of whatever table exists (a previous
//! agent's rules keep enforcing until that very transaction: no gap). On stop the rules stay;
//! `sluice agent --cleanup` removes them.

pub mod attach;
pub mod http;
pub mod invalid;
pub mod metrics;
mod reconcile;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kube::Client;
use tracing::{debug, info, warn};

pub use attach::AttachChoice;
pub use metrics::Metrics;

use crate::compile::NodeRuleset;
use crate::dataplane::DataplaneKind;
use crate::k8s::convert::Change;
use crate::k8s::watch::{spawn_watchers, Sink, WatchEvent, WatchOptions};
use crate::policy::{Cluster, ObjectName};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The node whose pods this agent enforces (`spec.nodeName`).
    pub node: String,
    /// Apply rules and look for interfaces in this named network namespace instead of the
    /// current one (the lab's nodes).
    pub netns: Option<String>,
    pub attach: AttachChoice,
    /// The bridge of bridged attachment (flannel: `cni0`).
    pub bridge: String,
    /// Quiet time after the last change before a sync.
    pub debounce: Duration,
    /// Longest a change waits during a burst that never goes quiet.
    pub max_delay: Duration,
    pub drift_interval: Duration,
    pub watch: WatchOptions,
    /// Keep a copy of the snapshot of every sync in the status (tests wait on it).
    pub publish_snapshot: bool,
    /// What enforces: `auto` picks nftables when it works here, eBPF otherwise.
    pub dataplane: DataplaneKind,
    /// The cluster's Service ranges (the eBPF dataplane judges pod egress to them after NAT).
    pub service_cidrs: Vec<ipnet::IpNet>,
}

impl AgentConfig {
    pub fn new(node: &str) -> AgentConfig {
        AgentConfig {
            node: node.to_string(),
            netns: None,
            attach: AttachChoice::Auto,
            bridge: "cni0".into(),
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_millis(300),
            drift_interval: Duration::from_secs(30),
            watch: WatchOptions::default(),
            publish_snapshot: false,
            dataplane: DataplaneKind::Auto,
            service_cidrs: vec![],
        }
    }
}

/// Resolves the configured dataplane once, says which was chosen and why (log and the
/// `sluice_dataplane_info` metric), and fails when none works here.
fn choose_dataplane(cfg: &AgentConfig, shared: &Shared) -> Result<DataplaneKind> {
    let (kind, why) = crate::dataplane::choose(cfg.dataplane)
        .with_context(|| format!("dataplane {} cannot enforce here", cfg.dataplane))?;
    info!(node = %cfg.node, requested = %cfg.dataplane, dataplane = %kind, reason = %why, "dataplane chosen");
    shared
        .metrics
        .dataplane
        .get_or_create(&vec![
            ("dataplane", kind.name()),
            ("requested", cfg.dataplane.name()),
        ])
        .set(1);
    Ok(kind)
}

/// What the agent has done, for readiness, tests and tools.
#[derive(Debug, Clone, Default)]
pub struct AgentStatus {
    /// The first complete snapshot has been enforced.
    pub ready: bool,
    pub syncs: u64,
    pub failed_syncs: u64,
    /// full | delta | noop, of the last successful sync.
    pub last_kind: &'static str,
    pub last_error: Option<String>,
    /// The ruleset the kernel holds after the last successful sync.
    pub ruleset: Option<Arc<NodeRuleset>>,
    /// The snapshot that ruleset was compiled from (only with `publish_snapshot`).
    pub snapshot: Option<Arc<Cluster>>,
    /// Local pods whose interface was not found at the last sync.
    pub unattached: Vec<ObjectName>,
    /// Objects the API holds that sluice refuses (`networkpolicies ns/name`,
    /// `clusternetworkpolicies name`) and why, by field. Their pods fail closed.
    pub invalid: std::collections::BTreeMap<String, Vec<crate::policy::model::Problem>>,
}

/// State shared by the reconciler, the watchers and the HTTP endpoints.
pub struct Shared {
    pub metrics: Metrics,
    status: Mutex<AgentStatus>,
    changed: Condvar,
    /// Unix milliseconds of the reconciler's last loop turn.
    heartbeat: AtomicU64,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn new() -> Shared {
        Shared {
            metrics: Metrics::new(),
            status: Mutex::new(AgentStatus::default()),
            changed: Condvar::new(),
            heartbeat: AtomicU64::new(unix_millis()),
        }
    }

    fn beat(&self) {
        self.heartbeat.store(unix_millis(), Ordering::Relaxed);
    }

    fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.status.lock().unwrap());
        self.changed.notify_all();
    }

    pub fn status(&self) -> AgentStatus {
        self.status.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the status (true) or `timeout` passes (false).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&AgentStatus) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.status.lock().unwrap();
        loop {
            if pred(&s) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.changed.wait_timeout(s, left).unwrap().0;
        }
    }

    /// Alive: the reconciler turned its loop recently (it wakes at least every 2 s).
    pub fn health(&self) -> Result<(), String> {
        let age = unix_millis().saturating_sub(self.heartbeat.load(Ordering::Relaxed));
        if age > 30_000 {
            return Err(format!("reconciler stuck for {} s", age / 1000));
        }
        Ok(())
    }

    /// Ready: the first complete snapshot is enforced and the last sync did not fail. An
    /// unreachable API server does not make the agent unready: the rules it holds are the
    /// last known truth, and it reconnects by itself.
    pub fn readiness(&self) -> Result<(), String> {
        let s = self.status.lock().unwrap();
        if !s.ready {
            return Err("not ready: waiting for the first complete snapshot".into());
        }
        if let Some(e) = &s.last_error {
            return Err(format!("last sync failed: {e}"));
        }
        Ok(())
    }
}

pub(crate) enum Msg {
    Change(Change),
    Stop,
}

/// Where a hand-fed agent takes its changes from.
#[derive(Clone)]
pub struct ChangeFeed {
    tx: Sender<Msg>,
}

impl ChangeFeed {
    pub fn send(&self, change: Change) {
        let _ = self.tx.send(Msg::Change(change));
    }
}

/// A running agent. Dropping it stops it (rules stay in place).
pub struct Agent {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics_addr: Option<SocketAddr>,
    dataplane: DataplaneKind,
}

impl Agent {
    /// Starts the watchers (on the current tokio runtime), the reconciler thread and, with
    /// `metrics_addr`, the HTTP endpoints.
    pub async fn start(
        client: Client,
        cfg: AgentConfig,
        metrics_addr: Option<SocketAddr>,
    ) -> Result<Agent> {
        let shared = Arc::new(Shared::new());
        let dataplane = choose_dataplane(&cfg, &shared)?;
        let mut tasks = Vec::new();
        let mut bound = None;
        if let Some(addr) = metrics_addr {
            let (local, task) = http::serve(addr, shared.clone()).await?;
            bound = Some(local);
            tasks.push(task);
        }
        let (tx, rx) = channel();
        let sink: Sink = {
            let tx = tx.clone();
            let shared = shared.clone();
            let node = cfg.node.clone();
            Arc::new(move |ev: WatchEvent| match ev {
                WatchEvent::Change(c) => {
                    let kind = match &c {
                        Change::Upsert(o) => o.kind(),
                        Change::Delete(k, _) | Change::Relisted(k, _) => *k,
                    };
                    shared
                        .metrics
                        .watch_events
                        .get_or_create(&vec![("resource", kind.as_str())])
                        .inc();
                    let mut fresh = Vec::new();
                    shared.update(|s| fresh = invalid::track(&mut s.invalid, &c));
                    for (object, problems) in fresh {
                        shared.metrics.error("invalid_object");
                        for p in problems {
                            warn!(node = %node, object = %object, problem = %p, "refused; its pods fail closed");
                        }
                    }
                    let _ = tx.send(Msg::Change(c));
                }
                WatchEvent::Invalid(kind, problems) => {
                    shared.metrics.error("invalid_object");
                    for p in problems {
                        warn!(node = %node, resource = kind.as_str(), problem = %p, "object left out");
                    }
                }
                WatchEvent::Error(kind, e) => {
                    shared.metrics.error("watch");
                    warn!(node = %node, resource = kind.as_str(), error = %e, "watch failed; retrying");
                }
            })
        };
        let reconciler = reconcile::Reconciler::new(cfg.clone(), shared.clone(), dataplane)?;
        let thread = std::thread::Builder::new()
            .name(format!("sluice-{}", cfg.node))
            .spawn(move || reconciler.run(rx))?;
        // ClusterNetworkPolicy has its own watcher (discovery decides whether and which
        // version to watch).
        tasks.push(tokio::spawn(crate::k8s::cnp_watch::watch_cluster_policies(
            client.clone(),
            cfg.watch.clone(),
            sink.clone(),
        )));
        tasks.extend(spawn_watchers(client, &cfg.watch, sink));
        debug!(node = %cfg.node, "agent started");
        Ok(Agent {
            shared,
            tx,
            thread: Some(thread),
            tasks,
            metrics_addr: bound,
            dataplane,
        })
    }

    /// An agent fed by hand instead of by watchers (no API server): tests of the reconcile
    /// loop, and tools that replay recorded changes. Send `Relisted` for every kind of
    /// `Kind::ALL` before expecting a first sync.
    pub fn start_fed(cfg: AgentConfig) -> Result<(Agent, ChangeFeed)> {
        let shared = Arc::new(Shared::new());
        let dataplane = choose_dataplane(&cfg, &shared)?;
        let (tx, rx) = channel();
        let reconciler = reconcile::Reconciler::new(cfg.clone(), shared.clone(), dataplane)?;
        let thread = std::thread::Builder::new()
            .name(format!("sluice-{}", cfg.node))
            .spawn(move || reconciler.run(rx))?;
        let feed = ChangeFeed { tx: tx.clone() };
        Ok((
            Agent {
                shared,
                tx,
                thread: Some(thread),
                tasks: vec![],
                metrics_addr: None,
                dataplane,
            },
            feed,
        ))
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn status(&self) -> AgentStatus {
        self.shared.status()
    }

    /// The dataplane enforcing (`auto` resolved).
    pub fn dataplane(&self) -> DataplaneKind {
        self.dataplane
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops watching and reconciling; the rules stay in place.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
