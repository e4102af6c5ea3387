//! `sluice lab ...`: the embedded default. A cluster of network namespaces on this machine,
//! wired like flannel, with sluice enforcing real policies on real traffic.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::explain::{parse_port_number, parse_protocol};
use super::matrix::columns;
use super::{BadInput, ManifestArgs, TextOrJson};
use crate::compile::Attach;
use crate::conformance::backend::Observed;
use crate::conformance::table::{self, Grid};
use crate::dataplane::DataplaneKind;
use crate::lab::enforce::EnforcedLab;
use crate::lab::{self as labmod, Lab, ProbeResult};
use crate::policy::matrix::{compute, PortProto};
use crate::policy::model::ObjectName;
use crate::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Create the lab from manifests, enforce their policies and leave it running.
    Up(UpArgs),
    /// Probe once between two lab pods (exit 0 connected, 1 blocked, 2 error).
    Probe(ProbeArgs),
    /// Remove everything a lab made (namespaces, links, rules, state), also after a crash.
    Down(DownArgs),
    /// Up, enforce, probe every pair, compare with the oracle, print the tables, down.
    Run(RunArgs),
    /// Serve a lab's pod ports until the lab is removed (started by `lab up`).
    #[command(hide = true)]
    Serve { name: String },
}

#[derive(Args, Clone)]
pub struct LabShape {
    /// Number of nodes (network namespaces joined by a VXLAN overlay) when the pods name no
    /// nodes or only `node-<i>`; pods naming other nodes (a cluster export) bring exactly
    /// those nodes, with the pod subnets their addresses show.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// routed (CNI ptp, one veth per pod) or bridged (CNI bridge on cni0, flannel's default).
    #[arg(long, value_enum, default_value = "routed")]
    pub attach: Attach,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    #[command(flatten)]
    shape: LabShape,
    /// Lab name (a-z, 0-9, at most 16): several labs can run side by side.
    #[arg(long, default_value = "main")]
    name: String,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// Source pod, namespace/name.
    #[arg(long)]
    from: String,
    /// Destination pod, namespace/name.
    #[arg(long)]
    to: String,
    /// Destination port number (1 to 65535): the lab's pods listen on every declared port.
    #[arg(long, value_parser = parse_port_number)]
    port: u16,
    /// TCP, UDP or SCTP (any case).
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    /// Probe the pod's IP or its Service ClusterIP.
    #[arg(long, value_enum, default_value = "pod")]
    via: Via,
    /// The lab to probe (the --name it was brought up with).
    #[arg(long, default_value = "main")]
    name: String,
}

#[derive(Args)]
pub struct DownArgs {
    /// The lab to remove (the --name it was brought up with).
    #[arg(long, default_value = "main")]
    name: String,
    /// Remove every lab on this machine.
    #[arg(long)]
    all: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Pod,
    Service,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    #[command(flatten)]
    shape: LabShape,
    /// Ports to probe (default: every declared containerPort).
    #[arg(long, value_delimiter = ',', value_parser = parse_port_number)]
    ports: Vec<u16>,
    /// Protocols to probe, comma separated, any case (default: TCP with --ports, else each
    /// declared port's).
    #[arg(long, value_delimiter = ',', value_parser = parse_protocol)]
    protocols: Vec<Protocol>,
    #[arg(long, value_enum, default_value = "pod")]
    via: Via,
    /// What enforces: nftables, or the eBPF fallback (tc classifier + BPF maps).
    #[arg(long, value_enum, default_value = "nftables")]
    dataplane: DataplaneKind,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
}

pub fn run(cmd: LabCommand) -> Result<i32> {
    match cmd {
        LabCommand::Up(a) => up(a),
        LabCommand::Probe(a) => probe(a),
        LabCommand::Down(a) => down(a),
        LabCommand::Run(a) => run_all(a),
        LabCommand::Serve { name } => {
            Lab::load(&name)?.serve_forever()?;
            Ok(0)
        }
    }
}

fn manifests_file(name: &str) -> PathBuf {
    labmod::state_dir(name).join("manifests.json")
}

fn up(a: UpArgs) -> Result<i32> {
    let (mut cluster, _) = a.manifests.load()?;
    if labmod::exists(&a.name) {
        return Err(BadInput(format!(
            "lab {} exists: remove it with `sluice lab down --name {}` or pick --name",
            a.name, a.name
        ))
        .into());
    }
    let plan = labmod::plan::plan_nodes(&cluster, a.shape.nodes)
        .map_err(|e| BadInput(format!("{e:#}")))?;
    let mut lab = Lab::up_planned(
        &labmod::LabSpec {
            name: a.name.clone(),
            nodes: plan.len(),
            attach: a.shape.attach,
            pods: vec![],
        },
        &plan,
    )?;
    let exe = std::env::current_exe().context("locating the sluice binary")?;
    let result = (|| -> Result<EnforcedLab> {
        lab.spawn_server(&exe, &["lab", "serve", &a.name])?;
        let mut enforced = EnforcedLab::adopt(lab.clone());
        enforced.sync(&mut cluster)?;
        Ok(enforced)
    })();
    let enforced = match result {
        Ok(e) => e,
        Err(e) => {
            let _ = lab.teardown();
            return Err(e);
        }
    };
    let paths: Vec<PathBuf> = a
        .manifests
        .manifests
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    std::fs::write(manifests_file(&a.name), serde_json::to_vec(&paths)?)?;
    let lab = enforced.detach();
    println!(
        "lab {} is up: {} nodes ({}), {} pods, policies enforced",
        a.name,
        lab.nodes().len(),
        lab.attach(),
        lab.pods().len()
    );
    for p in lab.pods() {
        println!(
            "  {}/{}  {}  {}  service {}  ports {:?}",
            p.namespace,
            p.name,
            lab.node_name(p.node),
            p.ip,
            p.service_ip,
            p.ports
        );
    }
    println!(
        "probe with: sluice lab probe --name {} --from NS/POD --to NS/POD --port N",
        a.name
    );
    println!("remove with: sluice lab down --name {}", a.name);
    Ok(0)
}

fn probe(a: ProbeArgs) -> Result<i32> {
    let lab = Lab::load(&a.name).map_err(|e| BadInput(format!("{e:#} (is the lab up?)")))?;
    let from = ObjectName::parse(&a.from);
    let to = ObjectName::parse(&a.to);
    let enforced = EnforcedLab::adopt(lab);
    let result = enforced.probe(&from, &to, a.via == Via::Service, a.port, a.protocol, true);
    // The expected verdict, from the manifests the lab was made from.
    let expected = std::fs::read(manifests_file(&a.name))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<PathBuf>>(&b).ok())
        .and_then(|paths| crate::manifests::load(&paths).ok())
        .and_then(|(mut c, _)| {
            // Pods in the lab have their lab addresses.
            for p in enforced.lab().pods() {
                if let Some(pod) = c.pods.get_mut(&ObjectName::new(&p.namespace, &p.name)) {
                    pod.ips = vec![std::net::IpAddr::V4(p.ip)];
                }
            }
            evaluate(
                &c,
                &Flow {
                    from: Endpoint::Pod(from.clone()),
                    to: Endpoint::Pod(to.clone()),
                    port: PortRef::Number(a.port),
                    protocol: a.protocol,
                },
            )
            .ok()
        });
    let _ = enforced.detach();
    let expect = match &expected {
        Some(v) => format!(
            " (policy says {})",
            if v.allowed { "allowed" } else { "denied" }
        ),
        None => String::new(),
    };
    let code = match &result {
        ProbeResult::Connected { detail, .. } => {
            println!(
                "connected: {from} -> {to} {}/{}{expect}: {detail}",
                a.port, a.protocol
            );
            0
        }
        ProbeResult::Blocked { detail, .. } => {
            println!(
                "blocked: {from} -> {to} {}/{}{expect}: {detail}",
                a.port, a.protocol
            );
            1
        }
        ProbeResult::Skipped { reason } => {
            println!("skipped: {reason}");
            2
        }
        ProbeResult::Error { detail } => {
            eprintln!("sluice: error: probe failed to run: {detail}");
            2
        }
    };
    Ok(code)
}

fn down(a: DownArgs) -> Result<i32> {
    if a.all {
        let removed = labmod::down_all()?;
        println!("removed {} labs", removed.len());
    } else {
        labmod::down_by_name(&a.name)?;
        println!("lab {} removed", a.name);
    }
    Ok(0)
}

#[derive(Serialize)]
struct CellOut {
    from: String,
    to: String,
    port: u16,
    protocol: Protocol,
    expected: bool,
    /// None when the probe was skipped.
    observed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

#[derive(Serialize)]
struct Summary {
    cells: usize,
    matched: usize,
    mismatched: usize,
    skipped: usize,
}

use crate::conformance::lab::observed_of;

fn run_all(a: RunArgs) -> Result<i32> {
    let (mut cluster, _) = a.manifests.load()?;
    let cols = columns(&cluster, &a.ports, &a.protocols);
    if cols.is_empty() {
        bail!(BadInput(
            "no ports to probe: no pod declares a containerPort; pass --ports".into()
        ));
    }
    let name = format!("run{}", std::process::id() % 100_000);
    let plan = labmod::plan::plan_nodes(&cluster, a.shape.nodes)
        .map_err(|e| BadInput(format!("{e:#}")))?;
    let mut lab = EnforcedLab::up_planned_with(&name, &plan, a.shape.attach, a.dataplane)?;
    let probed: Vec<u16> = cols.iter().map(|c| c.port).collect();
    lab.serve_also(&probed);
    let outcome = (|| -> Result<(Vec<CellOut>, String)> {
        lab.sync(&mut cluster)?;
        let pods: Vec<ObjectName> = cluster
            .pods
            .values()
            .filter(|p| !p.host_network)
            .map(|p| p.object_name())
            .collect();
        let oracle = compute(&cluster, &cols);
        let index: Vec<usize> = pods
            .iter()
            .map(|p| oracle.pods.iter().position(|q| q == p).expect("same pods"))
            .collect();
        let mut cells = Vec::new();
        let mut text = String::new();
        for (c, col) in cols.iter().enumerate() {
            let expected = Grid::new(
                pods.clone(),
                index
                    .iter()
                    .flat_map(|&i| index.iter().map(move |&j| (i, j)))
                    .map(|(i, j)| oracle.allowed(i, j, c))
                    .collect(),
            );
            let observed = probe_grid(&lab, &expected, *col, a.via == Via::Service);
            let comparison = table::compare(&expected, &observed);
            text += &format!(
                "{}/{}{}\nexpected:\n{}observed:\n{}comparison:\n{}\n",
                col.port,
                col.protocol,
                if a.via == Via::Service {
                    " via service"
                } else {
                    ""
                },
                expected.render(table::expected_char),
                observed.render(table::observed_char),
                comparison.render(table::comparison_char)
            );
            for (i, j) in expected.pairs() {
                let (observed, skipped) = match observed.get(i, j) {
                    Observed::Allowed => (Some(true), None),
                    Observed::Blocked => (Some(false), None),
                    Observed::Skipped(r) => (None, Some(r.clone())),
                };
                cells.push(CellOut {
                    from: pods[i].to_string(),
                    to: pods[j].to_string(),
                    port: col.port,
                    protocol: col.protocol,
                    expected: *expected.get(i, j),
                    observed,
                    skipped,
                });
            }
        }
        Ok((cells, text))
    })();
    let down = lab.down();
    let (cells, text) = outcome?;
    down?;
    let summary = Summary {
        cells: cells.len(),
        matched: cells
            .iter()
            .filter(|c| c.observed == Some(c.expected))
            .count(),
        mismatched: cells
            .iter()
            .filter(|c| c.observed.is_some_and(|o| o != c.expected))
            .count(),
        skipped: cells.iter().filter(|c| c.observed.is_none()).count(),
    };
    match a.output {
        TextOrJson::Text => {
            print!("{text}");
            println!(
                "{} cells: {} matched, {} mismatched, {} skipped",
                summary.cells, summary.matched, summary.mismatched, summary.skipped
            );
        }
        TextOrJson::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"cells": cells, "summary": summary}))?
        ),
    }
    Ok(if summary.mismatched == 0 { 0 } else { 1 })
}

/// Probes every off-diagonal cell of one column.
fn probe_grid(
    lab: &EnforcedLab,
    expected: &Grid<bool>,
    col: PortProto,
    via_service: bool,
) -> Grid<Observed> {
    let pods = expected.pods.clone();
    let pairs: Vec<(usize, usize)> = expected.pairs().collect();
    let cells: Vec<(ObjectName, ObjectName, bool)> = pairs
        .iter()
        .map(|&(i, j)| (pods[i].clone(), pods[j].clone(), *expected.get(i, j)))
        .collect();
    let results = lab.probe_many(&cells, via_service, col.port, col.protocol);
    let mut grid = Grid::filled(pods, Observed::Skipped("loopback".into()));
    for ((i, j), r) in pairs.into_iter().zip(&results) {
        grid.set(i, j, observed_of(r));
    }
    grid
}
