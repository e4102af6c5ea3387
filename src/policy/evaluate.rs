//! The oracle: may this flow pass, and why.
//!
//! A connection passes when the source pod's egress side and the destination pod's ingress
//! side both allow it. A side allows when no policy isolates the pod in that direction, or when
//! any rule of any isolating policy matches both the peer and the port (policies are a union).
//! Named ports resolve on the destination pod in both directions.
//!
//! The verdict types are in [`super::verdict`], the NetworkPolicy tier in `np_tier`,
//! the ClusterNetworkPolicy tiers in [`super::tiers`]; every clause is decided by a predicate
//! of [`super::clause`].

use std::net::IpAddr;

use super::cnp::{Action, Tier};
use super::model::{Cluster, Direction, Pod};
use super::np_tier::np_side;
use super::ports::PortRef;
use super::tiers;
pub use super::verdict::{AllowedBy, Denial, Endpoint, Flow, SideVerdict, Verdict};
use super::verdict::{End, FlowPort, TierDecision};

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
