//! The real backend: the lab's pods in network namespaces, nftables enforcing on every node,
//! probes over real TCP and UDP.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;

use super::backend::{AttachMode, Enforcer, Observed, ProbeCell};
use crate::dataplane::DataplaneKind;
use crate::lab::enforce::EnforcedLab;
use crate::lab::ProbeResult;
use crate::policy::{Cluster, ObjectName, Protocol};

static LABS: AtomicUsize = AtomicUsize::new(0);

pub struct LabEnforcer {
    nodes: usize,
    attach: AttachMode,
    dataplane: DataplaneKind,
    via_service: bool,
    lab: Option<EnforcedLab>,
}

impl LabEnforcer {
    pub fn new(nodes: usize, attach: AttachMode) -> LabEnforcer {
        LabEnforcer {
            nodes,
            attach,
            dataplane: DataplaneKind::Nftables,
            via_service: false,
            lab: None,
        }
    }

    /// Probe through each pod's ClusterIP (the lab's kube-proxy-style DNAT) instead of its
    /// address, as the upstream suite does.
    pub fn via_service(mut self, yes: bool) -> LabEnforcer {
        self.via_service = yes;
        self
    }

    /// Enforce with this dataplane (`nftables` unless told).
    pub fn with_dataplane(mut self, kind: DataplaneKind) -> LabEnforcer {
        self.dataplane = kind;
        self
    }
}

/// A probe result as a truth-table cell. A probe that could not run at all (a broken lab) is
/// reported and taken as a mismatch by the caller, never as a pass.
pub fn observed_of(r: &ProbeResult) -> Observed {
    match r {
        ProbeResult::Connected { .. } => Observed::Allowed,
        ProbeResult::Blocked { .. } => Observed::Blocked,
        ProbeResult::Skipped { reason } => Observed::Skipped(reason.clone()),
        ProbeResult::Error { detail } => {
            eprintln!("sluice: probe could not run: {detail}");
            Observed::Skipped(format!("probe error: {detail}"))
        }
    }
}

/// Like [`observed_of`], but an error counts against the expectation so the case fails.
pub fn judged(r: &ProbeResult, expected: bool) -> Observed {
    match r {
        ProbeResult::Error { .. } => {
            let _ = observed_of(r);
            if expected {
                Observed::Blocked
            } else {
                Observed::Allowed
            }
        }
        other => observed_of(other),
    }
}

/// Probes the cells in parallel in `lab` and judges each against its expectation; every cell
/// is skipped with `not_up` when there is no lab. Shared by the lab and API-server backends.
pub fn probe_cells(
    lab: Option<&EnforcedLab>,
    not_up: &str,
    cells: &[ProbeCell],
    via_service: bool,
    port: u16,
    protocol: Protocol,
) -> Vec<Observed> {
    let Some(lab) = lab else {
        return cells
            .iter()
            .map(|_| Observed::Skipped(not_up.into()))
            .collect();
    };
    let list: Vec<(ObjectName, ObjectName, bool)> = cells
        .iter()
        .map(|c| (c.from.clone(), c.to.clone(), c.expected))
        .collect();
    lab.probe_many(&list, via_service, port, protocol)
        .iter()
        .zip(cells)
        .map(|(r, c)| judged(r, c.expected))
        .collect()
}

impl Enforcer for LabEnforcer {
    fn name(&self) -> String {
        format!(
            "lab ({}, {} nodes, {}{})",
            self.attach,
            self.nodes,
            self.dataplane,
            if self.via_service {
                ", via service"
            } else {
                ""
            }
        )
    }

    fn sync(&mut self, desired: &mut Cluster) -> Result<()> {
        if self.lab.is_none() {
            let n = LABS.fetch_add(1, Ordering::SeqCst);
            let name = format!("cf{}x{n}", std::process::id() % 100_000);
            self.lab = Some(EnforcedLab::up_with(
                &name,
                self.nodes,
                self.attach,
                self.dataplane,
            )?);
        }
        self.lab.as_mut().expect("just made").sync(desired)?;
        Ok(())
    }

    fn probe(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> Observed {
        match &self.lab {
            Some(lab) => judged(
                &lab.probe(from, to, self.via_service, port, protocol, expected),
                expected,
            ),
            None => Observed::Skipped("the lab is not up".into()),
        }
    }

    fn probe_all(&mut self, cells: &[ProbeCell], port: u16, protocol: Protocol) -> Vec<Observed> {
        probe_cells(
            self.lab.as_ref(),
            "the lab is not up",
            cells,
            self.via_service,
            port,
            protocol,
        )
    }

    fn teardown(&mut self) {
        if let Some(lab) = self.lab.take() {
            let name = lab.guard.name().to_string();
            if let Err(e) = lab.down() {
                // Once more by name (removes whatever is left of it): a lab left behind would
                // fail every later check for leftovers, and hide the next leak.
                match crate::lab::down_by_name(&name) {
                    Ok(()) => eprintln!("sluice: lab teardown: {e:#} (removed on retry)"),
                    Err(again) => eprintln!("sluice: lab teardown: {e:#}; retry: {again:#}"),
                }
            }
        }
    }
}

impl Drop for LabEnforcer {
    fn drop(&mut self) {
        self.teardown();
    }
}
