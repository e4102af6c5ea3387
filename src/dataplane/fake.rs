//! An in-memory dataplane for tests, in the spirit of knftables' `Fake`: it holds the last
//! ruleset applied instead of a kernel, records every transaction, can be told to fail the
//! next apply, and can be tampered with to simulate drift (someone flushing our table).
//!
//! The handle is cheap to clone and shares its state, so a test can give one clone to the code
//! under test (as a `Box<dyn Dataplane + Send>`) and inspect or poke the other.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{bail, Result};

use super::{ApplyReport, Dataplane, Status, Summary};
use crate::compile::NodeRuleset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    Full,
    Delta,
    Remove,
}

/// One transaction the fake was asked for.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub kind: TxKind,
    /// What it changed, as names and sizes from before to after ("chain inet/x has 2
    /// rules, wanted 3", "set inet/y is missing": added); empty when nothing changed.
    pub changed: Vec<String>,
    /// The ruleset it was asked to install (None for a removal).
    pub ruleset: Option<NodeRuleset>,
    /// A delta's `old` was what the fake held (a real delta on another base goes wrong).
    pub base_matched: bool,
    /// It failed (told to, see [`Fake::fail_next`]); nothing changed.
    pub failed: bool,
}

#[derive(Debug, Default)]
pub struct FakeState {
    /// What the "kernel" holds (None: nothing of ours).
    pub installed: Option<NodeRuleset>,
    pub transactions: Vec<Transaction>,
    /// The next applies (full or delta) fail, one message each.
    fail: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Fake {
    state: Arc<Mutex<FakeState>>,
}

impl Fake {
    pub fn new() -> Fake {
        Fake::default()
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transactions so far (failed ones included).
    pub fn transactions(&self) -> Vec<Transaction> {
        self.state().transactions.clone()
    }

    /// What the fake holds now.
    pub fn installed(&self) -> Option<NodeRuleset> {
        self.state().installed.clone()
    }

    /// The next apply (full or delta) fails with `msg`; calls queue up.
    pub fn fail_next(&self, msg: &str) {
        self.state().fail.push(msg.to_string());
    }

    /// Simulates drift: someone flushes one of our tables (or all of them when the ruleset
    /// has a single one).
    pub fn flush_a_table(&self) {
        let mut s = self.state();
        if let Some(rs) = s.installed.as_mut() {
            if let Some(t) = rs.tables.first_mut() {
                t.chains.clear();
                t.sets.clear();
            }
        }
    }

    /// Simulates drift: our tables are deleted.
    pub fn delete_everything(&self) {
        let mut s = self.state();
        s.installed = None;
    }

    fn take_failure(s: &mut FakeState) -> Option<String> {
        (!s.fail.is_empty()).then(|| s.fail.remove(0))
    }
}

fn summary(rs: Option<&NodeRuleset>) -> Summary {
    rs.map(Summary::wanted).unwrap_or_default()
}

fn report(full: bool, commands: usize) -> ApplyReport {
    ApplyReport {
        full,
        commands,
        stats: None,
        seconds: 0.0,
    }
}

impl Dataplane for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn apply_full(&mut self, rs: &NodeRuleset) -> Result<ApplyReport> {
        let mut s = self.state();
        let changed = summary(s.installed.as_ref()).differences(&summary(Some(rs)));
        let failure = Fake::take_failure(&mut s);
        s.transactions.push(Transaction {
            kind: TxKind::Full,
            changed: changed.clone(),
            ruleset: Some(rs.clone()),
            base_matched: true,
            failed: failure.is_some(),
        });
        if let Some(msg) = failure {
            bail!("fake: {msg}");
        }
        s.installed = Some(rs.clone());
        Ok(report(true, changed.len().max(1)))
    }

    fn apply_delta(&mut self, old: &NodeRuleset, new: &NodeRuleset) -> Result<ApplyReport> {
        let mut s = self.state();
        let changed = summary(Some(old)).differences(&summary(Some(new)));
        let base_matched = s.installed.as_ref() == Some(old);
        let failure = Fake::take_failure(&mut s);
        s.transactions.push(Transaction {
            kind: TxKind::Delta,
            changed: changed.clone(),
            ruleset: Some(new.clone()),
            base_matched,
            failed: failure.is_some(),
        });
        if let Some(msg) = failure {
            bail!("fake: {msg}");
        }
        if old == new {
            return Ok(report(false, 0));
        }
        // A delta patches what is there: on another base the result is neither old nor new
        // (the fake keeps what it had, which the caller's read-back must notice).
        if base_matched {
            s.installed = Some(new.clone());
        }
        Ok(report(false, changed.len().max(1)))
    }

    fn status(&self, wanted: &NodeRuleset) -> Result<Status> {
        let s = self.state();
        let installed = summary(s.installed.as_ref());
        let want = Summary::wanted(wanted);
        let mut differences = installed.differences(&want);
        if differences.is_empty() && s.installed.as_ref() != Some(wanted) {
            differences.push("the installed ruleset differs from the wanted one".into());
        }
        Ok(Status {
            in_sync: differences.is_empty(),
            differences,
            installed,
            wanted: want,
        })
    }

    fn remove(&mut self) -> Result<()> {
        let mut s = self.state();
        let changed = summary(s.installed.as_ref()).differences(&Summary::default());
        s.transactions.push(Transaction {
            kind: TxKind::Remove,
            changed,
            ruleset: None,
            base_matched: true,
            failed: false,
        });
        s.installed = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, Attach, CompileInput};
    use crate::policy::Cluster;

    fn empty() -> NodeRuleset {
        compile(&CompileInput {
            cluster: &Cluster::default(),
            node: "node-0",
            attach: Attach::Routed,
            attachments: &Default::default(),
        })
    }

    #[test]
    fn records_fails_and_drifts() {
        let fake = Fake::new();
        let mut dp: Box<dyn Dataplane + Send> = Box::new(fake.clone());
        let rs = empty();
        fake.fail_next("no");
        assert!(dp.apply_full(&rs).is_err());
        assert!(fake.installed().is_none());
        dp.apply_full(&rs).unwrap();
        assert_eq!(fake.installed().as_ref(), Some(&rs));
        assert_eq!(dp.apply_delta(&rs, &rs).unwrap().commands, 0);
        assert_eq!(dp.drift(&rs).unwrap(), None);
        fake.delete_everything();
        assert!(dp.drift(&rs).unwrap().is_some());
        dp.remove().unwrap();
        let kinds: Vec<(TxKind, bool)> = fake
            .transactions()
            .iter()
            .map(|t| (t.kind, t.failed))
            .collect();
        assert_eq!(
            kinds,
            [
                (TxKind::Full, true),
                (TxKind::Full, false),
                (TxKind::Delta, false),
                (TxKind::Remove, false)
            ]
        );
    }
}
