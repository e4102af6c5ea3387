//! Pods in a running lab: CNI configuration, checks, attaching, removing, Services.

use anyhow::{anyhow, bail, Result};
use std::net::Ipv4Addr;

use super::state::{ipam_dir, validate_k8s_name};
use super::{cni, netns, serve, service, Attach, Lab, PodInfo, PodSpec, NETNS_PREFIX};

impl Lab {
    pub(super) fn cni_config(&self, node: usize, requested: Option<Ipv4Addr>) -> serde_json::Value {
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
    pub(super) fn pod_netns_name(&self, ns: &str, name: &str) -> String {
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

    pub(super) fn check_pod_spec(&self, p: &PodSpec) -> Result<()> {
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
    pub(super) fn attach_pod(&mut self, p: &PodSpec) -> Result<PodInfo> {
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

    pub(super) fn apply_services(&self) -> Result<()> {
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
}
