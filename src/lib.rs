//! sluice: Kubernetes NetworkPolicy enforcement with nftables.
//!
//! Data flows one way: sources -> [`policy::Cluster`] snapshot -> `compile::NodeRuleset` -> kernel.
//! `policy` and `compile` are pure (no I/O); kernel and API access live at the edges.

pub mod bench;
pub mod cli;
pub mod compile;
pub mod conformance;
pub mod dataplane;
pub mod lab;
pub mod manifests;
pub mod nft;
pub mod policy;
pub mod synth;
