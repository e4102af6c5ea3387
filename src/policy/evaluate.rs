//! The oracle: may this flow pass, and why.
//!
//! A connection passes when the source pod's egress side and the destination pod's ingress
//! side both allow it. A side allows when no policy isolates the pod in that direction, or when
//! any rule of any isolating policy matches both the peer and the port (policies are a union).
//! Named ports resolve on the destination pod in both directions.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::cnp::{Action, Tier};
use super::model::{Cluster, Direction, NamespaceScope, ObjectName, Peer, Pod, Policy, Rule};
use super::ports::{PortRef, PortRule, Protocol};
use super::tiers::{self, TierDecision};

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
    /// ClusterNetworkPolicies selecting the pod: the dataplanes do not enforce CNPs yet, so
    /// the pod fails closed in the kernel and `allowed` is false.
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

/// A flow end resolved against the snapshot.
pub(crate) struct End<'a> {
    pub(crate) pod: Option<&'a Pod>,
    pub(crate) ip: Option<IpAddr>,
    pub(crate) label: String,
}

/// Evaluates `flow` against `cluster`. Errors are bad input (unknown pod, unresolvable name).
pub fn evaluate(cluster: &Cluster, flow: &Flow) -> Result<Verdict, String> {
    let (from_pod, from_ip) = resolve(cluster, &flow.from)?;
    let (to_pod, to_ip) = resolve(cluster, &flow.to)?;
    let (port, port_name) = match &flow.port {
        PortRef::Number(n) => (*n, None),
        PortRef::Name(name) => {
            let pod = to_pod.ok_or_else(|| {
                format!("port {name:?} is a name, but the destination is not a pod: give a number")
            })?;
            let n = pod.resolve_named_port(name, flow.protocol).ok_or_else(|| {
                format!(
                    "{} has no {} port named {name:?}; {}",
                    pod.object_name(),
                    flow.protocol,
                    pod.describe_named_port(name)
                )
            })?;
            (n, Some(name.clone()))
        }
    };
    let (src_ip, dst_ip) = pick_addresses(from_pod, from_ip, to_pod, to_ip);
    let src = End {
        pod: from_pod,
        ip: src_ip,
        label: label(from_pod, from_ip),
    };
    let dst = End {
        pod: to_pod,
        ip: dst_ip,
        label: label(to_pod, to_ip),
    };
    let fp = FlowPort {
        port,
        protocol: flow.protocol,
        dst: to_pod,
        dst_label: &dst.label,
    };
    let loopback =
        matches!((from_pod, to_pod), (Some(a), Some(b)) if a.object_name() == b.object_name());
    let mut warnings = Vec::new();
    let (egress, ingress) = if loopback {
        let v = |p: &Pod| SideVerdict {
            pod: Some(p.object_name().to_string()),
            allowed: true,
            isolated: false,
            isolated_by: vec![],
            allowed_by: None,
            denials: vec![],
            reason: "a pod may always reach itself (loopback is never filtered)".into(),
            ..Default::default()
        };
        (v(from_pod.unwrap()), v(to_pod.unwrap()))
    } else {
        let (e, we) = side(cluster, Direction::Egress, &src, &dst, &fp);
        let (i, wi) = side(cluster, Direction::Ingress, &dst, &src, &fp);
        warnings.extend(we);
        warnings.extend(wi);
        (e, i)
    };
    Ok(Verdict {
        allowed: egress.allowed && ingress.allowed,
        from: src.label,
        to: dst.label,
        port,
        port_name,
        protocol: flow.protocol,
        egress,
        ingress,
        warnings,
    })
}

fn resolve<'a>(
    cluster: &'a Cluster,
    e: &Endpoint,
) -> Result<(Option<&'a Pod>, Option<IpAddr>), String> {
    match e {
        Endpoint::Pod(name) => match cluster.pod(name) {
            Some(p) => Ok((Some(p), None)),
            None => Err(format!(
                "no pod {name} in the manifests (pods are named namespace/name; workloads namespace/kind/name)"
            )),
        },
        Endpoint::Ip(ip) => Ok((cluster.pod_by_ip(*ip), Some(*ip))),
    }
}

fn label(pod: Option<&Pod>, ip: Option<IpAddr>) -> String {
    match (pod, ip) {
        (Some(p), _) => p.object_name().to_string(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "?".into(),
    }
}

/// Chooses the addresses ipBlocks are matched against: an explicit IP wins; between two pods,
/// the first address family both have (IPv4 first, as Kubernetes lists primary IPs first).
fn pick_addresses(
    from_pod: Option<&Pod>,
    from_ip: Option<IpAddr>,
    to_pod: Option<&Pod>,
    to_ip: Option<IpAddr>,
) -> (Option<IpAddr>, Option<IpAddr>) {
    let family = from_ip.or(to_ip).map(|ip| ip.is_ipv4());
    let pick = |explicit: Option<IpAddr>, pod: Option<&Pod>, v4: Option<bool>| {
        explicit.or_else(|| {
            pod.and_then(|p| {
                p.ips
                    .iter()
                    .find(|ip| v4.is_none_or(|v4| ip.is_ipv4() == v4))
                    .copied()
            })
        })
    };
    let (mut src, mut dst) = (pick(from_ip, from_pod, family), pick(to_ip, to_pod, family));
    if family.is_none() {
        // Two pods: prefer a family both have.
        for v4 in [true, false] {
            let s = pick(None, from_pod, Some(v4));
            let d = pick(None, to_pod, Some(v4));
            if s.is_some() && d.is_some() {
                (src, dst) = (s, d);
                break;
            }
        }
    }
    (src, dst)
}

/// The port side of a flow; named ports resolve on `dst`.
pub(crate) struct FlowPort<'a> {
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    pub(crate) dst: Option<&'a Pod>,
    pub(crate) dst_label: &'a str,
}

/// Decides one side: `subject` is the pod whose policies apply, `other` the far end. Returns
/// the verdict and warnings (same-priority ClusterNetworkPolicies).
fn side(
    cluster: &Cluster,
    dir: Direction,
    subject: &End,
    other: &End,
    fp: &FlowPort,
) -> (SideVerdict, Vec<String>) {
    let what = match dir {
        Direction::Egress => "source",
        Direction::Ingress => "destination",
    };
    let pod = match subject.pod {
        None => {
            let v = SideVerdict {
                pod: None,
                allowed: true,
                reason: format!(
                    "{what} {} is not a pod in the snapshot: no {dir} policy applies",
                    subject.label
                ),
                ..Default::default()
            };
            return (v, vec![]);
        }
        Some(p) if p.host_network => {
            let v = SideVerdict {
                pod: Some(p.object_name().to_string()),
                allowed: true,
                reason: format!(
                    "{} uses the host network: neither NetworkPolicy nor ClusterNetworkPolicy selects host-network pods",
                    p.object_name()
                ),
                ..Default::default()
            };
            return (v, vec![]);
        }
        Some(p) => p,
    };
    if !cluster.has_cluster_policies() {
        // The same rule the compiler follows, so explain says what the kernel does.
        if let Some(fc) = cluster.fails_closed(pod) {
            let v = SideVerdict {
                pod: Some(pod.object_name().to_string()),
                allowed: false,
                isolated: true,
                isolated_by: fc.policies,
                reason: format!("{} fails closed: {}", pod.object_name(), fc.reason),
                ..Default::default()
            };
            return (v, vec![]);
        }
        return (np_side(cluster, dir, pod, other, fp), vec![]);
    }
    let mut warnings = Vec::new();
    let mut steps: Vec<String> = Vec::new();
    let mut passed = Vec::new();
    // Admin tier.
    let admin = tiers::walk(cluster, Tier::Admin, pod, dir, other, fp);
    warnings.extend(admin.warnings);
    let mut verdict = None;
    match admin.decision {
        Some(d) if d.action != Action::Pass => {
            steps.push(d.describe());
            verdict = Some(cnp_verdict(pod, d));
        }
        Some(d) => {
            steps.push(format!(
                "Admin: Pass by {} {}",
                d.policy,
                rule_label(d.rule, d.rule_name.as_deref())
            ));
            passed.push(d);
        }
        None => steps.push(no_match("Admin", dir, admin.considered)),
    }
    // NetworkPolicy tier: decides only when the pod is isolated in this direction.
    let verdict = verdict.unwrap_or_else(|| {
        let np = np_side(cluster, dir, pod, other, fp);
        if np.isolated {
            steps.push(format!("NetworkPolicy: {}", np.reason));
            return SideVerdict {
                tier: Some("NetworkPolicy".into()),
                ..np
            };
        }
        steps.push(format!("NetworkPolicy: {}", np.reason));
        // Baseline tier.
        let baseline = tiers::walk(cluster, Tier::Baseline, pod, dir, other, fp);
        warnings.extend(baseline.warnings);
        match baseline.decision {
            Some(d) if d.action != Action::Pass => {
                steps.push(d.describe());
                cnp_verdict(pod, d)
            }
            other_case => {
                if let Some(d) = other_case {
                    steps.push(format!(
                        "Baseline: Pass by {} {}",
                        d.policy,
                        rule_label(d.rule, d.rule_name.as_deref())
                    ));
                    passed.push(d);
                } else {
                    steps.push(no_match("Baseline", dir, baseline.considered));
                }
                SideVerdict {
                    tier: Some("Default".into()),
                    ..np
                }
            }
        }
    });
    let mut v = SideVerdict { passed, ..verdict };
    v.reason = format!(
        "{} -> {}",
        steps.join(" -> "),
        if v.allowed { "allowed" } else { "denied" }
    );
    // The same rule the compiler follows (CNP subjects and pods invalid policies may select),
    // so explain says what the kernel does, and the API's verdict beside it.
    if let Some(fc) = cluster.fails_closed(pod) {
        v.api_allowed = Some(v.allowed);
        v.allowed = false;
        v.reason = format!(
            "kernel: {} fails closed (all its {dir} traffic is dropped): {}; this verdict is what the kernel does. Per the API: {}",
            pod.object_name(),
            fc.reason,
            v.reason
        );
        v.failed_closed_by = fc.policies;
    }
    (v, warnings)
}

fn rule_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("rule {index} '{n}'"),
        None => format!("rule {index}"),
    }
}

fn no_match(tier: &str, dir: Direction, considered: usize) -> String {
    match considered {
        0 => format!("{tier}: no {tier} policy with {dir} rules selects the pod"),
        1 => format!("{tier}: no rule of the 1 selecting {tier} policy matches"),
        n => format!("{tier}: no rule of the {n} selecting {tier} policies matches"),
    }
}

/// The side decided by an Accept or Deny rule of a ClusterNetworkPolicy.
fn cnp_verdict(pod: &Pod, d: TierDecision) -> SideVerdict {
    SideVerdict {
        pod: Some(pod.object_name().to_string()),
        allowed: d.action == Action::Accept,
        tier: Some(d.tier.to_string()),
        decision: Some(d),
        ..Default::default()
    }
}

/// The NetworkPolicy tier of one side: a pod not isolated in `dir` is allowed.
fn np_side(
    cluster: &Cluster,
    dir: Direction,
    pod: &Pod,
    other: &End,
    fp: &FlowPort,
) -> SideVerdict {
    let policies = cluster.isolating(pod, dir);
    let isolated_by: Vec<String> = policies
        .iter()
        .map(|p| p.object_name().to_string())
        .collect();
    if policies.is_empty() {
        return SideVerdict {
            pod: Some(pod.object_name().to_string()),
            allowed: true,
            isolated: false,
            isolated_by,
            reason: format!(
                "{} is not isolated for {dir}: no policy selects it with policyType {}",
                pod.object_name(),
                if dir == Direction::Ingress {
                    "Ingress"
                } else {
                    "Egress"
                }
            ),
            ..Default::default()
        };
    }
    let mut denials = Vec::new();
    for policy in &policies {
        match first_allowing_rule(cluster, policy, dir, other, fp) {
            Ok(by) => {
                let clause = match (by.peer, by.port) {
                    (Some(peer), Some(port)) => format!("peer {peer} and port {port} match"),
                    (Some(peer), None) => {
                        format!("peer {peer} matches, the rule allows every port")
                    }
                    (None, Some(port)) => {
                        format!("port {port} matches, the rule allows every peer")
                    }
                    (None, None) => "the rule allows every peer and port".to_string(),
                };
                let reason = format!("{} {dir} rule {}: {clause}", by.policy, by.rule);
                return SideVerdict {
                    pod: Some(pod.object_name().to_string()),
                    allowed: true,
                    isolated: true,
                    isolated_by,
                    allowed_by: Some(by),
                    reason,
                    ..Default::default()
                };
            }
            Err(d) => denials.push(d),
        }
    }
    SideVerdict {
        pod: Some(pod.object_name().to_string()),
        allowed: false,
        isolated: true,
        reason: format!(
            "{} is isolated for {dir} by {} and no rule allows {} {}",
            pod.object_name(),
            isolated_by.join(", "),
            if dir == Direction::Ingress {
                "from"
            } else {
                "to"
            },
            other.label
        ),
        isolated_by,
        denials,
        ..Default::default()
    }
}

/// The first rule of `policy` that allows, or the closest rule and why it failed.
fn first_allowing_rule(
    cluster: &Cluster,
    policy: &Policy,
    dir: Direction,
    other: &End,
    fp: &FlowPort,
) -> Result<AllowedBy, Denial> {
    let name = policy.object_name().to_string();
    let rules = policy.rules(dir).unwrap_or_default();
    if rules.is_empty() {
        return Err(Denial {
            policy: name,
            rule: None,
            reason: format!("has no {dir} rules, so it allows no {dir} traffic"),
        });
    }
    let mut closest: Option<(usize, usize, String)> = None; // (failures, rule, reason)
    for (i, rule) in rules.iter().enumerate() {
        let peer = match_peers(cluster, &policy.namespace, rule, other);
        let port = match_ports(&rule.ports, fp);
        match (peer, port) {
            (Ok(peer), Ok(port)) => {
                return Ok(AllowedBy {
                    policy: name,
                    rule: i,
                    peer,
                    port,
                })
            }
            (peer, port) => {
                let reasons: Vec<String> = [peer.err(), port.err()].into_iter().flatten().collect();
                if closest.as_ref().is_none_or(|(n, _, _)| reasons.len() < *n) {
                    closest = Some((reasons.len(), i, reasons.join("; ")));
                }
            }
        }
    }
    let (_, rule, reason) = closest.expect("at least one rule");
    Err(Denial {
        policy: name,
        rule: Some(rule),
        reason,
    })
}

fn match_peers(
    cluster: &Cluster,
    policy_ns: &str,
    rule: &Rule,
    other: &End,
) -> Result<Option<usize>, String> {
    if rule.peers.is_empty() {
        return Ok(None);
    }
    let mut reasons = Vec::new();
    for (j, peer) in rule.peers.iter().enumerate() {
        match match_peer(cluster, policy_ns, peer, other) {
            Ok(()) => return Ok(Some(j)),
            Err(r) => reasons.push(r),
        }
    }
    if reasons.len() == 1 {
        return Err(reasons.remove(0));
    }
    let listed: Vec<String> = reasons
        .iter()
        .enumerate()
        .take(3)
        .map(|(j, r)| format!("peer {j}: {r}"))
        .collect();
    let more = reasons.len().saturating_sub(3);
    let tail = if more > 0 {
        format!("; and {more} more peers")
    } else {
        String::new()
    };
    Err(format!("no peer matches ({}{tail})", listed.join("; ")))
}

/// Whether one peer matches the far end of the flow, and if not, which clause failed.
pub(crate) fn match_peer_pod(
    cluster: &Cluster,
    policy_ns: &str,
    namespaces: &NamespaceScope,
    pods: &super::labels::Selector,
    pod: &Pod,
) -> Result<(), String> {
    if pod.host_network {
        return Err(format!(
            "{} uses the host network, and selectors never match host-network pods",
            pod.object_name()
        ));
    }
    match namespaces {
        NamespaceScope::PolicyNamespace if pod.namespace != policy_ns => {
            return Err(format!(
                "without a namespaceSelector the peer is in namespace {policy_ns}, {} is in {}",
                pod.object_name(),
                pod.namespace
            ))
        }
        NamespaceScope::PolicyNamespace => {}
        NamespaceScope::Selected(sel) => {
            let labels = cluster
                .namespace_labels(&pod.namespace)
                .cloned()
                .unwrap_or_default();
            if let Some(req) = sel.first_failure(&labels) {
                return Err(format!(
                    "namespaceSelector {}",
                    req.explain_failure(&format!("namespace {}", pod.namespace), &labels)
                ));
            }
        }
    }
    if let Some(req) = pods.first_failure(&pod.labels) {
        return Err(format!(
            "podSelector {}",
            req.explain_failure(&format!("pod {}", pod.object_name()), &pod.labels)
        ));
    }
    Ok(())
}

fn match_peer(cluster: &Cluster, policy_ns: &str, peer: &Peer, other: &End) -> Result<(), String> {
    match peer {
        Peer::Pods { namespaces, pods } => match other.pod {
            Some(pod) => match_peer_pod(cluster, policy_ns, namespaces, pods, pod),
            None => Err(format!(
                "podSelector and namespaceSelector match pods, and {} is not a pod in the snapshot",
                other.label
            )),
        },
        Peer::IpBlock(block) => match other.ip {
            Some(ip) if block.contains(ip) => Ok(()),
            Some(ip) => Err(block.explain_miss(ip)),
            None => Err(format!(
                "{} has no IP in the snapshot (status.podIP), so ipBlock {} cannot match it",
                other.label, block.cidr
            )),
        },
    }
}

/// The first port clause that matches, None when the rule has no ports, or why none matches.
pub(crate) fn match_ports_on(
    ports: &[PortRule],
    port: u16,
    protocol: Protocol,
    dst: Option<&Pod>,
) -> Result<Option<usize>, ()> {
    if ports.is_empty() {
        return Ok(None);
    }
    for (k, rule) in ports.iter().enumerate() {
        if rule.protocol != protocol {
            continue;
        }
        let hit = match (&rule.port, rule.numeric_range()) {
            (_, Some((lo, hi))) => lo <= port && port <= hi,
            (Some(PortRef::Name(name)), None) => {
                dst.and_then(|d| d.resolve_named_port(name, protocol)) == Some(port)
            }
            (_, None) => false,
        };
        if hit {
            return Ok(Some(k));
        }
    }
    Err(())
}

fn match_ports(ports: &[PortRule], fp: &FlowPort) -> Result<Option<usize>, String> {
    match_ports_on(ports, fp.port, fp.protocol, fp.dst).map_err(|()| explain_ports(ports, fp))
}

fn explain_ports(ports: &[PortRule], fp: &FlowPort) -> String {
    let same: Vec<&PortRule> = ports.iter().filter(|p| p.protocol == fp.protocol).collect();
    if same.is_empty() {
        let mut protos: Vec<&str> = ports.iter().map(|p| p.protocol.as_str()).collect();
        protos.dedup();
        return format!(
            "protocol {}, rule allows {}",
            fp.protocol,
            protos.join(", ")
        );
    }
    let mut parts = Vec::new();
    let numeric: Vec<String> = same
        .iter()
        .filter_map(|p| match (&p.port, p.end_port) {
            (Some(PortRef::Number(n)), Some(e)) if e != *n => Some(format!("{n}-{e}")),
            (Some(PortRef::Number(n)), _) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    if !numeric.is_empty() {
        parts.push(format!("port {} is not in {}", fp.port, numeric.join(", ")));
    }
    for p in &same {
        if let Some(PortRef::Name(name)) = &p.port {
            parts.push(match fp.dst {
                Some(d) => d.describe_named_port(name),
                None => format!(
                    "named port {name} resolves on the destination pod, and {} is not a pod",
                    fp.dst_label
                ),
            });
        }
    }
    parts.join("; ")
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
