//! `sluice conformance run|fuzz`: the conformance suite and the differential fuzzer.
//!
//! Exit code 0 when no case failed, 1 when one did, 2 when the cases or the backend could not
//! be used.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::BadInput;
use crate::conformance::backend::{AttachMode, Enforcer};
use crate::conformance::fuzz::{self, FuzzOptions};
use crate::conformance::make::{make_enforcer, BackendKind, BackendOptions};
use crate::conformance::report::{self, Counts};
use crate::conformance::runner::{run_case, ExpectFrom, Outcome, RunOptions};
use crate::conformance::{load_cases, CaseResult};
use crate::dataplane::DataplaneKind;

#[derive(Args)]
pub struct ConformanceArgs {
    #[command(subcommand)]
    command: ConformanceCommand,
}

#[derive(Subcommand)]
enum ConformanceCommand {
    /// Run the conformance cases (hand-written expectations) against a backend.
    Run(RunArgs),
    /// Generate seeded cases and hold the backend against the oracle (differential fuzzing).
    Fuzz(FuzzArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
    Junit,
}

#[derive(Args)]
struct BackendArgs {
    /// How pods attach to their node in the lab.
    #[arg(long, value_enum, default_value = "routed")]
    attach: AttachMode,
    /// Nodes of the lab; pods are spread round-robin over them.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=255))]
    nodes: u16,
    /// Use the policy oracle instead of the lab and nftables (no kernel, no root).
    #[arg(long)]
    oracle_only: bool,
    /// Go through a real kube-apiserver + etcd on loopback (built by scripts/build-apiserver):
    /// policies, labels and pods are written with the API, and a sluice agent per lab node
    /// enforces them.
    #[arg(long, conflicts_with = "oracle_only")]
    via_apiserver: bool,
    /// What enforces in the lab: nftables, or the eBPF fallback (tc classifier + BPF maps).
    #[arg(long, value_enum, default_value = "nftables")]
    dataplane: DataplaneKind,
    /// Probe each pod at its address, or through its ClusterIP (kube-proxy-style DNAT in the
    /// lab's nodes), as the upstream e2e suite does.
    #[arg(long, value_enum, default_value = "pod")]
    via: super::lab::Via,
}

#[derive(Args)]
struct RunArgs {
    /// A case file, or a directory of them (`*.yaml` directly inside it).
    #[arg(long, default_value = "conformance/cases", value_name = "DIR")]
    cases: PathBuf,
    /// Only cases whose id or name contains this text (any case).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    #[command(flatten)]
    backend: BackendArgs,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Args)]
struct FuzzArgs {
    /// How many cases to generate.
    #[arg(long, default_value_t = 100, value_name = "N")]
    cases: usize,
    /// Seed of the run; case n of seed S (with the same --nodes) is always the same case.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Go on after the first failing case.
    #[arg(long)]
    keep_going: bool,
    /// Where failing cases are written, as <DIR>/<seed>-<n>/.
    #[arg(long, default_value = "fuzz-failures", value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn run(args: ConformanceArgs) -> anyhow::Result<i32> {
    match args.command {
        ConformanceCommand::Run(a) => run_suite(a),
        ConformanceCommand::Fuzz(a) => run_fuzz(a),
    }
}

/// `kind` is the backend used with --oracle-only.
fn enforcer(b: &BackendArgs, oracle: BackendKind) -> anyhow::Result<Box<dyn Enforcer>> {
    let opts = BackendOptions {
        kind: if b.oracle_only {
            oracle
        } else if b.via_apiserver {
            BackendKind::Apiserver
        } else {
            BackendKind::Lab
        },
        nodes: b.nodes as usize,
        attach: b.attach,
        dataplane: b.dataplane,
        via_service: b.via == super::lab::Via::Service,
    };
    make_enforcer(&opts).map_err(|e| BadInput(format!("{e:#}")).into())
}

fn run_suite(args: RunArgs) -> anyhow::Result<i32> {
    let mut cases = load_cases(&args.cases).map_err(|e| BadInput(format!("{e:#}")))?;
    if let Some(f) = &args.filter {
        cases.retain(|c| c.matches_filter(f));
        if cases.is_empty() {
            return Err(BadInput(format!("no case id or name contains {f:?}")).into());
        }
    }
    let mut backend = enforcer(&args.backend, BackendKind::Oracle)?;
    let opts = RunOptions {
        nodes: args.backend.nodes as usize,
        expect: ExpectFrom::Case,
    };
    eprintln!(
        "sluice: running {} cases against {}",
        cases.len(),
        backend.name()
    );
    let mut results: Vec<CaseResult> = Vec::with_capacity(cases.len());
    for case in &cases {
        let r = run_case(case, backend.as_mut(), &opts);
        // Text streams as it goes: a lab run takes a while.
        if args.output == OutputFormat::Text {
            println!("{}", report::case_line(&r));
            if r.result == Outcome::Fail {
                print!("{}", report::failure_details(&r));
            }
        }
        results.push(r);
    }
    let counts = Counts::of(&results);
    match args.output {
        OutputFormat::Text => println!("{}", counts.line()),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&results, &backend.name()))?
        ),
        OutputFormat::Junit => print!("{}", report::junit(&results, &backend.name())),
    }
    Ok(if counts.failed > 0 { 1 } else { 0 })
}

fn run_fuzz(args: FuzzArgs) -> anyhow::Result<i32> {
    // Self-consistency without a kernel: the oracle's expectations against matrix::compute.
    let mut backend = enforcer(&args.backend, BackendKind::MatrixOracle)?;
    let oracle_only = args.backend.oracle_only;
    let dataplane = args.backend.dataplane;
    let via = if args.backend.via == super::lab::Via::Service {
        " --via service"
    } else {
        ""
    };
    let opts = FuzzOptions {
        cases: args.cases,
        seed: args.seed,
        nodes: args.backend.nodes as usize,
        keep_going: args.keep_going,
        out: Some(args.out.clone()),
    };
    eprintln!(
        "sluice: fuzzing {} cases of seed {} against {} (expectations: oracle)",
        args.cases,
        args.seed,
        backend.name()
    );
    let counts = fuzz::run(&opts, backend.as_mut(), &mut |f| {
        println!("{}", report::case_line(&f.result));
        print!("{}", report::failure_details(&f.result));
        if let Some(dir) = &f.dir {
            println!("    written to {}", dir.display());
            println!(
                "    reproduce: sluice conformance run --cases {} --nodes {}{}",
                dir.display(),
                opts.nodes,
                if oracle_only {
                    " --oracle-only".to_string()
                } else {
                    format!(" --dataplane {dataplane}{via}")
                }
            );
        }
        if let Some(e) = &f.explain {
            println!("    explain:   {e}");
        }
    })?;
    println!("{}", counts.line());
    Ok(if counts.failed > 0 { 1 } else { 0 })
}
