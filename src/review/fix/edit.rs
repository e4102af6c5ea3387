//! The edits a fix is made of: selectors that pick exactly a pod's replicas, peers and port
//! clauses for one flow, and narrowing a rule so that it no longer allows one flow.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::ipblock::IpBlock;
use crate::policy::labels::{Operator, Requirement, Selector};
use crate::policy::model::{NamespaceScope, Peer, Rule, NAMESPACE_NAME_LABEL};
use crate::policy::ports::{PortRef, PortRule};
use crate::policy::{Cluster, Pod, Protocol};

/// Labels that differ between replicas or rollouts: never part of a proposed selector.
const VOLATILE: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
];

fn equals(pairs: &[(&String, &String)]) -> Selector {
    let mut requirements: Vec<Requirement> = pairs
        .iter()
        .map(|(k, v)| Requirement {
            key: (*k).clone(),
            operator: Operator::In,
            values: vec![(*v).clone()],
        })
        .collect();
    requirements.sort();
    Selector { requirements }
}

/// The smallest non-empty set of `pod`'s stable labels that selects, in its namespace, exactly
/// the pods that carry all of them (its replicas), as a selector. Never `{}` when the pod has
/// a stable label: a pod alone in its namespace must not open the namespace to newcomers.
pub fn pod_selector(cluster: &Cluster, pod: &Pod) -> Selector {
    let stable: Vec<(&String, &String)> = pod
        .labels
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .collect();
    let peers: Vec<&Pod> = cluster
        .pods
        .values()
        .filter(|p| p.namespace == pod.namespace && !p.host_network)
        .collect();
    let picks =
        |sel: &Selector| -> Vec<bool> { peers.iter().map(|p| sel.matches(&p.labels)).collect() };
    let full = equals(&stable);
    if stable.len() > 12 {
        return full;
    }
    let target = picks(&full);
    let n = stable.len();
    let first = u32::from(n > 0);
    let mut subsets: Vec<u32> = (first..1u32 << n).collect();
    subsets.sort_by_key(|m| m.count_ones());
    for mask in subsets {
        let chosen: Vec<(&String, &String)> = (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| stable[i])
            .collect();
        let sel = equals(&chosen);
        if picks(&sel) == target {
            return sel;
        }
    }
    full
}

fn host_block(ip: IpAddr) -> IpBlock {
    IpBlock {
        cidr: IpNet::from(ip),
        except: vec![],
    }
}

/// A peer (of a policy in `policy_ns`) that matches `pod` and its replicas, or its address.
pub fn peer_for_pod(cluster: &Cluster, policy_ns: &str, pod: &Pod) -> Option<Peer> {
    if pod.host_network {
        // Selectors never match host-network pods; their address does.
        return pod.ips.first().map(|ip| Peer::IpBlock(host_block(*ip)));
    }
    let namespaces = if pod.namespace == policy_ns {
        NamespaceScope::PolicyNamespace
    } else {
        NamespaceScope::Selected(equals(&[(
            &NAMESPACE_NAME_LABEL.to_string(),
            &pod.namespace,
        )]))
    };
    Some(Peer::Pods {
        namespaces,
        pods: pod_selector(cluster, pod),
    })
}

pub fn peer_for_ip(ip: IpAddr) -> Peer {
    Peer::IpBlock(host_block(ip))
}

/// Whether one port clause matches `port`/`protocol` towards `dst` (named ports resolve there).
pub fn clause_matches(c: &PortRule, port: u16, protocol: Protocol, dst: Option<&Pod>) -> bool {
    c.protocol == protocol
        && match (&c.port, c.numeric_range()) {
            (_, Some((lo, hi))) => lo <= port && port <= hi,
            (Some(PortRef::Name(n)), None) => {
                dst.and_then(|d| d.resolve_named_port(n, protocol)) == Some(port)
            }
            _ => false,
        }
}

pub fn ports_match(r: &Rule, port: u16, protocol: Protocol, dst: Option<&Pod>) -> bool {
    r.ports.is_empty()
        || r.ports
            .iter()
            .any(|c| clause_matches(c, port, protocol, dst))
}

/// The far end of a flow, as peers see it.
#[derive(Clone, Copy)]
pub struct Far<'a> {
    pub pod: Option<&'a Pod>,
    pub ip: Option<IpAddr>,
}

impl Far<'_> {
    fn ips(&self) -> Vec<IpAddr> {
        match (self.ip, self.pod) {
            (Some(ip), _) => vec![ip],
            (None, Some(p)) => p.ips.clone(),
            (None, None) => vec![],
        }
    }
}

pub fn peer_matches(cluster: &Cluster, policy_ns: &str, peer: &Peer, far: Far) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => far
            .pod
            .is_some_and(|p| cluster.pod_peer_matches(policy_ns, namespaces, pods, p)),
        Peer::IpBlock(b) => far.ips().iter().any(|ip| b.contains(*ip)),
    }
}

pub fn peers_match(cluster: &Cluster, policy_ns: &str, r: &Rule, far: Far) -> bool {
    r.peers.is_empty()
        || r.peers
            .iter()
            .any(|p| peer_matches(cluster, policy_ns, p, far))
}

/// The label of `far` whose exclusion costs the fewest other pods among `candidates`.
fn exclusion(
    cluster: &Cluster,
    pod: &Pod,
    candidates: impl Fn(&Pod) -> bool,
) -> Option<Requirement> {
    let mut best: Option<(usize, Requirement)> = None;
    for (k, v) in pod.labels.iter() {
        let cost = cluster
            .pods
            .values()
            .filter(|p| candidates(p) && p.labels.get(k) == Some(v))
            .count()
            + usize::from(VOLATILE.contains(&k.as_str())) * 1_000_000;
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((
                cost,
                Requirement {
                    key: k.clone(),
                    operator: Operator::NotIn,
                    values: vec![v.clone()],
                },
            ));
        }
    }
    best.map(|(_, r)| r)
}

/// `sel` with `key NotIn [value]` added. When `sel` already demands `key In (...)`, the value
/// is taken out of that list instead, and None means nothing is left to select.
fn with(sel: &Selector, req: Requirement) -> Option<Selector> {
    let mut s = sel.clone();
    let value = &req.values[0];
    if let Some(r) = s
        .requirements
        .iter_mut()
        .find(|r| r.key == req.key && r.operator == Operator::In)
    {
        r.values.retain(|v| v != value);
        if r.values.is_empty() {
            return None;
        }
    } else {
        s.requirements.push(req);
        s.requirements.sort();
    }
    Some(s)
}

/// `peers` minus `far`: peers that match it are narrowed (a NotIn on one of its labels, an
/// except for its address) or dropped. An empty result means "no peer left" (not "all").
pub fn peers_without(cluster: &Cluster, policy_ns: &str, peers: &[Peer], far: Far) -> Vec<Peer> {
    let everyone;
    let peers = if peers.is_empty() {
        everyone = vec![
            Peer::Pods {
                namespaces: NamespaceScope::Selected(Selector::everything()),
                pods: Selector::everything(),
            },
            Peer::IpBlock(IpBlock {
                cidr: "0.0.0.0/0".parse().unwrap(),
                except: vec![],
            }),
            Peer::IpBlock(IpBlock {
                cidr: "::/0".parse().unwrap(),
                except: vec![],
            }),
        ];
        &everyone[..]
    } else {
        peers
    };
    let mut out = Vec::new();
    for peer in peers {
        if !peer_matches(cluster, policy_ns, peer, far) {
            out.push(peer.clone());
            continue;
        }
        match peer {
            Peer::Pods { namespaces, pods } => {
                let pod = far.pod.expect("a pod peer matched a pod");
                let matched = |p: &Pod| cluster.pod_peer_matches(policy_ns, namespaces, pods, p);
                match exclusion(cluster, pod, matched) {
                    Some(req) => {
                        if let Some(pods) = with(pods, req) {
                            out.push(Peer::Pods {
                                namespaces: namespaces.clone(),
                                pods,
                            });
                        }
                    }
                    None => {
                        // No label to tell it apart: leave its namespace out.
                        let not_its_ns = Requirement {
                            key: NAMESPACE_NAME_LABEL.to_string(),
                            operator: Operator::NotIn,
                            values: vec![pod.namespace.clone()],
                        };
                        if let NamespaceScope::Selected(ns) = namespaces {
                            if let Some(ns) = with(ns, not_its_ns) {
                                out.push(Peer::Pods {
                                    namespaces: NamespaceScope::Selected(ns),
                                    pods: pods.clone(),
                                });
                            }
                        }
                    }
                }
            }
            Peer::IpBlock(b) => {
                let mut block = b.clone();
                for ip in far.ips().into_iter().filter(|ip| b.contains(*ip)) {
                    let host = IpNet::from(ip);
                    if host.prefix_len() <= block.cidr.prefix_len() {
                        block.except.clear();
                        block.cidr = host; // the whole block is this address: drop below
                        break;
                    }
                    block.except.push(host);
                }
                if block.cidr.prefix_len() < block.cidr.max_prefix_len() {
                    block.except.sort();
                    block.except.dedup();
                    out.push(Peer::IpBlock(block));
                }
            }
        }
    }
    out
}

/// `ports` minus `port`/`protocol` towards `dst`. An empty result means "no port left".
pub fn ports_without(
    ports: &[PortRule],
    port: u16,
    protocol: Protocol,
    dst: Option<&Pod>,
) -> Vec<PortRule> {
    let all;
    let ports = if ports.is_empty() {
        all = Protocol::ALL
            .iter()
            .map(|p| PortRule {
                protocol: *p,
                port: None,
                end_port: None,
            })
            .collect::<Vec<_>>();
        &all[..]
    } else {
        ports
    };
    let range = |lo: u16, hi: u16| PortRule {
        protocol,
        port: Some(PortRef::Number(lo)),
        end_port: (hi != lo).then_some(hi),
    };
    let mut out = Vec::new();
    for c in ports {
        if !clause_matches(c, port, protocol, dst) {
            out.push(c.clone());
            continue;
        }
        if let Some((lo, hi)) = c.numeric_range() {
            if lo < port {
                out.push(range(lo, port - 1));
            }
            if port < hi {
                out.push(range(port + 1, hi));
            }
        } // a named port resolving to `port` is dropped
    }
    out
}

/// `rule` minus the one flow: (peers - far) x ports, and peers x (ports - port). Empty
/// halves are dropped, so the result has 0, 1 or 2 rules.
pub fn narrow(
    cluster: &Cluster,
    policy_ns: &str,
    rule: &Rule,
    far: Far,
    port: u16,
    protocol: Protocol,
    dst: Option<&Pod>,
) -> Vec<Rule> {
    let mut out = Vec::new();
    let peers = peers_without(cluster, policy_ns, &rule.peers, far);
    if !peers.is_empty() {
        out.push(Rule {
            peers,
            ports: rule.ports.clone(),
        });
    }
    let ports = ports_without(&rule.ports, port, protocol, dst);
    if !ports.is_empty() {
        out.push(Rule {
            peers: rule.peers.clone(),
            ports,
        });
    }
    out
}

/// A policy name from parts, valid as a DNS subdomain and not taken in `ns`.
pub fn free_name(cluster: &Cluster, ns: &str, parts: &[&str]) -> String {
    let mut base: String = parts
        .join("-")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while base.contains("--") {
        base = base.replace("--", "-");
    }
    let mut base: String = base.trim_matches('-').chars().take(60).collect();
    base = base.trim_end_matches('-').to_string();
    let taken: BTreeMap<String, ()> = cluster
        .policies_in(ns)
        .map(|p| (p.name.clone(), ()))
        .collect();
    let mut name = base.clone();
    let mut i = 2;
    while taken.contains_key(&name) {
        name = format!("{base}-{i}");
        i += 1;
    }
    name
}
