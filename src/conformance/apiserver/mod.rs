//! The conformance backend through a real API server: a kube-apiserver + etcd on loopback
//! ([`crate::k8s::testenv`]), the lab's nodes, and one sluice agent per node enforcing what
//! the API says. The runner's desired state is written to the API (namespaces, pods,
//! NetworkPolicies, ClusterNetworkPolicies); the lab plays the kubelet (it creates a pod's network namespace for every
//! Pod bound to one of its nodes and writes `status.podIP` and `phase` back); the agents do
//! the rest, exactly as on a real node. Probes are the lab's real connections.
//!
//! [`ApiCluster`] is the reusable part (the agent tests drive it directly, e.g. to stop the
//! API server or SIGKILL an agent process); [`ApiserverEnforcer`] adapts it to the runner.
//!
//! - `cluster`: API server + lab + agents, writing the desired state with the API;
//! - `cnp`: ClusterNetworkPolicies written, updated and deleted through the API;
//! - `kubelet`: the lab as the kubelet (pod namespaces, `status.podIP`, `phase`);
//! - `converge`: when an agent has enforced exactly the desired state;
//! - `external`: a `sluice agent` process per node (the SIGKILL test).

mod cluster;
mod cnp;
mod converge;
mod external;
mod kubelet;

pub use cluster::{AgentMode, AgentSlot, ApiCluster, ApiClusterOptions, CONVERGE, REQUESTED_IP};
pub use external::{http_get, ExternalAgent};

use anyhow::Result;

use super::backend::{AttachMode, Enforcer, Observed, ProbeCell};
use super::lab::{judged, probe_cells};
use crate::policy::{Cluster, ObjectName, Protocol};

/// The runner's backend: one API server, lab and agent set for the whole run; every case
/// starts from empty (its objects are deleted at teardown).
pub struct ApiserverEnforcer {
    nodes: usize,
    attach: AttachMode,
    dataplane: crate::dataplane::DataplaneKind,
    via_service: bool,
    cluster: Option<ApiCluster>,
}

impl ApiserverEnforcer {
    pub fn new(nodes: usize, attach: AttachMode) -> ApiserverEnforcer {
        ApiserverEnforcer {
            nodes,
            attach,
            dataplane: crate::dataplane::DataplaneKind::Nftables,
            via_service: false,
            cluster: None,
        }
    }

    /// The agents enforce with this dataplane (`nftables` unless told).
    pub fn with_dataplane(mut self, kind: crate::dataplane::DataplaneKind) -> Self {
        self.dataplane = kind;
        self
    }

    /// Probe through each pod's ClusterIP instead of its address.
    pub fn via_service(mut self, yes: bool) -> Self {
        self.via_service = yes;
        self
    }

    pub fn cluster(&self) -> Option<&ApiCluster> {
        self.cluster.as_ref()
    }
}

impl Enforcer for ApiserverEnforcer {
    fn name(&self) -> String {
        format!(
            "kube-apiserver + {} sluice agents (lab, {}, {}{})",
            self.nodes,
            self.attach,
            self.dataplane,
            if self.via_service {
                ", via service"
            } else {
                ""
            }
        )
    }

    fn sync(&mut self, desired: &mut Cluster) -> Result<()> {
        if self.cluster.is_none() {
            let mut opts = ApiClusterOptions::new(self.nodes, self.attach);
            opts.dataplane = self.dataplane;
            self.cluster = Some(ApiCluster::up(opts)?);
        }
        self.cluster.as_mut().expect("just made").sync(desired)
    }

    fn probe(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> Observed {
        match &self.cluster {
            Some(c) => judged(
                &c.lab
                    .probe(from, to, self.via_service, port, protocol, expected),
                expected,
            ),
            None => Observed::Skipped("the cluster is not up".into()),
        }
    }

    fn probe_all(&mut self, cells: &[ProbeCell], port: u16, protocol: Protocol) -> Vec<Observed> {
        probe_cells(
            self.cluster.as_ref().map(|c| &c.lab),
            "the cluster is not up",
            cells,
            self.via_service,
            port,
            protocol,
        )
    }

    fn teardown(&mut self) {
        // Between cases only the case's objects go; a failure to clean up means the next case
        // cannot trust the cluster, so it is rebuilt.
        if let Some(c) = self.cluster.as_mut() {
            if let Err(e) = c.clear() {
                eprintln!("sluice: clearing the API server between cases: {e:#}; rebuilding it");
                self.cluster = None;
            }
        }
    }
}

/// A kube error as an anyhow error (the API server's own message).
fn api_err(e: kube::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
