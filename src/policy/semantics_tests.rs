//! One test per semantic that peers got wrong (see DESIGN.md). Expectations are written from
//! the Kubernetes API reference, by hand.

use super::evaluate::{evaluate, Endpoint, Flow, Verdict};
use super::model::Cluster;
use super::objects::ClusterBuilder;
use super::ports::{PortRef, Protocol};

/// Namespaces x, y (team=web); pods x/a, x/b, y/a, y/b with pod=<name>, ports 80 and 81 named
/// serve-80-tcp etc., and y/b naming http=8080 while x/b names http=9090.
const WORLD: &str = r#"
kind: Namespace
apiVersion: v1
metadata: {name: x}
---
kind: Namespace
apiVersion: v1
metadata: {name: y, labels: {team: web}}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}, {name: serve-80-udp, containerPort: 80, protocol: UDP}, {name: serve-81-tcp, containerPort: 81}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}, {name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.0.2}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: y, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}
status: {podIPs: [{ip: 10.0.1.1}, {ip: "fd00::1"}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: y, labels: {pod: b}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}, {name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.1.2}
---
kind: Pod
apiVersion: v1
metadata: {name: host, namespace: y, labels: {pod: host}}
spec: {hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.0.10}
"#;

fn cluster(policies: &str) -> Cluster {
    let mut b = ClusterBuilder::new();
    b.add_text("world", WORLD);
    b.add_text("policies", policies);
    let (c, _) = b.build();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
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

fn allowed(c: &Cluster, from: &str, to: &str, port: u16, proto: Protocol) -> bool {
    flow(c, from, to, port, proto).allowed
}

use Protocol::{Sctp, Tcp, Udp};

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

#[test]
fn no_policy_means_open() {
    let c = cluster("");
    assert!(allowed(&c, "x/a", "y/b", 80, Tcp));
    assert!(allowed(&c, "x/a", "8.8.8.8", 53, Udp));
}

#[test]
fn default_protocol_is_tcp_and_udp_or_sctp_rules_never_open_tcp() {
    let c = cluster(&np(
        "x",
        "p",
        "{podSelector: {}, ingress: [{ports: [{port: 80}]}]}",
    ));
    assert!(allowed(&c, "y/a", "x/a", 80, Tcp));
    assert!(!allowed(&c, "y/a", "x/a", 80, Udp));
    let c = cluster(&np("x", "p", "{podSelector: {}, ingress: [{ports: [{port: 80, protocol: UDP}, {port: 81, protocol: SCTP}]}]}"));
    assert!(!allowed(&c, "y/a", "x/a", 80, Tcp));
    assert!(!allowed(&c, "y/a", "x/a", 81, Tcp));
    assert!(allowed(&c, "y/a", "x/a", 80, Udp));
    assert!(allowed(&c, "y/a", "x/a", 81, Sctp));
    let v = flow(&c, "y/a", "x/a", 80, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "protocol TCP, rule allows UDP, SCTP"
    );
}

#[test]
fn protocol_only_port_clause_allows_every_port_of_that_protocol() {
    let c = cluster(&np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP}]}]}",
    ));
    assert!(allowed(&c, "y/a", "x/a", 81, Tcp));
    assert!(!allowed(&c, "y/a", "x/a", 80, Udp));
}

#[test]
fn named_ports_resolve_on_the_destination_per_pod_and_match_protocol() {
    // Ingress: resolved on the selected pod, so x/b's http (9090) opens 9090 on x/b only.
    let c = cluster(&np("x", "p", "{podSelector: {}, ingress: [{ports: [{port: http}, {port: serve-80-udp, protocol: UDP}]}]}"));
    assert!(allowed(&c, "y/a", "x/b", 9090, Tcp));
    assert!(!allowed(&c, "y/a", "x/b", 8080, Tcp));
    assert!(
        !allowed(&c, "y/a", "x/a", 9090, Tcp),
        "x/a has no port named http"
    );
    assert!(allowed(&c, "y/a", "x/a", 80, Udp));
    assert!(
        !allowed(&c, "y/a", "x/a", 80, Tcp),
        "named UDP port must not open TCP"
    );
    let v = flow(&c, "y/a", "x/b", 8080, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "named port http resolves to 9090/TCP on x/b"
    );
    // Egress: resolved on the peer (destination), so it differs per destination.
    let c = cluster(&np("x", "p", "{podSelector: {matchLabels: {pod: a}}, egress: [{to: [{namespaceSelector: {}}], ports: [{port: http}]}]}"));
    assert!(allowed(&c, "x/a", "y/b", 8080, Tcp));
    assert!(!allowed(&c, "x/a", "y/b", 9090, Tcp));
    assert!(allowed(&c, "x/a", "x/b", 9090, Tcp));
    assert!(!allowed(&c, "x/a", "x/b", 8080, Tcp));
    assert!(
        !allowed(&c, "x/a", "8.8.8.8", 8080, Tcp),
        "named port cannot match outside the cluster"
    );
}

#[test]
fn end_port_is_an_inclusive_range() {
    let c = cluster(&np("x", "p", "{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 85}, {port: 8000, endPort: 8080}]}]}"));
    for (port, want) in [
        (79, false),
        (80, true),
        (85, true),
        (86, false),
        (8080, true),
        (8081, false),
    ] {
        assert_eq!(allowed(&c, "y/a", "x/a", port, Tcp), want, "port {port}");
    }
    let v = flow(&c, "y/a", "x/a", 81, Udp);
    assert!(!v.allowed);
    let v = flow(&c, "y/a", "x/a", 86, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "port 86 is not in 80-85, 8000-8080"
    );
}

#[test]
fn ip_block_except_and_pod_ips() {
    let c = cluster(&np("x", "p", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.2/32]}}]}]}"));
    assert!(
        allowed(&c, "x/a", "y/a", 80, Tcp),
        "ipBlock matches pod IPs"
    );
    assert!(!allowed(&c, "x/a", "y/b", 80, Tcp), "except carves out y/b");
    assert!(!allowed(&c, "x/a", "8.8.8.8", 80, Tcp));
    assert!(allowed(&c, "x/a", "10.0.200.1", 80, Tcp));
    let v = flow(&c, "x/a", "y/b", 80, Tcp);
    assert_eq!(
        v.egress.denials[0].reason,
        "ipBlock 10.0.0.0/16 excepts 10.0.1.2/32, which contains 10.0.1.2"
    );
}

#[test]
fn both_selectors_in_one_peer_is_and_two_peers_is_or() {
    let and = cluster(&np("x", "p", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: web}}, podSelector: {matchLabels: {pod: b}}}]}]}"));
    assert!(allowed(&and, "y/b", "x/a", 80, Tcp));
    assert!(!allowed(&and, "y/a", "x/a", 80, Tcp));
    assert!(!allowed(&and, "x/b", "x/a", 80, Tcp));
    let or = cluster(&np("x", "p", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: web}}}, {podSelector: {matchLabels: {pod: b}}}]}]}"));
    assert!(allowed(&or, "y/b", "x/a", 80, Tcp));
    assert!(allowed(&or, "y/a", "x/a", 80, Tcp));
    assert!(allowed(&or, "x/b", "x/a", 80, Tcp));
}

#[test]
fn empty_namespace_selector_is_all_namespaces_absent_is_own_namespace() {
    let all = cluster(&np("x", "p", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]}"));
    assert!(allowed(&all, "y/b", "x/a", 80, Tcp));
    let own = cluster(&np(
        "x",
        "p",
        "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    ));
    assert!(!allowed(&own, "y/b", "x/a", 80, Tcp));
    assert!(allowed(&own, "x/b", "x/a", 80, Tcp));
    let v = flow(&own, "y/b", "x/a", 80, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "without a namespaceSelector the peer is in namespace x, y/b is in y"
    );
}

#[test]
fn namespace_selector_explains_missing_label() {
    let c = cluster(&np(
        "x",
        "p",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: db}}}]}]}",
    ));
    let v = flow(&c, "y/a", "x/a", 80, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "namespaceSelector needs team=db, namespace y has team=web"
    );
    let v = flow(&c, "x/b", "x/a", 80, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "namespaceSelector needs team=db, namespace x has no label team"
    );
}

#[test]
fn policy_types_default_and_egress_only_policy_does_not_isolate_ingress() {
    // Egress rules without policyTypes: Ingress AND Egress, and no ingress rules.
    let c = cluster(&np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, egress: [{}]}",
    ));
    assert!(!allowed(&c, "y/a", "x/a", 80, Tcp));
    assert!(allowed(&c, "x/a", "y/a", 80, Tcp));
    // Explicit [Egress]: ingress untouched.
    let c = cluster(&np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: []}",
    ));
    assert!(allowed(&c, "y/a", "x/a", 80, Tcp));
    assert!(!allowed(&c, "x/a", "y/a", 80, Tcp));
    let v = flow(&c, "y/a", "x/a", 80, Tcp);
    assert!(!v.ingress.isolated);
}

#[test]
fn policies_are_additive() {
    let c = cluster(&(np("x", "deny", "{podSelector: {}}") + &np("x", "allow-b", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}")));
    assert!(allowed(&c, "x/b", "x/a", 80, Tcp));
    assert!(!allowed(&c, "y/a", "x/a", 80, Tcp));
    assert!(!allowed(&c, "x/a", "x/b", 80, Tcp));
    let v = flow(&c, "x/b", "x/a", 80, Tcp);
    assert_eq!(v.ingress.isolated_by, ["x/allow-b", "x/deny"]);
    assert_eq!(v.ingress.allowed_by.as_ref().unwrap().policy, "x/allow-b");
}

#[test]
fn egress_and_ingress_are_independent_and_both_must_allow() {
    let c = cluster(&(np("x", "eg", "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]}")
        + &np("y", "in", "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {}}]}]}")));
    let v = flow(&c, "x/a", "y/b", 80, Tcp);
    assert!(v.egress.allowed && !v.ingress.allowed && !v.allowed);
    assert!(allowed(&c, "x/a", "x/b", 80, Tcp));
    assert!(!allowed(&c, "x/a", "y/a", 80, Tcp));
}

#[test]
fn loopback_is_always_allowed() {
    let c = cluster(&np(
        "x",
        "deny",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    ));
    assert!(allowed(&c, "x/a", "x/a", 80, Tcp));
    assert!(!allowed(&c, "x/a", "x/b", 80, Tcp));
}

#[test]
fn host_network_pods_are_never_selected() {
    let c = cluster(&(np("y", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")
        + &np("x", "from-y", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: web}}}]}]}")));
    assert!(
        allowed(&c, "y/host", "8.8.8.8", 80, Tcp),
        "host-network pods are not isolated"
    );
    assert!(
        !allowed(&c, "y/host", "x/a", 80, Tcp),
        "and pod selectors do not match them"
    );
    assert!(allowed(&c, "y/a", "y/host", 80, Tcp) || !allowed(&c, "y/a", "y/host", 80, Tcp));
    let v = flow(&c, "y/host", "x/a", 80, Tcp);
    assert!(v.ingress.denials[0].reason.contains("host network"));
}

#[test]
fn label_changes_take_effect() {
    let mut c = cluster(&np(
        "x",
        "p",
        "{podSelector: {matchLabels: {target: isolated}}}",
    ));
    assert!(allowed(&c, "y/a", "x/a", 80, Tcp));
    let mut pod = c.pods[&super::ObjectName::new("x", "a")].clone();
    pod.labels.insert("target".into(), "isolated".into());
    c.upsert_pod(pod);
    assert!(!allowed(&c, "y/a", "x/a", 80, Tcp));
    let c2 = cluster(&np("x", "p", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]}"));
    let mut c2 = c2;
    assert!(!allowed(&c2, "y/a", "x/a", 80, Tcp));
    c2.namespaces
        .get_mut("y")
        .unwrap()
        .labels
        .insert("ns2".into(), "updated".into());
    assert!(allowed(&c2, "y/a", "x/a", 80, Tcp));
}

#[test]
fn pod_ip_reuse_follows_the_new_pod() {
    let mut c = cluster(&np("x", "p", "{podSelector: {matchLabels: {pod: a}}}"));
    assert!(
        !allowed(&c, "y/a", "10.0.0.1", 80, Tcp),
        "10.0.0.1 is x/a, isolated"
    );
    let old = c.remove_pod(&super::ObjectName::new("x", "a")).unwrap();
    let mut reused = old.clone();
    reused.namespace = "y".into();
    reused.name = "d".into();
    reused.labels = [("pod".to_string(), "d".to_string())].into();
    c.upsert_pod(reused);
    let v = flow(&c, "y/a", "10.0.0.1", 80, Tcp);
    assert!(v.allowed);
    assert_eq!(v.to, "y/d");
}

#[test]
fn unknown_pods_and_port_names_are_errors() {
    let c = cluster("");
    let f = Flow {
        from: Endpoint::parse("x/nope"),
        to: Endpoint::parse("x/a"),
        port: PortRef::Number(80),
        protocol: Tcp,
    };
    assert!(evaluate(&c, &f).is_err());
    let f = Flow {
        from: Endpoint::parse("x/a"),
        to: Endpoint::parse("y/b"),
        port: PortRef::Name("http".into()),
        protocol: Tcp,
    };
    assert_eq!(evaluate(&c, &f).unwrap().port, 8080);
}

#[test]
fn empty_rules_list_denies_and_says_so() {
    let c = cluster(&np("x", "deny", "{podSelector: {}}"));
    let v = flow(&c, "y/a", "x/a", 80, Tcp);
    assert_eq!(
        v.ingress.denials[0].reason,
        "has no ingress rules, so it allows no ingress traffic"
    );
    assert_eq!(v.ingress.denials[0].rule, None);
}

#[test]
fn closest_rule_is_the_one_with_fewest_failing_clauses() {
    let c = cluster(&np("x", "p", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: z}}}], ports: [{port: 1}]}, {from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 81}]}]}"));
    let v = flow(&c, "x/b", "x/a", 80, Tcp);
    assert_eq!(v.ingress.denials[0].rule, Some(1));
    assert_eq!(v.ingress.denials[0].reason, "port 80 is not in 81");
}
