//! Validation of ClusterNetworkPolicy: one test per CRD rule, each checking the field path
//! the error names. Expectations come from the CRD (network-policy-api v0.3.0), by hand.

use super::*;
use crate::policy::objects::ClusterBuilder;

const HEAD: &str = "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: g}\n";

fn load(spec: &str) -> (crate::policy::Cluster, crate::policy::objects::LoadSummary) {
    let mut b = ClusterBuilder::new();
    b.add_text("t.yaml", &format!("{HEAD}spec:\n{spec}"));
    b.build()
}

/// `field: message` of every error, for matching.
fn errors(spec: &str) -> Vec<String> {
    let (c, s) = load(spec);
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    for e in &c.errors {
        assert_eq!(e.object, "ClusterNetworkPolicy g", "{e}");
    }
    c.errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

fn has_error(spec: &str, field: &str, words: &str) {
    let errs = errors(spec);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{field}: ")) && e.contains(words)),
        "expected an error at {field} containing {words:?}, got {errs:#?}"
    );
}

const OK_SUBJECT: &str = "  subject: {namespaces: {}}\n";

#[test]
fn a_valid_policy_in_both_api_versions_loads() {
    for api in ["v1beta1", "v1alpha2"] {
        let text = format!(
            "apiVersion: policy.networking.k8s.io/{api}\nkind: ClusterNetworkPolicy\nmetadata: {{name: g}}\nspec:\n  tier: Admin\n  priority: 10\n{OK_SUBJECT}  ingress: [{{name: r, action: Deny, from: [{{namespaces: {{}}}}]}}]\n  egress: [{{action: Accept, to: [{{networks: [10.0.0.0/8]}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 80, end: 90}}}}}}}}]}}]\n"
        );
        let mut b = ClusterBuilder::new();
        b.add_text("t.yaml", &text);
        let (c, s) = b.build();
        assert!(c.errors.is_empty(), "{api}: {:?}", c.errors);
        assert!(s.unknown_fields.is_empty(), "{:?}", s.unknown_fields);
        let p = &c.cluster_policies["g"];
        assert_eq!(p.tier, Tier::Admin);
        assert_eq!(p.priority, 10);
        assert_eq!(p.ingress[0].name.as_deref(), Some("r"));
        assert_eq!(
            p.egress[0].ports,
            vec![CnpPort::Range {
                protocol: Protocol::Tcp,
                lo: 80,
                hi: 90
            }]
        );
        assert_eq!(s.cluster_policies, 1);
    }
}

#[test]
fn a_wrong_api_version_is_an_error_naming_both_served_versions() {
    let mut b = ClusterBuilder::new();
    b.add_text(
        "t.yaml",
        &format!(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {{name: g}}\nspec:\n  tier: Admin\n  priority: 1\n{OK_SUBJECT}"
        ),
    );
    let (c, _) = b.build();
    assert_eq!(c.errors[0].field, "apiVersion", "{:?}", c.errors);
    assert!(c.invalid_cluster_policies.contains_key("g"));
}

#[test]
fn priority_must_be_0_to_1000() {
    has_error(
        &format!("  tier: Admin\n  priority: 1001\n{OK_SUBJECT}"),
        "spec.priority",
        "0 to 1000",
    );
    has_error(
        &format!("  tier: Admin\n  priority: -1\n{OK_SUBJECT}"),
        "spec.priority",
        "0 to 1000",
    );
    has_error(
        &format!("  tier: Admin\n{OK_SUBJECT}"),
        "spec.priority",
        "required",
    );
    assert!(errors(&format!("  tier: Baseline\n  priority: 1000\n{OK_SUBJECT}")).is_empty());
    assert!(errors(&format!("  tier: Admin\n  priority: 0\n{OK_SUBJECT}")).is_empty());
}

#[test]
fn tier_must_be_admin_or_baseline() {
    has_error(
        &format!("  tier: admin\n  priority: 1\n{OK_SUBJECT}"),
        "spec.tier",
        "Admin or Baseline",
    );
    has_error(
        &format!("  priority: 1\n{OK_SUBJECT}"),
        "spec.tier",
        "required",
    );
}

#[test]
fn subject_needs_exactly_one_form() {
    has_error(
        "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n",
        "spec.subject",
        "exactly one",
    );
    has_error(
        "  tier: Admin\n  priority: 1\n  subject: {}\n",
        "spec.subject",
        "exactly one",
    );
    has_error("  tier: Admin\n  priority: 1\n", "spec.subject", "required");
    has_error(
        "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n",
        "spec.subject.pods.podSelector",
        "required",
    );
    has_error(
        "  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchLabels: {'bad key!': x}}}\n",
        "spec.subject.namespaces.matchLabels.bad key!",
        "label key",
    );
}

fn rules(body: &str) -> String {
    format!("  tier: Admin\n  priority: 1\n{OK_SUBJECT}{body}")
}

#[test]
fn at_most_25_rules_peers_protocols_and_networks() {
    let many_rules: Vec<String> = (0..26)
        .map(|_| "{action: Deny, from: [{namespaces: {}}]}".to_string())
        .collect();
    has_error(
        &rules(&format!("  ingress: [{}]\n", many_rules.join(", "))),
        "spec.ingress",
        "at most 25",
    );
    let many_peers: Vec<&str> = (0..26).map(|_| "{namespaces: {}}").collect();
    has_error(
        &rules(&format!(
            "  egress: [{{action: Deny, to: [{}]}}]\n",
            many_peers.join(", ")
        )),
        "spec.egress[0].to",
        "at most 25",
    );
    let many_protocols: Vec<String> = (1..=26)
        .map(|n| format!("{{tcp: {{destinationPort: {{number: {n}}}}}}}"))
        .collect();
    has_error(
        &rules(&format!(
            "  ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{}]}}]\n",
            many_protocols.join(", ")
        )),
        "spec.ingress[0].protocols",
        "at most 25",
    );
    let many_nets: Vec<String> = (0..26).map(|n| format!("10.0.{n}.0/24")).collect();
    has_error(
        &rules(&format!(
            "  egress: [{{action: Deny, to: [{{networks: [{}]}}]}}]\n",
            many_nets.join(", ")
        )),
        "spec.egress[0].to[0].networks",
        "at most 25",
    );
}

#[test]
fn networks_must_be_canonical_cidrs() {
    has_error(
        &rules("  egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n"),
        "spec.egress[0].to[0].networks[0]",
        "write 10.0.0.0/8",
    );
    has_error(
        &rules("  egress: [{action: Deny, to: [{networks: [10.0.0.1]}]}]\n"),
        "spec.egress[0].to[0].networks[0]",
        "not a CIDR",
    );
    assert!(errors(&rules(
        "  egress: [{action: Deny, to: [{networks: ['fd00::/8', 10.0.0.0/8]}]}]\n"
    ))
    .is_empty());
}

#[test]
fn port_ranges_need_start_less_than_end_and_numbers_in_range() {
    has_error(
        &rules("  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 90}}}}]}]\n"),
        "spec.ingress[0].protocols[0].tcp.destinationPort.range",
        "less than",
    );
    has_error(
        &rules("  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 0}}}]}]\n"),
        "spec.ingress[0].protocols[0].udp.destinationPort.number",
        "1 to 65535",
    );
    has_error(
        &rules("  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 80, range: {start: 1, end: 2}}}}]}]\n"),
        "spec.ingress[0].protocols[0].sctp.destinationPort",
        "exactly one",
    );
    has_error(
        &rules("  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}, udp: {destinationPort: {number: 80}}}]}]\n"),
        "spec.ingress[0].protocols[0]",
        "exactly one",
    );
}

#[test]
fn each_peer_sets_exactly_one_field() {
    has_error(
        &rules("  egress: [{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}]\n"),
        "spec.egress[0].to[0]",
        "exactly one",
    );
    has_error(
        &rules("  egress: [{action: Deny, to: [{}]}]\n"),
        "spec.egress[0].to[0]",
        "exactly one",
    );
    has_error(
        &rules("  egress: [{action: Deny}]\n"),
        "spec.egress[0].to",
        "at least one peer",
    );
    has_error(
        &rules("  ingress: [{action: Deny, from: []}]\n"),
        "spec.ingress[0].from",
        "at least one peer",
    );
}

#[test]
fn named_ports_cannot_go_with_networks_or_nodes_peers() {
    has_error(
        &rules("  egress: [{action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}]\n"),
        "spec.egress[0]",
        "destinationNamedPort",
    );
    has_error(
        &rules("  egress: [{action: Accept, to: [{nodes: {}}], protocols: [{destinationNamedPort: http}]}]\n"),
        "spec.egress[0]",
        "destinationNamedPort",
    );
    // With pod peers a named port is fine.
    assert!(errors(&rules(
        "  egress: [{action: Accept, to: [{pods: {podSelector: {}}}], protocols: [{destinationNamedPort: http}]}]\n"
    ))
    .is_empty());
}

#[test]
fn action_must_be_accept_deny_or_pass_and_pass_is_allowed_in_baseline() {
    has_error(
        &rules("  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n"),
        "spec.ingress[0].action",
        "Accept, Deny or Pass",
    );
    has_error(
        &rules("  ingress: [{from: [{namespaces: {}}]}]\n"),
        "spec.ingress[0].action",
        "required",
    );
    // The CRD has no rule against Pass in the Baseline tier (it passes to the default: allow).
    assert!(errors(&format!(
        "  tier: Baseline\n  priority: 1\n{OK_SUBJECT}  ingress: [{{action: Pass, from: [{{namespaces: {{}}}}]}}]\n"
    ))
    .is_empty());
}

#[test]
fn rule_names_are_at_most_100_characters() {
    let long = "n".repeat(101);
    has_error(
        &rules(&format!(
            "  ingress: [{{name: {long}, action: Deny, from: [{{namespaces: {{}}}}]}}]\n"
        )),
        "spec.ingress[0].name",
        "at most 100",
    );
}

#[test]
fn ingress_peers_have_no_networks_field_so_it_is_unknown_and_the_rule_fails_closed() {
    let (c, s) = load(&rules(
        "  ingress: [{action: Accept, from: [{networks: [10.0.0.0/8]}]}, {action: Deny, from: [{namespaces: {}}], bogus: 1}]\n",
    ));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let unknown: Vec<&str> = s.unknown_fields.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        unknown,
        vec!["spec.ingress[0].from[0].networks", "spec.ingress[1].bogus"]
    );
    let p = &c.cluster_policies["g"];
    assert!(p.ingress[0].fail_closed.is_some());
    assert!(p.ingress[1].fail_closed.is_some());
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("spec.ingress[0]") && w.contains("matches nothing")));
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("spec.ingress[1]") && w.contains("denies everything")));
}

#[test]
fn nodes_and_domain_names_peers_are_not_implemented_and_fail_closed_with_a_warning() {
    let (c, _) = load(&rules(
        "  egress: [{action: Accept, to: [{domainNames: ['*.example.com']}]}, {action: Pass, to: [{nodes: {}}]}]\n",
    ));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let p = &c.cluster_policies["g"];
    assert!(p.egress[0]
        .fail_closed
        .as_deref()
        .unwrap()
        .contains("domainNames"));
    assert!(p.egress[1]
        .fail_closed
        .as_deref()
        .unwrap()
        .contains("nodes"));
    assert!(c.warnings.iter().any(|w| w.contains("not implemented")));
    has_error(
        &rules("  egress: [{action: Accept, to: [{domainNames: ['exa mple.com']}]}]\n"),
        "spec.egress[0].to[0].domainNames[0]",
        "not a domain name",
    );
}

#[test]
fn an_invalid_policy_keeps_its_subject_so_its_pods_fail_closed() {
    let (c, s) = load(
        "  tier: Admin\n  priority: 5000\n  subject: {namespaces: {matchLabels: {team: a}}}\n",
    );
    assert_eq!(s.invalid, 1);
    assert!(c.cluster_policies.is_empty());
    assert!(matches!(
        c.invalid_cluster_policies["g"],
        Some(Subject::Namespaces(_))
    ));
    // An unreadable subject: every pod may be a subject.
    let (c, _) = load("  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchLabels: 3}}\n");
    assert_eq!(c.invalid_cluster_policies.get("g"), Some(&None));
}
