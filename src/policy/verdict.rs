//! What the oracle answers: the flow asked about, and the verdict of each side with the
//! clause that decided it. Built by [`super::evaluate`]. The tiers of the oracle use
//! these types and nothing here uses them.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::cnp::{Action, Tier};
use super::model::{ObjectName, Pod};
use super::ports::{PortRef, Protocol};

/// One end of a flow as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Pod(ObjectName),
    Ip(IpAddr),
}

impl Endpoint {
    /// `ns/name` (or a bare pod name in `default`), or an IP address.
    pub fn parse(s: &str) -> Endpoint {
        match s.parse::<IpAddr>() {
            Ok(ip) => Endpoint::Ip(ip),
            Err(_) => Endpoint::Pod(ObjectName::parse(s)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub from: Endpoint,
    pub to: Endpoint,
    /// A number, or the name of a port declared by the destination pod.
    pub port: PortRef,
    pub protocol: Protocol,
}

/// A flow end resolved against the snapshot.
pub(crate) struct End<'a> {
    pub(crate) pod: Option<&'a Pod>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) label: String,
}

/// The port side of a flow; named ports resolve on `dst`.
pub(crate) struct FlowPort<'a> {
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    pub(crate) dst: Option<&'a Pod>,
    pub(crate) dst_label: &'a str,
}

/// The rule of a ClusterNetworkPolicy that matched a side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierDecision {
    pub tier: Tier,
    /// `cnp/<name>`.
    pub policy: String,
    pub priority: u32,
    /// Index of the rule in the direction's list.
    pub rule: usize,
    pub rule_name: Option<String>,
    /// The action taken: a fail-closed Deny or Pass rule is reported as Deny.
    pub action: Action,
    /// Set when the rule failed closed, with why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_closed: Option<String>,
    /// Which clause matched, for people.
    pub reason: String,
}

impl TierDecision {
    /// `Admin: cnp/guardrails rule 0 'no-y' (Deny) matched: ...`
    pub fn describe(&self) -> String {
        let rule = match &self.rule_name {
            Some(n) => format!("rule {} '{n}'", self.rule),
            None => format!("rule {}", self.rule),
        };
        format!(
            "{}: {} {rule} ({}) matched: {}",
            self.tier, self.policy, self.action, self.reason
        )
    }
}

/// Which clause allowed a side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowedBy {
    pub policy: String,
    pub rule: usize,
    /// None when the rule has no peers (all peers).
    pub peer: Option<usize>,
    /// None when the rule has no ports (all ports).
    pub port: Option<usize>,
}

/// Why one isolating policy did not allow: its closest rule and the clause that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub policy: String,
    /// None when the policy has no rules in this direction.
    pub rule: Option<usize>,
    pub reason: String,
}

/// The verdict of one side (egress of the source, or ingress of the destination).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SideVerdict {
    /// The pod whose policies decide this side; None for an address outside the snapshot.
    pub pod: Option<String>,
    pub allowed: bool,
    pub isolated: bool,
    /// Policies that select the pod for this direction, in name order.
    pub isolated_by: Vec<String>,
    pub allowed_by: Option<AllowedBy>,
    pub denials: Vec<Denial>,
    /// One sentence for people.
    pub reason: String,
    /// With ClusterNetworkPolicies in the snapshot: the tier that decided this side per the
    /// API (`Admin`, `NetworkPolicy`, `Baseline`, or `Default` when none did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The ClusterNetworkPolicy rule that decided (Admin or Baseline tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<TierDecision>,
    /// Pass rules that sent the evaluation on to the next tier.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passed: Vec<TierDecision>,
    /// The API's verdict for this side, when the kernel's (`allowed`) differs from it because
    /// the pod fails closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_allowed: Option<bool>,
    /// Why the kernel fails the pod closed (invalid policies or invalid ClusterNetworkPolicies
    /// that may select it): `allowed` is false then.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_closed_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub allowed: bool,
    pub from: String,
    pub to: String,
    pub port: u16,
    /// The name the user asked for, when the port was given by name.
    pub port_name: Option<String>,
    pub protocol: Protocol,
    pub egress: SideVerdict,
    pub ingress: SideVerdict,
    pub warnings: Vec<String>,
}

impl fmt::Display for SideVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {}",
            if self.allowed { "allowed" } else { "denied" },
            self.reason
        )?;
        for d in &self.denials {
            match d.rule {
                Some(r) => writeln!(f, "    {} rule {r}: {}", d.policy, d.reason)?,
                None => writeln!(f, "    {}: {}", d.policy, d.reason)?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = match &self.port_name {
            Some(n) => format!("{} ({n})/{}", self.port, self.protocol),
            None => format!("{}/{}", self.port, self.protocol),
        };
        writeln!(
            f,
            "{}  {} -> {}  {port}",
            if self.allowed { "ALLOWED" } else { "DENIED" },
            self.from,
            self.to
        )?;
        let who =
            |s: &SideVerdict, fallback: &str| s.pod.clone().unwrap_or_else(|| fallback.to_string());
        write!(
            f,
            "  egress  ({}): {}",
            who(&self.egress, &self.from),
            self.egress
        )?;
        write!(
            f,
            "  ingress ({}): {}",
            who(&self.ingress, &self.to),
            self.ingress
        )?;
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
