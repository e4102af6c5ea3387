//! `sluice compile`, `sluice apply`, `sluice status`: one node's ruleset, printed, installed
//! into the current network namespace, or compared with what is installed.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};

use super::{BadInput, ManifestArgs, TextOrJson};
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
    /// Host-side interface of a pod, `namespace/pod=ifname` (repeatable). Without it a pod's
    /// interface is `sl` + 11 hex digits of the FNV-1a hash of `namespace/pod`.
    #[arg(long = "iface", value_name = "NS/POD=IFNAME")]
    pub ifaces: Vec<String>,
    /// MAC address of a pod for bridged anti-spoofing, `namespace/pod=aa:bb:cc:dd:ee:ff`.
    #[arg(long = "mac", value_name = "NS/POD=MAC")]
    pub macs: Vec<String>,
}

impl NodeArgs {
    pub fn attachments(&self) -> Result<BTreeMap<ObjectName, Attachment>, BadInput> {
        let mut out: BTreeMap<ObjectName, Attachment> = BTreeMap::new();
        for (flag, list) in [("--iface", &self.ifaces), ("--mac", &self.macs)] {
            for item in list {
                let (pod, value) = item.split_once('=').ok_or_else(|| {
                    BadInput(format!("{flag} {item:?}: write namespace/pod=value"))
                })?;
                let entry = out.entry(ObjectName::parse(pod)).or_default();
                if flag == "--iface" {
                    if value.is_empty() || value.len() > 15 {
                        return Err(BadInput(format!(
                            "{flag} {item:?}: interface names are 1 to 15 characters"
                        )));
                    }
                    entry.iface = Some(value.to_string());
                } else {
                    entry.mac = Some(value.to_string());
                }
            }
        }
        Ok(out)
    }

    pub fn ruleset(&self) -> anyhow::Result<NodeRuleset> {
        let attachments = self.attachments()?;
        let (cluster, _) = self.manifests.load()?;
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
                println!("drift: {} differences", status.differences.len());
                for d in &status.differences {
                    println!("  {d}");
                }
            }
        }
    }
    Ok(if status.in_sync { 0 } else { 1 })
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
