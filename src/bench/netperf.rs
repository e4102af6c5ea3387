//! Per-packet cost: a client pod opens short connections to a server pod through the node
//! (like netperf's TCP_CRR) and streams bulk data (TCP_STREAM), with no policy (the baseline,
//! our physical limit), with sluice's ruleset, and with a kube-router-style linear ruleset of
//! the same policies (a per-pod chain with one rule per policy peer set). N policies select the
//! server and only the last one allows the client, so a linear ruleset walks all N rules for
//! every new connection. Runs are interleaved (A B C A B C ...) and reported as ratios to the
//! baseline measured in the same run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::{median, Measurement};
use crate::compile::Attach;
use crate::dataplane::Dataplane;
use crate::lab::enforce::EnforcedLab;
use crate::lab::exec_in;
use crate::nft::{Nft, NftDataplane};
use crate::policy::model::{Namespace, NamespaceScope, Peer, Pod, Policy, Rule};
use crate::policy::Cluster;

const CRR_PORT: u16 = 5001;
const STREAM_PORT: u16 = 5002;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Baseline,
    Sluice,
    /// The same ruleset enforced by the eBPF fallback (when this build has it).
    SluiceEbpf,
    Linear,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline (no policy)",
            Variant::Sluice => "sluice",
            Variant::SluiceEbpf => "sluice (eBPF fallback)",
            Variant::Linear => "linear (kube-router style)",
        }
    }
}

fn selector(app: &str) -> crate::policy::labels::Selector {
    use crate::policy::labels::{Operator, Requirement, Selector};
    Selector {
        requirements: vec![Requirement {
            key: "app".into(),
            operator: Operator::In,
            values: vec![app.into()],
        }],
    }
}

/// The client and server pods, and `n` policies selecting the server; only the last allows
/// the client. Each of the others allows a different (absent) app.
fn cluster(n: usize) -> Cluster {
    let mut c = Cluster::default();
    c.upsert_namespace(Namespace::new("bench", Default::default()));
    for (name, app) in [("client", "client"), ("server", "server")] {
        c.upsert_pod(Pod {
            namespace: "bench".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ports: vec![],
            node: Some("node-0".into()),
            host_network: false,
            ips: vec![],
        });
    }
    for i in 0..n {
        let peer = if i + 1 == n {
            "client".to_string()
        } else {
            format!("other-{i}")
        };
        c.upsert_policy(Policy {
            namespace: "bench".into(),
            name: format!("allow-{i:05}"),
            pod_selector: selector("server"),
            ingress: Some(vec![Rule {
                peers: vec![Peer::Pods {
                    namespaces: NamespaceScope::PolicyNamespace,
                    pods: selector(&peer),
                }],
                ports: vec![],
            }]),
            egress: None,
        });
    }
    c
}

/// The comparator: the same policies as kube-router renders them, one rule per policy peer
/// (with a set of that peer's addresses) in a per-pod chain, walked in order.
fn linear_script(c: &Cluster, server_iface: &str) -> String {
    let mut s = String::from("table inet linear\ndelete table inet linear\ntable inet linear {\n");
    let mut rules = String::new();
    for (i, p) in c.policies.values().enumerate() {
        let rule = &p.ingress.as_ref().expect("ingress")[0];
        let Peer::Pods { pods, .. } = &rule.peers[0] else {
            unreachable!()
        };
        let members: Vec<String> = c
            .pods
            .values()
            .filter(|q| q.namespace == p.namespace && pods.matches(&q.labels))
            .flat_map(|q| q.ips.iter().map(|ip| ip.to_string()))
            .collect();
        s.push_str(&format!("\tset peers_{i} {{ type ipv4_addr;"));
        if !members.is_empty() {
            s.push_str(&format!(" elements = {{ {} }};", members.join(", ")));
        }
        s.push_str(" }\n");
        rules.push_str(&format!("\t\tip saddr @peers_{i} accept\n"));
    }
    s.push_str(&format!(
        "\tchain pod_server {{\n{rules}\t\tdrop\n\t}}\n\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept\n\t\toifname \"{server_iface}\" jump pod_server\n\t}}\n}}\n"
    ));
    s
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Servers in the server pod: a 1-byte request/response server and a sink.
fn start_servers(netns: &str, stop: &'static AtomicBool) -> Result<()> {
    let (crr, stream) = exec_in(netns, || -> std::io::Result<(TcpListener, TcpListener)> {
        Ok((
            TcpListener::bind(("0.0.0.0", CRR_PORT))?,
            TcpListener::bind(("0.0.0.0", STREAM_PORT))?,
        ))
    })??;
    let crr = std::sync::Arc::new(crr);
    for _ in 0..2 {
        let crr = crr.clone();
        std::thread::spawn(move || {
            for conn in crr.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let mut b = [0u8; 1];
                    if c.read_exact(&mut b).is_ok() {
                        let _ = c.write_all(&b);
                    }
                }
            }
        });
    }
    std::thread::spawn(move || {
        for conn in stream.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(mut c) = conn {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        }
    });
    Ok(())
}

/// Connections per second over `secs`, from `threads` client threads in the client pod.
fn crr(netns: &str, server: Ipv4Addr, secs: f64, threads: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let addr = SocketAddrV4::new(server, CRR_PORT);
    let counts: Vec<Result<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    exec_in(netns, move || {
                        let mut n = 0u64;
                        while Instant::now() < deadline {
                            let Ok(mut c) =
                                TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1))
                            else {
                                continue;
                            };
                            let mut b = [7u8; 1];
                            if c.write_all(&b).is_ok() && c.read_exact(&mut b).is_ok() {
                                n += 1;
                            }
                            // Reset instead of TIME_WAIT, so ports never run out.
                            set_linger_zero(&c);
                        }
                        n
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok(total as f64 / secs)
}

/// Bulk throughput in Gbit/s over one connection.
fn stream(netns: &str, server: Ipv4Addr, secs: f64) -> Result<f64> {
    let addr = SocketAddrV4::new(server, STREAM_PORT);
    exec_in(netns, move || -> Result<f64> {
        let mut c = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
            .context("bulk connect")?;
        let buf = vec![0u8; 1 << 16];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            c.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        Ok(sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
    })?
}

pub fn run(quick: bool) -> Result<Vec<Measurement>> {
    let counts: &[usize] = if quick {
        &[10, 1_000]
    } else {
        &[10, 100, 1_000, 10_000]
    };
    let (secs, reps) = if quick { (0.5, 2) } else { (2.0, 3) };
    let name = format!("nb{}", std::process::id() % 100_000);
    let mut lab = EnforcedLab::up(&name, 1, Attach::Routed)?;
    let result = (|| -> Result<Vec<Measurement>> {
        let mut base = cluster(0);
        lab.sync(&mut base)?;
        let client = lab
            .lab()
            .pod("bench", "client")
            .context("client pod")?
            .clone();
        let server = lab
            .lab()
            .pod("bench", "server")
            .context("server pod")?
            .clone();
        static STOP: AtomicBool = AtomicBool::new(false);
        STOP.store(false, Ordering::SeqCst);
        start_servers(&server.netns, &STOP)?;
        let node_ns = lab.lab().node_netns(0).to_string();
        let nft = Nft::in_netns(&node_ns);
        let mut dp = NftDataplane::new(nft.clone());
        // The eBPF variant runs where the classifier is built in (clang at build time).
        let mut ebpf = crate::ebpf::EbpfDataplane::in_netns(&node_ns).ok();
        let variants: Vec<Variant> = [
            Variant::Baseline,
            Variant::Sluice,
            Variant::SluiceEbpf,
            Variant::Linear,
        ]
        .into_iter()
        .filter(|v| *v != Variant::SluiceEbpf || ebpf.is_some())
        .collect();
        let clear = |nft: &Nft| nft.apply_text("table inet linear\ndelete table inet linear\n");
        let mut out = Vec::new();
        for &n in counts {
            let mut c = cluster(n);
            for p in c.pods.values_mut() {
                let info = if p.name == "client" { &client } else { &server };
                p.ips = vec![std::net::IpAddr::V4(info.ip)];
            }
            let sluice_rs = lab.ruleset(&c, 0);
            let linear = linear_script(&c, &server.host_iface);
            let mut samples: Vec<(Variant, f64, f64)> = Vec::new();
            for _ in 0..reps {
                for &v in &variants {
                    dp.remove()?;
                    if let Some(e) = ebpf.as_mut() {
                        e.remove()?;
                    }
                    clear(&nft)?;
                    match v {
                        Variant::Baseline => {}
                        Variant::Sluice => {
                            dp.apply_full(&sluice_rs)?;
                        }
                        Variant::SluiceEbpf => {
                            ebpf.as_mut()
                                .expect("listed only when built")
                                .apply_full(&sluice_rs)?;
                        }
                        Variant::Linear => nft.apply_text(&linear)?,
                    }
                    let cps = crr(&client.netns, server.ip, secs, 2)?;
                    let gbps = stream(&client.netns, server.ip, secs)?;
                    samples.push((v, cps, gbps));
                }
            }
            dp.remove()?;
            if let Some(e) = ebpf.as_mut() {
                e.remove()?;
            }
            clear(&nft)?;
            let med = |v: Variant, f: fn(&(Variant, f64, f64)) -> f64| {
                median(samples.iter().filter(|s| s.0 == v).map(f).collect())
            };
            let base_cps = med(Variant::Baseline, |s| s.1);
            let base_gbps = med(Variant::Baseline, |s| s.2);
            for &v in &variants {
                let cps = med(v, |s| s.1);
                let gbps = med(v, |s| s.2);
                out.push(Measurement {
                    section: "netperf".into(),
                    name: format!("new connections/s, {n} policies, {}", v.name()),
                    params: json!({"policies": n, "variant": format!("{v:?}").to_lowercase(), "seconds": secs, "repetitions": reps}),
                    value: cps,
                    unit: "conn/s".into(),
                    notes: json!({"ratioToBaseline": cps / base_cps, "bulkGbps": gbps, "bulkRatioToBaseline": gbps / base_gbps}),
                });
            }
        }
        STOP.store(true, Ordering::SeqCst);
        Ok(out)
    })();
    lab.down()?;
    result
}
