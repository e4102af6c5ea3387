//! One read of a live cluster for the offline tools (explain, matrix, diff, lint): the
//! Namespaces, Pods, NetworkPolicies and (where the CRD is served) ClusterNetworkPolicies as
//! manifest documents, which the CLI feeds to the same
//! loader as files ([`crate::policy::objects::ClusterBuilder`]).
//!
//! Workload objects are not read: in a live cluster their pods exist and carry the labels.
//! Pods that finished (Succeeded/Failed) are left out, as the agent does: their IPs are free.

use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::Value;

use super::convert::pod_is_terminal;

/// A client for `kubeconfig` (or the usual places: `$KUBECONFIG`, `~/.kube/config`, then the
/// in-cluster service account) and `context` (or the current one).
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
        (None, Some(ctx)) => Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("cannot use context {ctx} of the kubeconfig"))?,
        (None, None) => Config::infer().await.context(
            "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not running in a cluster: pass --kubeconfig FILE",
        )?,
    };
    let mut config = config;
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    Client::try_from(config).context("cannot build the Kubernetes client")
}

fn values<T: serde::Serialize>(items: Vec<T>) -> Result<Vec<Value>> {
    items
        .into_iter()
        .map(|o| serde_json::to_value(o).context("cannot convert an object to JSON"))
        .collect()
}

/// Lists every Namespace, running Pod, NetworkPolicy and ClusterNetworkPolicy, as manifest
/// documents.
pub async fn list(client: &Client) -> Result<Vec<Value>> {
    let lp = ListParams::default();
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .context("cannot list namespaces (RBAC: list namespaces)")?;
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .context("cannot list pods (RBAC: list pods in all namespaces)")?;
    let policies = Api::<NetworkPolicy>::all(client.clone())
        .list(&lp)
        .await
        .context("cannot list networkpolicies (RBAC: list networkpolicies.networking.k8s.io)")?;
    let mut out = values(namespaces.items)?;
    out.extend(values(
        pods.items
            .into_iter()
            .filter(|p| !pod_is_terminal(p))
            .collect(),
    )?);
    out.extend(values(policies.items)?);
    let version = super::cnp_watch::served_version(client)
        .await
        .context("cannot ask the API's discovery whether ClusterNetworkPolicy is served")?;
    if let Some(version) = version {
        let resource = super::cnp_watch::api_resource(version);
        let cnps = Api::<DynamicObject>::all_with(client.clone(), &resource)
            .list(&lp)
            .await
            .context(
                "cannot list clusternetworkpolicies (RBAC: list clusternetworkpolicies.policy.networking.k8s.io)",
            )?;
        for o in cnps.items {
            let mut doc = serde_json::to_value(o).context("cannot convert an object to JSON")?;
            // The loader needs them; list items normally carry them already.
            doc["apiVersion"] = Value::String(resource.api_version.clone());
            doc["kind"] = Value::String(resource.kind.clone());
            out.push(doc);
        }
    }
    Ok(out)
}
