//! The per-pod decision IR: what a node must decide for each local pod's traffic, before any
//! dataplane gives it a shape. Pure data, serialisable; see docs/dataplane.md.
//!
//! For each local pod and direction: its [`Isolation`], fixed guards (invalid packets dropped,
//! the pod reaching itself accepted), then an ordered list of [`Rulebook`]s (tiers). The first
//! clause that matches decides: [`Action::Accept`] and [`Action::Drop`] end the evaluation,
//! [`Action::Continue`] skips the rest of its rulebook and goes on to the next tier. When no
//! clause decides, the direction's `default` applies. Rulebooks, peer sets and named-port
//! sets are shared by name, so every pod isolated by the same policies points at one rulebook
//! and equal peers share one set (nftables keeps them as chains and sets, eBPF as contexts).
//! Replies and related packets of allowed connections are accepted before any of this
//! (`accept_established`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::net::{Attach, Family};
use crate::policy::model::{Direction, ObjectName};
use crate::policy::Protocol;

/// What a matching clause (or a direction's default) does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    Accept,
    Drop,
    /// Leave this tier undecided: the next rulebook (or the default) decides. NetworkPolicy
    /// never emits it; ClusterNetworkPolicy's `Pass` will.
    Continue,
}

/// Which peers a clause matches: the source for ingress, the destination for egress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum PeerMatch {
    Any,
    /// A set of [`NodeDecisions::peer_sets`].
    Set(String),
}

/// Which destination ports a clause matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PortMatch {
    Any,
    /// Every port of one protocol.
    Proto(Protocol),
    /// Inclusive ranges, sorted, disjoint and not adjacent.
    Ranges(Protocol, Vec<(u16, u16)>),
    /// A set of [`NodeDecisions::named_ports`]: (destination address, protocol, port) triples.
    /// It may also carry the peers (egress: the destinations a rule's peers select).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clause {
    pub peer: PeerMatch,
    pub port: PortMatch,
    pub action: Action,
    /// Which policy rules this clause stands for.
    pub label: String,
}

/// An ordered list of clauses: one tier of a pod's decision. NetworkPolicy gives one per
/// distinct set of isolating policies and direction, shared by the pods it isolates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rulebook {
    pub direction: Direction,
    /// The policies it holds, in name order.
    pub policies: Vec<String>,
    pub clauses: Vec<Clause>,
    pub label: String,
}

/// A named set of peer addresses, shared by every clause with the same peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerSet {
    pub family: Family,
    pub members: PeerMembers,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PeerMembers {
    /// Pod addresses.
    Addrs(BTreeSet<IpAddr>),
    /// ipBlocks, `except` already cut out, aggregated.
    Prefixes(BTreeSet<IpNet>),
}

/// Named ports resolved per pod: (pod address, protocol, port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedPortSet {
    pub family: Family,
    pub entries: BTreeSet<(IpAddr, Protocol, u16)>,
    pub label: String,
}

/// Whether (and why) a pod is isolated in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Isolation {
    /// No policy selects the pod in this direction: everything is accepted.
    Open,
    /// Isolated by these policies (name order).
    Isolated { policies: Vec<String> },
    /// Everything dropped because a policy that may select the pod is invalid (or not
    /// enforced): `reason` names the pod and the problem.
    FailClosed {
        policies: Vec<String>,
        reason: String,
    },
}

/// One pod in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirDecision {
    pub isolation: Isolation,
    /// Guard: packets conntrack calls invalid are dropped (isolated pods only).
    pub drop_invalid: bool,
    /// Guard: peers always accepted, first: the pod's own addresses (hairpin via a Service).
    pub accept_peers: Vec<IpAddr>,
    /// Rulebooks (of [`NodeDecisions::rulebooks`]) consulted in this order.
    pub tiers: Vec<String>,
    /// What happens when no clause decides.
    pub default: Action,
}

/// Anti-spoofing: what a pod may send from, whatever its policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AntiSpoof {
    /// Its MAC (bridged only), lower case as given.
    pub mac: Option<String>,
    /// IPv4 sources it may use; empty: no IPv4 at all.
    pub v4: Vec<IpNet>,
    /// ARP sender address it must use (bridged only, pods with IPv4).
    pub arp: Option<IpAddr>,
    /// IPv6 sources: its own, link-local and unspecified (neighbour discovery).
    pub v6: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDecision {
    pub pod: ObjectName,
    /// Host-side interface (routed: its veth; bridged: its bridge port).
    pub iface: String,
    pub ips: Vec<IpAddr>,
    pub ingress: DirDecision,
    pub egress: DirDecision,
    pub anti_spoof: AntiSpoof,
}

impl PodDecision {
    /// [ingress, egress].
    pub fn dirs(&self) -> [(Direction, &DirDecision); 2] {
        [
            (Direction::Ingress, &self.ingress),
            (Direction::Egress, &self.egress),
        ]
    }
}

/// Everything decided for one node's local pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDecisions {
    pub node: String,
    pub attach: Attach,
    /// Address families in use in the cluster (IPv4 when none).
    pub families: Vec<Family>,
    /// Replies and related packets of allowed connections pass before any pod decision.
    pub accept_established: bool,
    /// Local pods, in name order.
    pub pods: Vec<PodDecision>,
    pub rulebooks: BTreeMap<String, Rulebook>,
    pub peer_sets: BTreeMap<String, PeerSet>,
    pub named_ports: BTreeMap<String, NamedPortSet>,
}
