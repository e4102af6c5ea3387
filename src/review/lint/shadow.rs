//! `rule-shadowed`: a rule every connection of which another rule already allows, for every pod
//! its policy selects. Such a rule never decides anything; deleting it changes nothing (today).
//!
//! Pods are checked against the snapshot's pods; addresses outside the snapshot through
//! ipBlock arithmetic. The check is conservative: outside addresses count as covered only by
//! single rules whose ports cover the shadowed rule's ports, so it may miss a rule shadowed
//! by two half-rules, but never reports a rule that decides something.

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::{directed, few, object, rule_field, selected, Raw};
use crate::policy::model::{Peer, Rule};
use crate::policy::ports::PortRef;
use crate::policy::{Cluster, Direction, Pod, Protocol};

type Ports = Vec<(Protocol, u16, u16)>;

/// The ports a rule allows towards `dst` (named ports resolve on the destination pod).
fn rule_ports(rule: &Rule, dst: Option<&Pod>) -> Ports {
    if rule.ports.is_empty() {
        return Protocol::ALL.iter().map(|p| (*p, 1, 65535)).collect();
    }
    rule.ports
        .iter()
        .filter_map(|c| match (c.numeric_range(), &c.port) {
            (Some((lo, hi)), _) => Some((c.protocol, lo, hi)),
            (None, Some(PortRef::Name(n))) => dst
                .and_then(|d| d.resolve_named_port(n, c.protocol))
                .map(|p| (c.protocol, p, p)),
            _ => None,
        })
        .collect()
}

/// Whether every port of `need` is in `have`.
fn ports_covered(need: &Ports, have: &Ports) -> bool {
    need.iter().all(|&(proto, lo, hi)| {
        let mut rest: Vec<(u32, u32)> = vec![(lo.into(), hi.into())];
        for &(_, a, b) in have.iter().filter(|h| h.0 == proto) {
            let (a, b) = (u32::from(a), u32::from(b));
            rest = rest
                .into_iter()
                .flat_map(|(x, y)| {
                    if b < x || a > y {
                        return vec![(x, y)];
                    }
                    let mut v = Vec::new();
                    if x < a {
                        v.push((x, a - 1));
                    }
                    if y > b {
                        v.push((b + 1, y));
                    }
                    v
                })
                .collect();
        }
        rest.is_empty()
    })
}

fn overlaps(a: &Ports, b: &Ports) -> bool {
    a.iter()
        .any(|x| b.iter().any(|y| x.0 == y.0 && x.1 <= y.2 && y.1 <= x.2))
}

fn matches_pod(cluster: &Cluster, policy_ns: &str, rule: &Rule, pod: &Pod) -> bool {
    rule.peers.is_empty()
        || rule.peers.iter().any(|peer| match peer {
            Peer::Pods { namespaces, pods } => {
                cluster.pod_peer_matches(policy_ns, namespaces, pods, pod)
            }
            Peer::IpBlock(b) => pod.ips.iter().any(|ip| b.contains(*ip)),
        })
}

fn everything() -> Vec<IpNet> {
    vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]
}

/// The addresses outside the snapshot a rule's peers match, as prefixes.
fn external(rule: &Rule) -> Vec<IpNet> {
    if rule.peers.is_empty() {
        return everything();
    }
    rule.peers
        .iter()
        .flat_map(|p| match p {
            Peer::IpBlock(b) => b.disjoint_prefixes(),
            Peer::Pods { .. } => vec![],
        })
        .collect()
}

/// Whether the union of `qs` contains all of `p`.
fn prefix_covered(p: IpNet, qs: &[IpNet]) -> bool {
    if qs.iter().any(|q| q.contains(&p)) {
        return true;
    }
    let inner: Vec<IpNet> = qs.iter().filter(|q| p.contains(*q)).copied().collect();
    if inner.is_empty() {
        return false;
    }
    match p.subnets(p.prefix_len() + 1) {
        Ok(halves) => halves.into_iter().all(|h| prefix_covered(h, &inner)),
        Err(_) => false,
    }
}

/// Another rule that applies to the same subject: (policy name, rule index, policy ns, rule).
type Other<'a> = (String, usize, &'a str, &'a Rule);

/// Whether `rule` is covered for `subject` by `others`; the names of the rules that cover it.
fn covered_for(
    cluster: &Cluster,
    dir: Direction,
    ns: &str,
    rule: &Rule,
    subject: &Pod,
    others: &[Other],
    used: &mut BTreeSet<String>,
) -> Option<bool> {
    let mut decides_something = false;
    for e in cluster.pods.values() {
        if !matches_pod(cluster, ns, rule, e) {
            continue;
        }
        let dst = match dir {
            Direction::Ingress => subject,
            Direction::Egress => e,
        };
        let need = rule_ports(rule, Some(dst));
        if need.is_empty() {
            continue;
        }
        decides_something = true;
        let mut have = Ports::new();
        for (name, k, ons, o) in others {
            if matches_pod(cluster, ons, o, e) {
                let ports = rule_ports(o, Some(dst));
                if overlaps(&need, &ports) {
                    used.insert(format!("{name} rule {k}"));
                }
                have.extend(ports);
            }
        }
        if !ports_covered(&need, &have) {
            return Some(false);
        }
    }
    let ext_dst = (dir == Direction::Ingress).then_some(subject);
    let need = rule_ports(rule, ext_dst);
    let outside = external(rule);
    if !outside.is_empty() && !need.is_empty() {
        decides_something = true;
        let mut cover = Vec::new();
        for (name, k, _, o) in others {
            if ports_covered(&need, &rule_ports(o, ext_dst)) {
                let ext = external(o);
                if ext
                    .iter()
                    .any(|q| outside.iter().any(|p| p.contains(q) || q.contains(p)))
                {
                    used.insert(format!("{name} rule {k}"));
                }
                cover.extend(ext);
            }
        }
        if !outside.iter().all(|p| prefix_covered(*p, &cover)) {
            return Some(false);
        }
    }
    decides_something.then_some(true)
}

pub fn rule_shadowed(cluster: &Cluster) -> Vec<Raw> {
    let mut out = Vec::new();
    for (p, dir, rules) in directed(cluster) {
        let subjects = selected(cluster, p);
        if subjects.is_empty() {
            continue;
        }
        // Subjects that look alike to selectors and named ports decide alike.
        let mut seen = BTreeSet::new();
        let subjects: Vec<&Pod> = subjects
            .into_iter()
            .filter(|s| seen.insert((s.labels.clone(), s.ports.clone())))
            .collect();
        for (i, rule) in rules.iter().enumerate() {
            let mut used = BTreeSet::new();
            let shadowed = subjects.iter().all(|s| {
                let others: Vec<Other> = cluster
                    .isolating(s, dir)
                    .into_iter()
                    .flat_map(|q| {
                        let name = q.object_name().to_string();
                        q.rules(dir)
                            .unwrap_or_default()
                            .iter()
                            .enumerate()
                            .filter(move |(k, _)| !(q.object_name() == p.object_name() && *k == i))
                            .map(move |(k, r)| (name.clone(), k, q.namespace.as_str(), r))
                    })
                    .collect();
                covered_for(cluster, dir, &p.namespace, rule, s, &others, &mut used) == Some(true)
            });
            if !shadowed {
                continue;
            }
            let used: Vec<String> = used.into_iter().collect();
            out.push(Raw {
                object: object(p),
                field: rule_field(dir, i),
                message: format!(
                    "never decides anything: everything it allows is also allowed by {}",
                    few(&used)
                ),
                fix: "delete this rule, or narrow the rule that covers it if this one was meant to be the only way".into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_coverage_subtracts_ranges_per_protocol() {
        let need = vec![(Protocol::Tcp, 80, 90)];
        assert!(ports_covered(
            &need,
            &vec![(Protocol::Tcp, 70, 85), (Protocol::Tcp, 86, 100)]
        ));
        assert!(!ports_covered(
            &need,
            &vec![(Protocol::Tcp, 70, 85), (Protocol::Tcp, 87, 100)]
        ));
        assert!(!ports_covered(&need, &vec![(Protocol::Udp, 1, 65535)]));
    }

    #[test]
    fn prefixes_are_covered_by_unions_of_halves() {
        let n = |s: &str| -> IpNet { s.parse().unwrap() };
        assert!(prefix_covered(
            n("10.0.0.0/8"),
            &[n("10.0.0.0/9"), n("10.128.0.0/9")]
        ));
        assert!(!prefix_covered(
            n("10.0.0.0/8"),
            &[n("10.0.0.0/9"), n("10.128.0.0/10")]
        ));
        assert!(prefix_covered(n("10.1.0.0/16"), &[n("0.0.0.0/0")]));
    }
}
