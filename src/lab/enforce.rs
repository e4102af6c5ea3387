//! The lab with sluice enforcing in it: a cluster snapshot becomes pods in the lab, and every
//! node's ruleset (compiled for that node, with the lab's real interfaces) is kept applied
//! with deltas, in-process, the way one agent per node would.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::plan::NodePlan;
use super::{Attach, Lab, LabGuard, LabSpec, PodInfo, PodSpec, ProbeResult, Proto};
use crate::compile::{compile, Attachment, CompileInput, NodeRuleset};
use crate::dataplane::{self, Dataplane, DataplaneKind};
use crate::policy::model::ObjectName;
use crate::policy::{Cluster, Pod, Protocol};

/// The node name sluice uses for lab node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("node-")?.parse().ok()
}

/// A lab whose nodes are enforced by sluice.
pub struct EnforcedLab {
    /// One dataplane per node, made at the first sync. Declared before `guard` so they are
    /// removed (programs detached) while the nodes' namespaces still exist.
    dataplanes: std::sync::Mutex<Vec<Option<Box<dyn Dataplane + Send>>>>,
    kind: DataplaneKind,
    pub guard: LabGuard,
    installed: Vec<Option<NodeRuleset>>,
    nodes: usize,
    next_node: usize,
    /// Ports every pod serves besides its declared container ports (what probes will ask).
    extra_ports: Vec<u16>,
}

/// What one sync changed, for reports and tests.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub pods_added: usize,
    pub pods_removed: usize,
    pub full_applies: usize,
    pub delta_applies: usize,
}

impl EnforcedLab {
    /// Creates an empty lab of `nodes` nodes and starts its servers in this process.
    pub fn up(name: &str, nodes: usize, attach: Attach) -> Result<EnforcedLab> {
        if nodes == 0 {
            bail!("a lab needs at least one node");
        }
        let plan: Vec<NodePlan> = (0..nodes).map(super::plan::default_node).collect();
        EnforcedLab::up_planned(name, &plan, attach)
    }

    /// An empty lab with these nodes (names and pod subnets, see [`super::plan::plan_nodes`]).
    pub fn up_planned(name: &str, plan: &[NodePlan], attach: Attach) -> Result<EnforcedLab> {
        let nodes = plan.len();
        let spec = LabSpec {
            name: name.to_string(),
            nodes,
            attach,
            pods: vec![],
        };
        let mut guard = LabGuard::up_planned(&spec, plan)?;
        guard.serve()?;
        Ok(EnforcedLab {
            dataplanes: std::sync::Mutex::new((0..nodes).map(|_| None).collect()),
            kind: DataplaneKind::Nftables,
            guard,
            installed: vec![None; nodes],
            nodes,
            next_node: 0,
            extra_ports: vec![],
        })
    }

    /// Like [`EnforcedLab::up`], enforced by the given dataplane.
    pub fn up_with(
        name: &str,
        nodes: usize,
        attach: Attach,
        kind: DataplaneKind,
    ) -> Result<EnforcedLab> {
        // Check the choice before building a lab for nothing.
        let (kind, _) = dataplane::choose(kind)?;
        EnforcedLab::up(name, nodes, attach)?.with_dataplane(kind)
    }

    /// Like [`EnforcedLab::up_planned`], enforced by the given dataplane.
    pub fn up_planned_with(
        name: &str,
        plan: &[NodePlan],
        attach: Attach,
        kind: DataplaneKind,
    ) -> Result<EnforcedLab> {
        let (kind, _) = dataplane::choose(kind)?;
        EnforcedLab::up_planned(name, plan, attach)?.with_dataplane(kind)
    }

    /// The index of the lab node called `name` in `spec.nodeName`.
    fn node_index(&self, name: &str) -> Option<usize> {
        (0..self.nodes).find(|&i| self.lab().node_name(i) == name)
    }

    /// Enforce with `kind` (`auto` resolved) from the next sync on; before the first sync.
    pub fn with_dataplane(mut self, kind: DataplaneKind) -> Result<EnforcedLab> {
        let (kind, _) = dataplane::choose(kind)?;
        let made = self.dataplanes.get_mut().unwrap_or_else(|e| e.into_inner());
        if made.iter().any(Option::is_some) {
            bail!("the dataplane is chosen before the first sync");
        }
        self.kind = kind;
        Ok(self)
    }

    /// The dataplane enforcing this lab (`nftables` or `ebpf`).
    pub fn dataplane_kind(&self) -> DataplaneKind {
        self.kind
    }

    /// Runs `f` on node `node`'s dataplane (made on first use).
    pub fn with_node_dataplane<R>(
        &self,
        node: usize,
        f: impl FnOnce(&mut (dyn Dataplane + Send)) -> Result<R>,
    ) -> Result<R> {
        let mut dps = self.dataplanes.lock().unwrap_or_else(|e| e.into_inner());
        let slot = dps
            .get_mut(node)
            .with_context(|| format!("no node {node} in the lab"))?;
        if slot.is_none() {
            let opts = dataplane::DataplaneOptions {
                service_cidrs: vec![super::service::service_cidr().into()],
                // The lab's rules go with the lab.
                persist: false,
            };
            *slot = Some(dataplane::make(
                self.kind,
                Some(self.lab().node_netns(node)),
                &opts,
            )?);
        }
        f(slot.as_deref_mut().expect("just made"))
    }

    pub fn lab(&self) -> &Lab {
        &self.guard
    }

    /// Makes the lab match `desired`: removes pods that are gone (or whose node or requested
    /// address changed), adds new ones, writes each pod's node and address back into
    /// `desired`, then brings every node's ruleset up to date.
    pub fn sync(&mut self, desired: &mut Cluster) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        // Remove first: a new pod may want the address of one that is going away.
        let existing: Vec<(String, String, usize, Ipv4Addr)> = self
            .lab()
            .pods()
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone(), p.node, p.ip))
            .collect();
        for (ns, name, node, ip) in &existing {
            let keep = desired
                .pods
                .get(&ObjectName::new(ns, name))
                .is_some_and(|p| self.fits(p, *node, *ip));
            if !keep {
                self.guard.remove_pod(ns, name)?;
                report.pods_removed += 1;
            }
        }
        // Pods asking for an address first: host-local then never hands that address to a
        // pod that asks for none.
        let mut names: Vec<ObjectName> = desired.pods.keys().cloned().collect();
        names.sort_by_key(|n| desired.pods[n].ips.first().is_none_or(|ip| !ip.is_ipv4()));
        for name in names {
            let pod = desired.pods.get_mut(&name).expect("listed");
            if pod.host_network {
                continue; // host-network pods have no namespace of their own in the lab
            }
            let info = match self.lab().pod(&name.namespace, &name.name) {
                Some(info) => info.clone(),
                None => {
                    let requested = match pod.ips.first() {
                        Some(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    };
                    let node = match pod.node.as_deref() {
                        Some(n) => match self.node_index(n) {
                            Some(i) => i,
                            None => match node_index(n) {
                                Some(i) => bail!(
                                    "{name} is pinned to node-{i}, but the lab has {} nodes",
                                    self.nodes
                                ),
                                None => bail!(
                                    "{name}: spec.nodeName {n} is not a node of this lab (its nodes come from the manifests the lab was made for)"
                                ),
                            },
                        },
                        // An address but no node: the node whose subnet holds the address.
                        None if requested.is_some_and(|ip| {
                            (0..self.nodes).any(|i| self.lab().node_cidr(i).contains(&ip))
                        }) =>
                        {
                            let ip = requested.expect("checked");
                            (0..self.nodes)
                                .find(|&i| self.lab().node_cidr(i).contains(&ip))
                                .expect("checked")
                        }
                        None => {
                            let i = self.next_node % self.nodes;
                            self.next_node += 1;
                            i
                        }
                    };
                    let mut ports: Vec<u16> = pod.ports.iter().map(|p| p.port).collect();
                    ports.extend(&self.extra_ports);
                    ports.sort();
                    ports.dedup();
                    let mut spec = PodSpec::new(&name.namespace, &name.name, node, &ports);
                    if let Some(ip) = requested {
                        spec = spec.with_ip(ip);
                    }
                    let info = self
                        .guard
                        .add_pod(&spec)
                        .with_context(|| format!("adding pod {name} to the lab"))?;
                    report.pods_added += 1;
                    info
                }
            };
            pod.node = Some(self.lab().node_name(info.node));
            pod.ips = vec![IpAddr::V4(info.ip)];
        }
        // Servers answer for new pods before anyone probes them.
        for info in self.lab().pods().to_vec() {
            self.lab()
                .wait_served(&info, Duration::from_secs(5))
                .with_context(|| format!("serving {}/{}", info.namespace, info.name))?;
        }
        for node in 0..self.nodes {
            let rs = self.ruleset(desired, node);
            let old = self.installed[node].as_ref();
            let report_one = self
                .with_node_dataplane(node, |dp| match old {
                    Some(old) => dp.apply_delta(old, &rs),
                    None => dp.apply_full(&rs),
                })
                .with_context(|| {
                    format!(
                        "enforcing on {} with {}",
                        self.lab().node_name(node),
                        self.kind
                    )
                })?;
            if report_one.full {
                report.full_applies += 1;
            } else {
                report.delta_applies += 1;
            }
            self.installed[node] = Some(rs);
        }
        Ok(report)
    }

    /// Whether an existing lab pod still fits the desired pod (same node and address asked).
    fn fits(&self, pod: &Pod, node: usize, ip: Ipv4Addr) -> bool {
        let node_ok = pod
            .node
            .as_deref()
            .is_none_or(|n| self.node_index(n) == Some(node));
        let ip_ok = match pod.ips.first() {
            Some(IpAddr::V4(want)) => *want == ip,
            _ => true,
        };
        node_ok && ip_ok && !pod.host_network
    }

    /// The ruleset of one lab node, with the lab's real interfaces and MACs.
    pub fn ruleset(&self, cluster: &Cluster, node: usize) -> NodeRuleset {
        let attachments: BTreeMap<ObjectName, Attachment> = self
            .lab()
            .pods()
            .iter()
            .map(|p| {
                (
                    ObjectName::new(&p.namespace, &p.name),
                    Attachment {
                        iface: Some(p.host_iface.clone()),
                        mac: Some(p.mac.clone()),
                    },
                )
            })
            .collect();
        compile(&CompileInput {
            cluster,
            node: &self.lab().node_name(node),
            attach: self.lab().attach(),
            attachments: &attachments,
        })
    }

    pub fn installed(&self, node: usize) -> Option<&NodeRuleset> {
        self.installed[node].as_ref()
    }

    pub fn pod(&self, name: &ObjectName) -> Result<&PodInfo> {
        self.lab()
            .pod(&name.namespace, &name.name)
            .with_context(|| format!("no pod {name} in the lab"))
    }

    /// A real probe; retried only while the result differs from `expected` (like upstream).
    pub fn probe(
        &self,
        from: &ObjectName,
        to: &ObjectName,
        via_service: bool,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> ProbeResult {
        let proto = match protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Sctp => {
                return ProbeResult::Skipped {
                    reason: "SCTP: this kernel has no SCTP sockets (IP_SCTP off)".into(),
                }
            }
        };
        let (src, dst) = match (self.pod(from), self.pod(to)) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                return ProbeResult::Error {
                    detail: format!("{e:#}"),
                }
            }
        };
        let target = if via_service { dst.service_ip } else { dst.ip };
        self.lab()
            .probe_with_retry(src, target, port, proto, PROBE_TIMEOUT, expected, 3)
    }

    /// Adopts a running lab whose servers run elsewhere (a detached `sluice lab serve`).
    pub fn adopt(lab: Lab) -> EnforcedLab {
        let nodes = lab.nodes().len();
        EnforcedLab {
            dataplanes: std::sync::Mutex::new((0..nodes).map(|_| None).collect()),
            kind: DataplaneKind::Nftables,
            guard: LabGuard::new(lab),
            installed: vec![None; nodes],
            nodes,
            next_node: 0,
            extra_ports: vec![],
        }
    }

    /// Every pod added from now on also serves these ports (on TCP and UDP), as the upstream
    /// suite's pods serve every probed port: a probe must be able to connect when allowed.
    pub fn serve_also(&mut self, ports: &[u16]) {
        self.extra_ports = ports.to_vec();
    }

    /// Leaves the lab (and its rules) running when this value goes away.
    pub fn detach(self) -> Lab {
        self.guard.into_inner()
    }

    /// Many probes at once (a blocked probe waits for its timeout, so probing in parallel is
    /// what keeps a full matrix quick). `cells` are (from, to, expected); results in order.
    pub fn probe_many(
        &self,
        cells: &[(ObjectName, ObjectName, bool)],
        via_service: bool,
        port: u16,
        protocol: Protocol,
    ) -> Vec<ProbeResult> {
        let results: Vec<std::sync::Mutex<Option<ProbeResult>>> =
            cells.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_PROBES.min(cells.len()) {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((from, to, expected)) = cells.get(k) else {
                        break;
                    };
                    let r = self.probe(from, to, via_service, port, protocol, *expected);
                    *results[k].lock().unwrap() = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| m.into_inner().unwrap().expect("every cell probed"))
            .collect()
    }

    /// Removes every rule (and every attached program) and the lab itself.
    pub fn down(self) -> Result<()> {
        let removed = self.remove_dataplanes();
        let down = self.guard.down();
        removed.and(down)
    }

    /// Removes what every node's dataplane installed (idempotent).
    fn remove_dataplanes(&self) -> Result<()> {
        let mut dps = self.dataplanes.lock().unwrap_or_else(|e| e.into_inner());
        let mut errors = Vec::new();
        for (i, dp) in dps.iter_mut().enumerate() {
            if let Some(mut dp) = dp.take() {
                if let Err(e) = dp.remove() {
                    errors.push(format!("{}: {e:#}", node_name(i)));
                }
            }
        }
        if !errors.is_empty() {
            bail!("removing the dataplanes: {}", errors.join("; "));
        }
        Ok(())
    }
}

/// Probes in flight at once.
const PARALLEL_PROBES: usize = 96;

/// Short, like the upstream suite's: a dropped TCP SYN or unanswered UDP datagram costs this.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
