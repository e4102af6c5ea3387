//! One trait, several dataplanes (nftables, eBPF): each makes the kernel hold a
//! [`NodeRuleset`] and says what it holds.

use anyhow::Result;
use serde::Serialize;

use crate::compile::NodeRuleset;
use crate::nft::delta::DeltaStats;
use crate::nft::installed::Summary;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// A full replacement (rather than a delta).
    pub full: bool,
    pub commands: usize,
    pub stats: Option<DeltaStats>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub in_sync: bool,
    pub differences: Vec<String>,
    pub installed: Summary,
    pub wanted: Summary,
}

pub trait Dataplane {
    fn name(&self) -> &'static str;
    /// Replaces whatever sluice had installed with `rs`, atomically.
    fn apply_full(&mut self, rs: &NodeRuleset) -> Result<ApplyReport>;
    /// Moves from `old` (installed) to `new` with the smallest change.
    fn apply_delta(&mut self, old: &NodeRuleset, new: &NodeRuleset) -> Result<ApplyReport>;
    /// Compares what is installed with `wanted`.
    fn status(&self, wanted: &NodeRuleset) -> Result<Status>;
    /// Removes everything sluice installed.
    fn remove(&mut self) -> Result<()>;
}
