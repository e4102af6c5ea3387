//! The lab's nodes, derived from the pods: their `spec.nodeName`s and `status.podIP`s. Pure.
//!
//! A cluster export replays as is: pods keep their addresses and their nodes. Each node gets
//! the subnet its pods' addresses share (a /24 when they fit one, as flannel hands out; a
//! narrower one where two nodes share a /24, as Calico's blocks do); nodes whose pods have no
//! address get a free /24. What cannot be laid out (one address on two pods, two nodes whose
//! pods interleave, an address the lab needs for itself) is an error naming the pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::policy::Cluster;

/// One lab node: the name pods use in `spec.nodeName`, and its pod subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub cidr: Ipv4Net,
}

/// The lab's default node name and subnet for node `i` (`node-i`, 10.244.i.0/24).
pub fn default_node(i: usize) -> NodePlan {
    NodePlan {
        name: format!("node-{i}"),
        cidr: super::overlay::node_cidr(i),
    }
}

fn default_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok()
}

/// Narrowest a derived subnet may get: network, gateway, one pod, broadcast.
const NARROWEST: u8 = 30;
/// Widest: the lab's VXLAN overlay routes one subnet per node, flannel-style.
const WIDEST: u8 = 16;

/// The nodes for a lab replaying `cluster`. Pods naming only `node-<i>` nodes (or none) keep
/// the lab's `nodes` default nodes; any other node name makes the nodes exactly the named ones
/// (sorted), and pods without a node are spread over them.
pub fn plan_nodes(cluster: &Cluster, nodes: usize) -> Result<Vec<NodePlan>> {
    let pods: Vec<_> = cluster.pods.values().filter(|p| !p.host_network).collect();
    let named: std::collections::BTreeSet<&str> =
        pods.iter().filter_map(|p| p.node.as_deref()).collect();
    let names: Vec<String> = if named.iter().all(|n| default_index(n).is_some()) {
        (0..nodes).map(|i| default_node(i).name).collect()
    } else {
        named.iter().map(|n| n.to_string()).collect()
    };

    // Every requested address, once.
    let mut owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut by_node: BTreeMap<&str, Vec<(Ipv4Addr, String)>> = BTreeMap::new();
    for p in &pods {
        let Some(IpAddr::V4(ip)) = p.ips.first() else {
            continue;
        };
        let who = p.object_name().to_string();
        if let Some(other) = owner.insert(*ip, who.clone()) {
            bail!(
                "pods {other} and {who} both have status.podIP {ip}: the lab cannot give one address to two pods; remove or change one of them"
            );
        }
        if let Some(node) = p.node.as_deref() {
            by_node.entry(node).or_default().push((*ip, who));
        }
    }

    // Each node with addresses: the /24 (or wider) that holds them all.
    // (subnet, the pods' common prefix length, one pod address)
    let mut cidrs: Vec<Option<(Ipv4Net, u8, Ipv4Addr)>> = names
        .iter()
        .map(|n| {
            let ips = by_node.get(n.as_str())?;
            let lcp = common_prefix(ips.iter().map(|(ip, _)| *ip));
            let net = Ipv4Net::new(ips[0].0, lcp.min(24)).ok()?.trunc();
            Some((net, lcp, ips[0].0))
        })
        .collect();
    for (i, c) in cidrs.iter().enumerate() {
        if let Some((net, _, _)) = c {
            if net.prefix_len() < WIDEST {
                let ips = &by_node[names[i].as_str()];
                bail!(
                    "the pods of node {} have addresses too far apart for one node subnet ({net}, e.g. {} {} and {} {}); the lab gives each node one subnet of at least /{WIDEST}",
                    names[i],
                    ips[0].1,
                    ips[0].0,
                    ips[ips.len() - 1].1,
                    ips[ips.len() - 1].0
                );
            }
        }
    }
    // Two nodes sharing a /24: narrow the wider one until they are apart, as far as their
    // pods allow.
    loop {
        let mut changed = false;
        for i in 0..names.len() {
            for j in 0..names.len() {
                let (Some((a, la, _)), Some((b, lb, _))) = (cidrs[i], cidrs[j]) else {
                    continue;
                };
                if i == j || !overlaps(a, b) {
                    continue;
                }
                let (wide, lcp) = if a.prefix_len() <= b.prefix_len() {
                    (i, la)
                } else {
                    (j, lb)
                };
                let (net, _, ip) = cidrs[wide].expect("checked");
                if net.prefix_len() < lcp.min(NARROWEST) {
                    // Still holds the node's pods: the new prefix is within their common one.
                    let narrower = Ipv4Net::new(ip, net.prefix_len() + 1)
                        .expect("prefix below 32")
                        .trunc();
                    cidrs[wide] = Some((narrower, lcp, ip));
                    changed = true;
                } else {
                    let (p, q) = (&by_node[names[i].as_str()], &by_node[names[j].as_str()]);
                    bail!(
                        "nodes {} and {} have pods in one subnet ({} {} on {}, {} {} on {}): the lab routes one subnet per node; check spec.nodeName and status.podIP of these pods",
                        names[i], names[j], p[0].1, p[0].0, names[i], q[0].1, q[0].0, names[j]
                    );
                }
            }
        }
        if !changed {
            break;
        }
    }

    // The rest: their default /24 when free, else the next free 10.244.k.0/24.
    let underlay = Ipv4Net::new(super::overlay::UNDERLAY_GW, super::overlay::UNDERLAY_PREFIX)
        .expect("valid")
        .trunc();
    let infra = [underlay, super::service::service_cidr()];
    let mut taken: Vec<Ipv4Net> = cidrs.iter().flatten().map(|(n, _, _)| *n).collect();
    taken.extend(infra);
    let mut out = Vec::new();
    let mut next = 0usize;
    for (i, name) in names.iter().enumerate() {
        let cidr = match cidrs[i] {
            Some((net, _, _)) => net,
            None => {
                let mut candidates = default_index(name)
                    .into_iter()
                    .chain(next..)
                    .filter(|k| *k < 256);
                let Some(k) = candidates.find(|k| {
                    let c = super::overlay::node_cidr(*k);
                    !taken.iter().any(|t| overlaps(*t, c))
                }) else {
                    bail!("no free 10.244.x.0/24 left for node {name}");
                };
                if default_index(name) != Some(k) {
                    next = k + 1;
                }
                super::overlay::node_cidr(k)
            }
        };
        taken.push(cidr);
        out.push(NodePlan {
            name: name.clone(),
            cidr,
        });
    }

    // Addresses the lab keeps for itself, and pods pinned outside their node's subnet.
    for p in &pods {
        let Some(IpAddr::V4(ip)) = p.ips.first() else {
            continue;
        };
        let who = p.object_name();
        if infra.iter().any(|n| n.contains(ip)) {
            bail!(
                "pod {who}: status.podIP {ip} is in the lab's own ranges ({} underlay, {} services); change or drop the address",
                infra[0],
                infra[1]
            );
        }
        let Some(node) = out
            .iter()
            .find(|n| Some(n.name.as_str()) == p.node.as_deref())
        else {
            // No node named: the pod goes where the lab puts it, so its address must belong
            // to some node's subnet.
            if !out.iter().any(|n| n.cidr.contains(ip)) {
                bail!(
                    "pod {who}: status.podIP {ip} is in no node's subnet and spec.nodeName is empty; set spec.nodeName or drop the address"
                );
            }
            continue;
        };
        let c = node.cidr;
        let gateway = Ipv4Addr::from(u32::from(c.network()) + 1);
        if *ip == c.network() || *ip == gateway || *ip == c.broadcast() {
            bail!(
                "pod {who}: status.podIP {ip} is the network, gateway or broadcast address of node {}'s subnet {c}, which the lab uses itself; change the address",
                node.name
            );
        }
    }
    Ok(out)
}

fn common_prefix(ips: impl Iterator<Item = Ipv4Addr>) -> u8 {
    let mut first: Option<u32> = None;
    let mut diff = 0u32;
    for ip in ips {
        let v = u32::from(ip);
        match first {
            None => first = Some(v),
            Some(f) => diff |= f ^ v,
        }
    }
    diff.leading_zeros() as u8
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::objects::ClusterBuilder;

    fn cluster(pods: &[(&str, Option<&str>, Option<&str>)]) -> Cluster {
        let mut text = String::new();
        for (name, node, ip) in pods {
            text += &format!(
                "---\nkind: Pod\napiVersion: v1\nmetadata: {{name: {name}, namespace: x}}\nspec: {{{}containers: [{{name: c}}]}}\n{}",
                node.map(|n| format!("nodeName: {n}, ")).unwrap_or_default(),
                ip.map(|i| format!("status: {{podIP: {i}}}\n")).unwrap_or_default()
            );
        }
        let mut b = ClusterBuilder::new();
        b.add_text("test", &text);
        b.build().0
    }

    fn plan(c: &Cluster, nodes: usize) -> Vec<(String, String)> {
        plan_nodes(c, nodes)
            .unwrap()
            .into_iter()
            .map(|n| (n.name, n.cidr.to_string()))
            .collect()
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn default_nodes_stay() {
        let c = cluster(&[("a", Some("node-1"), None), ("b", None, None)]);
        assert_eq!(
            plan(&c, 2),
            [
                pair("node-0", "10.244.0.0/24"),
                pair("node-1", "10.244.1.0/24")
            ]
        );
    }

    #[test]
    fn an_export_keeps_its_nodes_and_subnets() {
        let c = cluster(&[
            ("a", Some("worker-3"), Some("10.244.7.12")),
            ("b", Some("worker-3"), Some("10.244.7.40")),
            ("c", Some("worker-1"), Some("10.244.9.5")),
            ("d", Some("worker-2"), None),
            ("e", None, None),
        ]);
        assert_eq!(
            plan(&c, 2),
            [
                pair("worker-1", "10.244.9.0/24"),
                pair("worker-2", "10.244.0.0/24"),
                pair("worker-3", "10.244.7.0/24"),
            ]
        );
    }

    #[test]
    fn nodes_sharing_a_24_get_narrower_subnets() {
        let c = cluster(&[
            ("a", Some("n1"), Some("10.1.2.5")),
            ("b", Some("n2"), Some("10.1.2.70")),
        ]);
        assert_eq!(
            plan(&c, 1),
            [pair("n1", "10.1.2.0/26"), pair("n2", "10.1.2.64/26")]
        );
    }

    #[test]
    fn what_cannot_be_laid_out_names_the_pods() {
        let dup = cluster(&[
            ("a", Some("n1"), Some("10.244.7.5")),
            ("b", Some("n2"), Some("10.244.7.5")),
        ]);
        let e = plan_nodes(&dup, 1).unwrap_err().to_string();
        assert!(
            e.contains("x/a") && e.contains("x/b") && e.contains("10.244.7.5"),
            "{e}"
        );
        let interleaved = cluster(&[
            ("a", Some("n1"), Some("10.244.7.5")),
            ("b", Some("n2"), Some("10.244.7.6")),
        ]);
        let e = plan_nodes(&interleaved, 1).unwrap_err().to_string();
        assert!(
            e.contains("x/a") && e.contains("x/b") && e.contains("n2"),
            "{e}"
        );
        let gateway = cluster(&[("a", Some("n1"), Some("10.244.7.1"))]);
        let e = plan_nodes(&gateway, 1).unwrap_err().to_string();
        assert!(e.contains("x/a") && e.contains("gateway"), "{e}");
    }
}
