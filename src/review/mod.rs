//! Policy review tools: what a change does (`diff`), what looks wrong (`lint`), and the
//! smallest verified change that allows or denies a flow (`fix`).
//!
//! Pure like `policy`: everything here takes [`crate::policy::Cluster`] snapshots (from files or
//! a live cluster, loaded by the CLI) and answers with the oracle ([`crate::policy::evaluate`])
//! and the truth table ([`crate::policy::matrix`]).

pub mod decision;
pub mod diff;
pub mod fix;
pub mod lint;
pub mod podset;
pub mod render;

pub use diff::{diff, AbsentPods, Diff};
