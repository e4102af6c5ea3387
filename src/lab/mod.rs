//! Lab: a small Kubernetes-like cluster on this machine, built from network namespaces.
//!
//! ```text
//!   hub netns sl<lab>-ul: bridge br0 192.168.100.254/24 ("the LAN")
//!        | n0                               | n1
//!   node sl<lab>-n0  eth0 192.168.100.1    node sl<lab>-n1  eth0 192.168.100.2
//!        flannel.1 10.244.0.0/32  <== VXLAN VNI 1, UDP 8472 ==>  flannel.1 10.244.1.0/32
//!        pods 10.244.0.0/24 (ptp veths or cni0)                  pods 10.244.1.0/24
//!          |                                                       |
//!   pod sl<lab>-<ns>-<pod> eth0 (attached by the real CNI ptp/bridge + host-local plugins)
//! ```
//!
//! Every pod gets a ClusterIP (DNAT in every node, like kube-proxy's nftables mode) and serves
//! its ports on TCP and UDP; probes are real connections made from inside a pod's namespace.
//! The lab's state is a JSON file (/run/sluice/lab/<lab>/state.json) so another process can
//! attach to it, serve it, probe it, or clean up after a crash. See docs/lab.md.

pub mod cni;
pub mod enforce;
mod guard;
pub mod netns;
pub mod overlay;
pub mod plan;
mod pods;
pub mod probe;
pub mod serve;
pub mod service;
mod state;
mod traffic;
mod up;

pub use guard::LabGuard;
pub use netns::exec_in;
pub use probe::{BlockReason, ProbeResult, Proto};
pub use serve::ServerHandle;
pub use state::{down_all, down_by_name, exists, list, state_dir, state_path, validate_name};

use anyhow::{anyhow, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Root of all lab state directories.
pub const STATE_ROOT: &str = "/run/sluice/lab";
/// Every namespace of lab `x` is named `sl<x>-...`.
pub const NETNS_PREFIX: &str = "sl";
/// Longest lab name: keeps namespace names and CNI container IDs readable.
pub const MAX_NAME: usize = 16;
/// Environment marker of a detached server process, checked before we signal a pid.
const SERVER_ENV: &str = "SLUICE_LAB_SERVE";

/// How pods attach: the same choice the compiler makes (routed = CNI `ptp`, bridged = CNI
/// `bridge` on `cni0`).
pub use crate::compile::Attach;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Short unique id, `[a-z0-9]{1,16}`.
    pub name: String,
    pub nodes: usize,
    pub attach: Attach,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    /// Requested address; must be a host address inside the node's CIDR (not .0/.1/.255).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Served on both TCP and UDP.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, node: usize, ports: &[u16]) -> Self {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            node,
            ip: None,
            ports: ports.to_vec(),
        }
    }
    pub fn with_ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = Some(ip);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    /// Name of the pod's namespace (under /var/run/netns).
    pub netns: String,
    /// Host-side veth in the node namespace (random name from the CNI plugin).
    pub host_iface: String,
    /// MAC of the pod's eth0.
    pub mac: String,
    pub service_ip: Ipv4Addr,
    pub ports: Vec<u16>,
    /// CNI_CONTAINERID used for ADD/DEL.
    pub container_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub index: usize,
    /// The node name pods use in `spec.nodeName` (empty in older state files: `node-<index>`).
    #[serde(default)]
    pub name: String,
    pub netns: String,
    pub cidr: Ipv4Net,
    /// Pod default gateway (cni0 or every ptp host veth).
    pub gateway: Ipv4Addr,
    pub underlay_ip: Ipv4Addr,
    pub vxlan_ip: Ipv4Addr,
    pub vxlan_mac: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lab {
    name: String,
    attach: Attach,
    hub_netns: String,
    nodes: Vec<NodeInfo>,
    pods: Vec<PodInfo>,
    /// Detached server process (see `spawn_server`), if any.
    #[serde(default)]
    server_pid: Option<u32>,
}

impl Lab {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn attach(&self) -> Attach {
        self.attach
    }
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }
    pub fn hub_netns(&self) -> &str {
        &self.hub_netns
    }
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }
    /// A pod by "namespace/name".
    pub fn pod_ref(&self, r: &str) -> Result<&PodInfo> {
        let (ns, name) = r
            .split_once('/')
            .ok_or_else(|| anyhow!("pod reference {r:?} is not namespace/name"))?;
        self.pod(ns, name)
            .ok_or_else(|| anyhow!("no pod {r} in lab {}", self.name))
    }

    /// Resolve a probe target for CLIs: an IPv4 literal, "namespace/name" (the pod's IP) or
    /// "svc:namespace/name" (the pod's ClusterIP).
    pub fn resolve(&self, target: &str) -> Result<Ipv4Addr> {
        if let Ok(ip) = target.parse() {
            return Ok(ip);
        }
        match target.strip_prefix("svc:") {
            Some(r) => Ok(self.pod_ref(r)?.service_ip),
            None => Ok(self.pod_ref(target)?.ip),
        }
    }

    /// Panics on an index out of range (a programming error in the caller).
    pub fn node_netns(&self, node: usize) -> &str {
        &self.nodes[node].netns
    }
    pub fn node_cidr(&self, node: usize) -> Ipv4Net {
        self.nodes[node].cidr
    }
    /// The name pods use for lab node `node` in `spec.nodeName`.
    pub fn node_name(&self, node: usize) -> String {
        let n = &self.nodes[node];
        if n.name.is_empty() {
            format!("node-{node}")
        } else {
            n.name.clone()
        }
    }
    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.name)
    }

    /// (tx_packets, rx_packets) of a node's flannel.1: proves traffic used the tunnel.
    pub fn vxlan_packets(&self, node: usize) -> Result<(u64, u64)> {
        netns::link_packets(self.node_netns(node), overlay::VXLAN_DEV)
    }
}
