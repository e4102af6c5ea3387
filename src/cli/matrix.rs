//! `sluice matrix`: the truth table between all pods.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::explain::{parse_port_number, parse_protocol};
use super::{BadInput, ManifestArgs};
use crate::policy::matrix::{compute, Matrix, PortProto};
use crate::policy::{Cluster, Protocol};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Text,
    Json,
    Csv,
    Dot,
}

#[derive(Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    /// Ports to probe, comma separated. Default: every declared containerPort (with its
    /// protocol, unless --protocols is given).
    #[arg(long, value_delimiter = ',', value_parser = parse_port_number)]
    ports: Vec<u16>,
    /// Protocols, comma separated (TCP, UDP, SCTP, in any case). Default: TCP when --ports is
    /// given.
    #[arg(long, value_delimiter = ',', value_parser = parse_protocol)]
    protocols: Vec<Protocol>,
    #[arg(long, value_enum, default_value = "text")]
    output: MatrixFormat,
}

/// The columns asked for: explicit ports x protocols, or the declared container ports.
pub fn columns(cluster: &Cluster, ports: &[u16], protocols: &[Protocol]) -> Vec<PortProto> {
    let mut set = BTreeSet::new();
    if ports.is_empty() {
        for p in cluster.pods.values().flat_map(|p| p.ports.iter()) {
            if protocols.is_empty() {
                set.insert((p.port, p.protocol));
            } else {
                for &proto in protocols {
                    set.insert((p.port, proto));
                }
            }
        }
    } else {
        let protocols = if protocols.is_empty() {
            &[Protocol::Tcp][..]
        } else {
            protocols
        };
        for &port in ports {
            for &proto in protocols {
                set.insert((port, proto));
            }
        }
    }
    set.into_iter()
        .map(|(port, protocol)| PortProto { port, protocol })
        .collect()
}

#[derive(Serialize)]
struct Cell<'a> {
    from: String,
    to: String,
    port: u16,
    protocol: &'a str,
    /// What the kernel does (a pod an invalid policy may select fails closed).
    allowed: bool,
    /// The API's verdict, when the kernel's differs from it or may (fail-closed pods).
    #[serde(rename = "apiAllowed", skip_serializing_if = "Option::is_none")]
    api_allowed: Option<bool>,
    /// Invalid (Cluster)NetworkPolicies that make one end fail closed.
    #[serde(rename = "failedClosedBy", skip_serializing_if = "Vec::is_empty")]
    failed_closed_by: Vec<String>,
}

pub fn run(args: MatrixArgs) -> anyhow::Result<i32> {
    let (cluster, _) = args.manifests.load()?;
    let cols = columns(&cluster, &args.ports, &args.protocols);
    if cols.is_empty() {
        return Err(BadInput(
            "no ports to probe: no pod declares a containerPort; pass --ports".into(),
        )
        .into());
    }
    let m = compute(&cluster, &cols);
    // Denials no policy rule explains: the dataplane fails these pods closed.
    for p in cluster.pods.values() {
        if let Some(fc) = cluster.fails_closed(p) {
            eprintln!(
                "sluice: warning: {} is denied everything (X) except itself: {}",
                p.object_name(),
                fc.reason
            );
        }
    }
    let out = match args.output {
        MatrixFormat::Text => render_text(&m),
        MatrixFormat::Json => {
            let cells = cells_with_api(&m, &cluster);
            serde_json::to_string_pretty(&cells)? + "\n"
        }
        MatrixFormat::Csv => render_csv(&m),
        MatrixFormat::Dot => render_dot(&m),
    };
    print!("{out}");
    Ok(0)
}

/// The cells, with the API's verdict for cells whose kernel verdict comes from failing closed.
fn cells_with_api(m: &Matrix, cluster: &Cluster) -> Vec<Cell<'static>> {
    let mut v = cells(m);
    if m.failed_closed.iter().all(|f| f.is_empty()) {
        return v;
    }
    let index: std::collections::BTreeMap<String, usize> = m
        .pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), i))
        .collect();
    for cell in &mut v {
        let (i, j) = (index[&cell.from], index[&cell.to]);
        if i == j {
            continue;
        }
        let mut by: Vec<String> = m.failed_closed[i].clone();
        by.extend(m.failed_closed[j].iter().cloned());
        by.sort();
        by.dedup();
        if by.is_empty() {
            continue;
        }
        let flow = crate::policy::Flow {
            from: crate::policy::Endpoint::Pod(m.pods[i].clone()),
            to: crate::policy::Endpoint::Pod(m.pods[j].clone()),
            port: crate::policy::PortRef::Number(cell.port),
            protocol: m
                .columns
                .iter()
                .find(|c| c.protocol.as_str() == cell.protocol)
                .map(|c| c.protocol)
                .unwrap_or(Protocol::Tcp),
        };
        if let Ok(verdict) = crate::policy::evaluate(cluster, &flow) {
            let side =
                |s: &crate::policy::evaluate::SideVerdict| s.api_allowed.unwrap_or(s.allowed);
            cell.api_allowed = Some(side(&verdict.egress) && side(&verdict.ingress));
        }
        cell.failed_closed_by = by;
    }
    v
}

fn cells(m: &Matrix) -> Vec<Cell<'static>> {
    let mut v = Vec::with_capacity(m.pods.len() * m.pods.len() * m.columns.len());
    for (c, col) in m.columns.iter().enumerate() {
        for (i, from) in m.pods.iter().enumerate() {
            for (j, to) in m.pods.iter().enumerate() {
                v.push(Cell {
                    from: from.to_string(),
                    to: to.to_string(),
                    port: col.port,
                    protocol: col.protocol.as_str(),
                    allowed: m.allowed(i, j, c),
                    api_allowed: None,
                    failed_closed_by: vec![],
                });
            }
        }
    }
    v
}

/// Upstream e2e style: one table per port/protocol, rows are sources, `.` allowed, `X` blocked.
pub fn render_text(m: &Matrix) -> String {
    let mut s = String::new();
    for (c, col) in m.columns.iter().enumerate() {
        let _ = writeln!(s, "{}/{}", col.port, col.protocol);
        s.push('-');
        for p in &m.pods {
            let _ = write!(s, "\t{p}");
        }
        s.push('\n');
        for (i, from) in m.pods.iter().enumerate() {
            let _ = write!(s, "{from}");
            for j in 0..m.pods.len() {
                s.push('\t');
                s.push(if m.allowed(i, j, c) { '.' } else { 'X' });
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

fn render_csv(m: &Matrix) -> String {
    let mut s = String::from("from,to,port,protocol,allowed\n");
    for cell in cells(m) {
        let _ = writeln!(
            s,
            "{},{},{},{},{}",
            cell.from, cell.to, cell.port, cell.protocol, cell.allowed
        );
    }
    s
}

/// Graphviz: one edge per pod pair with the columns it is allowed on (self edges left out).
fn render_dot(m: &Matrix) -> String {
    let mut s = String::from("digraph reachability {\n  rankdir=LR;\n  node [shape=box];\n");
    for p in &m.pods {
        let _ = writeln!(s, "  \"{p}\";");
    }
    for (i, from) in m.pods.iter().enumerate() {
        for (j, to) in m.pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let allowed: Vec<String> = m
                .columns
                .iter()
                .enumerate()
                .filter(|(c, _)| m.allowed(i, j, *c))
                .map(|(_, col)| format!("{}/{}", col.port, col.protocol))
                .collect();
            if !allowed.is_empty() {
                let _ = writeln!(
                    s,
                    "  \"{from}\" -> \"{to}\" [label=\"{}\"];",
                    allowed.join(",")
                );
            }
        }
    }
    s.push_str("}\n");
    s
}
