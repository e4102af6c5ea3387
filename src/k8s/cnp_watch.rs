//! ClusterNetworkPolicies from the API: a CRD (sigs.k8s.io/network-policy-api), so it may be
//! missing, appear later, go away or change versions while the agent runs.
//!
//! Which version is served is asked of the API's discovery (readable by every authenticated
//! user: no permission beyond get/list/watch on clusternetworkpolicies), at start and then
//! every `WatchOptions::rediscover`. Watching CustomResourceDefinitions instead would notice
//! a new CRD sooner but needs cluster-wide read access to every CRD, which a node agent has
//! no other use for; a CRD is installed once per cluster, so a bounded delay is cheap.
//!
//! v1beta1 is preferred; v1alpha2 (same schema) is used where only it is served. Objects are
//! read as [`DynamicObject`]s, so every field the API server kept reaches `cnp::read` (an
//! unknown field makes its rule fail closed instead of being dropped by a typed decoder).

use futures::FutureExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::utils::Backoff;
use kube::{Api, Client};
use tracing::{info, warn};

use super::convert::{self, Change, Kind, Object};
use super::watch::{watch_kind, CappedBackoff, Sink, WatchEvent, WatchOptions};
use crate::policy::cnp;
use crate::policy::model::{ObjectName, Problem};

pub const GROUP: &str = "policy.networking.k8s.io";
pub const PLURAL: &str = "clusternetworkpolicies";
/// Served versions sluice reads, most preferred first.
pub const VERSIONS: [&str; 2] = ["v1beta1", "v1alpha2"];

pub fn api_resource(version: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: version.into(),
        api_version: format!("{GROUP}/{version}"),
        kind: cnp::KIND.into(),
        plural: PLURAL.into(),
    }
}

/// The preferred served version of ClusterNetworkPolicy, or None when no CRD serves it.
pub async fn served_version(client: &Client) -> kube::Result<Option<&'static str>> {
    // The group list first: asking for a group version that does not exist is a 404 whose
    // body is not always a Status, and would read as an error.
    let groups = client.list_api_groups().await?;
    let Some(group) = groups.groups.iter().find(|g| g.name == GROUP) else {
        return Ok(None);
    };
    for v in VERSIONS {
        if !group.versions.iter().any(|gv| gv.version == v) {
            continue;
        }
        let resources = client
            .list_api_group_resources(&format!("{GROUP}/{v}"))
            .await?;
        if resources.resources.iter().any(|r| r.name == PLURAL) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// One object of the watch: read like a manifest (never fails: an invalid CNP is an object
/// whose subjects fail closed). Warnings (fail-closed rules, unknown fields) are logged.
fn read_object(o: &DynamicObject) -> (ObjectName, Result<Option<Object>, Vec<Problem>>) {
    let doc = serde_json::to_value(o).unwrap_or_default();
    let (obj, warnings) = convert::cluster_policy(&doc);
    for w in warnings {
        warn!(resource = PLURAL, warning = %w, "ClusterNetworkPolicy");
    }
    (convert::cluster_policy_key(&doc), Ok(Some(obj)))
}

/// Runs until aborted: discovers, watches the served version, and starts over when
/// discovery says something else (CRD installed, removed, versions changed).
pub async fn watch_cluster_policies(client: Client, options: WatchOptions, sink: Sink) {
    let mut backoff = CappedBackoff::new(&options);
    // What the last discovery found (None: nothing asked yet).
    let mut last: Option<Option<&'static str>> = None;
    loop {
        let found = match served_version(&client).await {
            Ok(v) => {
                backoff.reset();
                v
            }
            Err(e) => {
                // Unknown is not "absent": nothing is listed, so the agent does not enforce
                // a snapshot that may be missing CNPs.
                sink(WatchEvent::Error(
                    Kind::ClusterPolicies,
                    format!("discovery of {GROUP}: {e}"),
                ));
                let delay = backoff.next().unwrap_or(options.backoff_max);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let Some(version) = found else {
            if last != Some(None) {
                info!(
                    group = GROUP,
                    rediscover = ?options.rediscover,
                    "ClusterNetworkPolicy is not served (CRD not installed): enforcing NetworkPolicies only until it is"
                );
                // None exist (deleting a CRD deletes its objects).
                sink(WatchEvent::Change(Change::Relisted(
                    Kind::ClusterPolicies,
                    vec![],
                )));
            }
            last = Some(None);
            tokio::time::sleep(options.rediscover).await;
            continue;
        };
        info!(version, "watching ClusterNetworkPolicies");
        last = Some(Some(version));
        let api = Api::<DynamicObject>::all_with(client.clone(), &api_resource(version));
        let watch = watch_kind(
            api,
            Kind::ClusterPolicies,
            options.clone(),
            sink.clone(),
            read_object,
        )
        .fuse();
        let changed = async {
            loop {
                tokio::time::sleep(options.rediscover).await;
                // A failed discovery keeps the watch: its own retries handle an outage.
                if let Ok(v) = served_version(&client).await {
                    if v != Some(version) {
                        return v;
                    }
                }
            }
        }
        .fuse();
        futures::pin_mut!(watch, changed);
        futures::select! {
            _ = watch => {}
            now = changed => info!(was = version, now = ?now, "ClusterNetworkPolicy versions changed"),
        }
    }
}
