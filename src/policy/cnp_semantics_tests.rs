//! ClusterNetworkPolicy semantics in the oracle. Expectations are written by hand from the
//! API's documentation (network-policy-api v0.3.0, apis/v1beta1: tier order Admin ->
//! NetworkPolicy -> Baseline -> allow; lower priority first; rules in written order; first
//! match decides; Pass skips the rest of the tier; host-network pods are never subjects or
//! pod peers; fail closed: Accept matches nothing, Deny/Pass deny all).
//!
//! The dataplane enforces valid CNPs in their tiers, so the kernel verdict (`allowed`) is the
//! API's; only subjects of invalid CNPs fail closed (then the API's verdict is `api_allowed`).

use super::cnp::{Action, Tier};
use super::evaluate::{evaluate, Endpoint, Flow, SideVerdict, Verdict};
use super::model::Cluster;
use super::objects::ClusterBuilder;
use super::ports::{PortRef, Protocol};

/// Namespaces x (team=a), y (team=b), z; pods x/a, x/b, y/a, y/b, z/c, and y/host on the host
/// network. Every pod declares port 80 named http.
const WORLD: &str = r#"
{kind: Namespace, apiVersion: v1, metadata: {name: x, labels: {team: a}}}
---
{kind: Namespace, apiVersion: v1, metadata: {name: y, labels: {team: b}}}
---
{kind: Namespace, apiVersion: v1, metadata: {name: z}}
---
{kind: Pod, apiVersion: v1, metadata: {name: a, namespace: x, labels: {app: a}}, spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}, status: {podIP: 10.0.0.1}}
---
{kind: Pod, apiVersion: v1, metadata: {name: b, namespace: x, labels: {app: b}}, spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}, status: {podIP: 10.0.0.2}}
---
{kind: Pod, apiVersion: v1, metadata: {name: a, namespace: y, labels: {app: a}}, spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}, status: {podIP: 10.0.1.1}}
---
{kind: Pod, apiVersion: v1, metadata: {name: b, namespace: y, labels: {app: b}}, spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}, status: {podIP: 10.0.1.2}}
---
{kind: Pod, apiVersion: v1, metadata: {name: c, namespace: z, labels: {app: c}}, spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}, status: {podIP: 10.0.2.1}}
---
{kind: Pod, apiVersion: v1, metadata: {name: host, namespace: y, labels: {app: a}}, spec: {hostNetwork: true, containers: [{name: c}]}, status: {podIP: 192.168.0.10}}
"#;

fn cnp(name: &str, tier: &str, priority: u32, subject: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {subject}\n{rules}\n"
    )
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
}

fn cluster(objects: &[String]) -> Cluster {
    let mut b = ClusterBuilder::new();
    b.add_text("world", WORLD);
    b.add_text("policies", &objects.concat());
    let (c, s) = b.build();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    c
}

fn flow(c: &Cluster, from: &str, to: &str, port: u16, proto: Protocol) -> Verdict {
    evaluate(
        c,
        &Flow {
            from: Endpoint::parse(from),
            to: Endpoint::parse(to),
            port: PortRef::Number(port),
            protocol: proto,
        },
    )
    .unwrap()
}

fn tcp(c: &Cluster, from: &str, to: &str) -> Verdict {
    flow(c, from, to, 80, Protocol::Tcp)
}

/// The API's verdict of one side (the kernel's may be "fail closed").
fn api(s: &SideVerdict) -> bool {
    s.api_allowed.unwrap_or(s.allowed)
}

fn decided(s: &SideVerdict) -> (String, Option<String>, Option<Action>) {
    (
        s.tier.clone().unwrap_or_default(),
        s.decision.as_ref().map(|d| d.policy.clone()),
        s.decision.as_ref().map(|d| d.action),
    )
}

const Y: &str = "{namespaces: {matchLabels: {team: b}}}";
const FROM_X: &str = "from: [{namespaces: {matchLabels: {team: a}}}]";

#[test]
fn admin_deny_overrides_a_networkpolicy_that_allows() {
    let c = cluster(&[
        cnp(
            "guard",
            "Admin",
            10,
            Y,
            &format!("  ingress: [{{name: no-x, action: Deny, {FROM_X}}}]"),
        ),
        np(
            "y",
            "allow-x",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]}",
        ),
    ]);
    let v = tcp(&c, "x/a", "y/a");
    assert!(!api(&v.ingress));
    assert_eq!(
        decided(&v.ingress),
        ("Admin".into(), Some("cnp/guard".into()), Some(Action::Deny))
    );
    let d = v.ingress.decision.as_ref().unwrap();
    assert_eq!((d.rule, d.rule_name.as_deref()), (0, Some("no-x")));
    assert!(
        v.ingress
            .reason
            .contains("Admin: cnp/guard rule 0 'no-x' (Deny) matched"),
        "{}",
        v.ingress.reason
    );
    // The source is no subject: its egress is untouched.
    assert!(v.egress.allowed && v.egress.failed_closed_by.is_empty());
    // z is not in the peer: the NetworkPolicy decides, and it does not allow z.
    let v = tcp(&c, "z/c", "y/a");
    assert!(!api(&v.ingress));
    assert_eq!(v.ingress.tier.as_deref(), Some("NetworkPolicy"));
}

#[test]
fn admin_accept_overrides_a_networkpolicy_that_denies() {
    let c = cluster(&[
        cnp(
            "open",
            "Admin",
            10,
            Y,
            &format!("  ingress: [{{action: Accept, {FROM_X}}}]"),
        ),
        np("y", "deny-all", "{podSelector: {}, policyTypes: [Ingress]}"),
    ]);
    let v = tcp(&c, "x/b", "y/b");
    assert!(api(&v.ingress));
    assert_eq!(
        decided(&v.ingress),
        (
            "Admin".into(),
            Some("cnp/open".into()),
            Some(Action::Accept)
        )
    );
    assert!(
        !api(&tcp(&c, "z/c", "y/b").ingress),
        "z is not accepted: deny-all decides"
    );
}

#[test]
fn lower_priority_value_goes_first_whatever_the_names() {
    let c = cluster(&[
        cnp(
            "a-accept",
            "Admin",
            20,
            Y,
            &format!("  ingress: [{{action: Accept, {FROM_X}}}]"),
        ),
        cnp(
            "z-deny",
            "Admin",
            10,
            Y,
            &format!("  ingress: [{{action: Deny, {FROM_X}}}]"),
        ),
    ]);
    let v = tcp(&c, "x/a", "y/a");
    assert!(!api(&v.ingress));
    assert_eq!(v.ingress.decision.as_ref().unwrap().policy, "cnp/z-deny");
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
}

#[test]
fn rules_in_written_order_first_match_decides() {
    let c = cluster(&[cnp(
        "g",
        "Admin",
        1,
        Y,
        "  ingress:\n  - {name: a-ok, action: Accept, from: [{pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: a}}}}]}\n  - {name: rest, action: Deny, from: [{namespaces: {}}]}",
    )]);
    let v = tcp(&c, "x/a", "y/a");
    assert!(api(&v.ingress));
    assert_eq!(v.ingress.decision.as_ref().unwrap().rule, 0);
    let v = tcp(&c, "x/b", "y/a");
    assert!(!api(&v.ingress));
    let d = v.ingress.decision.as_ref().unwrap();
    assert_eq!((d.rule, d.rule_name.as_deref()), (1, Some("rest")));
}

#[test]
fn pass_skips_the_rest_of_admin_then_networkpolicy_then_baseline() {
    let objects = vec![
        cnp(
            "pass-x",
            "Admin",
            1,
            Y,
            &format!("  ingress: [{{action: Pass, {FROM_X}}}]"),
        ),
        cnp(
            "deny-x",
            "Admin",
            2,
            Y,
            &format!("  ingress: [{{action: Deny, {FROM_X}}}]"),
        ),
    ];
    // No NetworkPolicy, no Baseline: Pass goes to the default, allow.
    let c = cluster(&objects);
    let v = tcp(&c, "x/a", "y/a");
    assert!(api(&v.ingress), "{}", v.ingress.reason);
    assert_eq!(v.ingress.tier.as_deref(), Some("Default"));
    assert_eq!(v.ingress.passed.len(), 1);
    assert_eq!(v.ingress.passed[0].policy, "cnp/pass-x");
    assert!(
        v.ingress
            .reason
            .contains("Admin: Pass by cnp/pass-x rule 0 -> NetworkPolicy:"),
        "{}",
        v.ingress.reason
    );
    // z is not passed: deny-x does not match z either, so allowed by default.
    assert!(api(&tcp(&c, "z/c", "y/a").ingress));

    // With a Baseline Deny after the Pass: Baseline decides.
    let mut with_baseline = objects.clone();
    with_baseline.push(cnp(
        "base",
        "Baseline",
        1,
        Y,
        "  ingress: [{action: Deny, from: [{namespaces: {}}]}]",
    ));
    let c = cluster(&with_baseline);
    let v = tcp(&c, "x/a", "y/a");
    assert!(!api(&v.ingress));
    assert_eq!(
        decided(&v.ingress),
        (
            "Baseline".into(),
            Some("cnp/base".into()),
            Some(Action::Deny)
        )
    );

    // With a NetworkPolicy isolating y/a: after the Pass, NetworkPolicy decides, and the
    // Baseline is never reached.
    let mut with_np = with_baseline;
    with_np.push(np("y", "allow-x", "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]}"));
    let c = cluster(&with_np);
    let v = tcp(&c, "x/a", "y/a");
    assert!(api(&v.ingress));
    assert_eq!(v.ingress.tier.as_deref(), Some("NetworkPolicy"));
}

#[test]
fn baseline_applies_only_where_no_networkpolicy_isolates() {
    let c = cluster(&[
        cnp("base", "Baseline", 5, Y, "  ingress: [{action: Deny, from: [{namespaces: {}}]}]"),
        np("y", "a-from-x", "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]}"),
    ]);
    // y/a is isolated by a-from-x: the NetworkPolicy decides both ways.
    let v = tcp(&c, "x/a", "y/a");
    assert!(api(&v.ingress));
    assert_eq!(v.ingress.tier.as_deref(), Some("NetworkPolicy"));
    let v = tcp(&c, "z/c", "y/a");
    assert!(!api(&v.ingress));
    assert_eq!(v.ingress.tier.as_deref(), Some("NetworkPolicy"));
    // y/b is not isolated: the Baseline decides.
    let v = tcp(&c, "x/a", "y/b");
    assert!(!api(&v.ingress));
    assert_eq!(
        decided(&v.ingress),
        (
            "Baseline".into(),
            Some("cnp/base".into()),
            Some(Action::Deny)
        )
    );
    // A Baseline Accept does not override a NetworkPolicy that denies.
    let c = cluster(&[
        cnp(
            "base",
            "Baseline",
            5,
            Y,
            "  ingress: [{action: Accept, from: [{namespaces: {}}]}]",
        ),
        np("y", "deny", "{podSelector: {}, policyTypes: [Ingress]}"),
    ]);
    assert!(!api(&tcp(&c, "x/a", "y/a").ingress));
}

#[test]
fn host_network_pods_are_neither_subjects_nor_pod_peers() {
    let c = cluster(&[cnp(
        "all",
        "Admin",
        1,
        "{namespaces: {}}",
        "  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n  egress: [{action: Deny, to: [{pods: {podSelector: {}}}]}]",
    )]);
    // y/host is not a subject: its ingress is not decided by the CNP.
    let v = tcp(&c, "x/a", "y/host");
    assert!(
        v.ingress.allowed && v.ingress.failed_closed_by.is_empty(),
        "{}",
        v.ingress.reason
    );
    // As a source, it is not a pod peer: the Deny does not match it (API: allowed).
    let v = tcp(&c, "y/host", "x/a");
    assert!(api(&v.ingress), "{}", v.ingress.reason);
    assert!(v.ingress.decision.is_none());
    // As an egress destination, neither.
    let v = tcp(&c, "x/a", "y/host");
    assert!(api(&v.egress), "{}", v.egress.reason);
}

#[test]
fn networks_peers_match_addresses_including_pod_ips() {
    let c = cluster(&[cnp(
        "no-y-net",
        "Admin",
        1,
        "{namespaces: {matchLabels: {team: a}}}",
        "  egress: [{action: Deny, to: [{networks: [10.0.1.0/24]}]}]",
    )]);
    assert!(
        !api(&tcp(&c, "x/a", "y/a").egress),
        "10.0.1.1 is a pod IP in the network"
    );
    assert!(api(&tcp(&c, "x/a", "z/c").egress), "10.0.2.1 is not");
    assert!(!api(&tcp(&c, "x/a", "10.0.1.7").egress));
    assert!(api(&tcp(&c, "x/a", "10.9.9.9").egress));
    // Egress rules do not touch ingress.
    let v = tcp(&c, "y/a", "x/a");
    assert!(api(&v.ingress));
    assert!(v.ingress.decision.is_none());
}

#[test]
fn protocols_match_ports_ranges_and_named_ports_on_the_destination() {
    let c = cluster(&[cnp(
        "ports",
        "Admin",
        1,
        "{namespaces: {matchLabels: {team: a}}}",
        "  egress:\n  - {action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 90}}}}]}\n  - {action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}",
    )]);
    assert!(!api(&flow(&c, "x/a", "z/c", 85, Protocol::Tcp).egress));
    assert!(api(&flow(&c, "x/a", "z/c", 91, Protocol::Tcp).egress));
    assert!(api(&flow(&c, "x/a", "z/c", 85, Protocol::Udp).egress));
    // y/b names 8080 http: the named port resolves on the destination.
    let v = flow(&c, "x/a", "y/b", 8080, Protocol::Tcp);
    assert!(!api(&v.egress));
    assert_eq!(v.egress.decision.as_ref().unwrap().rule, 1);
    assert!(
        api(&flow(&c, "x/a", "z/c", 8080, Protocol::Tcp).egress),
        "z/c's http is 80"
    );
}

#[test]
fn same_priority_ties_are_broken_by_name_and_warned_about() {
    let c = cluster(&[
        cnp(
            "b-deny",
            "Admin",
            7,
            Y,
            &format!("  ingress: [{{action: Deny, {FROM_X}}}]"),
        ),
        cnp(
            "a-accept",
            "Admin",
            7,
            Y,
            &format!("  ingress: [{{action: Accept, {FROM_X}}}]"),
        ),
    ]);
    let v = tcp(&c, "x/a", "y/a");
    assert!(api(&v.ingress), "a-accept sorts first by name");
    assert_eq!(v.ingress.decision.as_ref().unwrap().policy, "cnp/a-accept");
    assert!(
        v.warnings.iter().any(|w| w.contains("cnp/a-accept")
            && w.contains("cnp/b-deny")
            && w.contains("name order")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn unsupported_peers_fail_closed_accept_matches_nothing_deny_and_pass_deny_all() {
    let xs = "{namespaces: {matchLabels: {team: a}}}";
    // Accept with domainNames matches nothing: the next rule (Deny to y) decides for y.
    let c = cluster(&[cnp(
        "dns",
        "Admin",
        1,
        xs,
        "  egress:\n  - {action: Accept, to: [{domainNames: [example.com]}]}\n  - {action: Deny, to: [{namespaces: {matchLabels: {team: b}}}]}",
    )]);
    let v = tcp(&c, "x/a", "y/a");
    assert!(!api(&v.egress));
    assert_eq!(v.egress.decision.as_ref().unwrap().rule, 1);
    assert!(api(&tcp(&c, "x/a", "z/c").egress), "nothing matches z/c");

    // Deny with a nodes peer denies everything, whoever the destination.
    let c = cluster(&[cnp(
        "nodes",
        "Admin",
        1,
        xs,
        "  egress: [{action: Deny, to: [{nodes: {}}]}]",
    )]);
    let v = tcp(&c, "x/a", "z/c");
    assert!(!api(&v.egress));
    assert!(v.egress.decision.as_ref().unwrap().fail_closed.is_some());

    // Pass with an unknown field denies everything (it does not pass).
    let c = cluster(&[cnp(
        "unknown",
        "Admin",
        1,
        xs,
        "  egress: [{action: Pass, to: [{namespaces: {}}], future: true}]",
    )]);
    let v = tcp(&c, "x/a", "z/c");
    assert!(!api(&v.egress));
    assert_eq!(v.egress.decision.as_ref().unwrap().action, Action::Deny);
    assert_eq!(v.egress.decision.as_ref().unwrap().tier, Tier::Admin);
}

#[test]
fn the_kernel_enforces_valid_cnps_and_reports_no_fail_closed() {
    let c = cluster(&[cnp(
        "open",
        "Admin",
        1,
        Y,
        "  ingress: [{action: Accept, from: [{namespaces: {}}]}]",
    )]);
    // The API accepts x/a -> y/a, and so does the kernel now: no fail-closed reporting.
    let v = tcp(&c, "x/a", "y/a");
    assert!(v.allowed);
    assert!(v.ingress.allowed);
    assert_eq!(v.ingress.api_allowed, None);
    assert!(v.ingress.failed_closed_by.is_empty());
    assert!(
        !v.ingress.reason.contains("fails closed"),
        "{}",
        v.ingress.reason
    );
    let v = tcp(&c, "y/a", "z/c");
    assert!(v.allowed && v.egress.api_allowed.is_none());
    // Loopback never leaves the pod.
    assert!(tcp(&c, "y/a", "y/a").allowed);
}

#[test]
fn an_invalid_cnp_fails_its_subject_closed_and_never_opens_anything() {
    let c = {
        let mut b = ClusterBuilder::new();
        b.add_text("world", WORLD);
        b.add_text(
            "p",
            &cnp(
                "bad",
                "Admin",
                9999,
                Y,
                "  ingress: [{action: Accept, from: [{namespaces: {}}]}]",
            ),
        );
        b.build().0
    };
    assert!(c.cluster_policies.is_empty());
    let v = tcp(&c, "x/a", "y/a");
    assert!(!v.allowed);
    assert_eq!(
        v.ingress.failed_closed_by,
        vec!["cnp/bad (invalid)".to_string()]
    );
    assert!(tcp(&c, "x/a", "z/c").allowed);
}
