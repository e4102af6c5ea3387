//! `sluice diff -a OLD -b NEW`: every cell whose verdict changes, grouped for review.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::explain::parse_protocol;
use super::source::{self, KubeArgs};
use super::{count, BadInput, TextOrJson};
use crate::policy::matrix::PortProto;
use crate::policy::objects::LoadSummary;
use crate::policy::{Cluster, Protocol};
use crate::review::podset::describe;
use crate::review::{diff, AbsentPods, Diff};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AbsentArg {
    /// Leave out the cells of pods only one side has (they are listed).
    Skip,
    /// A missing pod denies everything: a new pod shows every cell it is allowed on.
    Deny,
}

#[derive(Args)]
pub struct DiffArgs {
    /// The snapshot before: a manifest file or directory (repeatable), or `cluster:` /
    /// `cluster:CONTEXT` for the live cluster.
    #[arg(short = 'a', long = "old", value_name = "PATH", required = true)]
    old: Vec<PathBuf>,
    /// The snapshot after, in the same forms as -a.
    #[arg(short = 'b', long = "new", value_name = "PATH", required = true)]
    new: Vec<PathBuf>,
    /// Ports to compare, comma separated. Default: every containerPort either side declares.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Protocols, comma separated (TCP, UDP, SCTP). Default: TCP when --ports is given.
    #[arg(long, value_delimiter = ',', value_parser = parse_protocol)]
    protocols: Vec<Protocol>,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
    /// Pods present on one side only (matched by namespace/name).
    #[arg(long, value_enum, default_value = "skip")]
    absent_pods: AbsentArg,
    /// Treat invalid objects and unknown fields as bad input (exit 2).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

fn load(side: &str, sources: &[PathBuf], a: &DiffArgs) -> anyhow::Result<(Cluster, LoadSummary)> {
    let (cluster, summary) =
        source::load(sources, &a.kube).map_err(|e| BadInput(format!("{side}: {e:#}")))?;
    eprintln!("sluice: {side}: {}", summary.line());
    for p in &cluster.errors {
        eprintln!("sluice: {side}: error: {p}");
    }
    let level = if a.strict { "error" } else { "warning" };
    for p in &summary.unknown_fields {
        eprintln!("sluice: {side}: {level}: {p}");
    }
    for w in &cluster.warnings {
        eprintln!("sluice: {side}: warning: {w}");
    }
    let bad = cluster.errors.len() + summary.unknown_fields.len();
    if a.strict && bad > 0 {
        return Err(BadInput(format!(
            "{side}: --strict: {} invalid objects, {} unknown fields",
            cluster.errors.len(),
            summary.unknown_fields.len()
        ))
        .into());
    }
    Ok((cluster, summary))
}

/// The columns of both sides: explicit ports x protocols, or every port either declares.
pub fn union_columns(
    old: &Cluster,
    new: &Cluster,
    ports: &[u16],
    protocols: &[Protocol],
) -> Vec<PortProto> {
    let mut set: BTreeSet<PortProto> = super::matrix::columns(old, ports, protocols)
        .into_iter()
        .collect();
    set.extend(super::matrix::columns(new, ports, protocols));
    set.into_iter().collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonCell<'a> {
    from: String,
    to: String,
    port: u16,
    protocol: &'static str,
    before: bool,
    after: bool,
    /// Index of the text line (group) this cell belongs to.
    group: usize,
    before_reason: &'a str,
    after_reason: &'a str,
}

pub fn run(a: DiffArgs) -> anyhow::Result<i32> {
    if a.ports.contains(&0) {
        return Err(BadInput("--ports: port 0 is out of range: use 1 to 65535".into()).into());
    }
    let (old, _) = load("-a", &a.old, &a)?;
    let (new, _) = load("-b", &a.new, &a)?;
    let cols = union_columns(&old, &new, &a.ports, &a.protocols);
    if cols.is_empty() {
        return Err(BadInput(
            "no ports to compare: no pod on either side declares a containerPort; pass --ports"
                .into(),
        )
        .into());
    }
    let absent = match a.absent_pods {
        AbsentArg::Skip => AbsentPods::Skip,
        AbsentArg::Deny => AbsentPods::Deny,
    };
    let d = diff(&old, &new, &cols, absent);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match a.output {
        TextOrJson::Json => write_json(&mut out, &d)?,
        TextOrJson::Text => out.write_all(render_text(&d, absent).as_bytes())?,
    }
    out.flush()?;
    Ok(if d.is_empty() { 0 } else { 1 })
}

/// One cell per line, streamed: a large change can have millions of cells.
fn write_json(out: &mut impl std::io::Write, d: &Diff) -> anyhow::Result<()> {
    out.write_all(b"[")?;
    let mut first = true;
    for cell in d.cells() {
        let line = &d.lines[cell.line];
        let j = JsonCell {
            from: cell.from.to_string(),
            to: cell.to.to_string(),
            port: cell.column.port,
            protocol: cell.column.protocol.as_str(),
            before: cell.before,
            after: cell.after,
            group: cell.line,
            before_reason: &line.before.reason,
            after_reason: &line.after.reason,
        };
        out.write_all(if first { b"\n  " } else { b",\n  " })?;
        serde_json::to_writer(&mut *out, &j)?;
        first = false;
    }
    out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
    Ok(())
}

fn columns_text(cols: &[PortProto]) -> String {
    cols.iter()
        .map(|c| format!("{}/{}", c.port, c.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `+` a line of newly allowed cells, `-` newly denied; each with the clauses before and after.
pub fn render_text(d: &Diff, absent: AbsentPods) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if d.is_empty() {
        let _ = writeln!(
            s,
            "no cell changes ({} pods compared on {})",
            d.pods.len(),
            columns_text(&d.columns)
        );
    } else {
        let _ = writeln!(
            s,
            "{} change, in {} ({} pods compared on {})",
            count(d.cell_count(), "cell"),
            count(d.lines.len(), "group"),
            d.pods.len(),
            columns_text(&d.columns)
        );
    }
    for (i, l) in d.lines.iter().enumerate() {
        let _ = writeln!(
            s,
            "{} [{i}] {} -> {}  on {}  ({})",
            if l.opens() { '+' } else { '-' },
            describe(&l.from, &d.pods),
            describe(&l.to, &d.pods),
            columns_text(&l.columns),
            count(l.cell_count(), "cell")
        );
        let _ = writeln!(s, "    before: {}", l.before.reason);
        let _ = writeln!(s, "    after:  {}", l.after.reason);
    }
    if absent == AbsentPods::Skip {
        for (side, pods) in [("-a", &d.only_old), ("-b", &d.only_new)] {
            if !pods.is_empty() {
                let names: Vec<String> = pods.iter().map(|p| p.to_string()).collect();
                let _ = writeln!(
                    s,
                    "pods only in {side}, not compared (--absent-pods deny compares them): {}",
                    names.join(", ")
                );
            }
        }
    }
    s
}
