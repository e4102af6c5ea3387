//! Cluster snapshot + node -> per-pod decisions ([`decision`]) -> [`NodeRuleset`] with the
//! nftables tables lowered from them ([`ir`], `lower`). Pure: no I/O, deterministic.

mod build;
mod cnp_book;
pub mod decision;
#[cfg(test)]
mod decision_cnp_tests;
#[cfg(test)]
mod decision_tests;
pub mod ir;
mod lower;
pub mod names;
pub mod net;
mod profile;
mod select;

pub use build::{compile, decide, merge_ranges, Attachment, CompileInput, TABLE};
pub use ir::{Attach, NodeRuleset};
