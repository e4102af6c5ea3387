//! ClusterNetworkPolicies through the API server: the desired `Cluster.cluster_policies`
//! written as v1beta1 objects (`k8s::export::cluster_policy`), updated with server-side apply
//! and deleted when they leave the desired state. The CRDs are installed when the API server
//! comes up (`ApiCluster::up`, experimental channel: see `k8s::crds`).

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client};

use super::api_err;
use crate::k8s::cnp_watch::api_resource;
use crate::k8s::export;
use crate::policy::cnp::ClusterPolicy;

fn api(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &api_resource("v1beta1"))
}

/// Creates or updates every desired CNP that differs from what was written (`written` is kept
/// up to date; unchanged ones are not written again).
pub(super) async fn apply_all(
    client: &Client,
    manager: &str,
    written: &mut BTreeMap<String, ClusterPolicy>,
    desired: &BTreeMap<String, ClusterPolicy>,
) -> Result<()> {
    let api = api(client);
    for (name, p) in desired {
        if written.get(name) == Some(p) {
            continue;
        }
        let obj = export::cluster_policy(p).map_err(|e| anyhow!(e))?;
        api.patch(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(api_err)
        .with_context(|| format!("writing ClusterNetworkPolicy {name}"))?;
        written.insert(name.clone(), p.clone());
    }
    Ok(())
}

/// Deletes the written CNPs that `keep` does not hold (every one with `keep` None).
pub(super) async fn delete_stale(
    client: &Client,
    written: &mut BTreeMap<String, ClusterPolicy>,
    keep: Option<&BTreeMap<String, ClusterPolicy>>,
) -> Result<()> {
    let api = api(client);
    let stale: Vec<String> = written
        .keys()
        .filter(|n| keep.is_none_or(|k| !k.contains_key(*n)))
        .cloned()
        .collect();
    for name in stale {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                return Err(api_err(e))
                    .with_context(|| format!("deleting ClusterNetworkPolicy {name}"))
            }
        }
        written.remove(&name);
    }
    Ok(())
}
