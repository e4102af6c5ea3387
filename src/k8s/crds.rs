//! ClusterNetworkPolicy's CRDs in the test API server, from sigs.k8s.io/network-policy-api
//! v0.3.0 (the Go module, not a copy in this repository: `scripts/fetch-network-policy-api`
//! fetches it into Go's module cache, or `$SLUICE_NPAPI_DIR` names its directory).
//!
//! The experimental channel is the default: it is a superset of the standard one (it adds
//! `destinationNamedPort`, `nodes` and `domainNames`), and the API server prunes fields its
//! schema does not know, so with the standard CRD a case using a named port would be stored
//! without it and silently mean something else.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::Api;

use super::testenv::TestEnv;

pub const CRD_NAME: &str = "clusternetworkpolicies.policy.networking.k8s.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Standard,
    Experimental,
}

impl Channel {
    pub fn dir(self) -> &'static str {
        match self {
            Channel::Standard => "standard",
            Channel::Experimental => "experimental",
        }
    }
}

/// The module's directory: `$SLUICE_NPAPI_DIR`, or what `scripts/fetch-network-policy-api`
/// prints (it needs Go, as `scripts/build-apiserver` does). An error says how to fix it.
pub fn network_policy_api_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SLUICE_NPAPI_DIR") {
        let d = PathBuf::from(d);
        if !d.join("config/crd").is_dir() {
            bail!(
                "SLUICE_NPAPI_DIR={} has no config/crd: point it at sigs.k8s.io/network-policy-api@v0.3.0",
                d.display()
            );
        }
        return Ok(d);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-network-policy-api");
    let out = Command::new(&script).output().with_context(|| {
        format!(
            "cannot run {} (set SLUICE_NPAPI_DIR to the network-policy-api v0.3.0 module instead)",
            script.display()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{} failed (it needs Go and the Go module proxy, or set SLUICE_NPAPI_DIR): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The CRD of one channel, as the module ships it.
pub fn crd(channel: Channel) -> Result<CustomResourceDefinition> {
    let path = network_policy_api_dir()?
        .join("config/crd")
        .join(channel.dir())
        .join("policy.networking.k8s.io_clusternetworkpolicies.yaml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let doc = docs
        .into_iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .ok_or_else(|| anyhow!("{}: no CustomResourceDefinition", path.display()))?;
    serde_json::from_value(doc).with_context(|| format!("{}: not a CRD", path.display()))
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

impl TestEnv {
    /// Installs (or updates) ClusterNetworkPolicy's CRD and waits until it is Established
    /// (the API serves the resource).
    pub async fn install_cnp_crds(&self, channel: Channel) -> Result<()> {
        let crd = crd(channel)?;
        let api: Api<CustomResourceDefinition> = Api::all(self.admin_client().await?);
        api.patch(
            CRD_NAME,
            &PatchParams::apply("sluice-testenv").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("installing CRD {CRD_NAME}"))?;
        self.wait_established(&api).await
    }

    async fn wait_established(&self, api: &Api<CustomResourceDefinition>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if established(&api.get(CRD_NAME).await?) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRD {CRD_NAME} not Established within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Serves or stops serving one version of the installed CRD (the agent must follow).
    pub async fn set_cnp_version_served(&self, version: &str, served: bool) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.admin_client().await?);
        let mut crd = api.get(CRD_NAME).await?;
        let v = crd
            .spec
            .versions
            .iter_mut()
            .find(|v| v.name == version)
            .ok_or_else(|| anyhow!("CRD {CRD_NAME} has no version {version}"))?;
        v.served = served;
        api.replace(CRD_NAME, &Default::default(), &crd).await?;
        self.wait_established(&api).await
    }

    /// Deletes the CRD (and with it every ClusterNetworkPolicy) and waits until it is gone.
    pub async fn remove_cnp_crds(&self) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.admin_client().await?);
        match api.delete(CRD_NAME, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.get_opt(CRD_NAME).await?.is_some() {
            if Instant::now() > deadline {
                bail!("CRD {CRD_NAME} not deleted within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }
}
