//! The interface between the runner and whatever enforces policy (the oracle, or the lab with
//! nftables), and the one place a backend is chosen.

use anyhow::Result;
use serde::Serialize;

use super::oracle::{Judge, OracleEnforcer};
use crate::policy::{Cluster, ObjectName, Protocol};

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "result", content = "reason")]
pub enum Observed {
    Allowed,
    Blocked,
    /// Not probed, and why (e.g. SCTP on a kernel without SCTP sockets).
    Skipped(String),
}

/// One cell of a probe: a source, a destination and what the case expects.
#[derive(Debug, Clone)]
pub struct ProbeCell {
    pub from: ObjectName,
    pub to: ObjectName,
    pub expected: bool,
}

pub trait Enforcer {
    fn name(&self) -> String;
    /// Make reality match `desired`: create/remove pods (a pod whose `ips` is non-empty asks for
    /// that IP), fill in every pod's `ips` in `desired`, and enforce all its policies. Called
    /// once for the topology and then after every step's actions.
    fn sync(&mut self, desired: &mut Cluster) -> Result<()>;
    /// One probe; `expected` lets a real backend retry only while the result differs (like
    /// upstream).
    fn probe(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> Observed;
    /// Every cell of one probe, in order (loopback cells are never asked for). The default asks
    /// [`Enforcer::probe`] cell by cell; a real backend can override it to probe in parallel.
    fn probe_all(&mut self, cells: &[ProbeCell], port: u16, protocol: Protocol) -> Vec<Observed> {
        cells
            .iter()
            .map(|c| self.probe(&c.from, &c.to, port, protocol, c.expected))
            .collect()
    }
    /// Remove everything (also called on failure paths; must be idempotent). The runner uses
    /// one enforcer for many cases: `sync` after `teardown` starts afresh.
    fn teardown(&mut self);
}

/// How pods attach to their node in the lab (the compiler's choice, shared).
pub use crate::compile::Attach as AttachMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `policy::evaluate` on the desired cluster.
    Oracle,
    /// `policy::matrix::compute` on the desired cluster: an independent implementation of the
    /// same semantics, for self-consistency fuzzing without a kernel.
    MatrixOracle,
    /// Pods in network namespaces on this machine, policies in nftables.
    Lab,
    /// The lab's nodes run sluice agents fed by a real kube-apiserver + etcd on loopback;
    /// the desired state is written through the API (`conformance run --via-apiserver`).
    Apiserver,
}

#[derive(Debug, Clone)]
pub struct BackendOptions {
    pub kind: BackendKind,
    pub nodes: usize,
    pub attach: AttachMode,
    /// What enforces in the lab backend (nftables or eBPF).
    pub dataplane: crate::dataplane::DataplaneKind,
    /// Probe through each pod's ClusterIP instead of its address.
    pub via_service: bool,
}

/// The one place a backend is built. The lab backend plugs in here.
pub fn make_enforcer(opts: &BackendOptions) -> Result<Box<dyn Enforcer>> {
    match opts.kind {
        BackendKind::Oracle => Ok(Box::new(OracleEnforcer::new(Judge::Evaluate))),
        BackendKind::MatrixOracle => Ok(Box::new(OracleEnforcer::new(Judge::Matrix))),
        BackendKind::Apiserver => {
            // Stop once, before any case, when the API server was never built.
            crate::k8s::testenv::Binaries::find()?;
            crate::dataplane::choose(opts.dataplane)?;
            Ok(Box::new(
                super::apiserver::ApiserverEnforcer::new(opts.nodes, opts.attach)
                    .with_dataplane(opts.dataplane)
                    .via_service(opts.via_service),
            ))
        }
        BackendKind::Lab => {
            // Fail before any case runs when the dataplane cannot work here.
            crate::dataplane::choose(opts.dataplane)?;
            Ok(Box::new(
                super::lab::LabEnforcer::new(opts.nodes, opts.attach)
                    .with_dataplane(opts.dataplane)
                    .via_service(opts.via_service),
            ))
        }
    }
}
