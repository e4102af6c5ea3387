//! The policy model and the oracle. Pure: no I/O, no kernel.
//!
//! Kubernetes objects go in through [`objects::ClusterBuilder`] (manifests) or the `upsert_*`
//! methods of [`Cluster`] (watchers); [`evaluate::evaluate`] answers "can A reach B, and why",
//! and [`matrix`] answers it for every pair at once.

pub mod clause;
pub mod cnp;
pub mod evaluate;
pub mod fields;
pub mod ipblock;
pub mod kinds;
pub mod labels;
pub mod matrix;
pub mod model;
pub mod networkpolicy;
mod np_tier;
pub mod objects;
pub mod parse;
pub mod pods;
pub mod ports;
pub mod tiers;
pub mod verdict;

#[cfg(test)]
pub(crate) mod clause_tests;
#[cfg(test)]
mod cnp_semantics_tests;
#[cfg(test)]
mod semantics_tests;

pub use evaluate::{evaluate, Endpoint, Flow, Verdict};
pub use model::{Cluster, Direction, ObjectName, Pod, Policy};
pub use ports::{PortRef, Protocol};
