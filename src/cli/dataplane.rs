//! `sluice compile`, `sluice apply`, `sluice status`: one node's ruleset, printed, installed
//! into the current network namespace, or compared with what is installed.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};

use super::{BadInput, ManifestArgs, TextOrJson};
use crate::compile::ir::Isolation;
use crate::compile::{compile, Attach, Attachment, CompileInput, NodeRuleset};
use crate::dataplane::Dataplane;
use crate::nft::{json, text, Nft, NftDataplane};
use crate::policy::model::ObjectName;

#[derive(Args, Clone)]
pub struct NodeArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,
    /// The node whose pods (spec.nodeName) the ruleset is for.
    #[arg(long)]
    pub node: String,
    /// How pods attach: routed (own veth per pod) or bridged (cni0).
    #[arg(long, value_enum, default_value = "routed")]
    pub attach: Attach,
    /// Host-side interface of a pod of --node, `namespace/pod=ifname` (repeatable; 1 to 15
    /// bytes, no '/', ':' or spaces; one per pod). Without it a pod's interface is `sl` + 11
    /// hex digits of the FNV-1a hash of `namespace/pod`.
    #[arg(long = "iface", value_name = "NS/POD=IFNAME")]
    pub ifaces: Vec<String>,
    /// MAC address of a pod of --node for bridged anti-spoofing,
    /// `namespace/pod=aa:bb:cc:dd:ee:ff` (repeatable; one per pod).
    #[arg(long = "mac", value_name = "NS/POD=MAC")]
    pub macs: Vec<String>,
}

impl NodeArgs {
    /// `--iface`/`--mac`, checked against what the kernel takes and against the manifests:
    /// a value the kernel would refuse, a pod the manifests do not have, one interface or MAC
    /// for two pods, or one pod given twice is bad input (exit 2), not a ruleset that fails
    /// at apply time or matches nothing.
    pub fn attachments(
        &self,
        cluster: &crate::policy::Cluster,
    ) -> Result<BTreeMap<ObjectName, Attachment>, BadInput> {
        let mut out: BTreeMap<ObjectName, Attachment> = BTreeMap::new();
        for (flag, list) in [("--iface", &self.ifaces), ("--mac", &self.macs)] {
            let mut owner: BTreeMap<String, ObjectName> = BTreeMap::new();
            for item in list {
                let (pod, value) = item.split_once('=').ok_or_else(|| {
                    BadInput(format!(
                        "{flag} {item:?}: write namespace/pod={}",
                        if flag == "--iface" { "IFNAME" } else { "MAC" }
                    ))
                })?;
                let name = ObjectName::parse(pod);
                let Some(p) = cluster.pod(&name) else {
                    return Err(BadInput(format!(
                        "{flag} {item:?}: the manifests have no pod {name}: name a pod of node {} as namespace/name (a workload's pods as namespace/kind/name)",
                        self.node
                    )));
                };
                if p.node.as_deref() != Some(self.node.as_str()) {
                    return Err(BadInput(format!(
                        "{flag} {item:?}: pod {name} is not on node {} (its spec.nodeName is {}): give {flag} only for this node's pods",
                        self.node,
                        p.node.as_deref().unwrap_or("empty")
                    )));
                }
                let value = if flag == "--iface" {
                    crate::compile::names::check_ifname(value)
                        .map_err(|e| BadInput(format!("{flag} {item:?}: {e}")))?;
                    value.to_string()
                } else {
                    crate::compile::names::check_mac(value)
                        .map_err(|e| BadInput(format!("{flag} {item:?}: {e}")))?
                };
                if let Some(other) = owner.insert(value.clone(), name.clone()) {
                    if other != name {
                        return Err(BadInput(format!(
                            "{flag} {item:?}: {value} is already given to pod {other}: every pod has its own {}",
                            if flag == "--iface" { "host-side interface" } else { "MAC address" }
                        )));
                    }
                }
                let entry = out.entry(name.clone()).or_default();
                let slot = if flag == "--iface" {
                    &mut entry.iface
                } else {
                    &mut entry.mac
                };
                if let Some(old) = slot.replace(value.clone()) {
                    return Err(BadInput(format!(
                        "{flag} {item:?}: pod {name} is already given {old}: give {flag} once per pod"
                    )));
                }
            }
        }
        Ok(out)
    }

    pub fn ruleset(&self) -> anyhow::Result<NodeRuleset> {
        let (cluster, _) = self.manifests.load()?;
        let attachments = self.attachments(&cluster)?;
        let rs = compile(&CompileInput {
            cluster: &cluster,
            node: &self.node,
            attach: self.attach,
            attachments: &attachments,
        });
        if rs.pods.is_empty() {
            eprintln!(
                "sluice: warning: no pod has spec.nodeName {:?}: the ruleset filters nothing",
                self.node
            );
        }
        for w in &rs.warnings {
            eprintln!("sluice: warning: {w}");
        }
        for w in addressless_pods(&cluster, &self.node) {
            eprintln!("sluice: warning: {w}");
        }
        Ok(rs)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompileFormat {
    /// nft text syntax (`nft -f` reads it).
    Nft,
    /// The nftables JSON batch `sluice apply` runs (`nft -j -f` reads it).
    Json,
    /// sluice's backend-neutral ruleset, for debugging.
    Ir,
}

#[derive(Args)]
pub struct CompileArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[arg(long, value_enum, default_value = "nft")]
    output: CompileFormat,
}

pub fn compile_cmd(args: CompileArgs) -> anyhow::Result<i32> {
    let rs = args.node.ruleset()?;
    match args.output {
        CompileFormat::Nft => print!("{}", text::render(&rs)),
        CompileFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json::full_replace(&rs, &[]))?
        ),
        CompileFormat::Ir => println!("{}", serde_json::to_string_pretty(&rs)?),
    }
    Ok(0)
}

#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
}

pub fn apply_cmd(args: ApplyArgs) -> anyhow::Result<i32> {
    let rs = args.node.ruleset()?;
    warn_missing_interfaces(&rs);
    let mut dp = NftDataplane::new(Nft::here());
    let report = dp.apply_full(&rs)?;
    match args.output {
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        TextOrJson::Text => println!(
            "applied {} commands in {:.1} ms: {} local pods, {} rules, {} set elements",
            report.commands,
            report.seconds * 1e3,
            rs.pods.len(),
            rs.tables.iter().map(|t| t.rule_count()).sum::<usize>(),
            rs.tables.iter().map(|t| t.element_count()).sum::<usize>()
        ),
    }
    Ok(0)
}

pub fn status_cmd(args: ApplyArgs) -> anyhow::Result<i32> {
    let rs = args.node.ruleset()?;
    warn_missing_interfaces(&rs);
    let dp = NftDataplane::new(Nft::here());
    let status = dp.status(&rs)?;
    match args.output {
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        TextOrJson::Text => {
            if status.in_sync {
                println!(
                    "in sync: {} chains, {} sets installed as wanted",
                    status.wanted.chains.len(),
                    status.wanted.sets.len()
                );
            } else {
                // A flushed table differs in every chain: the first lines say enough.
                const SHOWN: usize = 20;
                println!("drift: {} differences", status.differences.len());
                for d in status.differences.iter().take(SHOWN) {
                    println!("  {d}");
                }
                if status.differences.len() > SHOWN {
                    println!(
                        "  ... and {} more (--output json lists them all)",
                        status.differences.len() - SHOWN
                    );
                }
            }
        }
    }
    Ok(if status.in_sync { 0 } else { 1 })
}

/// Interfaces the ruleset keys on (routed: the veth of every pod with a chain; bridged: every
/// pod's bridge port) that do not exist in this network namespace: their rules match
/// nothing. Usually the veths have other names than sluice's defaults and `--iface` is
/// missing; a pod not started yet is the harmless case.
fn warn_missing_interfaces(rs: &NodeRuleset) {
    let keyed: Vec<(&str, &str)> = rs
        .pods
        .iter()
        .filter(|p| {
            rs.attach == Attach::Bridged
                || !matches!(p.ingress, Isolation::Open)
                || !matches!(p.egress, Isolation::Open)
        })
        .filter_map(|p| Some((p.pod.as_str(), p.iface.as_deref()?)))
        .collect();
    let missing: Vec<&(&str, &str)> = keyed
        .iter()
        .filter(|(_, iface)| !interface_exists(iface))
        .collect();
    if missing.is_empty() {
        return;
    }
    let shown: Vec<String> = missing
        .iter()
        .take(5)
        .map(|(pod, iface)| format!("{iface} (pod {pod})"))
        .collect();
    let more = if missing.len() > 5 {
        format!(" and {} more", missing.len() - 5)
    } else {
        String::new()
    };
    eprintln!(
        "sluice: warning: {} of {} interfaces the ruleset keys on do not exist in this network namespace: {}{more}; their rules match nothing until they do. If the pods run, give their host-side interfaces with --iface namespace/pod=IFNAME",
        missing.len(),
        keyed.len(),
        shown.join(", ")
    );
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Pods without an IP are a hole between explain and the kernel: peers are matched by
/// address, so a rule naming such a pod as a peer matches nothing. Pods of this node are
/// named one by one, the others counted.
fn addressless_pods(cluster: &crate::policy::Cluster, node: &str) -> Vec<String> {
    let (local, other): (Vec<_>, Vec<_>) = cluster
        .pods
        .values()
        .filter(|p| p.ips.is_empty() && !p.host_network)
        .partition(|p| p.node.as_deref() == Some(node));
    let mut out: Vec<String> = local
        .iter()
        .map(|p| {
            format!(
                "pod {} is on node {node} but has no IP (status.podIP): its own chains filter its interface, but no rule can match it as a peer, so flows explain allows from or to it as a peer are dropped",
                p.object_name()
            )
        })
        .collect();
    if !other.is_empty() {
        let names: Vec<String> = other
            .iter()
            .take(3)
            .map(|p| p.object_name().to_string())
            .collect();
        out.push(format!(
            "{} pods of other nodes (or of none) have no IP, e.g. {}: rules cannot match them as peers, so this node drops their traffic where a policy would allow it",
            other.len(),
            names.join(", ")
        ));
    }
    out
}
