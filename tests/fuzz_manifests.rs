//! Fuzzing the manifest loader and the compiler, for a bounded time: 0 panics, 0 hangs.
//!
//! Mutates the seeds in `fuzz/corpus/` byte by byte and structure by structure, and runs each
//! input through the whole offline path (see fuzz/README.md). `SLUICE_FUZZ_SECS` bounds the
//! run (default 10); the seed is `DEFAULT_SEED` unless `SLUICE_FUZZ_SEED` gives another
//! (docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::bench::synth::Rng;
use sluice::compile::{compile, Attach, CompileInput};
use sluice::nft::{json as nft_json, text as nft_text};
use sluice::policy::matrix::{compute, PortProto};
use sluice::policy::objects::ClusterBuilder;
use sluice::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};

/// The mutation seed unless SLUICE_FUZZ_SEED says another: a run is reproducible by default.
const DEFAULT_SEED: u64 = 1;
/// Inputs larger than this are cut: small inputs are fast and reach the same code.
const MAX_INPUT: usize = 48 * 1024;
/// One input taking longer than this is a hang.
const HANG: Duration = Duration::from_secs(10);

const TOKENS: &[&str] = &[
    "---\n",
    "...\n",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\n",
    "  ",
    "\t",
    "\"",
    "'",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!str ",
    "~",
    "null",
    "true",
    "y",
    "0x1F",
    "1e400",
    "-1",
    "65536",
    "99999999999999999999",
    "\u{feff}",
    "é",
    "/",
    "_",
    "kind: List\nitems:\n",
    "kind: NetworkPolicy\n",
    "apiVersion: v1\n",
    "podSelector: {}\n",
    "ipBlock: {cidr: ",
    "namespace: ",
    "name: ",
    "nodeName: node-0\n",
    "podIP: 10.244.0.9\n",
    "port: http",
    "endPort: 65535",
    "protocol: SCTP",
    "matchExpressions: [{key: a, operator: In}]",
];

const KINDS: &[&str] = &[
    "Pod",
    "Namespace",
    "NetworkPolicy",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "List",
    "PodList",
    "Service",
    "Networkpolicy",
    "",
    "ConfigMap",
    "CiliumNetworkPolicy",
];

fn seeds() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fuzz/corpus")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("seed"))
        .collect();
    assert!(seeds.len() >= 5, "fuzz/corpus has too few seeds");
    seeds
}

/// What an input did, coarsely: new outcomes make an input a parent of further mutations.
fn exercise(text: &str) -> String {
    let mut b = ClusterBuilder::new();
    b.add_text("fuzz.yaml", text);
    let (cluster, summary) = b.build();
    let mut sig = format!(
        "refused={} errors={} unknown={} warnings={}",
        summary.refused.len().min(3),
        cluster.errors.len().min(5),
        summary.unknown_fields.len().min(3),
        cluster.warnings.len().min(5)
    );
    if let Some(e) = cluster.errors.first() {
        sig.push_str(&format!(" field={}", e.field));
    }
    if !summary.refused.is_empty() {
        return sig;
    }
    let mut nodes: BTreeSet<String> = cluster
        .pods
        .values()
        .filter_map(|p| p.node.clone())
        .take(3)
        .collect();
    nodes.insert("node-0".into());
    let attachments = BTreeMap::new();
    for node in &nodes {
        for attach in [Attach::Routed, Attach::Bridged] {
            let rs = compile(&CompileInput {
                cluster: &cluster,
                node,
                attach,
                attachments: &attachments,
            });
            let text = nft_text::render(&rs);
            let batch = nft_json::full_replace(&rs, &[]);
            assert!(!text.is_empty() && batch.is_object());
        }
    }
    let pods: Vec<_> = cluster.pods.keys().take(5).cloned().collect();
    let mut ports: Vec<PortProto> = cluster
        .pods
        .values()
        .flat_map(|p| p.ports.iter())
        .map(|p| PortProto {
            port: p.port,
            protocol: p.protocol,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(3)
        .collect();
    ports.push(PortProto {
        port: 80,
        protocol: Protocol::Tcp,
    });
    for from in &pods {
        for to in &pods {
            for col in &ports {
                let _ = evaluate(
                    &cluster,
                    &Flow {
                        from: Endpoint::Pod(from.clone()),
                        to: Endpoint::Pod(to.clone()),
                        port: PortRef::Number(col.port),
                        protocol: col.protocol,
                    },
                );
            }
        }
    }
    if cluster.pods.len() <= 40 {
        let m = compute(&cluster, &ports);
        sig.push_str(&format!(" pods={}", m.pods.len().min(10)));
    }
    sig
}

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.below(v.len())]
}

/// Byte-level: flips, token insertions, deletions, duplications, splices.
fn mutate_bytes(rng: &mut Rng, input: &str, other: &str) -> String {
    let mut b = input.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = pick(rng, TOKENS).as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let chunk: Vec<u8> = b[at.min(end)..end].to_vec();
                b.splice(at..at, chunk);
            }
            4 => {
                let o = other.as_bytes();
                let from = rng.below(o.len() + 1);
                b.truncate(at);
                b.extend_from_slice(&o[from..]);
            }
            _ => {
                let digits = ["0", "-1", "65536", "4294967296", "1.5", "1e9", "007"];
                b.splice(at..at, pick(rng, &digits).bytes());
            }
        }
    }
    b.truncate(MAX_INPUT);
    String::from_utf8_lossy(&b).into_owned()
}

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next_u64() as i64),
        3 => json!(pick(
            rng,
            &[0i64, -1, 1, 53, 80, 65535, 65536, i32::MAX as i64 + 1]
        )),
        4 => json!(1.5),
        5 => json!(pick(
            rng,
            &[
                "",
                "a",
                "A_b",
                "x/y",
                "10.0.0.0/8",
                "::1",
                "http",
                "TCP",
                "é"
            ]
        )),
        6 => json!(pick(rng, KINDS)),
        7 => json!([]),
        _ => json!({}),
    }
}

/// Structure-level: picks a node of one document and changes it (type, key, kind, size).
fn mutate_value(rng: &mut Rng, v: &mut Value, depth: usize) {
    let descend = depth < 12 && rng.below(3) != 0;
    match v {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
            mutate_value(rng, map.get_mut(&key).unwrap(), depth + 1);
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.below(items.len());
            mutate_value(rng, &mut items[i], depth + 1);
        }
        Value::Object(map) => match rng.below(6) {
            0 if !map.is_empty() => {
                let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
                map.remove(&key);
            }
            1 if !map.is_empty() => {
                // A typo of an existing key: an unknown field.
                let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
                let value = map.remove(&key).unwrap();
                map.insert(key.to_lowercase() + "x", value);
            }
            2 => {
                map.insert("kind".into(), json!(pick(rng, KINDS)));
            }
            3 => {
                let copy = Value::Object(map.clone());
                map.insert("items".into(), json!([copy.clone(), copy]));
            }
            _ => *v = random_scalar(rng),
        },
        Value::Array(items) => match rng.below(3) {
            0 if !items.is_empty() => {
                let i = rng.below(items.len());
                let copy = items[i].clone();
                items.push(copy);
            }
            1 if !items.is_empty() => {
                items.remove(rng.below(items.len()));
            }
            _ => items.push(random_scalar(rng)),
        },
        _ => *v = random_scalar(rng),
    }
}

fn mutate_structure(rng: &mut Rng, input: &str) -> Option<String> {
    let mut docs = Vec::new();
    sluice::policy::parse::documents("seed", input, |d| docs.push(d)).ok()?;
    if docs.is_empty() {
        return None;
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(docs.len());
        mutate_value(rng, &mut docs[i], 0);
    }
    let out = if rng.below(2) == 0 {
        docs.iter()
            .map(|d| serde_json::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        docs.iter()
            .map(|d| serde_saphyr::to_string(d).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("---\n")
    };
    Some(out.chars().take(MAX_INPUT).collect())
}

fn save_failure(kind: &str, input: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let hash = sluice::compile::names::fnv1a(input.as_bytes());
    let path = dir.join(format!("{kind}-{hash:016x}.yaml"));
    let _ = std::fs::write(&path, input);
    path
}

/// `SLUICE_FUZZ_REPLAY=FILE` runs one saved input (a failure, or a corpus file) and stops.
fn replay() -> bool {
    let Some(path) = std::env::var_os("SLUICE_FUZZ_REPLAY") else {
        return false;
    };
    let input = std::fs::read_to_string(&path).expect("SLUICE_FUZZ_REPLAY file");
    let begin = Instant::now();
    let sig = exercise(&input);
    eprintln!("fuzz: replayed in {:?}: {sig}", begin.elapsed());
    true
}

#[test]
fn loader_and_compiler_survive_mutated_manifests() {
    if replay() {
        return;
    }
    let secs: u64 = std::env::var("SLUICE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("fuzz: {secs} s, SLUICE_FUZZ_SEED={seed}");
    // The input being run and when it started (ms since the run began; 0 = idle), watched
    // by a thread that reports a hang instead of waiting forever.
    let current = Arc::new(Mutex::new(String::new()));
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    {
        let (current, started) = (current.clone(), started.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let s = started.load(Ordering::SeqCst);
            let now = t0.elapsed().as_millis() as u64;
            if s != 0 && now.saturating_sub(s) > HANG.as_millis() as u64 {
                let input = current.lock().map(|c| c.clone()).unwrap_or_default();
                let path = save_failure("hang", &input);
                eprintln!(
                    "fuzz: HANG: an input ran over {HANG:?}, written to {}",
                    path.display()
                );
                std::process::exit(1);
            }
        });
    }
    // The real CLI runs on the main thread (8 MiB of stack); test threads get 2 MiB.
    let worker = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let mut rng = Rng::new(seed);
            let mut pool = seeds();
            let mut outcomes = BTreeSet::new();
            let (mut runs, mut panics, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
            while t0.elapsed() < Duration::from_secs(secs) {
                let parent = pool[rng.below(pool.len())].clone();
                let other = pool[rng.below(pool.len())].clone();
                let input = match rng.below(3) {
                    0 => mutate_structure(&mut rng, &parent)
                        .unwrap_or_else(|| mutate_bytes(&mut rng, &parent, &other)),
                    _ => mutate_bytes(&mut rng, &parent, &other),
                };
                *current.lock().unwrap() = input.clone();
                let begin = Instant::now();
                started.store(t0.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
                let result = catch_unwind(AssertUnwindSafe(|| exercise(&input)));
                started.store(0, Ordering::SeqCst);
                slowest = slowest.max(begin.elapsed());
                runs += 1;
                match result {
                    Ok(sig) => {
                        if outcomes.insert(sig) && pool.len() < 2000 {
                            pool.push(input);
                        }
                    }
                    Err(_) => panics.push(save_failure("panic", &input)),
                }
            }
            (runs, panics, slowest, outcomes.len())
        })
        .unwrap();
    let (runs, panics, slowest, outcomes) = worker.join().unwrap();
    eprintln!(
        "fuzz: {runs} inputs in {:.0} s ({:.0}/s), {outcomes} distinct outcomes, slowest input {slowest:?}, {} panics, 0 hangs",
        t0.elapsed().as_secs_f64(),
        runs as f64 / t0.elapsed().as_secs_f64(),
        panics.len()
    );
    assert!(runs > 0, "no input ran");
    assert!(
        panics.is_empty(),
        "inputs that panicked (replay with SLUICE_FUZZ_SEED={seed}): {panics:?}"
    );
}
