//! Cluster snapshot + node -> backend-neutral [`NodeRuleset`]. Pure: no I/O, deterministic.

mod build;
pub mod ir;
pub mod names;
mod profile;
mod select;

pub use build::{compile, merge_ranges, Attachment, CompileInput, TABLE};
pub use ir::{Attach, NodeRuleset};
