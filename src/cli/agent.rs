//! `sluice agent`: the node agent (normally a DaemonSet pod, see deploy/ and docs/agent.md).
//!
//! Runs until SIGTERM or SIGINT; the rules stay in place when it stops (pods keep their
//! isolation across restarts and upgrades). `--cleanup` removes sluice's tables and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::agent::{Agent, AgentConfig, AttachChoice};
use crate::dataplane::{Dataplane, DataplaneKind};
use crate::k8s::watch::WatchOptions;
use crate::k8s::{client_from, ClientSource};
use crate::nft::{Nft, NftDataplane};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The node this agent enforces (pods with this spec.nodeName). Default: $NODE_NAME
    /// (the DaemonSet sets it from spec.nodeName).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Kubeconfig to use; default: the in-cluster service account, then $KUBECONFIG or
    /// ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Enforce in this named network namespace (/run/netns/NAME) instead of the current one:
    /// the agent keeps talking to the API from here (the lab's nodes).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// How pods attach: found on the node (a pod IP's /32 route names its veth: routed; pod
    /// IPs behind the bridge: bridged), or forced.
    #[arg(long, default_value = "auto", value_name = "auto|routed|bridged")]
    attach: AttachChoice,
    /// The bridge of bridged attachment.
    #[arg(long, default_value = "cni0", value_name = "NAME")]
    bridge: String,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9743", value_name = "ADDR")]
    metrics_addr: SocketAddr,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing's EnvFilter syntax); $RUST_LOG wins when set.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log_level: String,
    /// Quiet time after the last change before rules are updated.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    debounce_ms: u64,
    /// Longest a change waits while a burst of changes goes on.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    max_delay_ms: u64,
    /// How often the installed table is compared with the last applied one (and restored).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    drift_interval: u64,
    /// Longest wait between attempts to reach an unreachable API server.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    watch_backoff_max: u64,
    /// How often the API's discovery is asked whether (and which version of) the
    /// ClusterNetworkPolicy CRD is served: a CRD installed later is picked up within this.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    cnp_rediscover: u64,
    /// What enforces: nftables, the eBPF fallback (tc classifier + BPF maps), or auto:
    /// nftables when `nft` works here, eBPF otherwise (the choice is logged and exported as
    /// sluice_dataplane_info).
    #[arg(long, value_enum, default_value = "auto")]
    dataplane: DataplaneKind,
    /// The cluster's Service (ClusterIP) ranges, comma separated (kube-apiserver's
    /// --service-cluster-ip-range). The eBPF dataplane judges a pod's egress to them after the
    /// node's NAT, against the backend; nftables does so anyway.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.96.0.0/12",
        value_name = "CIDR"
    )]
    service_cidr: Vec<ipnet::IpNet>,
    /// Remove sluice's tables from the node (or --netns) and exit.
    #[arg(long)]
    cleanup: bool,
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn run(args: AgentArgs) -> Result<i32> {
    init_logging(args.log_format, &args.log_level);
    let nft = match &args.netns {
        Some(ns) => Nft::in_netns(ns),
        None => Nft::here(),
    };
    if args.cleanup {
        // Both dataplanes: whichever ran here (or both, after a switch) leaves nothing.
        NftDataplane::new(nft)
            .remove()
            .context("removing sluice's tables")?;
        tracing::info!(netns = ?args.netns, "sluice tables removed");
        let dir = crate::ebpf::pin_dir(args.netns.as_deref());
        let links = crate::ebpf::EbpfDataplane::remove_pinned(&dir)
            .context("removing sluice's pinned eBPF programs and maps")?;
        if links > 0 {
            tracing::info!(dir = %dir.display(), links, "sluice eBPF links detached and unpinned");
        }
        return Ok(0);
    }
    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| super::BadInput("no node name: pass --node-name or set NODE_NAME".into()))?;
    let cfg = AgentConfig {
        netns: args.netns.clone(),
        attach: args.attach,
        bridge: args.bridge.clone(),
        debounce: Duration::from_millis(args.debounce_ms),
        max_delay: Duration::from_millis(args.max_delay_ms),
        drift_interval: Duration::from_secs(args.drift_interval.max(1)),
        dataplane: args.dataplane,
        service_cidrs: args.service_cidr.clone(),
        watch: WatchOptions {
            backoff_max: Duration::from_secs(args.watch_backoff_max.max(1)),
            rediscover: Duration::from_secs(args.cnp_rediscover.max(1)),
            ..WatchOptions::default()
        },
        ..AgentConfig::new(&node)
    };
    let source = match &args.kubeconfig {
        Some(p) => ClientSource::Kubeconfig(p.clone()),
        None => ClientSource::Infer,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = client_from(&source).await?;
        let mut agent = Agent::start(client, cfg, Some(args.metrics_addr)).await?;
        tracing::info!(
            node = %node,
            metrics = %agent.metrics_addr().map(|a| a.to_string()).unwrap_or_default(),
            "agent running"
        );
        wait_for_signal().await?;
        tracing::info!(
            dataplane = %agent.dataplane(),
            "stopping; rules stay in place (sluice agent --cleanup removes them)"
        );
        tokio::task::block_in_place(|| agent.stop());
        Ok(0)
    })
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
