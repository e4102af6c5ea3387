//! Runs one case against one backend: set up the topology, then per step apply the actions,
//! sync, probe every ordered pair of pods, and compare with the expected table.
//!
//! A case stops at its first failing step, as upstream's tests do: later steps assume the
//! earlier ones held. The backend is always torn down, whatever happened.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use serde::Serialize;

use super::backend::{Enforcer, Observed, ProbeCell};
use super::case::{Case, Expectations, Probe};
use super::oracle::oracle_table;
use super::table::{compare, expected, CellResult, Grid};
use super::world::World;
use crate::policy::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// Where a probe's expected table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectFrom {
    /// The case's hand-written patterns (the conformance suite).
    Case,
    /// `policy::evaluate` on the synced cluster (differential fuzzing: oracle vs backend).
    Oracle,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Nodes of the lab; pods go round-robin over them.
    pub nodes: usize,
    pub expect: ExpectFrom,
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub id: String,
    pub name: String,
    pub result: Outcome,
    /// Why it failed or was skipped, or which probes were skipped in a pass.
    pub reason: String,
    /// The steps that ran (up to the first failing one).
    pub steps: Vec<StepResult>,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct StepResult {
    /// 1-based.
    pub step: usize,
    pub description: String,
    pub result: Outcome,
    /// An action, setup or sync error (the step's probes did not run).
    pub error: Option<String>,
    pub probes: Vec<ProbeResult>,
}

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub port: u16,
    pub protocol: Protocol,
    pub result: Outcome,
    /// Off-diagonal cells, and how many differed or were skipped.
    pub cells: usize,
    pub mismatches: usize,
    pub skipped: usize,
    pub skip_reasons: Vec<String>,
    pub expected: Grid<bool>,
    pub observed: Grid<Observed>,
    pub comparison: Grid<CellResult>,
}

impl ProbeResult {
    pub fn column(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

pub fn run_case(case: &Case, enforcer: &mut dyn Enforcer, opts: &RunOptions) -> CaseResult {
    run_case_with_state(case, enforcer, opts).0
}

/// Like [`run_case`], also returning the desired state where the case stopped (None when the
/// topology could not even be built), for reproductions.
pub fn run_case_with_state(
    case: &Case,
    enforcer: &mut dyn Enforcer,
    opts: &RunOptions,
) -> (CaseResult, Option<World>) {
    let start = Instant::now();
    let mut result = CaseResult {
        id: case.id.clone(),
        name: case.name.clone(),
        result: Outcome::Pass,
        reason: String::new(),
        steps: Vec::new(),
        seconds: 0.0,
    };
    let needed = case.nodes_needed();
    if needed > opts.nodes.max(1) {
        result.result = Outcome::Skip;
        result.reason = format!(
            "pins pods to node {}: needs {needed} nodes, the lab has {}",
            needed - 1,
            opts.nodes
        );
        return (result, None);
    }
    // A panicking backend must still be torn down (a lab leaves namespaces behind otherwise).
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        execute(case, enforcer, opts, &mut result)
    }));
    let world = run.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let step = result.steps.len() + 1;
        result.steps.push(StepResult {
            step,
            description: "(panicked)".into(),
            result: Outcome::Fail,
            error: Some(format!("panicked: {msg}")),
            probes: vec![],
        });
        None
    });
    enforcer.teardown();
    conclude(&mut result);
    result.seconds = start.elapsed().as_secs_f64();
    (result, world)
}

fn execute(
    case: &Case,
    enforcer: &mut dyn Enforcer,
    opts: &RunOptions,
    result: &mut CaseResult,
) -> Option<World> {
    let setup_failed = |result: &mut CaseResult, e: String| {
        result.steps.push(StepResult {
            step: 0,
            description: "set up the topology".into(),
            result: Outcome::Fail,
            error: Some(e),
            probes: vec![],
        });
    };
    let mut world = match World::new(&case.topology, opts.nodes) {
        Ok(w) => w,
        Err(e) => {
            setup_failed(result, format!("topology: {e}"));
            return None;
        }
    };
    if let Err(e) = enforcer.sync(&mut world.cluster) {
        setup_failed(
            result,
            format!("{} could not set up the topology: {e:#}", enforcer.name()),
        );
        return Some(world);
    }
    for (i, step) in case.steps.iter().enumerate() {
        let mut sr = StepResult {
            step: i + 1,
            description: step.description.clone(),
            result: Outcome::Pass,
            error: None,
            probes: Vec::new(),
        };
        let prepared = step
            .actions
            .iter()
            .enumerate()
            .try_for_each(|(k, a)| {
                world
                    .apply(a)
                    .map_err(|e| format!("action {} ({}): {e}", k + 1, a.summary()))
            })
            .and_then(|()| {
                enforcer
                    .sync(&mut world.cluster)
                    .map_err(|e| format!("{} could not sync: {e:#}", enforcer.name()))
            });
        if let Err(e) = prepared {
            sr.result = Outcome::Fail;
            sr.error = Some(e);
            result.steps.push(sr);
            return Some(world);
        }
        for probe in &step.probes {
            match run_probe(probe, &world, enforcer, opts.expect) {
                Ok(pr) => sr.probes.push(pr),
                Err(e) => {
                    sr.error = Some(format!("probe {}/{}: {e}", probe.port, probe.protocol));
                    break;
                }
            }
        }
        sr.result = if sr.error.is_some() || sr.probes.iter().any(|p| p.result == Outcome::Fail) {
            Outcome::Fail
        } else if !sr.probes.is_empty() && sr.probes.iter().all(|p| p.result == Outcome::Skip) {
            Outcome::Skip
        } else {
            Outcome::Pass
        };
        let failed = sr.result == Outcome::Fail;
        result.steps.push(sr);
        if failed {
            break;
        }
    }
    Some(world)
}

fn run_probe(
    probe: &Probe,
    world: &World,
    enforcer: &mut dyn Enforcer,
    from: ExpectFrom,
) -> Result<ProbeResult, String> {
    let pods = world.pod_names();
    let exp = match from {
        ExpectFrom::Case => expected(&pods, &Expectations::parse(&probe.expect)?),
        ExpectFrom::Oracle => oracle_table(&world.cluster, probe.port, probe.protocol)?,
    };
    let pairs: Vec<(usize, usize)> = exp.pairs().collect();
    let cells: Vec<ProbeCell> = pairs
        .iter()
        .map(|&(i, j)| ProbeCell {
            from: pods[i].clone(),
            to: pods[j].clone(),
            expected: *exp.get(i, j),
        })
        .collect();
    let seen = enforcer.probe_all(&cells, probe.port, probe.protocol);
    if seen.len() != cells.len() {
        return Err(format!(
            "{} answered {} of {} cells",
            enforcer.name(),
            seen.len(),
            cells.len()
        ));
    }
    let mut observed = Grid::filled(pods, Observed::Allowed);
    let mut reasons = BTreeSet::new();
    for (&(i, j), o) in pairs.iter().zip(seen) {
        if let Observed::Skipped(r) = &o {
            reasons.insert(r.clone());
        }
        observed.set(i, j, o);
    }
    let comparison = compare(&exp, &observed);
    let count = |r: CellResult| {
        pairs
            .iter()
            .filter(|(i, j)| *comparison.get(*i, *j) == r)
            .count()
    };
    let (mismatches, skipped) = (count(CellResult::Mismatch), count(CellResult::Skipped));
    let result = if mismatches > 0 {
        Outcome::Fail
    } else if skipped > 0 && skipped == pairs.len() {
        Outcome::Skip
    } else {
        Outcome::Pass
    };
    Ok(ProbeResult {
        port: probe.port,
        protocol: probe.protocol,
        result,
        cells: pairs.len(),
        mismatches,
        skipped,
        skip_reasons: reasons.into_iter().collect(),
        expected: exp,
        observed,
        comparison,
    })
}

/// The case's outcome and reason from its steps.
fn conclude(r: &mut CaseResult) {
    if let Some(step) = r.steps.iter().find(|s| s.result == Outcome::Fail) {
        r.result = Outcome::Fail;
        let at = if step.step == 0 {
            "setup".to_string()
        } else {
            format!("step {}", step.step)
        };
        r.reason = match &step.error {
            Some(e) => format!("{at}: {e}"),
            None => {
                let failed: Vec<String> = step
                    .probes
                    .iter()
                    .filter(|p| p.result == Outcome::Fail)
                    .map(|p| {
                        format!(
                            "{} {} of {} cells differ",
                            p.column(),
                            p.mismatches,
                            p.cells
                        )
                    })
                    .collect();
                format!("{at}: {}", failed.join(", "))
            }
        };
        return;
    }
    let probes: Vec<&ProbeResult> = r.steps.iter().flat_map(|s| s.probes.iter()).collect();
    let reasons: BTreeSet<&str> = probes
        .iter()
        .flat_map(|p| p.skip_reasons.iter().map(String::as_str))
        .collect();
    let reasons: Vec<&str> = reasons.into_iter().collect();
    let skipped_probes = probes.iter().filter(|p| p.result == Outcome::Skip).count();
    let partial_cells: usize = probes
        .iter()
        .filter(|p| p.result == Outcome::Pass)
        .map(|p| p.skipped)
        .sum();
    if !probes.is_empty() && skipped_probes == probes.len() {
        r.result = Outcome::Skip;
        r.reason = reasons.join("; ");
        return;
    }
    r.result = Outcome::Pass;
    let mut notes = Vec::new();
    if skipped_probes > 0 {
        notes.push(format!(
            "{skipped_probes} of {} probes skipped",
            probes.len()
        ));
    }
    if partial_cells > 0 {
        notes.push(format!("{partial_cells} cells skipped"));
    }
    if !notes.is_empty() {
        r.reason = format!("{}: {}", notes.join(", "), reasons.join("; "));
    }
}
