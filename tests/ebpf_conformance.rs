//! The conformance suite and the differential fuzzer with the eBPF dataplane: the same cases
//! and the same bar as with nftables (tests/conformance_lab.rs), through the library runner.
//! Skipped (and said so) only when this sluice was built without clang, and then failed
//! instead when `SLUICE_REQUIRE_EBPF=1` (scripts/test).
//!
//! One lab at a time: each probes hundreds of real connections.

mod common;

use std::sync::Mutex;

use common::ebpf_built;
use sluice::conformance::backend::AttachMode;
use sluice::conformance::fuzz::{self, FuzzOptions};
use sluice::conformance::load_cases;
use sluice::conformance::make::{make_enforcer, BackendKind, BackendOptions};
use sluice::conformance::report;
use sluice::conformance::runner::{run_case, ExpectFrom, Outcome, RunOptions};
use sluice::dataplane::DataplaneKind;

static SERIAL: Mutex<()> = Mutex::new(());

fn no_lab_left() {
    let ours: Vec<String> = sluice::lab::netns::list()
        .into_iter()
        .filter(|n| n.starts_with("slcf"))
        .collect();
    assert!(ours.is_empty(), "namespaces left behind: {ours:?}");
}

fn options(attach: AttachMode) -> BackendOptions {
    BackendOptions {
        kind: BackendKind::Lab,
        nodes: 2,
        attach,
        dataplane: DataplaneKind::Ebpf,
        via_service: false,
    }
}

fn suite(attach: AttachMode) {
    suite_with(options(attach))
}

fn suite_with(opts: BackendOptions) {
    let attach = opts.attach;
    if !ebpf_built() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases =
        load_cases(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/cases"))
            .unwrap();
    let mut backend = make_enforcer(&opts).unwrap();
    assert!(backend.name().contains("ebpf"), "{}", backend.name());
    let opts = RunOptions {
        nodes: 2,
        expect: ExpectFrom::Case,
    };
    let results: Vec<_> = cases
        .iter()
        .map(|c| {
            let r = run_case(c, backend.as_mut(), &opts);
            eprintln!("{}", report::case_line(&r));
            r
        })
        .collect();
    backend.teardown();
    drop(backend);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.result == Outcome::Fail)
        .map(|r| format!("{}{}", report::case_line(r), report::failure_details(r)))
        .collect();
    assert!(
        failed.is_empty(),
        "{attach}: failed cases:\n{}",
        failed.join("\n")
    );
    // Exactly the three SCTP cases are skipped (no SCTP sockets here), as with nftables.
    let skipped: Vec<&str> = results
        .iter()
        .filter(|r| r.result == Outcome::Skip)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(skipped, ["upstream-46", "upstream-47", "upstream-48"]);
    let upstream_passed = results
        .iter()
        .filter(|r| r.result == Outcome::Pass && r.id.starts_with("upstream-"))
        .count();
    assert_eq!(upstream_passed, 45, "all TCP/UDP upstream cases pass");
    no_lab_left();
}

#[test]
fn ebpf_conformance_routed() {
    suite(AttachMode::Routed);
}

#[test]
fn ebpf_conformance_bridged() {
    suite(AttachMode::Bridged);
}

/// Every probe through the destination's ClusterIP, as the upstream suite probes: the pod's
/// veth sees the ClusterIP, so egress is judged after the node's DNAT.
#[test]
fn ebpf_conformance_routed_via_service() {
    suite_with(BackendOptions {
        via_service: true,
        ..options(AttachMode::Routed)
    });
}

/// The fuzz seed unless SLUICE_FUZZ_SEED says another (docs/testing.md).
const DEFAULT_SEED: u64 = 1;

/// Oracle vs the eBPF dataplane on generated cases. SLUICE_EBPF_FUZZ_CASES and
/// SLUICE_FUZZ_SEED override the defaults (30 cases, seed `DEFAULT_SEED`).
#[test]
fn ebpf_differential_fuzz() {
    if !ebpf_built() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases: usize = std::env::var("SLUICE_EBPF_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let out = std::env::temp_dir().join(format!("sluice-ebpf-fuzz-{}", std::process::id()));
    eprintln!(
        "fuzz: {cases} cases, seed {seed}, failures written to {}",
        out.display()
    );
    let opts = FuzzOptions {
        cases,
        seed,
        nodes: 2,
        keep_going: true,
        out: Some(out),
    };
    let mut backend = make_enforcer(&options(AttachMode::Routed)).unwrap();
    let mut failures = Vec::new();
    let counts = fuzz::run(&opts, backend.as_mut(), &mut |f| {
        failures.push(format!(
            "{}\n{}{}",
            report::case_line(&f.result),
            report::failure_details(&f.result),
            f.dir
                .as_ref()
                .map(|d| format!(
                    "    reproduce: sluice conformance run --cases {} --dataplane ebpf\n",
                    d.display()
                ))
                .unwrap_or_default()
        ))
    })
    .unwrap();
    backend.teardown();
    drop(backend);
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
    assert_eq!((counts.passed, counts.failed), (cases, 0), "seed {seed}");
    no_lab_left();
}
