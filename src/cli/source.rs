//! Where a snapshot comes from: manifest files and directories, a live cluster (`cluster:`),
//! or both, always through the one loader ([`crate::policy::objects::ClusterBuilder`]): later
//! objects replace earlier ones with the same kind/namespace/name, so `-m cluster: -m new.yaml`
//! is "the cluster as it would be with new.yaml applied".

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::policy::objects::LoadSummary;
use crate::policy::Cluster;

/// The source value that means "the live cluster"; `cluster:NAME` picks a kubeconfig context.
pub const CLUSTER_PREFIX: &str = "cluster:";

/// Set when running as `kubectl sluice`: with no source given, read the live cluster.
static PLUGIN: AtomicBool = AtomicBool::new(false);

pub fn set_plugin_mode() {
    PLUGIN.store(true, Ordering::Relaxed);
}

pub fn plugin_mode() -> bool {
    PLUGIN.load(Ordering::Relaxed)
}

/// How to reach a live cluster, for `cluster:` sources.
#[derive(Args, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig for live-cluster sources (default: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account). Given without -m, the cluster is the source.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for live-cluster sources (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

enum Spec<'a> {
    Path(&'a Path),
    Cluster(Option<&'a str>),
}

fn spec(p: &Path) -> Spec<'_> {
    match p.to_str().and_then(|s| s.strip_prefix(CLUSTER_PREFIX)) {
        Some("") => Spec::Cluster(None),
        Some(ctx) => Spec::Cluster(Some(ctx)),
        None => Spec::Path(p),
    }
}

/// Loads `sources` in order (paths, or `cluster:` / `cluster:CONTEXT`). With no source, the
/// live cluster when `--kubeconfig`/`--context` is given or when running as kubectl plugin.
pub fn load(sources: &[PathBuf], kube: &KubeArgs) -> Result<(Cluster, LoadSummary)> {
    let implied = [PathBuf::from(CLUSTER_PREFIX)];
    let sources = if !sources.is_empty() {
        sources
    } else if kube.kubeconfig.is_some() || kube.context.is_some() || plugin_mode() {
        &implied[..]
    } else {
        bail!(
            "no manifests given: pass -m FILE_OR_DIR (repeatable), or -m {CLUSTER_PREFIX} (or --kubeconfig FILE) to read a live cluster"
        );
    };
    if sources.iter().all(|p| matches!(spec(p), Spec::Path(_))) {
        return crate::manifests::load(sources);
    }
    // The live objects go through the very same loader as files: written as one `kind: List`
    // document to a private temporary file that takes the place of `cluster:`.
    let dir = std::env::temp_dir().join(format!("sluice-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = (|| {
        let mut paths = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            match spec(source) {
                Spec::Path(p) => paths.push(p.to_path_buf()),
                Spec::Cluster(context) => {
                    let context = context.or(kube.context.as_deref());
                    let items = read_cluster(kube.kubeconfig.as_deref(), context)?;
                    let list =
                        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
                    let name = format!("cluster-{i}-{}.json", context.unwrap_or("current-context"));
                    let path = dir.join(name.replace('/', "_"));
                    std::fs::write(&path, serde_json::to_vec(&list)?)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    paths.push(path);
                }
            }
        }
        crate::manifests::load(&paths)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn read_cluster(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Vec<serde_json::Value>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let client = crate::k8s::snapshot::client(kubeconfig, context).await?;
        crate::k8s::snapshot::list(&client).await
    })
    .context("cannot read the live cluster")
}
