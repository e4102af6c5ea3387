//! The one place a conformance backend is chosen and built (the oracle, the lab, the lab
//! behind a real API server). Kept apart from the [`Enforcer`] trait, which every backend
//! implements, so the backends can use the trait without a cycle back to their builder.

use anyhow::Result;

use super::backend::{AttachMode, Enforcer};
use super::oracle::{Judge, OracleEnforcer};

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
