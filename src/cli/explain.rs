//! `sluice explain`: one flow, its verdict and the clauses behind it.

use clap::Args;

use super::{BadInput, ManifestArgs, TextOrJson};
use crate::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    /// Source: a pod as namespace/name (workloads: namespace/kind/name), or an IP address.
    #[arg(long)]
    from: String,
    /// Destination: a pod or an IP address.
    #[arg(long)]
    to: String,
    /// Destination port: a number, or a port name declared by the destination pod.
    #[arg(long)]
    port: String,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
    /// Propose the smallest verified change that allows the flow (`--fix`, `--fix allow`) or
    /// denies it (`--fix deny`), with every other cell it changes (see docs/review.md).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "allow", value_name = "GOAL")]
    fix: Option<super::fix::FixGoal>,
}

pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.to_ascii_uppercase().parse()
}

pub fn parse_port(s: &str) -> Result<PortRef, String> {
    match s.parse::<i64>() {
        Ok(n) => crate::policy::ports::validate_port_number(n).map(PortRef::Number),
        Err(_) => {
            crate::policy::ports::validate_port_name(s).map(|()| PortRef::Name(s.to_string()))
        }
    }
}

pub fn run(args: ExplainArgs) -> anyhow::Result<i32> {
    let port = parse_port(&args.port).map_err(|e| BadInput(format!("--port: {e}")))?;
    let (cluster, _) = args.manifests.load()?;
    let flow = Flow {
        from: Endpoint::parse(&args.from),
        to: Endpoint::parse(&args.to),
        port,
        protocol: args.protocol,
    };
    let mut verdict = evaluate(&cluster, &flow).map_err(BadInput)?;
    if let Some(goal) = args.fix {
        return super::fix::run(&cluster, &flow, verdict, goal, args.output);
    }
    match args.output {
        // Load problems already went to stderr.
        TextOrJson::Text => print!("{verdict}"),
        TextOrJson::Json => {
            let left_out = cluster
                .errors
                .iter()
                .map(|p| format!("invalid object left out: {p}"));
            verdict.warnings.extend(left_out);
            verdict.warnings.extend(cluster.warnings.iter().cloned());
            println!("{}", serde_json::to_string_pretty(&verdict)?)
        }
    }
    Ok(if verdict.allowed { 0 } else { 1 })
}
