//! ClusterNetworkPolicy (policy.networking.k8s.io v1beta1 and v1alpha2, one schema): the raw
//! object as the CRD defines it, and the validated model sluice reasons about.
//!
//! Validation follows the CRD (sigs.k8s.io/network-policy-api v0.3.0, standard and
//! experimental channels): tier Admin|Baseline, priority 0..=1000, exactly one subject form,
//! at most 25 rules, peers and protocols, exactly one field per peer and per protocol, port
//! numbers 1..=65535 and ranges with start < end, canonical CIDRs, no named port in a rule
//! that has networks/nodes/domainNames peers. Errors name `ClusterNetworkPolicy <name>` and the
//! field path, like NetworkPolicy's.
//!
//! What the API says an implementation that does not understand a rule must do ("fail
//! closed": an Accept rule matches nothing, a Deny or Pass rule denies everything) is applied
//! to rules that use what sluice does not implement (`nodes` and `domainNames` peers) and to
//! rules carrying fields the schema does not know.

mod raw;
mod read;
mod validate;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::labels::Selector;
use super::ports::Protocol;

pub use self::raw::{
    RawCnp, RawEgressPeer, RawEgressRule, RawIngressPeer, RawIngressRule, RawNamespacedPod,
    RawPort, RawProtoPort, RawProtocol, RawRange, RawSpec, RawSubject,
};
pub use self::read::{read, Read};
pub use self::validate::{convert, Converted};

/// The apiVersions that serve ClusterNetworkPolicy (same schema).
pub const API_VERSIONS: &[&str] = &[
    "policy.networking.k8s.io/v1beta1",
    "policy.networking.k8s.io/v1alpha2",
];
pub const KIND: &str = "ClusterNetworkPolicy";
/// Most rules per direction, peers per rule, protocols per rule, CIDRs per peer.
pub const MAX_ITEMS: usize = 25;

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Tier {
    Admin,
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Action {
    Accept,
    Deny,
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The pods a CNP applies to. Host-network pods are never subjects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// Every pod of the selected namespaces.
    Namespaces(Selector),
    /// Pods matching `pods` in namespaces matching `namespaces` (AND).
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Namespaces(s) => write!(f, "namespaces {s}"),
            Subject::Pods { namespaces, pods } => {
                write!(f, "pods {pods} in namespaces {namespaces}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CnpPeer {
    /// Every pod (not host-network) of the selected namespaces.
    Namespaces(Selector),
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// Egress only: destination addresses, pod IPs included.
    Networks(Vec<IpNet>),
}

/// One protocol clause; a rule without protocols matches every protocol and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CnpPort {
    /// `tcp|udp|sctp.destinationPort`: an inclusive range (a single number is `lo == hi`).
    Range {
        protocol: Protocol,
        lo: u16,
        hi: u16,
    },
    /// A container port name on the destination pod (any protocol it declares).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CnpRule {
    pub name: Option<String>,
    pub action: Action,
    pub peers: Vec<CnpPeer>,
    pub ports: Vec<CnpPort>,
    /// Why the rule fails closed (something sluice does not implement or an unknown field):
    /// an Accept rule then matches nothing, a Deny or Pass rule denies everything.
    pub fail_closed: Option<String>,
}

impl CnpRule {
    /// `rule 0 'name'` or `rule 0`.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("rule {index} '{n}'"),
            None => format!("rule {index}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: u32,
    pub subject: Subject,
    pub ingress: Vec<CnpRule>,
    pub egress: Vec<CnpRule>,
}

impl ClusterPolicy {
    /// How CNPs are named in sluice's output: `cnp/<name>`.
    pub fn label(&self) -> String {
        label(&self.name)
    }
}

/// `cnp/<name>`.
pub fn label(name: &str) -> String {
    format!("cnp/{name}")
}

/// Whether `ip` is in one of the networks.
pub fn networks_contain(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
#[path = "cnp_tests.rs"]
mod tests;
