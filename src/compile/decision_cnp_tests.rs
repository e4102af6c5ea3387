//! ClusterNetworkPolicy tiers in the per-pod decisions. Expectations are written by hand from
//! the IR contract (docs/dataplane.md, docs/policy.md): Admin, then NetworkPolicy when it
//! isolates the pod, else Baseline; Accept/Deny/Pass -> Accept/Drop/Continue; default Drop
//! only under NetworkPolicy isolation.

use std::collections::BTreeMap;

use super::decision::*;
use super::{decide, Attach, CompileInput};
use crate::policy::objects::ClusterBuilder;
use crate::policy::Protocol;

/// x/a is the only pod on node-0 (port http 8080/TCP); y/b on node-1.
const PODS: &str = "
kind: Namespace
apiVersion: v1
metadata: {name: x, labels: {team: red}}
---
kind: Namespace
apiVersion: v1
metadata: {name: y, labels: {team: blue}}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-0, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.0.2}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: y, labels: {app: b}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.1.3}
";

fn cnp(name: &str, tier: &str, priority: u32, rules: &str) -> String {
    format!("---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{namespaces: {{matchLabels: {{team: red}}}}}}\n{rules}\n")
}

const NP_FROM_Y: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}\n";

fn decisions(objects: &str) -> NodeDecisions {
    decisions_with(objects, true)
}

fn decisions_with(objects: &str, valid: bool) -> NodeDecisions {
    let mut b = ClusterBuilder::new();
    b.add_text("test", &format!("{PODS}{objects}"));
    let (cluster, _) = b.build();
    assert_eq!(cluster.errors.is_empty(), valid, "{:?}", cluster.errors);
    decide(&CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach: Attach::Routed,
        attachments: &BTreeMap::new(),
    })
}

/// (action, port, label) of each clause of a rulebook.
fn clauses(d: &NodeDecisions, book: &str) -> Vec<(Action, PortMatch, String)> {
    d.rulebooks[book]
        .clauses
        .iter()
        .map(|c| (c.action, c.port.clone(), c.label.clone()))
        .collect()
}

#[test]
fn admin_then_network_policy_with_pass_as_continue() {
    let d = decisions(&format!(
        "{}{NP_FROM_Y}",
        cnp(
            "guard",
            "Admin",
            10,
            "  ingress:\n  - {name: pass-y, action: Pass, from: [{namespaces: {matchLabels: {team: blue}}}]}\n  - {name: no-rest, action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}"
        )
    ));
    let ing = &d.pods[0].ingress;
    assert_eq!(
        ing.tiers,
        ["cnp_admin_guard_ingress", "np_x_from-y_ingress"]
    );
    assert_eq!(ing.default, Action::Drop, "NetworkPolicy isolates x/a");
    assert_eq!(
        ing.isolation,
        Isolation::Isolated {
            policies: vec!["cnp/guard".into(), "x/from-y".into()]
        }
    );
    assert_eq!(
        clauses(&d, "cnp_admin_guard_ingress"),
        [
            (
                Action::Continue,
                PortMatch::Any,
                "cnp/guard rule 0 'pass-y' (Pass)".to_string()
            ),
            (
                Action::Drop,
                PortMatch::Ranges(Protocol::Tcp, vec![(80, 80)]),
                "cnp/guard rule 1 'no-rest' (Deny)".to_string()
            ),
        ]
    );
    // The Pass peer is y's pods; the Deny peer every pod.
    let peer = |i: usize| match &d.rulebooks["cnp_admin_guard_ingress"].clauses[i].peer {
        PeerMatch::Set(s) => match &d.peer_sets[s].members {
            PeerMembers::Addrs(a) => a.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            m => panic!("{m:?}"),
        },
        p => panic!("{p:?}"),
    };
    assert_eq!(peer(0), ["10.244.1.3"]);
    assert_eq!(peer(1), ["10.244.0.2", "10.244.1.3"]);
    // Egress has no CNP rules and no NetworkPolicy: open.
    assert_eq!(d.pods[0].egress.isolation, Isolation::Open);
}

#[test]
fn baseline_only_without_network_policy_isolation_and_default_accept() {
    let base = cnp(
        "base",
        "Baseline",
        1,
        "  ingress: [{action: Deny, from: [{namespaces: {}}]}]",
    );
    let d = decisions(&base);
    let ing = &d.pods[0].ingress;
    assert_eq!(ing.tiers, ["cnp_baseline_base_ingress"]);
    assert_eq!(ing.default, Action::Accept, "not isolated by NetworkPolicy");
    assert!(ing.drop_invalid);
    assert_eq!(
        ing.accept_peers,
        ["10.244.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        clauses(&d, "cnp_baseline_base_ingress"),
        [(
            Action::Drop,
            PortMatch::Any,
            "cnp/base rule 0 (Deny)".to_string()
        )]
    );
    // With a NetworkPolicy isolating x/a, the Baseline tier is never consulted.
    let d = decisions(&format!("{base}{NP_FROM_Y}"));
    assert_eq!(d.pods[0].ingress.tiers, ["np_x_from-y_ingress"]);
    assert_eq!(d.pods[0].ingress.default, Action::Drop);
    assert!(
        d.rulebooks.keys().all(|k| !k.starts_with("cnp_")),
        "{:?}",
        d.rulebooks.keys()
    );
}

#[test]
fn same_priority_in_name_order_rules_concatenated_and_shared() {
    // Written out of order: priority first, then name (b-two before c-three at priority 5).
    let d = decisions(&format!(
        "{}{}{}",
        cnp("c-three", "Admin", 5, "  egress: [{action: Accept, to: [{networks: [10.9.0.0/16]}]}]"),
        cnp("z-one", "Admin", 1, "  egress: [{action: Deny, to: [{networks: [10.8.0.0/16]}]}]"),
        cnp("b-two", "Admin", 5, "  egress: [{action: Pass, to: [{networks: [10.7.0.0/16]}], protocols: [{udp: {destinationPort: {range: {start: 50, end: 60}}}}, {udp: {destinationPort: {number: 61}}}]}]"),
    ));
    let eg = &d.pods[0].egress;
    assert_eq!(eg.tiers.len(), 1);
    let book = &d.rulebooks[&eg.tiers[0]];
    assert_eq!(book.policies, ["cnp/z-one", "cnp/b-two", "cnp/c-three"]);
    assert!(
        eg.tiers[0].starts_with("cnp_admin_z-one.and2_"),
        "{}",
        eg.tiers[0]
    );
    assert_eq!(
        clauses(&d, &eg.tiers[0]),
        [
            (
                Action::Drop,
                PortMatch::Any,
                "cnp/z-one rule 0 (Deny)".to_string()
            ),
            (
                Action::Continue,
                PortMatch::Ranges(Protocol::Udp, vec![(50, 61)]),
                "cnp/b-two rule 0 (Pass)".to_string()
            ),
            (
                Action::Accept,
                PortMatch::Any,
                "cnp/c-three rule 0 (Accept)".to_string()
            ),
        ]
    );
    let nets: Vec<String> = book
        .clauses
        .iter()
        .map(|c| match &c.peer {
            PeerMatch::Set(s) => match &d.peer_sets[s].members {
                PeerMembers::Prefixes(p) => p.iter().map(|p| p.to_string()).collect(),
                m => panic!("{m:?}"),
            },
            p => panic!("{p:?}"),
        })
        .collect();
    assert_eq!(nets, ["10.8.0.0/16", "10.7.0.0/16", "10.9.0.0/16"]);
    assert_eq!(eg.default, Action::Accept);
}

#[test]
fn rulebooks_are_shared_by_pods_with_the_same_list() {
    let mut b = ClusterBuilder::new();
    b.add_text(
        "test",
        &format!(
            "{PODS}---\nkind: Pod\napiVersion: v1\nmetadata: {{name: a2, namespace: x}}\nspec: {{nodeName: node-0, containers: [{{name: c}}]}}\nstatus: {{podIP: 10.244.0.9}}\n{}",
            cnp("g", "Admin", 3, "  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: blue}}}]}]")
        ),
    );
    let (cluster, _) = b.build();
    let d = decide(&CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach: Attach::Routed,
        attachments: &BTreeMap::new(),
    });
    assert_eq!(d.pods.len(), 2);
    assert_eq!(d.pods[0].ingress.tiers, ["cnp_admin_g_ingress"]);
    assert_eq!(d.pods[1].ingress.tiers, ["cnp_admin_g_ingress"]);
    assert_eq!(d.rulebooks.len(), 1);
}

#[test]
fn fail_closed_rules_accept_nothing_and_deny_or_pass_everything() {
    let d = decisions(&cnp(
        "fc",
        "Admin",
        1,
        "  egress:\n  - {name: acc, action: Accept, to: [{domainNames: [example.com]}]}\n  - {name: pas, action: Pass, to: [{domainNames: [example.com]}]}\n  - {name: ok, action: Accept, to: [{networks: [10.1.0.0/16]}]}",
    ));
    let eg = &d.pods[0].egress;
    assert_eq!(
        eg.isolation,
        Isolation::Isolated {
            policies: vec!["cnp/fc".into()]
        }
    );
    let book = &d.rulebooks[&eg.tiers[0]];
    assert_eq!(book.clauses.len(), 2, "{book:?}");
    assert_eq!(book.clauses[0].peer, PeerMatch::Any);
    assert_eq!(book.clauses[0].port, PortMatch::Any);
    assert_eq!(book.clauses[0].action, Action::Drop);
    assert!(
        book.clauses[0]
            .label
            .starts_with("cnp/fc rule 1 'pas' (Pass)"),
        "{}",
        book.clauses[0].label
    );
    assert_eq!(book.clauses[1].action, Action::Accept);
}

#[test]
fn rules_without_peers_match_nothing_and_named_ports_resolve_on_the_destination() {
    let d = decisions(&cnp(
        "np",
        "Admin",
        1,
        "  egress:\n  - {action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: b}}}}], protocols: [{destinationNamedPort: dns}]}\n  ingress:\n  - {action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: http}]}",
    ));
    let named = |book: &str| -> Vec<(String, Protocol, u16)> {
        let c = &d.rulebooks[book].clauses;
        assert_eq!(c.len(), 1, "{c:?}");
        let PortMatch::Named(s) = &c[0].port else {
            panic!("{c:?}")
        };
        d.named_ports[s]
            .entries
            .iter()
            .map(|(a, p, n)| (a.to_string(), *p, *n))
            .collect()
    };
    // Egress: on the peer y/b, with its declared protocol.
    assert_eq!(
        named("cnp_admin_np_egress"),
        [("10.244.1.3".into(), Protocol::Udp, 53)]
    );
    // Ingress: on the subject x/a.
    assert_eq!(
        named("cnp_admin_np_ingress"),
        [("10.244.0.2".into(), Protocol::Tcp, 8080)]
    );
}

#[test]
fn invalid_cnps_still_fail_their_subjects_closed() {
    let d = decisions_with(
        "---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: bad}\nspec:\n  tier: Admin\n  priority: 2000\n  subject: {namespaces: {}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n",
        false,
    );
    for (_, dd) in d.pods[0].dirs() {
        let Isolation::FailClosed { policies, .. } = &dd.isolation else {
            panic!("{dd:?}")
        };
        assert_eq!(policies, &["cnp/bad (invalid)"]);
        assert_eq!(dd.default, Action::Drop);
    }
}
