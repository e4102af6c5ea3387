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
    /// TCP, UDP or SCTP (any case on the command line; manifests need upper case).
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: Protocol,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
    /// Propose the smallest verified change that allows the flow (`--fix`, `--fix allow`) or
    /// denies it (`--fix deny`), with every other cell it changes (see docs/review.md).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "allow", value_name = "GOAL")]
    fix: Option<super::fix::FixGoal>,
}

/// Protocols on the command line are accepted in any case (`tcp`, `Tcp`, `TCP`): a flag is
/// not an object the API server validates, and there is no other protocol `tcp` could mean.
/// Manifests keep the API's rule (upper case only).
pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_uppercase().as_str() {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        _ => Err(format!("unsupported protocol {s:?}: use TCP, UDP or SCTP")),
    }
}

/// A port number (1 to 65535) or a port name. Anything made of digits is a number, however
/// large, so an out-of-range number is reported as one.
pub fn parse_port(s: &str) -> Result<PortRef, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<i64>() {
            Ok(n) => crate::policy::ports::validate_port_number(n).map(PortRef::Number),
            Err(_) => Err(format!("port {s} is out of range: use 1 to 65535")),
        };
    }
    if let Ok(n) = s.parse::<i64>() {
        return crate::policy::ports::validate_port_number(n).map(PortRef::Number);
    }
    crate::policy::ports::validate_port_name(s).map(|()| PortRef::Name(s.to_string()))
}

/// A numeric port for flags that take only numbers (`--ports`, `lab probe --port`).
pub fn parse_port_number(s: &str) -> Result<u16, String> {
    match parse_port(s)? {
        PortRef::Number(n) => Ok(n),
        PortRef::Name(_) => Err(format!("{s:?} is not a port number: use 1 to 65535")),
    }
}

/// `--from`/`--to`: a pod, or an IP address. Text that looks like an address but is not one
/// (`300.1.1.1`) and names no pod is reported as what it most likely is: a bad address.
pub fn parse_endpoint(
    flag: &str,
    s: &str,
    cluster: &crate::policy::Cluster,
) -> Result<Endpoint, BadInput> {
    let endpoint = Endpoint::parse(s);
    if let Endpoint::Pod(name) = &endpoint {
        let v6_like = s.contains(':')
            && s.chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        let v4_like = s.contains('.') && s.chars().all(|c| c.is_ascii_digit() || c == '.');
        if (v4_like || v6_like) && cluster.pod(name).is_none() {
            return Err(BadInput(format!(
                "{flag} {s:?} is not a valid IP address, nor a pod (pods are namespace/name)"
            )));
        }
    }
    Ok(endpoint)
}

pub fn run(args: ExplainArgs) -> anyhow::Result<i32> {
    let port = parse_port(&args.port).map_err(|e| BadInput(format!("--port: {e}")))?;
    let (cluster, _) = args.manifests.load()?;
    let flow = Flow {
        from: parse_endpoint("--from", &args.from, &cluster)?,
        to: parse_endpoint("--to", &args.to, &cluster)?,
        port,
        protocol: args.protocol,
    };
    let mut verdict = evaluate(&cluster, &flow).map_err(BadInput)?;
    verdict.warnings.extend(addressless(&cluster, &flow));
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

/// The dataplane matches peers by address: a pod the manifests give no IP can be named in
/// explain, but no rule can match it in the kernel. Say so instead of a silent difference.
fn addressless(cluster: &crate::policy::Cluster, flow: &Flow) -> Vec<String> {
    [&flow.from, &flow.to]
        .into_iter()
        .filter_map(|e| match e {
            Endpoint::Pod(name) => cluster.pod(name),
            Endpoint::Ip(_) => None,
        })
        .filter(|p| p.ips.is_empty() && !p.host_network)
        .map(|p| {
            format!(
                "pod {} has no IP in the manifests (status.podIP): the dataplane matches peers by address, so where a rule must match {} as a peer the kernel drops what this verdict allows",
                p.object_name(),
                p.object_name()
            )
        })
        .collect()
}
