//! Command-line front end: argument parsing and output formatting only.

mod agent;
#[cfg(feature = "harness")]
mod conformance;
mod dataplane;
mod diff;
mod explain;
mod fix;
#[cfg(feature = "harness")]
mod lab;
mod lint;
mod matrix;
mod meta;
mod pipe;
pub mod source;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::policy::objects::LoadSummary;

/// `1 cell`, `2 cells`: a count and its noun (diff, fix).
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
use crate::policy::Cluster;

/// Exit codes, the same for every command (README "Exit codes").
const EXIT_CODES: &str =
    "Exit codes: 0 success (explain: allowed; status: in sync), 1 a negative answer \
(explain: denied; status: drift; lab probe: blocked; conformance: a case failed), 2 bad input \
(arguments, manifests that cannot be read, invalid objects or unknown fields with --strict), \
3 the work itself failed (nft or the kernel refused, a lab could not be built), 141 the output \
pipe was closed (quietly, e.g. `| head`).";

/// sluice: Kubernetes NetworkPolicy enforcement with nftables, and an explainer for it.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explain whether one flow is allowed, and which policy clause decides it.
    ///
    /// Exit code 0 when allowed, 1 when denied, 2 on bad input.
    Explain(explain::ExplainArgs),
    /// Print the truth table between all pods, for each port and protocol.
    Matrix(matrix::MatrixArgs),
    /// Every cell whose verdict differs between two snapshots (a pull-request gate).
    ///
    /// Exit code 0 when nothing changes, 1 when something does, 2 on bad input.
    Diff(diff::DiffArgs),
    /// Findings about policies that look wrong, with a one-line fix each.
    ///
    /// Exit code 1 when any finding is an error, 0 otherwise, 2 on bad input.
    Lint(lint::LintArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(meta::CompletionsArgs),
    /// Write man pages (one per command) into a directory, or print sluice(1) to stdout.
    Man(meta::ManArgs),
    /// The lab: a cluster of network namespaces on this machine, enforced by sluice.
    #[cfg(feature = "harness")]
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Print the nftables ruleset for one node.
    Compile(dataplane::CompileArgs),
    /// Install the ruleset for one node into the current network namespace (needs root).
    Apply(dataplane::ApplyArgs),
    /// Compare the installed ruleset with the wanted one (exit 1 on drift).
    Status(dataplane::ApplyArgs),
    /// Run benchmarks and print their results (text, or JSON for machines).
    #[cfg(feature = "harness")]
    Bench(BenchArgs),
    /// Conformance cases and differential fuzzing against the oracle or the lab.
    #[cfg(feature = "harness")]
    Conformance(conformance::ConformanceArgs),
    /// The node agent: watch the API and keep this node's rules current (see docs/agent.md).
    Agent(agent::AgentArgs),
}

#[cfg(feature = "harness")]
#[derive(Args)]
struct BenchArgs {
    /// Smaller scales and fewer repetitions (under a minute).
    #[arg(long)]
    quick: bool,
    /// Sections to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<crate::bench::Section>,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
    /// Internal: hold a synthetic snapshot of PODS,POLICIES and print peak memory.
    #[arg(long, hide = true, value_name = "PODS,POLICIES")]
    memory_child: Option<String>,
    /// Internal: compute the matrix of a synthetic PODS,POLICIES snapshot, print time and RSS.
    #[arg(long, hide = true, value_name = "PODS,POLICIES")]
    matrix_child: Option<String>,
}

#[cfg(feature = "harness")]
fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    if let Some(spec) = &args.matrix_child {
        let (pods, policies) = spec
            .split_once(',')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| BadInput("--matrix-child PODS,POLICIES".into()))?;
        crate::bench::review::matrix_child(pods, policies);
        return Ok(0);
    }
    if let Some(spec) = &args.memory_child {
        let (pods, policies) = spec
            .split_once(',')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| BadInput("--memory-child PODS,POLICIES".into()))?;
        crate::bench::memory::child(pods, policies);
        return Ok(0);
    }
    use clap::ValueEnum;
    let sections = if args.only.is_empty() {
        crate::bench::Section::value_variants().to_vec()
    } else {
        args.only
    };
    let results = crate::bench::run(&sections, args.quick)?;
    match args.output {
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        TextOrJson::Text => {
            for m in &results {
                println!("{:<70} {:>10.4} {}  {}", m.name, m.value, m.unit, m.notes);
            }
        }
    }
    Ok(0)
}

/// Where the cluster snapshot comes from.
#[derive(Args, Clone)]
pub struct ManifestArgs {
    /// A manifest file or directory (searched recursively for .yaml, .yml and .json in any
    /// case), or - for standard input; repeatable. YAML with several documents, JSON and
    /// `kind: List` are read. Anything that cannot be read stops sluice with exit 2.
    /// `cluster:` (or `cluster:CONTEXT`) reads the live cluster (docs/review.md).
    #[arg(long = "manifests", short = 'm', value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Treat invalid objects and unknown fields as bad input (exit 2) instead of leaving
    /// them out (invalid objects) or warning (unknown fields).
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub kube: source::KubeArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

/// Errors that mean "bad input": exit code 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

impl ManifestArgs {
    /// Loads the snapshot, prints the summary and every problem to stderr.
    pub fn load(&self) -> anyhow::Result<(Cluster, LoadSummary)> {
        let (cluster, summary) =
            source::load(&self.manifests, &self.kube).map_err(|e| BadInput(format!("{e:#}")))?;
        eprintln!("sluice: {}", summary.line());
        for p in &cluster.errors {
            eprintln!("sluice: error: {p}");
        }
        let level = if self.strict { "error" } else { "warning" };
        for p in &summary.unknown_fields {
            eprintln!("sluice: {level}: {p}");
        }
        for w in &cluster.warnings {
            eprintln!("sluice: warning: {w}");
        }
        let bad = cluster.errors.len() + summary.unknown_fields.len();
        if self.strict && bad > 0 {
            return Err(BadInput(format!(
                "--strict: {} invalid objects, {} unknown fields",
                cluster.errors.len(),
                summary.unknown_fields.len()
            ))
            .into());
        }
        Ok((cluster, summary))
    }
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn run() -> i32 {
    if meta::invoked_as_plugin() {
        return run_plugin();
    }
    run_with(Cli::parse())
}

/// `kubectl sluice ...` (krew's convention: a binary named kubectl-sluice on PATH): the same
/// commands, named `kubectl sluice` in help, reading the live cluster when no -m is given.
pub fn run_plugin() -> i32 {
    source::set_plugin_mode();
    run_with(meta::parse_plugin())
}

fn run_with(cli: Cli) -> i32 {
    pipe::exit_quietly_on_broken_pipe();
    let result = match cli.command {
        Command::Explain(a) => explain::run(a),
        Command::Matrix(a) => matrix::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Lint(a) => lint::run(a),
        Command::Completions(a) => meta::completions(a),
        Command::Man(a) => meta::man(a),
        #[cfg(feature = "harness")]
        Command::Bench(a) => bench(a),
        #[cfg(feature = "harness")]
        Command::Conformance(a) => conformance::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Compile(a) => dataplane::compile_cmd(a),
        #[cfg(feature = "harness")]
        Command::Lab(c) => lab::run(c),
        Command::Apply(a) => dataplane::apply_cmd(a),
        Command::Status(a) => dataplane::status_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) if pipe::is_broken_pipe(&e) => pipe::EXIT_BROKEN_PIPE,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            if e.downcast_ref::<BadInput>().is_some() {
                2
            } else {
                3
            }
        }
    }
}
