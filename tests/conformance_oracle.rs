//! The conformance suite against the oracle: every hand-written case must pass, and the
//! runner must be able to fail (a wrong expectation, an invalid policy) and skip.

use std::path::PathBuf;

use sluice::conformance::backend::{AttachMode, Enforcer, Observed, ProbeCell};
use sluice::conformance::case::{Action, Case, Expect};
use sluice::conformance::load_cases;
use sluice::conformance::make::{make_enforcer, BackendKind, BackendOptions};
use sluice::conformance::report;
use sluice::conformance::runner::{run_case, CaseResult, ExpectFrom, Outcome, RunOptions};
use sluice::policy::{Cluster, ObjectName, Protocol};

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/cases")
}

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

fn opts() -> RunOptions {
    RunOptions {
        nodes: 2,
        expect: ExpectFrom::Case,
    }
}

fn run_all(e: &mut dyn Enforcer) -> Vec<CaseResult> {
    load_cases(&cases_dir())
        .unwrap()
        .iter()
        .map(|c| run_case(c, e, &opts()))
        .collect()
}

fn assert_all_pass(results: &[CaseResult]) {
    let failed: Vec<&CaseResult> = results
        .iter()
        .filter(|r| r.result != Outcome::Pass)
        .collect();
    if !failed.is_empty() {
        let mut s = String::new();
        for r in &failed {
            s.push_str(&report::case_line(r));
            s.push('\n');
            s.push_str(&report::failure_details(r));
        }
        panic!("{} cases did not pass:\n{s}", failed.len());
    }
}

#[test]
fn every_case_passes_on_the_oracle() {
    let results = run_all(backend(BackendKind::Oracle).as_mut());
    assert_eq!(
        results.len(),
        103,
        "48 upstream cases + 27 extras + 28 ClusterNetworkPolicy cases"
    );
    let count = |prefix: &str| results.iter().filter(|r| r.id.starts_with(prefix)).count();
    assert_eq!(count("upstream-"), 48);
    assert_eq!(count("cnp-"), 28);
    assert_all_pass(&results);
}

/// matrix::compute is a second implementation of the NetworkPolicy semantics: it must pass
/// the suite too. It has no ClusterNetworkPolicy tiers of its own: with CNPs it decides every
/// cell through `evaluate`, so the `cnp-*` cases would only test `evaluate` twice.
#[test]
fn every_case_passes_on_the_matrix() {
    let mut e = backend(BackendKind::MatrixOracle);
    let results: Vec<CaseResult> = load_cases(&cases_dir())
        .unwrap()
        .iter()
        .filter(|c| !c.id.starts_with("cnp-"))
        .map(|c| run_case(c, e.as_mut(), &opts()))
        .collect();
    assert_eq!(results.len(), 75);
    assert_all_pass(&results);
}

fn load(id: &str) -> Case {
    load_cases(&cases_dir())
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .unwrap()
}

#[test]
fn a_wrong_expectation_fails_the_case_with_tables() {
    let mut case = load("upstream-03");
    // Upstream: only x/b may reach x/a. Claim x/c may too.
    case.steps[0].probes[0]
        .expect
        .push(Expect::Allowed("x/c -> x/a".into()));
    let r = run_case(&case, backend(BackendKind::Oracle).as_mut(), &opts());
    assert_eq!(r.result, Outcome::Fail);
    assert_eq!(r.reason, "step 1: 80/TCP 1 of 72 cells differ");
    let details = report::failure_details(&r);
    assert!(
        details.contains("comparison (. match, X mismatch"),
        "{details}"
    );
    // The x/c row of the comparison has its mismatch under x/a (the first column).
    assert!(details.contains("x/c\tX\t.\t."), "{details}");
    let text = report::text(&[r]);
    assert!(text.ends_with("0 passed, 1 failed, 0 skipped\n"), "{text}");
}

#[test]
fn an_invalid_policy_fails_the_case() {
    let mut case = load("upstream-01");
    let Action::Create(m) = &mut case.steps[0].actions[0] else {
        panic!("upstream-01 starts with a create")
    };
    m["spec"]["ingress"] =
        serde_json::json!([{ "from": [{ "ipBlock": { "cidr": "10.0.0.0/33" } }] }]);
    let r = run_case(&case, backend(BackendKind::Oracle).as_mut(), &opts());
    assert_eq!(r.result, Outcome::Fail);
    assert!(
        r.reason.contains("action 1 (create x/deny-ingress)"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("ipBlock.cidr"), "{}", r.reason);
}

/// The oracle behind a kernel without SCTP sockets, counting teardowns.
struct NoSctp {
    inner: Box<dyn Enforcer>,
    teardowns: usize,
}

const NO_SCTP: &str = "SCTP: this kernel has no SCTP sockets (IP_SCTP off)";

impl Enforcer for NoSctp {
    fn name(&self) -> String {
        "oracle-without-sctp".into()
    }
    fn sync(&mut self, desired: &mut Cluster) -> anyhow::Result<()> {
        self.inner.sync(desired)
    }
    fn probe(
        &mut self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> Observed {
        if protocol == Protocol::Sctp {
            return Observed::Skipped(NO_SCTP.into());
        }
        self.inner.probe(from, to, port, protocol, expected)
    }
    fn probe_all(&mut self, cells: &[ProbeCell], port: u16, protocol: Protocol) -> Vec<Observed> {
        // Exercise the default per-cell path through `probe`.
        cells
            .iter()
            .map(|c| self.probe(&c.from, &c.to, port, protocol, c.expected))
            .collect()
    }
    fn teardown(&mut self) {
        self.teardowns += 1;
        self.inner.teardown();
    }
}

#[test]
fn sctp_probes_are_skipped_and_only_all_sctp_cases_skip() {
    let mut e = NoSctp {
        inner: backend(BackendKind::Oracle),
        teardowns: 0,
    };
    let cases = load_cases(&cases_dir()).unwrap();
    let results: Vec<CaseResult> = cases.iter().map(|c| run_case(c, &mut e, &opts())).collect();
    assert_eq!(e.teardowns, cases.len(), "teardown after every case");
    for (c, r) in cases.iter().zip(&results) {
        let probes: Vec<Protocol> = c
            .steps
            .iter()
            .flat_map(|s| s.probes.iter().map(|p| p.protocol))
            .collect();
        let sctp = probes.iter().filter(|p| **p == Protocol::Sctp).count();
        if sctp == probes.len() {
            assert_eq!(r.result, Outcome::Skip, "{}", c.id);
            assert_eq!(r.reason, NO_SCTP);
        } else {
            assert_eq!(r.result, Outcome::Pass, "{}: {}", c.id, r.reason);
            if sctp > 0 {
                assert!(
                    r.reason.contains("probes skipped"),
                    "{}: {}",
                    c.id,
                    r.reason
                );
            }
        }
    }
    let counts = report::Counts::of(&results);
    assert_eq!(counts.skipped, 3, "upstream 46-48 probe only SCTP");
    assert_eq!(counts.failed, 0);
}

#[test]
fn json_and_junit_reports_count_the_cases() {
    let results: Vec<CaseResult> = ["upstream-01", "upstream-46"]
        .iter()
        .map(|id| run_case(&load(id), backend(BackendKind::Oracle).as_mut(), &opts()))
        .collect();
    let j = report::json(&results, "oracle");
    assert_eq!(j["passed"], 2);
    assert_eq!(j["cases"][0]["result"], "pass");
    assert_eq!(
        j["cases"][0]["steps"][0]["probes"][0]["expected"][1],
        "X.X......"
    );
    let x = report::junit(&results, "oracle");
    assert_eq!(x.matches("<testcase ").count(), 2);
    assert!(x.contains("tests=\"2\" failures=\"0\""));
}

/// A backend that panics on its first probe.
struct Panicky {
    teardowns: usize,
}

impl Enforcer for Panicky {
    fn name(&self) -> String {
        "panicky".into()
    }
    fn sync(&mut self, desired: &mut Cluster) -> anyhow::Result<()> {
        for p in desired.pods.values_mut() {
            p.ips = vec!["10.244.0.9".parse().unwrap()];
        }
        Ok(())
    }
    fn probe(&mut self, _: &ObjectName, _: &ObjectName, _: u16, _: Protocol, _: bool) -> Observed {
        panic!("probe exploded")
    }
    fn teardown(&mut self) {
        self.teardowns += 1;
    }
}

#[test]
fn a_panicking_backend_fails_the_case_and_is_torn_down() {
    let mut e = Panicky { teardowns: 0 };
    let r = run_case(&load("upstream-01"), &mut e, &opts());
    assert_eq!(r.result, Outcome::Fail);
    assert!(
        r.reason.contains("panicked: probe exploded"),
        "{}",
        r.reason
    );
    assert_eq!(e.teardowns, 1);
}
