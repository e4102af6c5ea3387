//! Underlay (the "host network" joining the nodes) and the flannel-style VXLAN overlay.
//!
//! Underlay: a hub namespace with a plain bridge `br0`; each node has `eth0` (a veth whose hub
//! side `n<i>` is a port of br0) with 192.168.100.(i+1)/24. The hub holds 192.168.100.254 and
//! is every node's default gateway, so node-originated traffic to service IPs has a route (as on
//! a real node) before the nat/output hook rewrites it; the hub does not forward anything.
//!
//! Overlay: what flanneld's vxlan backend programs, written by hand because there is no
//! flanneld: `flannel.1` (VNI 1, UDP 8472, nolearning) with address <pod CIDR>.0/32, and for
//! each peer: route <peer CIDR> via <peer>.0 onlink, a permanent neighbour <peer>.0 -> peer's
//! flannel.1 MAC, and an fdb entry MAC -> peer underlay IP. With `nolearning` and no
//! multicast group, those static entries are the only way frames find a peer, so cross-node
//! pod traffic provably goes through the tunnel.

use super::netns;
use super::NodeInfo;
use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

pub const VXLAN_DEV: &str = "flannel.1";
pub const VXLAN_VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
pub const UNDERLAY_BRIDGE: &str = "br0";
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
pub const UNDERLAY_PREFIX: u8 = 24;
/// Upper bound so every node fits the /24 underlay and the 10.244.<i>.0/24 pod CIDRs.
pub const MAX_NODES: usize = 250;

pub fn node_underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, (i + 1) as u8)
}

/// Node i owns 10.244.i.0/24 (flannel's default 10.244.0.0/16 split into /24s).
pub fn node_cidr(i: usize) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).expect("valid /24")
}

/// flannel.1's address: the network address of the node's CIDR, as flannel does.
pub fn node_vxlan_ip(i: usize) -> Ipv4Addr {
    node_cidr(i).network()
}

/// Pod gateway (on cni0 for bridge, on every host veth for ptp).
pub fn node_gateway(i: usize) -> Ipv4Addr {
    let n = u32::from(node_cidr(i).network());
    Ipv4Addr::from(n + 1)
}

/// Deterministic, locally administered unicast MAC for flannel.1 of node i. Fixed MACs make
/// the fdb/neighbour entries computable before the devices exist, and readable in dumps.
pub fn node_vxlan_mac(i: usize) -> String {
    format!("0e:5c:00:00:00:{:02x}", i + 1)
}

/// Hub namespace with the underlay bridge.
pub fn create_hub(hub: &str) -> Result<()> {
    netns::create(hub)?;
    netns::ip_batch(
        hub,
        &[
            format!("link add {UNDERLAY_BRIDGE} type bridge"),
            format!("addr add {UNDERLAY_GW}/{UNDERLAY_PREFIX} dev {UNDERLAY_BRIDGE}"),
            format!("link set {UNDERLAY_BRIDGE} up"),
        ],
    )
}

/// Node namespace: sysctls first (so every later interface inherits `default`), then the
/// underlay veth, then flannel.1.
pub fn create_node(hub: &str, node: &NodeInfo) -> Result<()> {
    let ns = &node.netns;
    netns::create(ns)?;
    // A node routes for its pods.
    netns::sysctl(ns, "net.ipv4.ip_forward", "1")?;
    // Pod traffic from other nodes arrives on flannel.1 with sources that the reverse path
    // would also pick flannel.1 for, but hairpin-SNAT and service traffic can be asymmetric;
    // a strict rp_filter inherited from the host would drop it silently. Relax everything.
    for scope in ["all", "default"] {
        netns::sysctl(ns, &format!("net.ipv4.conf.{scope}.rp_filter"), "0")?;
    }
    // Bridged pods: br_netfilter must hand bridged IPv4 to the inet hooks (the dataplane
    // relies on it, see DESIGN). It is per-namespace and defaults to 1; make it explicit.
    let _ = netns::sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1");

    let hub_port = format!("n{}", node.index);
    netns::ip(
        hub,
        &[
            "link", "add", &hub_port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )
    .with_context(|| format!("underlay veth for {ns}"))?;
    netns::ip_batch(
        hub,
        &[
            format!("link set {hub_port} master {UNDERLAY_BRIDGE}"),
            format!("link set {hub_port} up"),
        ],
    )?;
    netns::ip_batch(
        ns,
        &[
            format!(
                "addr add {}/{UNDERLAY_PREFIX} dev eth0",
                node.underlay_ip
            ),
            "link set eth0 up".into(),
            format!("route add default via {UNDERLAY_GW}"),
            format!(
                "link add {VXLAN_DEV} address {} mtu {} type vxlan id {VXLAN_VNI} local {} dev eth0 dstport {VXLAN_PORT} nolearning",
                node.vxlan_mac,
                super::cni::POD_MTU,
                node.underlay_ip
            ),
            format!("addr add {}/32 dev {VXLAN_DEV}", node.vxlan_ip),
            format!("link set {VXLAN_DEV} up"),
        ],
    )
}

/// Program `node`'s view of every peer, like flanneld does on a subnet lease event.
pub fn program_peers(node: &NodeInfo, all: &[NodeInfo]) -> Result<()> {
    let mut lines = Vec::new();
    for p in all.iter().filter(|p| p.index != node.index) {
        lines.push(format!(
            "route replace {} via {} dev {VXLAN_DEV} onlink",
            p.cidr, p.vxlan_ip
        ));
        lines.push(format!(
            "neigh replace {} lladdr {} dev {VXLAN_DEV} nud permanent",
            p.vxlan_ip, p.vxlan_mac
        ));
    }
    netns::ip_batch(&node.netns, &lines)?;
    // fdb entries are a `bridge` command; `append` (not `add`) mirrors flannel and allows
    // several destinations per MAC, which an all-zero/default entry would not.
    for p in all.iter().filter(|p| p.index != node.index) {
        let dst = p.underlay_ip.to_string();
        netns::run(
            "bridge",
            &[
                "-n",
                &node.netns,
                "fdb",
                "append",
                &p.vxlan_mac,
                "dev",
                VXLAN_DEV,
                "dst",
                &dst,
            ],
        )?;
    }
    Ok(())
}
