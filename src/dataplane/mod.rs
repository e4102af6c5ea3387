//! The dataplane room: one trait, several dataplanes (nftables in `crate::nft`, eBPF in
//! `crate::ebpf`, an in-memory [`fake`] for tests). Each makes the kernel hold a
//! [`NodeRuleset`] and says what it holds.
//!
//! This module holds only what every dataplane shares: the [`Dataplane`] trait and the neutral
//! report types ([`ApplyReport`], [`Status`], [`Summary`], [`DeltaStats`]). Dataplanes import
//! these and nothing of each other; choosing and building one is [`choose`]'s business (the
//! only file here that knows the concrete dataplanes).

pub mod choose;
pub mod fake;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use crate::compile::ir::Table;
use crate::compile::NodeRuleset;

pub use choose::{choose, make, nftables_usable, DataplaneKind, DataplaneOptions};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// A full replacement (rather than a delta).
    pub full: bool,
    pub commands: usize,
    pub stats: Option<DeltaStats>,
    pub seconds: f64,
}

/// What a delta changed (nftables counts commands, elements, chains and sets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltaStats {
    pub commands: usize,
    pub elements_added: usize,
    pub elements_removed: usize,
    pub chains_added: usize,
    pub chains_rewritten: usize,
    pub chains_removed: usize,
    pub sets_added: usize,
    pub sets_removed: usize,
}

impl DeltaStats {
    pub fn elements_changed(&self) -> usize {
        self.elements_added + self.elements_removed
    }
    pub fn chains_touched(&self) -> usize {
        self.chains_added + self.chains_rewritten + self.chains_removed
    }
    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub in_sync: bool,
    pub differences: Vec<String>,
    pub installed: Summary,
    pub wanted: Summary,
}

/// Names and sizes, enough to see at a glance whether installed matches wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `family/chain` -> number of rules.
    pub chains: BTreeMap<String, usize>,
    /// `family/set` -> number of elements.
    pub sets: BTreeMap<String, usize>,
}

impl Summary {
    pub fn of_tables(tables: &[Table]) -> Summary {
        let mut s = Summary::default();
        for t in tables {
            for (name, c) in &t.chains {
                s.chains
                    .insert(format!("{}/{name}", t.family.name()), c.rules.len());
            }
            for (name, set) in &t.sets {
                s.sets
                    .insert(format!("{}/{name}", t.family.name()), set.elements.len());
            }
        }
        s
    }

    pub fn wanted(rs: &NodeRuleset) -> Summary {
        Summary::of_tables(&rs.tables)
    }

    /// Human-readable differences (empty when equal).
    pub fn differences(&self, wanted: &Summary) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, have, want) in [
            ("chain", &self.chains, &wanted.chains),
            ("set", &self.sets, &wanted.sets),
        ] {
            let unit = if kind == "chain" { "rules" } else { "elements" };
            for (name, n) in want {
                match have.get(name) {
                    None => out.push(format!("{kind} {name} is missing")),
                    Some(h) if h != n => {
                        out.push(format!("{kind} {name} has {h} {unit}, wanted {n}"))
                    }
                    Some(_) => {}
                }
            }
            for name in have.keys() {
                if !want.contains_key(name) {
                    out.push(format!("{kind} {name} is installed but not wanted"));
                }
            }
        }
        out
    }
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

    /// The check right after an apply: how what the kernel holds differs from `wanted`
    /// (empty: as meant). A dataplane may remember what it read for [`Dataplane::drift`].
    ///
    /// The default asks [`Dataplane::status`] and leaves out pods whose interface is not
    /// there yet (`... not found`): the caller retries those, they are no reason to replace
    /// everything.
    fn verify(&mut self, wanted: &NodeRuleset) -> Result<Vec<String>> {
        Ok(self
            .status(wanted)?
            .differences
            .into_iter()
            .filter(|d| !d.ends_with("not found"))
            .collect())
    }

    /// The periodic drift check, `wanted` being what was last applied and verified: None
    /// while the kernel still holds it, Some(differences) when someone changed it (the list
    /// may be empty when the dataplane only knows *that* it changed, e.g. a fingerprint).
    ///
    /// The default is [`Dataplane::verify`].
    fn drift(&mut self, wanted: &NodeRuleset) -> Result<Option<Vec<String>>> {
        let d = self.verify(wanted)?;
        Ok((!d.is_empty()).then_some(d))
    }
}
