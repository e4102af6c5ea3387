//! sluice: Kubernetes NetworkPolicy enforcement with nftables.
//!
//! Data flows one way: sources -> [`policy::Cluster`] snapshot -> `compile::NodeRuleset` -> kernel.
//! `policy` and `compile` are pure (no I/O); kernel and API access live at the edges.

pub mod agent;
#[cfg(feature = "harness")]
pub mod bench;
pub mod cli;
pub mod compile;
#[cfg(feature = "harness")]
pub mod conformance;
pub mod dataplane;
#[path = "ebpf-fallback/mod.rs"]
pub mod ebpf;
pub mod k8s;
#[cfg(feature = "harness")]
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod nft;
pub mod policy;
pub mod review;
