//! The nftables dataplane: render a [`NodeRuleset`] as nftables JSON, apply it atomically
//! through `nft -j -f -`, patch it with the smallest delta, and read back our own tables.

pub mod delta;
pub mod installed;
pub mod json;
pub mod runner;
pub mod text;

use std::time::Instant;

use anyhow::Result;

use crate::compile::ir::{NodeRuleset, TableFamily};
use crate::dataplane::{ApplyReport, Dataplane, Status, Summary};
pub use runner::Nft;

/// nftables in one network namespace (the current one, or a named one).
pub struct NftDataplane {
    pub nft: Nft,
    /// Read back by the last [`Dataplane::verify`]; the drift check compares against it.
    fingerprint: Option<installed::Fingerprint>,
}

impl NftDataplane {
    pub fn new(nft: Nft) -> Self {
        NftDataplane {
            nft,
            fingerprint: None,
        }
    }
}

const OUR_FAMILIES: [TableFamily; 2] = [TableFamily::Inet, TableFamily::Bridge];

impl Dataplane for NftDataplane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply_full(&mut self, rs: &NodeRuleset) -> Result<ApplyReport> {
        let batch = json::full_replace(rs, &OUR_FAMILIES);
        let commands = batch["nftables"].as_array().map_or(0, |a| a.len() - 1);
        let t = Instant::now();
        self.nft.apply_json(&batch)?;
        Ok(ApplyReport {
            full: true,
            commands,
            stats: None,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn apply_delta(&mut self, old: &NodeRuleset, new: &NodeRuleset) -> Result<ApplyReport> {
        let Some(d) = delta::delta(old, new) else {
            return self.apply_full(new);
        };
        let t = Instant::now();
        if !d.commands.is_empty() {
            self.nft.apply_json(&json::batch(d.commands))?;
        }
        Ok(ApplyReport {
            full: false,
            commands: d.stats.commands,
            stats: Some(d.stats),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// Exact: what the kernel holds is compared, rule by rule and element by element, with
    /// what it holds once `wanted` is applied (the agent's drift fingerprint, see
    /// [`installed::Fingerprint::expected`]).
    fn status(&self, wanted: &NodeRuleset) -> Result<Status> {
        let (have, installed) = installed::read(&self.nft)?;
        let want = Summary::wanted(wanted);
        let differences = have.differences(&installed::Fingerprint::expected(wanted)?);
        Ok(Status {
            in_sync: differences.is_empty(),
            differences,
            installed,
            wanted: want,
        })
    }

    fn remove(&mut self) -> Result<()> {
        let mut cmds = Vec::new();
        for f in OUR_FAMILIES {
            let t = crate::compile::ir::Table::new(f, crate::compile::TABLE);
            cmds.push(json::add_table(&t));
            cmds.push(json::delete_table(&t));
        }
        self.nft.apply_json(&json::batch(cmds))
    }

    /// Reads the tables back and compares names and sizes (cheap); keeps the fingerprint of
    /// what it read for the drift check.
    fn verify(&mut self, wanted: &NodeRuleset) -> Result<Vec<String>> {
        let (fp, have) = installed::read(&self.nft)?;
        let diff = have.differences(&Summary::wanted(wanted));
        self.fingerprint = Some(fp);
        Ok(diff)
    }

    /// Compares the fingerprint of what the kernel holds now with the one read right after
    /// the last apply: any edit (a flushed set, a rule added by hand) shows, whatever it was.
    fn drift(&mut self, _wanted: &NodeRuleset) -> Result<Option<Vec<String>>> {
        let (fp, _) = installed::read(&self.nft)?;
        if self.fingerprint.as_ref() == Some(&fp) {
            return Ok(None);
        }
        self.fingerprint = None;
        Ok(Some(Vec::new()))
    }
}
