//! The interface between the runner and whatever enforces policy (the oracle, or the lab with
//! nftables). Backends are built in [`super::make`].

use anyhow::Result;
use serde::Serialize;

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
