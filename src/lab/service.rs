//! ClusterIP services, one per pod, implemented like kube-proxy's nftables mode: DNAT in
//! prerouting (pod traffic) and output (node traffic) in every node, from one map
//! `svc_ip . proto . port -> pod_ip . port`, in a table of our own (`ip sluice-lab-svc`) so the
//! policy dataplane's `inet sluice` table is never touched.
//!
//! Hairpin (a pod reaching itself through its service): after DNAT the packet would leave the
//! node back towards the pod with source == destination, which the pod drops as a martian
//! (a packet "from itself" on eth0). kube-proxy masquerades that case; we do the same with a
//! set of `pod_ip . pod_ip` pairs in postrouting, so the pod sees the connection coming from
//! its gateway address (10.244.<node>.1).

use super::{netns, PodInfo};
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

pub const TABLE: &str = "sluice-lab-svc";

/// ClusterIP range, Kubernetes' default.
pub fn service_cidr() -> Ipv4Net {
    "10.96.0.0/16".parse().expect("valid")
}

/// FNV-1a: small, stable across releases and platforms (std's hasher is neither promised).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Deterministic ClusterIP for a pod: a hash of namespace/name into 10.96.1.0-10.96.255.253
/// (10.96.0.x is left to well-known services such as kubernetes/kube-dns), moving to the next
/// free address on a collision with `taken`.
pub fn allocate(namespace: &str, name: &str, taken: &[Ipv4Addr]) -> Ipv4Addr {
    let base = u32::from(service_cidr().network());
    let span = 65534 - 256;
    let mut off = (fnv1a(format!("{namespace}/{name}").as_bytes()) % span as u64) as u32;
    loop {
        let ip = Ipv4Addr::from(base + 256 + off);
        if !taken.contains(&ip) {
            return ip;
        }
        off = (off + 1) % span;
    }
}

/// The table as an nft script that replaces any previous version in one transaction
/// (`add` + `delete` + define: the add makes the delete valid the first time).
pub fn render(pods: &[PodInfo]) -> String {
    let mut map = Vec::new();
    let mut hairpin = Vec::new();
    for p in pods {
        for port in &p.ports {
            for proto in ["tcp", "udp"] {
                map.push(format!(
                    "{} . {proto} . {port} : {} . {port}",
                    p.service_ip, p.ip
                ));
            }
        }
        if !p.ports.is_empty() {
            hairpin.push(format!("{} . {}", p.ip, p.ip));
        }
    }
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("    elements = {{ {} }}\n", v.join(",\n      "))
        }
    };
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 map svc {{\n\
         \x20   type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n\
         {}\
         \x20 }}\n\
         \x20 set hairpin {{\n\
         \x20   type ipv4_addr . ipv4_addr\n\
         {}\
         \x20 }}\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   dnat ip to ip daddr . meta l4proto . th dport map @svc\n\
         \x20 }}\n\
         \x20 chain output {{\n\
         \x20   type nat hook output priority -100; policy accept;\n\
         \x20   dnat ip to ip daddr . meta l4proto . th dport map @svc\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ct status dnat ip saddr . ip daddr @hairpin masquerade\n\
         \x20 }}\n\
         }}\n",
        elements(&map),
        elements(&hairpin)
    )
}

/// Install the service table in one node namespace (atomically).
pub fn apply(node_netns: &str, pods: &[PodInfo]) -> Result<()> {
    let script = render(pods);
    netns::output(
        "ip",
        &["netns", "exec", node_netns, "nft", "-f", "-"],
        Some(&script),
    )
    .with_context(|| format!("apply services in {node_netns}:\n{script}"))
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_deterministic_and_avoids_collisions() {
        let a = allocate("x", "a", &[]);
        assert_eq!(a, allocate("x", "a", &[]));
        assert!(service_cidr().contains(&a));
        assert_ne!(a.octets()[2], 0);
        let b = allocate("x", "a", &[a]);
        assert_ne!(a, b);
    }
}
