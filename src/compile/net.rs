//! Address families and how pods attach: the vocabulary shared by the per-pod decisions
//! ([`super::decision`]) and the nftables tables lowered from them ([`super::ir`]), kept apart
//! so neither has to import the other.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// How pods attach to the node's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// Each pod has its own host-side veth, traffic is routed (Calico-style, flannel + ptp).
    Routed,
    /// Pods share a bridge (flannel's default cni0); dispatch by pod IP.
    Bridged,
}

impl std::str::FromStr for Attach {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "routed" | "ptp" => Ok(Attach::Routed),
            "bridged" | "bridge" => Ok(Attach::Bridged),
            _ => anyhow::bail!("unknown attachment {s:?}: use routed or bridged"),
        }
    }
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attach::Routed => "routed",
            Attach::Bridged => "bridged",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    /// nftables' protocol name for the network header.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}
