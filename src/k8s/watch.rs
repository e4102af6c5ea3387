//! kube-runtime watchers (Pods in all namespaces, Namespaces, NetworkPolicies and, where the
//! CRD is served, ClusterNetworkPolicies) whose events become [`Change`]s. kube-runtime does the hard parts: paginated relists, resuming
//! from the last resourceVersion, bookmarks, and a relist after `410 Gone`. Every error is
//! retried after a backoff (exponential, capped, reset once a watch works again).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::task::JoinHandle;

use super::convert::{self, Change, Kind, Object};
use crate::policy::model::{ObjectName, Problem};

/// What watchers report: changes, and errors (for logs and metrics; they retry by themselves).
pub enum WatchEvent {
    Change(Change),
    /// An object the API holds that sluice cannot read (it is left out).
    Invalid(Kind, Vec<Problem>),
    Error(Kind, String),
}

pub type Sink = Arc<dyn Fn(WatchEvent) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// First retry delay after an error.
    pub backoff_min: Duration,
    /// Longest delay between retries. client-go uses 30 s; a node agent that must notice a
    /// restarted API server quickly wants less, and one watch per node is cheap.
    pub backoff_max: Duration,
    /// How often the API's discovery is asked which ClusterNetworkPolicy version it serves
    /// (the CRD may be installed, removed or change versions while the agent runs).
    pub rediscover: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            rediscover: Duration::from_secs(30),
        }
    }
}

/// Doubling delay with ±25% jitter (so a fleet of agents does not retry in lockstep).
pub(super) struct CappedBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl CappedBackoff {
    pub(super) fn new(o: &WatchOptions) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        CappedBackoff {
            min: o.backoff_min,
            max: o.backoff_max.max(o.backoff_min),
            next: o.backoff_min,
            seed,
        }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        // xorshift: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = 0.75 + (self.seed % 1000) as f64 / 2000.0;
        Some(base.mul_f64(jitter).max(self.min / 2))
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Starts the watchers on the current tokio runtime. They run until aborted.
pub fn spawn_watchers(client: Client, options: &WatchOptions, sink: Sink) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(watch_kind(
            Api::<K8sPod>::all(client.clone()),
            Kind::Pods,
            options.clone(),
            sink.clone(),
            |p: &K8sPod| (convert::pod_key(p), convert::pod(p)),
        )),
        tokio::spawn(watch_kind(
            Api::<K8sNamespace>::all(client.clone()),
            Kind::Namespaces,
            options.clone(),
            sink.clone(),
            |n: &K8sNamespace| (convert::namespace_key(n), convert::namespace(n).map(Some)),
        )),
        tokio::spawn(watch_kind(
            Api::<NetworkPolicy>::all(client),
            Kind::Policies,
            options.clone(),
            sink.clone(),
            |np: &NetworkPolicy| (convert::policy_key(np), Ok(Some(convert::policy(np)))),
        )),
    ]
}

/// `convert` gives the object's key and what it is now: `Ok(None)` means it no longer
/// counts (a finished pod), `Err` that it cannot be read (left out, reported).
pub(super) async fn watch_kind<K, F>(
    api: Api<K>,
    kind: Kind,
    options: WatchOptions,
    sink: Sink,
    convert: F,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&K) -> (ObjectName, Result<Option<Object>, Vec<Problem>>),
{
    let stream = watcher::watcher(api, watcher::Config::default().any_semantic())
        .backoff(CappedBackoff::new(&options));
    futures::pin_mut!(stream);
    // Objects of a relist in progress: applied together at InitDone, so a relist is one
    // change (and objects deleted while we were away disappear then).
    let mut relist: Option<Vec<Object>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relist = Some(Vec::new()),
            Ok(Event::InitApply(obj)) => match convert(&obj) {
                (_, Ok(Some(o))) => relist.get_or_insert_with(Vec::new).push(o),
                (_, Ok(None)) => {}
                (_, Err(problems)) => sink(WatchEvent::Invalid(kind, problems)),
            },
            Ok(Event::InitDone) => {
                let objects = relist.take().unwrap_or_default();
                sink(WatchEvent::Change(Change::Relisted(kind, objects)));
            }
            Ok(Event::Apply(obj)) => match convert(&obj) {
                (_, Ok(Some(o))) => sink(WatchEvent::Change(Change::Upsert(o))),
                (key, Ok(None)) => sink(WatchEvent::Change(Change::Delete(kind, key))),
                (key, Err(problems)) => {
                    // It was readable before, maybe: what we had is no longer true.
                    sink(WatchEvent::Invalid(kind, problems));
                    sink(WatchEvent::Change(Change::Delete(kind, key)));
                }
            },
            Ok(Event::Delete(obj)) => {
                let (key, _) = convert(&obj);
                sink(WatchEvent::Change(Change::Delete(kind, key)));
            }
            Err(e) => sink(WatchEvent::Error(kind, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = CappedBackoff::new(&WatchOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(800),
            ..WatchOptions::default()
        });
        let d: Vec<Duration> = (0..6).map(|_| b.next().unwrap()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(125));
        assert!(d[5] >= Duration::from_millis(600) && d[5] <= Duration::from_millis(1000));
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(125));
    }
}
