//! The oracle as a backend: addresses assigned the way the lab assigns them, probes answered
//! by the policy model instead of a kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Result};

use super::backend::{Enforcer, Observed};
use super::table::Grid;
use super::topology::node_index;
use crate::policy::matrix::{compute, Matrix, PortProto};
use crate::policy::{evaluate, Cluster, Endpoint, Flow, ObjectName, PortRef, Protocol};

/// Which implementation of the semantics answers probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// `policy::evaluate`, pair by pair (the oracle with explanations).
    Evaluate,
    /// `policy::matrix::compute`, the grouped bitset table (a different implementation).
    Matrix,
}

pub struct OracleEnforcer {
    judge: Judge,
    /// Addresses handed out, by pod.
    assigned: BTreeMap<ObjectName, Ipv4Addr>,
    /// The desired cluster of the last sync, with addresses.
    snapshot: Cluster,
    /// Tables computed since the last sync, by column.
    matrices: HashMap<PortProto, Matrix>,
}

/// Node `i` owns 10.244.i.0/24, like flannel's default per-node subnets in the lab.
pub fn node_subnet(node: usize) -> Result<(Ipv4Addr, u8)> {
    if node > 255 {
        bail!("node {node}: the lab numbers nodes 0 to 255");
    }
    Ok((Ipv4Addr::new(10, 244, node as u8, 0), 24))
}

fn in_subnet(ip: Ipv4Addr, node: usize) -> bool {
    let o = ip.octets();
    o[0] == 10 && o[1] == 244 && o[2] as usize == node
}

impl OracleEnforcer {
    pub fn new(judge: Judge) -> OracleEnforcer {
        OracleEnforcer {
            judge,
            assigned: BTreeMap::new(),
            snapshot: Cluster::default(),
            matrices: HashMap::new(),
        }
    }

    fn node_of(cluster: &Cluster, name: &ObjectName) -> usize {
        cluster
            .pod(name)
            .and_then(|p| p.node.as_deref())
            .and_then(node_index)
            .unwrap_or(0)
    }

    fn allowed(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
    ) -> Result<bool, String> {
        match self.judge {
            Judge::Evaluate => oracle_allows(&self.snapshot, from, to, port, protocol),
            Judge::Matrix => {
                let col = PortProto { port, protocol };
                let snapshot = &self.snapshot;
                let m = self
                    .matrices
                    .entry(col)
                    .or_insert_with(|| compute(snapshot, &[col]));
                let i = m
                    .pods
                    .binary_search(from)
                    .map_err(|_| format!("no pod {from}"))?;
                let j = m
                    .pods
                    .binary_search(to)
                    .map_err(|_| format!("no pod {to}"))?;
                Ok(m.allowed(i, j, 0))
            }
        }
    }
}

/// The oracle's verdict for one pair.
pub fn oracle_allows(
    cluster: &Cluster,
    from: &ObjectName,
    to: &ObjectName,
    port: u16,
    protocol: Protocol,
) -> Result<bool, String> {
    let flow = Flow {
        from: Endpoint::Pod(from.clone()),
        to: Endpoint::Pod(to.clone()),
        port: PortRef::Number(port),
        protocol,
    };
    evaluate(cluster, &flow).map(|v| v.allowed)
}

/// The oracle's truth table over the pods of `cluster` (loopback cells are `true`).
pub fn oracle_table(
    cluster: &Cluster,
    port: u16,
    protocol: Protocol,
) -> Result<Grid<bool>, String> {
    let pods: Vec<ObjectName> = cluster.pods.keys().cloned().collect();
    let mut cells = Vec::with_capacity(pods.len() * pods.len());
    for from in &pods {
        for to in &pods {
            cells.push(from == to || oracle_allows(cluster, from, to, port, protocol)?);
        }
    }
    Ok(Grid::new(pods, cells))
}

impl Enforcer for OracleEnforcer {
    fn name(&self) -> String {
        match self.judge {
            Judge::Evaluate => "oracle".into(),
            Judge::Matrix => "oracle-matrix".into(),
        }
    }

    fn sync(&mut self, desired: &mut Cluster) -> Result<()> {
        self.assigned.retain(|k, _| desired.pods.contains_key(k));
        // Requested addresses first, so a new pod never takes an address another one asked for.
        let mut used: BTreeSet<Ipv4Addr> = self.assigned.values().copied().collect();
        for (name, pod) in &desired.pods {
            let Some(requested) = pod.ips.first().copied() else {
                continue;
            };
            let IpAddr::V4(ip) = requested else {
                bail!("pod {name} asks for {requested}: the lab is IPv4 only");
            };
            match self.assigned.get(name) {
                Some(have) if *have == ip => continue,
                Some(have) => bail!("pod {name} has {have} and cannot change its address to {ip}"),
                None => {}
            }
            let node = Self::node_of(desired, name);
            if !in_subnet(ip, node) {
                let (net, len) = node_subnet(node)?;
                bail!("pod {name} asks for {ip}, outside node-{node}'s pod subnet {net}/{len}");
            }
            if !used.insert(ip) {
                bail!("pod {name} asks for {ip}, which another pod has");
            }
            self.assigned.insert(name.clone(), ip);
        }
        // Then the lowest free host address of the pod's node, from .2 (.1 is the gateway).
        let names: Vec<ObjectName> = desired.pods.keys().cloned().collect();
        for name in names {
            if !self.assigned.contains_key(&name) {
                let node = Self::node_of(desired, &name);
                let (net, _) = node_subnet(node)?;
                let o = net.octets();
                let ip = (2..=254u8)
                    .map(|h| Ipv4Addr::new(o[0], o[1], o[2], h))
                    .find(|ip| !used.contains(ip));
                let Some(ip) = ip else {
                    bail!("node-{node} has no free pod address left");
                };
                used.insert(ip);
                self.assigned.insert(name.clone(), ip);
            }
            let pod = desired.pods.get_mut(&name).expect("listed above");
            pod.ips = vec![IpAddr::V4(self.assigned[&name])];
        }
        self.snapshot = desired.clone();
        self.matrices.clear();
        Ok(())
    }

    fn probe(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        _expected: bool,
    ) -> Observed {
        match self.allowed(from, to, port, protocol) {
            Ok(true) => Observed::Allowed,
            Ok(false) => Observed::Blocked,
            // Only a runner bug (a pod the backend was never told about) gets here.
            Err(e) => Observed::Skipped(format!("the oracle cannot answer: {e}")),
        }
    }

    fn teardown(&mut self) {
        self.assigned.clear();
        self.snapshot = Cluster::default();
        self.matrices.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::case::Topology;
    use crate::conformance::world::World;

    #[test]
    fn addresses_follow_nodes_and_requests_are_honoured() {
        let mut w = World::new(&Topology::Default, 2).unwrap();
        let mut o = OracleEnforcer::new(Judge::Evaluate);
        o.sync(&mut w.cluster).unwrap();
        let ip = |w: &World, n: &str| w.ip_of(&ObjectName::parse(n)).unwrap().to_string();
        assert_eq!(ip(&w, "x/a"), "10.244.0.2");
        assert_eq!(ip(&w, "x/b"), "10.244.1.2");
        assert_eq!(ip(&w, "x/c"), "10.244.0.3");
        // A requested address that is taken is an error; a free one in the subnet is honoured.
        let mut c = w.cluster.clone();
        c.pods.remove(&ObjectName::parse("x/a"));
        let mut d = c.pods[&ObjectName::parse("x/c")].clone();
        d.name = "d".into();
        d.ips = vec!["10.244.0.2".parse().unwrap()];
        c.upsert_pod(d.clone());
        o.sync(&mut c).unwrap();
        assert_eq!(c.pods[&ObjectName::parse("x/d")].ips, d.ips);
        let mut bad = c.clone();
        let mut e = d.clone();
        e.name = "e".into();
        bad.upsert_pod(e);
        assert!(o.sync(&mut bad).is_err());
    }
}
