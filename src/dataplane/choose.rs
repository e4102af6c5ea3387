//! Which dataplane enforces here, and building it: the one place that knows the concrete
//! dataplanes (nftables, eBPF).

use anyhow::Result;
use serde::Serialize;

use super::Dataplane;

/// Which dataplane enforces: `auto` picks nftables when it works here, eBPF otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    #[default]
    Auto,
    Nftables,
    Ebpf,
}

impl DataplaneKind {
    pub fn name(self) -> &'static str {
        match self {
            DataplaneKind::Auto => "auto",
            DataplaneKind::Nftables => "nftables",
            DataplaneKind::Ebpf => "ebpf",
        }
    }
}

impl std::fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether nftables works here: the `nft` binary runs and the kernel takes a transaction
/// that creates (and in the same batch deletes) a scratch table, so nothing is left behind.
pub fn nftables_usable() -> bool {
    nftables_check().is_ok()
}

fn nftables_check() -> Result<()> {
    let nft = crate::nft::Nft::here();
    let table = format!("sluice_probe_{}", std::process::id());
    let batch = serde_json::json!({"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"add": {"table": {"family": "inet", "name": table}}},
        {"delete": {"table": {"family": "inet", "name": table}}},
    ]});
    nft.apply_json(&batch)
}

/// Resolves `auto` (and checks an explicit choice can work): the kind to use and why, for
/// the log and the agent's metric.
pub fn choose(kind: DataplaneKind) -> Result<(DataplaneKind, String)> {
    match kind {
        DataplaneKind::Nftables => Ok((kind, "nftables requested".into())),
        DataplaneKind::Ebpf => {
            crate::ebpf::object()?;
            Ok((kind, "ebpf requested".into()))
        }
        DataplaneKind::Auto => match nftables_check() {
            Ok(()) => Ok((
                DataplaneKind::Nftables,
                "auto: nftables is usable here".into(),
            )),
            Err(nft_err) => match crate::ebpf::EbpfDataplane::probe() {
                Ok(()) => Ok((
                    DataplaneKind::Ebpf,
                    format!(
                        "auto: nftables is not usable ({}), the eBPF classifier loads",
                        first_line(&format!("{nft_err:#}"))
                    ),
                )),
                Err(bpf_err) => anyhow::bail!(
                    "no dataplane works here: nftables: {}; eBPF: {}",
                    first_line(&format!("{nft_err:#}")),
                    first_line(&format!("{bpf_err:#}"))
                ),
            },
        },
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// What a dataplane may need to know beyond the ruleset.
#[derive(Debug, Clone, Default)]
pub struct DataplaneOptions {
    /// The cluster's Service (ClusterIP) ranges. nftables judges after the node's NAT anyway;
    /// the eBPF dataplane defers a pod's egress check for these destinations until after NAT.
    pub service_cidrs: Vec<ipnet::IpNet>,
    /// Let the rules outlive this process (the agent): the eBPF dataplane pins its links and
    /// maps in bpffs (nftables tables stay anyway).
    pub persist: bool,
}

/// A dataplane of the given kind (`auto` resolved first) for a network namespace (None: the
/// current one).
pub fn make(
    kind: DataplaneKind,
    netns: Option<&str>,
    opts: &DataplaneOptions,
) -> Result<Box<dyn Dataplane + Send>> {
    let (kind, _) = choose(kind)?;
    Ok(match kind {
        DataplaneKind::Ebpf => {
            let mut dp = crate::ebpf::EbpfDataplane::new(netns)?;
            dp.set_service_ranges(&opts.service_cidrs);
            if opts.persist {
                let dir = crate::ebpf::pin_dir(netns);
                match dp.persist_in(&dir) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "eBPF links and maps pinned: rules outlive the agent")
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "eBPF rules will not outlive the agent")
                    }
                }
            }
            Box::new(dp)
        }
        _ => Box::new(crate::nft::NftDataplane::new(match netns {
            Some(n) => crate::nft::Nft::in_netns(n),
            None => crate::nft::Nft::here(),
        })),
    })
}
