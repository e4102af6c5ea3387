//! The Kubernetes API edge: kube-rs watchers that turn Pods, Namespaces and NetworkPolicies
//! into [`Change`]s of the policy model, the reverse direction for tools that write objects
//! (`export`), and a real kube-apiserver + etcd on loopback for tests (`testenv`).
//!
//! The agent keeps no copy of the Kubernetes objects: every object is converted (validated and
//! trimmed to the fields policy needs) the moment it arrives, and the `policy::Cluster` the
//! agent holds is the reflector's store.

pub mod client;
pub mod convert;
pub mod export;
pub mod snapshot;
#[cfg(feature = "harness")]
pub mod testenv;
pub mod watch;

pub use client::{client_from, ClientSource};
pub use convert::{Change, Kind, Object};
