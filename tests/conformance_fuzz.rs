//! The differential fuzzer: oracle-only runs must agree with themselves, and a backend that
//! disagrees with the oracle must produce a reproduction that reproduces.

use sluice::conformance::backend::{AttachMode, Enforcer, Observed};
use sluice::conformance::fuzz::{self, FuzzOptions};
use sluice::conformance::load_cases;
use sluice::conformance::make::{make_enforcer, BackendKind, BackendOptions};
use sluice::conformance::runner::{run_case, ExpectFrom, Outcome, RunOptions};
use sluice::policy::{evaluate, Cluster, Endpoint, Flow, ObjectName, PortRef, Protocol};

fn backend(kind: BackendKind) -> Box<dyn Enforcer> {
    make_enforcer(&BackendOptions {
        kind,
        nodes: 2,
        attach: AttachMode::Routed,
        dataplane: sluice::dataplane::DataplaneKind::Nftables,
        via_service: false,
    })
    .unwrap()
}

#[test]
fn fifty_generated_cases_agree_between_oracle_and_matrix() {
    // A fixed seed unless SLUICE_FUZZ_SEED gives another (docs/testing.md).
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20240607);
    let opts = FuzzOptions {
        cases: 50,
        seed,
        nodes: 2,
        keep_going: true,
        out: None,
    };
    let mut failures = Vec::new();
    let counts = fuzz::run(
        &opts,
        backend(BackendKind::MatrixOracle).as_mut(),
        &mut |f| {
            failures.push(format!(
                "{}\n{}",
                sluice::conformance::report::case_line(&f.result),
                sluice::conformance::report::failure_details(&f.result)
            ))
        },
    )
    .unwrap();
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
    assert_eq!(
        (counts.passed, counts.failed, counts.skipped),
        (50, 0, 0),
        "seed {seed}"
    );
}

/// A dataplane with one bug: UDP from x/b to x/a is always let through.
struct LeakyUdp(Box<dyn Enforcer>);

impl Enforcer for LeakyUdp {
    fn name(&self) -> String {
        "leaky-udp".into()
    }
    fn sync(&mut self, desired: &mut Cluster) -> anyhow::Result<()> {
        self.0.sync(desired)
    }
    fn probe(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> Observed {
        if protocol == Protocol::Udp && from.to_string() == "x/b" && to.to_string() == "x/a" {
            return Observed::Allowed;
        }
        self.0.probe(from, to, port, protocol, expected)
    }
    fn teardown(&mut self) {
        self.0.teardown()
    }
}

#[test]
fn a_disagreeing_backend_yields_a_reproduction_that_reproduces() {
    let out = std::env::temp_dir().join(format!("sluice-fuzz-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = FuzzOptions {
        cases: 200,
        seed: 5,
        nodes: 2,
        keep_going: false,
        out: Some(out.clone()),
    };
    let mut leaky = LeakyUdp(backend(BackendKind::Oracle));
    let mut found = Vec::new();
    let counts = fuzz::run(&opts, &mut leaky, &mut |f| {
        found.push((f.n, f.dir.clone().unwrap(), f.explain.clone()))
    })
    .unwrap();
    assert_eq!(counts.failed, 1, "stops at the first failure");
    let (n, dir, explain) = found.pop().unwrap();
    assert_eq!(dir, out.join(format!("5-{n}")));
    assert!(explain.unwrap().contains("--from x/b --to x/a"));

    // The written case holds the oracle's expectations: the oracle passes it, the bug fails it.
    let cases = load_cases(&dir).unwrap();
    assert_eq!(cases.len(), 1);
    let run = RunOptions {
        nodes: 2,
        expect: ExpectFrom::Case,
    };
    let on_oracle = run_case(&cases[0], backend(BackendKind::Oracle).as_mut(), &run);
    assert_eq!(on_oracle.result, Outcome::Pass, "{}", on_oracle.reason);
    let on_leaky = run_case(&cases[0], &mut leaky, &run);
    assert_eq!(on_leaky.result, Outcome::Fail);

    // The manifests are the state where it stopped, with addresses: explain sees x/b -> x/a
    // UDP the way the expectations do.
    let (cluster, _) = sluice::manifests::load(&[dir.join("manifests")]).unwrap();
    assert!(cluster.errors.is_empty(), "{:?}", cluster.errors);
    assert!(cluster.pods.values().all(|p| !p.ips.is_empty()));
    let last = on_leaky.steps.last().unwrap();
    let probe = last
        .probes
        .iter()
        .find(|p| p.protocol == Protocol::Udp && p.mismatches > 0)
        .unwrap();
    let (i, j) = (
        probe
            .expected
            .pods
            .iter()
            .position(|p| p.to_string() == "x/b")
            .unwrap(),
        probe
            .expected
            .pods
            .iter()
            .position(|p| p.to_string() == "x/a")
            .unwrap(),
    );
    let v = evaluate(
        &cluster,
        &Flow {
            from: Endpoint::Pod(ObjectName::new("x", "b")),
            to: Endpoint::Pod(ObjectName::new("x", "a")),
            port: PortRef::Number(probe.port),
            protocol: Protocol::Udp,
        },
    )
    .unwrap();
    assert_eq!(v.allowed, *probe.expected.get(i, j));
    assert!(
        !v.allowed,
        "the leak is a mismatch only where the oracle blocks"
    );
    let _ = std::fs::remove_dir_all(&out);
}
