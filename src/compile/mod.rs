//! Cluster snapshot + node -> backend-neutral [`NodeRuleset`]. Pure: no I/O, deterministic.

mod build;
pub mod ir;
pub mod names;

pub use build::{compile, merge_ranges, Attachment, CompileInput, TABLE};
pub use ir::{Attach, NodeRuleset};
