//! The Kubernetes API edge: kube-rs watchers that turn Pods, Namespaces, NetworkPolicies and
//! ClusterNetworkPolicies into [`Change`]s of the policy model, the reverse direction for
//! tools that write objects (`export`), and a real kube-apiserver + etcd on loopback for tests
//! (`testenv`, with ClusterNetworkPolicy's CRDs from `crds`).
//!
//! The agent keeps no copy of the Kubernetes objects: every object is converted (validated and
//! trimmed to the fields policy needs) the moment it arrives, and the `policy::Cluster` the
//! agent holds is the reflector's store.

pub mod client;
pub mod cnp_watch;
pub mod convert;
#[cfg(feature = "harness")]
pub mod crds;
pub mod export;
pub mod snapshot;
#[cfg(feature = "harness")]
pub mod testenv;
pub mod watch;

pub use client::{client_from, ClientSource};
pub use convert::{Change, Kind, Object};
