//! The nftables-shaped ruleset: tables of chains and sets, with a small typed rule language,
//! lowered from the per-pod decisions ([`super::decision`]) by [`super::lower`].
//!
//! Every nftables construct sluice uses is named here once, so the JSON renderer (what is
//! applied) and the text renderer (what people read and `nft -c` checks) cannot drift apart
//! in what they express. (It stays in `compile` because [`NodeRuleset`] holds it and `nft`
//! depends on `compile`, never the reverse.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::policy::Protocol;

pub use super::net::{Attach, Family};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    pub fn addr_field(self) -> &'static str {
        match self {
            Side::Src => "saddr",
            Side::Dst => "daddr",
        }
    }
    pub fn ifname_key(self) -> &'static str {
        match self {
            Side::Src => "iifname",
            Side::Dst => "oifname",
        }
    }
}

/// One match condition of a rule. All conditions of a rule must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Match {
    /// `ct state { established, related }` (the states are listed in order).
    CtState(Vec<&'static str>),
    /// `ip saddr @set`
    AddrInSet {
        family: Family,
        side: Side,
        set: String,
    },
    /// `ip saddr 10.0.0.1` / `ip6 daddr fd00::1`
    AddrIs { side: Side, addr: IpAddr },
    /// `ip saddr != { a, b }`
    AddrNotIn {
        family: Family,
        side: Side,
        addrs: Vec<IpNet>,
    },
    /// `meta l4proto tcp`
    L4Proto(Protocol),
    /// `th dport { 80, 8000-8080 }` (inclusive ranges, sorted, disjoint).
    DportIn(Vec<(u16, u16)>),
    /// `ip daddr . meta l4proto . th dport @set`: named ports resolved per pod.
    NamedPortInSet { family: Family, set: String },
    /// `iifname "veth0"` / `oifname`
    Ifname { side: Side, name: String },
    /// `meta protocol ip` (bridge family: the ethertype).
    EtherProto(&'static str),
    /// `ether saddr != aa:bb:..`
    EtherSaddrNot(String),
    /// `arp saddr ip != 10.0.0.1`
    ArpSaddrIpNot(IpAddr),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    /// Back to the calling chain (a rulebook's Continue clause).
    Return,
    /// `iifname vmap @map` / `oifname vmap @map`
    IfnameVmap {
        side: Side,
        map: String,
    },
    /// `ip saddr vmap @map`
    AddrVmap {
        family: Family,
        side: Side,
        map: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Hook {
    Forward,
    Input,
    Prerouting,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
            Hook::Prerouting => "prerouting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BaseHook {
    pub hook: Hook,
    /// Relative to the filter priority (0).
    pub priority: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Chain {
    pub base: Option<BaseHook>,
    pub rules: Vec<Rule>,
    pub comment: Option<String>,
}

/// The key type (and, for maps, the data type) of a named set or map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum SetType {
    /// Exact addresses, hash set.
    Addr(Family),
    /// Prefixes and ranges (`flags interval`).
    Prefixes(Family),
    /// `ipv4_addr . inet_proto . inet_service`
    NamedPort(Family),
    /// `ifname : verdict`
    IfnameVerdict,
    /// `ipv4_addr : verdict`
    AddrVerdict(Family),
}

/// An element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Element {
    Addr(IpAddr),
    Prefix(IpNet),
    NamedPort(IpAddr, Protocol, u16),
    /// Key -> `jump chain`.
    IfnameJump(String, String),
    AddrJump(IpAddr, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Set {
    pub ty: SetType,
    pub elements: BTreeSet<Element>,
    pub comment: Option<String>,
}

/// nftables table families sluice uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TableFamily {
    Inet,
    Bridge,
}

impl TableFamily {
    pub fn name(self) -> &'static str {
        match self {
            TableFamily::Inet => "inet",
            TableFamily::Bridge => "bridge",
        }
    }
}

/// One table, owned entirely by sluice. Maps (sets with verdicts) live in `sets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub family: TableFamily,
    pub name: String,
    pub chains: BTreeMap<String, Chain>,
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    pub fn new(family: TableFamily, name: &str) -> Table {
        Table {
            family,
            name: name.to_string(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

/// A local pod whose traffic sluice filters, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalPod {
    pub pod: String,
    pub iface: Option<String>,
    pub ips: Vec<IpAddr>,
    pub ingress: Isolation,
    pub egress: Isolation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Isolation {
    /// No policy selects the pod in this direction.
    Open,
    /// Filtered by these policies (name order) through `chain`.
    Isolated {
        chain: String,
        policies: Vec<String>,
    },
    /// Everything dropped, because the pod's policies could not be compiled.
    FailedClosed { chain: String, reason: String },
}

/// Everything one node needs: the per-pod decisions, and the nftables tables lowered from
/// them (eagerly: every reader of a ruleset, from `nft` to the agent's metrics, wants them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRuleset {
    pub node: String,
    pub attach: Attach,
    pub tables: Vec<Table>,
    pub pods: Vec<LocalPod>,
    /// Problems worth a look (pods failing closed, pods without interface or IP).
    pub warnings: Vec<String>,
    /// What the tables were lowered from; the eBPF dataplane encodes these directly.
    pub decisions: super::decision::NodeDecisions,
}

impl NodeRuleset {
    pub fn table(&self, family: TableFamily) -> Option<&Table> {
        self.tables.iter().find(|t| t.family == family)
    }
}

/// nftables keeps at most 128 bytes of a comment (and refuses longer ones): comments are
/// clipped at a character boundary with an ellipsis marker.
pub fn clip_comment(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return s.into();
    }
    let mut end = MAX - 4;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &s[..end]).into()
}
