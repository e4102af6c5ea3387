//! Lab: a small Kubernetes-like cluster on this machine, built from network namespaces.
//!
//! ```text
//!   hub netns sl<lab>-ul: bridge br0 192.168.100.254/24 ("the LAN")
//!        | n0                               | n1
//!   node sl<lab>-n0  eth0 192.168.100.1    node sl<lab>-n1  eth0 192.168.100.2
//!        flannel.1 10.244.0.0/32  <== VXLAN VNI 1, UDP 8472 ==>  flannel.1 10.244.1.0/32
//!        pods 10.244.0.0/24 (ptp veths or cni0)                  pods 10.244.1.0/24
//!          |                                                       |
//!   pod sl<lab>-<ns>-<pod> eth0 (attached by the real CNI ptp/bridge + host-local plugins)
//! ```
//!
//! Every pod gets a ClusterIP (DNAT in every node, like kube-proxy's nftables mode) and serves
//! its ports on TCP and UDP; probes are real connections made from inside a pod's namespace.
//! The lab's state is a JSON file (/run/sluice/lab/<lab>/state.json) so another process can
//! attach to it, serve it, probe it, or clean up after a crash. See docs/lab.md.

pub mod cni;
pub mod enforce;
pub mod netns;
pub mod overlay;
pub mod plan;
pub mod probe;
pub mod serve;
pub mod service;

pub use netns::exec_in;
pub use probe::{BlockReason, ProbeResult, Proto};
pub use serve::ServerHandle;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Root of all lab state directories.
pub const STATE_ROOT: &str = "/run/sluice/lab";
/// Every namespace of lab `x` is named `sl<x>-...`.
pub const NETNS_PREFIX: &str = "sl";
/// Longest lab name: keeps namespace names and CNI container IDs readable.
pub const MAX_NAME: usize = 16;
/// Environment marker of a detached server process, checked before we signal a pid.
const SERVER_ENV: &str = "SLUICE_LAB_SERVE";

/// How pods attach: the same choice the compiler makes (routed = CNI `ptp`, bridged = CNI
/// `bridge` on `cni0`).
pub use crate::compile::Attach;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Short unique id, `[a-z0-9]{1,16}`.
    pub name: String,
    pub nodes: usize,
    pub attach: Attach,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    /// Requested address; must be a host address inside the node's CIDR (not .0/.1/.255).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Served on both TCP and UDP.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, node: usize, ports: &[u16]) -> Self {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            node,
            ip: None,
            ports: ports.to_vec(),
        }
    }
    pub fn with_ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = Some(ip);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    /// Name of the pod's namespace (under /var/run/netns).
    pub netns: String,
    /// Host-side veth in the node namespace (random name from the CNI plugin).
    pub host_iface: String,
    /// MAC of the pod's eth0.
    pub mac: String,
    pub service_ip: Ipv4Addr,
    pub ports: Vec<u16>,
    /// CNI_CONTAINERID used for ADD/DEL.
    pub container_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub index: usize,
    /// The node name pods use in `spec.nodeName` (empty in older state files: `node-<index>`).
    #[serde(default)]
    pub name: String,
    pub netns: String,
    pub cidr: Ipv4Net,
    /// Pod default gateway (cni0 or every ptp host veth).
    pub gateway: Ipv4Addr,
    pub underlay_ip: Ipv4Addr,
    pub vxlan_ip: Ipv4Addr,
    pub vxlan_mac: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lab {
    name: String,
    attach: Attach,
    hub_netns: String,
    nodes: Vec<NodeInfo>,
    pods: Vec<PodInfo>,
    /// Detached server process (see `spawn_server`), if any.
    #[serde(default)]
    server_pid: Option<u32>,
}

pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

pub fn state_path(name: &str) -> PathBuf {
    state_dir(name).join("state.json")
}

fn ipam_dir(name: &str) -> PathBuf {
    state_dir(name).join("ipam")
}

fn lab_netns_prefix(name: &str) -> String {
    format!("{NETNS_PREFIX}{name}-")
}

pub fn validate_name(name: &str) -> Result<()> {
    // No '-' so that "sl<name>-" prefixes of two labs can never overlap.
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("lab name {name:?} must be 1-{MAX_NAME} characters of [a-z0-9]");
    }
    Ok(())
}

fn validate_k8s_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 253
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        bail!("{what} {s:?} is not a valid Kubernetes name");
    }
    Ok(())
}

/// Whether anything of lab `name` exists (state dir or any namespace).
pub fn exists(name: &str) -> bool {
    let prefix = lab_netns_prefix(name);
    state_dir(name).exists() || netns::list().iter().any(|n| n.starts_with(&prefix))
}

/// Names of the labs present on this machine: a state directory, or a hub namespace
/// (`sl<name>-ul`, which `up` creates first) left by a run that lost its state directory.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| validate_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    for ns in netns::list() {
        if let Some(rest) = ns.strip_prefix(NETNS_PREFIX) {
            if let Some(name) = rest.strip_suffix("-ul") {
                if validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Remove lab `name` after a crash: from its state file if readable (CNI DEL for every pod),
/// then every namespace named `sl<name>-*` and the state directory. Idempotent.
pub fn down_by_name(name: &str) -> Result<()> {
    validate_name(name)?;
    match Lab::load(name) {
        Ok(lab) => lab.teardown(),
        Err(_) => remove_remains(name),
    }
}

/// Remove every lab on this machine (see `list`). Returns the names removed.
pub fn down_all() -> Result<Vec<String>> {
    let names = list();
    let mut errors = Vec::new();
    for n in &names {
        if let Err(e) = down_by_name(n) {
            errors.push(format!("{n}: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("down_all: {}", errors.join("; "));
    }
    Ok(names)
}

/// Delete all namespaces `sl<name>-*` (deleting a node namespace takes its veths, vxlan,
/// bridge and nft tables with it) and the state dir; then check nothing is left.
fn remove_remains(name: &str) -> Result<()> {
    let prefix = lab_netns_prefix(name);
    let mut errors = Vec::new();
    for ns in netns::list().into_iter().filter(|n| n.starts_with(&prefix)) {
        if let Err(e) = netns::delete(&ns) {
            errors.push(format!("{e:#}"));
        }
    }
    let dir = state_dir(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if !left.is_empty() {
        errors.push(format!("namespaces left: {}", left.join(" ")));
    }
    if !errors.is_empty() {
        bail!("cleanup of lab {name}: {}", errors.join("; "));
    }
    Ok(())
}

impl Lab {
    /// Build the lab: underlay, nodes, overlay, pods (via CNI), services; write the state file.
    /// On error everything created so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        let plan: Vec<plan::NodePlan> = (0..spec.nodes).map(plan::default_node).collect();
        Lab::up_planned(spec, &plan)
    }

    /// Like [`Lab::up`] with the nodes' names and pod subnets given (see [`plan::plan_nodes`]);
    /// `spec.nodes` is ignored.
    pub fn up_planned(spec: &LabSpec, plan: &[plan::NodePlan]) -> Result<Lab> {
        validate_name(&spec.name)?;
        if plan.is_empty() || plan.len() > overlay::MAX_NODES {
            bail!("nodes must be 1..={}", overlay::MAX_NODES);
        }
        if exists(&spec.name) {
            bail!(
                "lab {} already exists (remove it with down_by_name / `lab down`)",
                spec.name
            );
        }
        let nodes = plan
            .iter()
            .enumerate()
            .map(|(i, n)| NodeInfo {
                index: i,
                name: n.name.clone(),
                netns: format!("{NETNS_PREFIX}{}-n{i}", spec.name),
                cidr: n.cidr,
                gateway: Ipv4Addr::from(u32::from(n.cidr.network()) + 1),
                underlay_ip: overlay::node_underlay_ip(i),
                vxlan_ip: n.cidr.network(),
                vxlan_mac: overlay::node_vxlan_mac(i),
            })
            .collect();
        let mut lab = Lab {
            name: spec.name.clone(),
            attach: spec.attach,
            hub_netns: format!("{NETNS_PREFIX}{}-ul", spec.name),
            nodes,
            pods: Vec::new(),
            server_pid: None,
        };
        match lab.build(spec) {
            Ok(()) => Ok(lab),
            Err(e) => {
                if let Err(c) = lab.teardown() {
                    eprintln!("sluice lab: cleanup after failed up: {c:#}");
                }
                Err(e.context(format!("lab {} up", spec.name)))
            }
        }
    }

    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        std::fs::create_dir_all(ipam_dir(&self.name))?;
        // State first, so a crash from here on is found by down_by_name/down_all.
        self.save()?;
        overlay::create_hub(&self.hub_netns)?;
        for n in &self.nodes {
            overlay::create_node(&self.hub_netns, n)?;
        }
        for n in &self.nodes {
            overlay::program_peers(n, &self.nodes)?;
        }
        for p in &spec.pods {
            self.attach_pod(p)?;
            self.save()?;
        }
        self.apply_services()?;
        self.save()
    }

    /// Attach to an existing lab (from its state file).
    pub fn load(name: &str) -> Result<Lab> {
        validate_name(name)?;
        let path = state_path(name);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Write the state file atomically (rename), so readers never see half a file.
    pub fn save(&self) -> Result<()> {
        let dir = state_dir(&self.name);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, state_path(&self.name))?;
        Ok(())
    }

    /// Remove everything and consume the handle.
    pub fn down(self) -> Result<()> {
        self.teardown()
    }

    /// Remove everything this lab made: server process, pods (CNI DEL), all `sl<name>-*`
    /// namespaces, the state directory. Idempotent; reports anything it could not remove.
    pub fn teardown(&self) -> Result<()> {
        self.stop_server();
        for p in &self.pods {
            if let Some(n) = self.nodes.get(p.node) {
                if netns::exists(&n.netns) {
                    // Best effort: deleting the namespaces below removes the veths anyway; DEL
                    // keeps the plugins' view (IPAM) consistent as a runtime would.
                    let _ = cni::del(
                        &n.netns,
                        self.attach,
                        &p.container_id,
                        &p.netns,
                        &self.cni_config(p.node, None),
                    );
                }
            }
        }
        remove_remains(&self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn attach(&self) -> Attach {
        self.attach
    }
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }
    pub fn hub_netns(&self) -> &str {
        &self.hub_netns
    }
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }
    /// A pod by "namespace/name".
    pub fn pod_ref(&self, r: &str) -> Result<&PodInfo> {
        let (ns, name) = r
            .split_once('/')
            .ok_or_else(|| anyhow!("pod reference {r:?} is not namespace/name"))?;
        self.pod(ns, name)
            .ok_or_else(|| anyhow!("no pod {r} in lab {}", self.name))
    }

    /// Resolve a probe target for CLIs: an IPv4 literal, "namespace/name" (the pod's IP) or
    /// "svc:namespace/name" (the pod's ClusterIP).
    pub fn resolve(&self, target: &str) -> Result<Ipv4Addr> {
        if let Ok(ip) = target.parse() {
            return Ok(ip);
        }
        match target.strip_prefix("svc:") {
            Some(r) => Ok(self.pod_ref(r)?.service_ip),
            None => Ok(self.pod_ref(target)?.ip),
        }
    }

    /// Panics on an index out of range (a programming error in the caller).
    pub fn node_netns(&self, node: usize) -> &str {
        &self.nodes[node].netns
    }
    pub fn node_cidr(&self, node: usize) -> Ipv4Net {
        self.nodes[node].cidr
    }
    /// The name pods use for lab node `node` in `spec.nodeName`.
    pub fn node_name(&self, node: usize) -> String {
        let n = &self.nodes[node];
        if n.name.is_empty() {
            format!("node-{node}")
        } else {
            n.name.clone()
        }
    }
    pub fn state_dir(&self) -> PathBuf {
        state_dir(&self.name)
    }

    /// (tx_packets, rx_packets) of a node's flannel.1: proves traffic used the tunnel.
    pub fn vxlan_packets(&self, node: usize) -> Result<(u64, u64)> {
        netns::link_packets(self.node_netns(node), overlay::VXLAN_DEV)
    }

    fn cni_config(&self, node: usize, requested: Option<Ipv4Addr>) -> serde_json::Value {
        let n = &self.nodes[node];
        cni::net_config(
            self.attach,
            node,
            n.cidr,
            n.gateway,
            &ipam_dir(&self.name),
            requested,
        )
    }

    /// Pod namespace name: readable `sl<lab>-<ns>-<pod>` when short and free, otherwise a
    /// hash (`sl<lab>-h<hex>`). Namespace names can't contain '.', pod names can, and both
    /// can contain '-', so "a-b"/"c" and "a"/"b-c" would collide: the taken check catches it.
    fn pod_netns_name(&self, ns: &str, name: &str) -> String {
        let taken = |n: &str| self.pods.iter().any(|p| p.netns == n) || netns::exists(n);
        // '/' (workload pods) cannot be in a file name; '_' is in no Kubernetes name.
        let readable = format!(
            "{NETNS_PREFIX}{}-{ns}-{}",
            self.name,
            name.replace('/', "_")
        );
        if readable.len() <= 64 && !taken(&readable) {
            return readable;
        }
        let mut salt = 0u32;
        loop {
            let h = service::fnv1a(format!("{ns}/{name}/{salt}").as_bytes());
            let n = format!("{NETNS_PREFIX}{}-h{:012x}", self.name, h & 0xffff_ffff_ffff);
            if !taken(&n) {
                return n;
            }
            salt += 1;
        }
    }

    fn check_pod_spec(&self, p: &PodSpec) -> Result<()> {
        validate_k8s_name("namespace", &p.namespace)?;
        // Workloads stand for one pod named `<kind>/<name>`: each part must be a valid name.
        for part in p.name.splitn(2, '/') {
            validate_k8s_name("pod name", part)?;
        }
        if p.node >= self.nodes.len() {
            bail!(
                "pod {}/{}: node {} does not exist (lab has {})",
                p.namespace,
                p.name,
                p.node,
                self.nodes.len()
            );
        }
        if self.pod(&p.namespace, &p.name).is_some() {
            bail!("pod {}/{} already exists", p.namespace, p.name);
        }
        if p.ports.contains(&0) {
            bail!("pod {}/{}: port 0", p.namespace, p.name);
        }
        if let Some(ip) = p.ip {
            let n = &self.nodes[p.node];
            let cidr = n.cidr;
            if !cidr.contains(&ip)
                || ip == cidr.network()
                || ip == cidr.broadcast()
                || ip == n.gateway
            {
                bail!(
                    "pod {}/{}: requested IP {ip} is not a free host address of node {}'s CIDR {cidr} (gateway {})",
                    p.namespace,
                    p.name,
                    p.node,
                    n.gateway
                );
            }
            if let Some(o) = self.pods.iter().find(|o| o.ip == ip) {
                bail!(
                    "pod {}/{}: IP {ip} is in use by {}/{}",
                    p.namespace,
                    p.name,
                    o.namespace,
                    o.name
                );
            }
        }
        Ok(())
    }

    /// Create the pod namespace and attach it with CNI ADD; on failure undo both.
    fn attach_pod(&mut self, p: &PodSpec) -> Result<PodInfo> {
        self.check_pod_spec(p)?;
        let node = &self.nodes[p.node];
        let node_ns = node.netns.clone();
        let pod_ns = self.pod_netns_name(&p.namespace, &p.name);
        // The netns name is unique on the machine, and the CNI container ID only has to be
        // unique per (network, host-local dir), so reuse it.
        let container_id = pod_ns.clone();
        netns::create(&pod_ns)?;
        let conf = self.cni_config(p.node, p.ip);
        let attached = (|| -> Result<PodInfo> {
            let res = cni::add(&node_ns, self.attach, &container_id, &pod_ns, &conf)?;
            if let Some(want) = p.ip {
                if res.ip != want {
                    bail!("CNI assigned {} instead of requested {want}", res.ip);
                }
            }
            let host_iface = match self.attach {
                Attach::Routed => {
                    let by_route = cni::host_iface_by_route(&node_ns, res.ip)?;
                    if by_route != res.host_iface {
                        bail!(
                            "ptp result names host veth {} but the /32 route uses {by_route}",
                            res.host_iface
                        );
                    }
                    by_route
                }
                Attach::Bridged => {
                    // IP reuse on a bridge: refresh stale neighbour entries (see netns.rs).
                    netns::gratuitous_arp(&pod_ns, "eth0", res.ip, &res.pod_mac)?;
                    res.host_iface.clone()
                }
            };
            let taken: Vec<Ipv4Addr> = self.pods.iter().map(|p| p.service_ip).collect();
            Ok(PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: p.node,
                ip: res.ip,
                netns: pod_ns.clone(),
                host_iface,
                mac: res.pod_mac,
                service_ip: service::allocate(&p.namespace, &p.name, &taken),
                ports: p.ports.clone(),
                container_id: container_id.clone(),
            })
        })();
        match attached {
            Ok(info) => {
                self.pods.push(info.clone());
                Ok(info)
            }
            Err(e) => {
                let _ = cni::del(&node_ns, self.attach, &container_id, &pod_ns, &conf);
                let _ = netns::delete(&pod_ns);
                Err(e.context(format!("attach pod {}/{}", p.namespace, p.name)))
            }
        }
    }

    fn apply_services(&self) -> Result<()> {
        for n in &self.nodes {
            service::apply(&n.netns, &self.pods)?;
        }
        Ok(())
    }

    /// Add a pod to a running lab (CNI ADD, service rules in every node, state file). Servers
    /// of this lab running in this process serve it before this returns; a detached server
    /// picks it up within half a second (use `wait_served`).
    pub fn add_pod(&mut self, p: &PodSpec) -> Result<PodInfo> {
        let info = self.attach_pod(p)?;
        let done = self.apply_services().and_then(|_| self.save());
        if let Err(e) = done {
            let _ = self.remove_pod(&p.namespace, &p.name);
            return Err(e);
        }
        serve::kick(&self.name);
        Ok(info)
    }

    /// Remove a pod: CNI DEL (releases its IP, deletes its veth), delete its namespace,
    /// drop its service.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        let idx = self
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| anyhow!("no pod {namespace}/{name} in lab {}", self.name))?;
        let p = self.pods.remove(idx);
        let node_ns = self.nodes[p.node].netns.clone();
        let del = cni::del(
            &node_ns,
            self.attach,
            &p.container_id,
            &p.netns,
            &self.cni_config(p.node, None),
        );
        let rm = netns::delete(&p.netns);
        self.apply_services()?;
        self.save()?;
        // Closes this process's server sockets in the old namespace so the kernel can free it.
        serve::kick(&self.name);
        del?;
        rm
    }

    /// Probe from a pod: a real TCP/UDP connection from its namespace.
    pub fn probe(
        &self,
        from: &PodInfo,
        to: Ipv4Addr,
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> ProbeResult {
        probe::probe_from(&from.netns, to, port, proto, timeout)
    }

    /// Probe, retrying (up to `attempts`) only while the result differs from `expect_connected`.
    #[allow(clippy::too_many_arguments)]
    pub fn probe_with_retry(
        &self,
        from: &PodInfo,
        to: Ipv4Addr,
        port: u16,
        proto: Proto,
        timeout: Duration,
        expect_connected: bool,
        attempts: usize,
    ) -> ProbeResult {
        probe::probe_from_with_retry(
            &from.netns,
            to,
            port,
            proto,
            timeout,
            expect_connected,
            attempts,
        )
    }

    /// Probe from a node's own namespace (host network: kubelet-style traffic).
    pub fn probe_from_node(
        &self,
        node: usize,
        to: Ipv4Addr,
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> ProbeResult {
        probe::probe_from(self.node_netns(node), to, port, proto, timeout)
    }

    /// Serve every pod's ports in this process until the handle is dropped. Follows pods
    /// added/removed later. Returns when the current pods are served.
    pub fn start_servers(&self) -> Result<ServerHandle> {
        serve::start(&self.name)
    }

    /// Serve on the current thread until the lab is torn down (its state file disappears).
    pub fn serve_forever(&self) -> Result<()> {
        serve::serve_forever(&self.name)
    }

    /// Wait until a pod answers on all its ports, TCP and UDP, checked over its own loopback
    /// (which no policy touches), whoever serves it.
    pub fn wait_served(&self, pod: &PodInfo, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for &port in &pod.ports {
            for proto in [Proto::Tcp, Proto::Udp] {
                loop {
                    let r = probe::probe_from(
                        &pod.netns,
                        Ipv4Addr::LOCALHOST,
                        port,
                        proto,
                        Duration::from_millis(200),
                    );
                    if r.is_connected() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "pod {}/{} not serving {proto} {port}: {r}",
                            pod.namespace,
                            pod.name
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    /// Start a detached server process: `program args...` must end up calling
    /// `Lab::load(name)?.serve_forever()` (e.g. `sluice lab serve <name>`). It outlives this
    /// process, logs to <state dir>/server.log, exits by itself when the lab is torn down, and
    /// is signalled by `teardown`. Returns its pid once every current pod is served.
    pub fn spawn_server(&mut self, program: &Path, args: &[&str]) -> Result<u32> {
        if let Some(pid) = self.server_pid.filter(|&p| self.is_our_server(p)) {
            return Ok(pid);
        }
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.state_dir().join("server.log"))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env(SERVER_ENV, &self.name)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; it detaches the server from our session so a
        // terminal hangup or our exit does not take it down.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn server {}", program.display()))?;
        let pid = child.id();
        // Kept (not waited for) so that a teardown in this same process can reap it; if we
        // exit first, it is re-parented and lives on as intended.
        lock_spawned().push(child);
        self.server_pid = Some(pid);
        self.save()?;
        for p in &self.pods {
            self.wait_served(p, Duration::from_secs(10))?;
        }
        Ok(pid)
    }

    /// The recorded pid is still a server of this lab (pids get reused: check its marker).
    fn is_our_server(&self, pid: u32) -> bool {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let want = format!("{SERVER_ENV}={}", self.name);
        env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
    }

    fn stop_server(&self) {
        let Some(pid) = self.server_pid else { return };
        if !self.is_our_server(pid) {
            return;
        }
        // SAFETY: signalling a pid we verified to be our server.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.is_our_server(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Our own child: reap it rather than leave a zombie behind.
        let mut spawned = lock_spawned();
        if let Some(i) = spawned.iter().position(|c| c.id() == pid) {
            let mut c = spawned.remove(i);
            while Instant::now() < deadline {
                if !matches!(c.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Server processes spawned by this process (see `Lab::spawn_server`).
static SPAWNED: std::sync::Mutex<Vec<std::process::Child>> = std::sync::Mutex::new(Vec::new());

fn lock_spawned() -> std::sync::MutexGuard<'static, Vec<std::process::Child>> {
    SPAWNED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owns a lab and tears it down on drop (tests: cleanup even when an assertion fails).
/// In-process servers started through it are stopped first, so no socket keeps a pod
/// namespace alive after its name is gone.
pub struct LabGuard {
    servers: Option<ServerHandle>,
    lab: Option<Lab>,
}

impl LabGuard {
    pub fn new(lab: Lab) -> LabGuard {
        LabGuard {
            servers: None,
            lab: Some(lab),
        }
    }
    pub fn up(spec: &LabSpec) -> Result<LabGuard> {
        Ok(LabGuard::new(Lab::up(spec)?))
    }
    pub fn up_planned(spec: &LabSpec, plan: &[plan::NodePlan]) -> Result<LabGuard> {
        Ok(LabGuard::new(Lab::up_planned(spec, plan)?))
    }
    /// Serve all pods (now and later) in this process until the guard is dropped.
    pub fn serve(&mut self) -> Result<()> {
        if self.servers.is_none() {
            self.servers = Some(self.start_servers()?);
        }
        Ok(())
    }
    /// Keep the lab running after the guard is gone (e.g. `sluice lab up`), stopping only
    /// this process's in-process servers.
    pub fn into_inner(mut self) -> Lab {
        self.servers.take();
        self.lab.take().expect("lab present until down/drop")
    }
    /// Tear down now and report errors (drop does the same but can only log them).
    pub fn down(mut self) -> Result<()> {
        self.servers.take();
        match self.lab.take() {
            Some(lab) => lab.down(),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab.as_ref().expect("lab present until down/drop")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("lab present until down/drop")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.servers.take();
        if let Some(lab) = self.lab.take() {
            if let Err(e) = lab.teardown() {
                eprintln!("sluice lab {}: teardown: {e:#}", lab.name);
            }
        }
    }
}
