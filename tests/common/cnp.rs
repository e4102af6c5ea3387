//! ClusterNetworkPolicy tiers on the real kernel, one scenario for both dataplanes (fixture
//! cnp/tiers.yaml): Admin Deny beats a NetworkPolicy allow, Admin Pass lets NetworkPolicy
//! decide (both ways), Admin Accept beats a NetworkPolicy deny, and Baseline applies only to
//! pods no NetworkPolicy isolates. The expectations are written by hand from the API's tier
//! order; explain must agree with each of them, and so must real TCP connections.

use sluice::dataplane::DataplaneKind;
use sluice::lab::enforce::EnforcedLab;
use sluice::lab::Attach;
use sluice::policy::model::ObjectName;
use sluice::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};

/// (from, to, allowed on TCP 80, why).
pub const TIERS: &[(&str, &str, bool, &str)] = &[
    (
        "x/b",
        "y/s",
        false,
        "Admin Deny beats the NetworkPolicy allow",
    ),
    (
        "x/a",
        "y/s",
        true,
        "Admin Pass, the NetworkPolicy allows; Baseline not consulted",
    ),
    ("x/d", "y/s", false, "Admin Pass, the NetworkPolicy denies"),
    (
        "x/c",
        "y/s",
        true,
        "Admin Accept beats the NetworkPolicy deny",
    ),
    (
        "x/a",
        "z/s",
        false,
        "Admin Pass, no NetworkPolicy, Baseline Deny",
    ),
    (
        "x/d",
        "z/s",
        false,
        "Admin Pass, no NetworkPolicy, Baseline Deny (all of x)",
    ),
    ("x/c", "z/s", true, "Admin Accept"),
    ("x/b", "z/s", false, "Admin Deny"),
    ("y/s", "z/s", true, "no rule matches: allowed"),
    (
        "z/s",
        "y/s",
        false,
        "the NetworkPolicy denies, Baseline not consulted",
    ),
];

/// Brings up a one-node lab named `name` with `dataplane`, applies cnp/tiers.yaml and checks
/// every flow of [`TIERS`] against explain and against a real TCP connection.
pub fn check_tiers(name: &str, attach: Attach, dataplane: DataplaneKind) {
    let mut cluster = super::fixture("cnp/tiers.yaml");
    assert!(cluster.errors.is_empty(), "{:?}", cluster.errors);
    let mut lab = EnforcedLab::up_with(name, 1, attach, dataplane).unwrap();
    lab.sync(&mut cluster).unwrap();
    let rs = lab.ruleset(&cluster, 0);
    assert!(
        rs.warnings
            .iter()
            .all(|w| !w.contains("fails closed") && !w.contains("fail closed")),
        "nothing may fail closed: {:?}",
        rs.warnings
    );
    for &(from, to, expected, why) in TIERS {
        let (f, t) = (ObjectName::parse(from), ObjectName::parse(to));
        let verdict = evaluate(
            &cluster,
            &Flow {
                from: Endpoint::Pod(f.clone()),
                to: Endpoint::Pod(t.clone()),
                port: PortRef::Number(80),
                protocol: Protocol::Tcp,
            },
        )
        .unwrap();
        assert_eq!(
            verdict.allowed, expected,
            "explain {from} -> {to} ({why}): {verdict}"
        );
        let r = lab.probe(&f, &t, false, 80, Protocol::Tcp, expected);
        assert_eq!(
            r.is_connected(),
            expected,
            "{dataplane:?} {from} -> {to} ({why}): {r:?}"
        );
    }
}
