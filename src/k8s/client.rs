//! Building a kube client: an explicit kubeconfig file, or what kube infers (in-cluster
//! service account, then `$KUBECONFIG` / `~/.kube/config`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

#[derive(Debug, Clone, Default)]
pub enum ClientSource {
    /// In-cluster first, then the usual kubeconfig locations.
    #[default]
    Infer,
    Kubeconfig(PathBuf),
}

/// Timeouts suited to a node agent: a dead API server is noticed within seconds, watches
/// themselves are long polls and must not time out on the client side.
fn tune(mut config: Config) -> Config {
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.read_timeout = None;
    config
}

pub async fn client_from(source: &ClientSource) -> Result<Client> {
    let config = match source {
        ClientSource::Infer => Config::infer()
            .await
            .context("no in-cluster configuration and no usable kubeconfig")?,
        ClientSource::Kubeconfig(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {} is not usable", path.display()))?
        }
    };
    Client::try_from(tune(config)).context("cannot build the Kubernetes client")
}
