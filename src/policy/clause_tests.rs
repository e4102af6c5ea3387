//! The predicates of [`super::clause`] on their own, and the fast paths held to them: the
//! oracle ([`super::evaluate`]) and the grouped bitset table ([`super::matrix`]) must give the
//! verdict a plain reading of the predicates gives, on generated clusters (random namespaces,
//! pods, labels, selectors with matchLabels and every matchExpressions operator, ipBlocks
//! with except, numeric, ranged and named ports, and namespaces deleted under their pods).
//! The compiler's pod index is held to them in `compile/select_tests.rs` with the same
//! generator.
//!
//! The runs are reproducible: the seed is fixed unless `PROPTEST_RNG_SEED` sets another, and
//! no failure file is written.

use std::net::IpAddr;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::clause::{self, *};
use super::evaluate::{evaluate, Endpoint, Flow};
use super::ipblock::IpBlock;
use super::labels::{Labels, Operator, Requirement, Selector};
use super::matrix::{compute, PortProto};
use super::model::{Cluster, Direction, Namespace, NamespaceScope, Peer, Pod, Policy, Rule};
use super::ports::{ContainerPort, PortRef, PortRule, Protocol};

/// Fixed seed (unless `PROPTEST_RNG_SEED` is set), no persistence, `cases` cases.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let d = ProptestConfig::default();
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: match d.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0x5111_ce00),
            fixed => fixed,
        },
        ..d
    }
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];

fn labels(keys: &'static [&'static str]) -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(
        prop::sample::select(keys).prop_map(str::to_string),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string),
        0..3,
    )
}

fn requirement(keys: &'static [&'static str]) -> impl Strategy<Value = Requirement> {
    (
        prop::sample::select(keys),
        prop::sample::select(vec![
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
        ]),
        prop::sample::subsequence(vec!["a", "b", "c", "x", "y"], 1..3),
    )
        .prop_map(|(key, operator, values)| {
            let values = match operator {
                Operator::In | Operator::NotIn => values.iter().map(|v| v.to_string()).collect(),
                _ => vec![],
            };
            Requirement {
                key: key.to_string(),
                operator,
                values,
            }
        })
}

/// matchLabels become `In` with one value, so a vector of requirements covers both forms.
fn selector(keys: &'static [&'static str]) -> impl Strategy<Value = Selector> {
    prop::collection::vec(requirement(keys), 0..3).prop_map(|mut requirements| {
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    })
}

const POD_KEYS: &[&str] = &["app", "tier"];
const NS_KEYS: &[&str] = &["team", "kubernetes.io/metadata.name"];

fn ip_block() -> impl Strategy<Value = IpBlock> {
    prop::sample::select(vec![
        ("10.0.0.0/29", vec![]),
        ("10.0.0.0/29", vec!["10.0.0.0/31"]),
        ("10.0.0.4/30", vec!["10.0.0.5/32"]),
        ("10.0.0.0/24", vec!["10.0.0.2/31", "10.0.0.6/32"]),
        ("fd00::/125", vec!["fd00::2/127"]),
        ("0.0.0.0/0", vec!["10.0.0.0/30"]),
    ])
    .prop_map(|(cidr, except)| IpBlock {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (prop::option::of(selector(NS_KEYS)), selector(POD_KEYS)).prop_map(|(ns, pods)| {
            Peer::Pods {
                namespaces: ns.map_or(NamespaceScope::PolicyNamespace, NamespaceScope::Selected),
                pods,
            }
        }),
        ip_block().prop_map(Peer::IpBlock),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(Protocol::ALL.to_vec())
}

fn port_rule() -> impl Strategy<Value = PortRule> {
    (protocol(), 0u8..4, 80u16..84, 0u16..3).prop_map(|(protocol, form, n, span)| match form {
        0 => PortRule {
            protocol,
            port: None,
            end_port: None,
        },
        1 => PortRule {
            protocol,
            port: Some(PortRef::Number(n)),
            end_port: None,
        },
        2 => PortRule {
            protocol,
            port: Some(PortRef::Number(n)),
            end_port: Some(n + span),
        },
        _ => PortRule {
            protocol,
            port: Some(PortRef::Name(if n % 2 == 0 { "web" } else { "dns" }.into())),
            end_port: None,
        },
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(peer(), 0..3),
        prop::collection::vec(port_rule(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop::option::of(prop::collection::vec(rule(), 0..3))
}

/// Namespace index, labels, host network, address bits, (named, port, protocol) ports.
type PodSpec = (usize, Labels, bool, u8, Vec<(bool, u16, Protocol)>);

fn pod() -> impl Strategy<Value = PodSpec> {
    (
        0..NAMESPACES.len(),
        labels(POD_KEYS),
        prop::bool::weighted(0.1),
        0u8..16,
        prop::collection::vec((any::<bool>(), 80u16..84, protocol()), 0..3),
    )
}

/// A random cluster built through the model's own `upsert_*` (what the watchers do).
pub(crate) fn cluster() -> impl Strategy<Value = Cluster> {
    let namespaces = prop::collection::vec(labels(&["team"]), NAMESPACES.len());
    let policy = (0..NAMESPACES.len(), selector(POD_KEYS), rules(), rules());
    (
        namespaces,
        prop::collection::vec(pod(), 1..8),
        prop::collection::vec(policy, 0..4),
        prop::option::weighted(0.2, 0..NAMESPACES.len()),
    )
        .prop_map(|(ns_labels, pods, policies, deleted)| {
            let mut c = Cluster::default();
            for (name, l) in NAMESPACES.iter().zip(ns_labels) {
                c.upsert_namespace(Namespace::new(name, l));
            }
            for (i, (ns, labels, host_network, ip, ports)) in pods.into_iter().enumerate() {
                // Bits 0-2: the IPv4 host; bit 3: IPv6 too. Some pods share an address.
                let mut ips: Vec<IpAddr> = vec![IpAddr::from([10, 0, 0, ip & 7])];
                if ip & 8 != 0 {
                    ips.push(format!("fd00::{}", ip & 7).parse().unwrap());
                }
                if ip == 15 {
                    ips.remove(0); // IPv6 only
                }
                let ports = ports
                    .into_iter()
                    .map(|(named, port, protocol)| ContainerPort {
                        name: named.then(|| if port % 2 == 0 { "web" } else { "dns" }.into()),
                        port,
                        protocol,
                    })
                    .collect();
                c.upsert_pod(Pod {
                    namespace: NAMESPACES[ns].into(),
                    name: format!("p{i}"),
                    labels,
                    ports,
                    node: None,
                    host_network,
                    ips,
                });
            }
            for (i, (ns, pod_selector, ingress, egress)) in policies.into_iter().enumerate() {
                c.upsert_policy(Policy {
                    namespace: NAMESPACES[ns].into(),
                    name: format!("n{i}"),
                    pod_selector,
                    ingress,
                    egress,
                });
            }
            // A watched cluster may lose a Namespace before its pods.
            if let Some(ns) = deleted {
                c.namespaces.remove(NAMESPACES[ns]);
            }
            c
        })
}

/// The address ipBlocks see on each pod of a pair: IPv4 when both have one, else IPv6 when
/// both have one, else each pod's first (sluice's rule, not the API's).
fn addresses(a: &Pod, b: &Pod) -> (Option<IpAddr>, Option<IpAddr>) {
    for v4 in [true, false] {
        let pick = |p: &Pod| p.ips.iter().copied().find(|ip| ip.is_ipv4() == v4);
        if let (Some(x), Some(y)) = (pick(a), pick(b)) {
            return (Some(x), Some(y));
        }
    }
    (a.ips.first().copied(), b.ips.first().copied())
}

/// One side read straight from the predicates: `subject` is the pod whose policies apply,
/// `other`/`other_ip` the far end, `dst` the destination of the connection.
pub(crate) fn side_allows(
    c: &Cluster,
    dir: Direction,
    subject: &Pod,
    other: Option<&Pod>,
    other_ip: Option<IpAddr>,
    dst: Option<&Pod>,
    col: PortProto,
) -> bool {
    let isolating: Vec<&Policy> = c
        .policies
        .values()
        .filter(|p| policy_isolates(p, subject, dir))
        .collect();
    isolating.is_empty()
        || isolating.iter().any(|p| {
            p.rules(dir).unwrap_or_default().iter().any(|r| {
                rule_peer(c, &p.namespace, r, other, other_ip).is_some()
                    && rule_port(&r.ports, col.protocol, col.port, dst).is_some()
            })
        })
}

/// A pod-to-pod verdict read straight from the predicates.
pub(crate) fn allowed(c: &Cluster, from: &Pod, to: &Pod, protocol: Protocol, port: u16) -> bool {
    if from.object_name() == to.object_name() {
        return true;
    }
    let (src_ip, dst_ip) = addresses(from, to);
    side_allows(
        c,
        Direction::Egress,
        from,
        Some(to),
        dst_ip,
        Some(to),
        PortProto { port, protocol },
    ) && side_allows(
        c,
        Direction::Ingress,
        to,
        Some(from),
        src_ip,
        Some(to),
        PortProto { port, protocol },
    )
}

const COLUMNS: [(u16, Protocol); 6] = [
    (80, Protocol::Tcp),
    (81, Protocol::Tcp),
    (82, Protocol::Udp),
    (83, Protocol::Udp),
    (80, Protocol::Sctp),
    (84, Protocol::Tcp),
];

proptest! {
    #![proptest_config(config(256))]

    /// The oracle gives, for every pod pair and port, what the predicates give.
    #[test]
    fn oracle_agrees_with_predicates(c in cluster()) {
        for from in c.pods.values() {
            for to in c.pods.values() {
                for &(port, protocol) in &COLUMNS {
                    let v = evaluate(&c, &Flow {
                        from: Endpoint::Pod(from.object_name()),
                        to: Endpoint::Pod(to.object_name()),
                        port: PortRef::Number(port),
                        protocol,
                    }).unwrap();
                    prop_assert_eq!(v.allowed, allowed(&c, from, to, protocol, port),
                        "{} -> {} {}/{}\n{}", from.object_name(), to.object_name(), port, protocol, v);
                }
            }
        }
    }

    /// Flows to and from an address outside the snapshot: only ipBlocks and rules without
    /// peers reach it, and only numeric ports match towards it.
    #[test]
    fn oracle_agrees_with_predicates_for_outside_addresses(c in cluster(), last in 0u8..=255) {
        let outside: IpAddr = IpAddr::from([192, 168, 0, last]);
        for pod in c.pods.values() {
            for &(port, protocol) in &COLUMNS {
                let flow = |from, to| Flow { from, to, port: PortRef::Number(port), protocol };
                let out = evaluate(&c, &flow(Endpoint::Pod(pod.object_name()), Endpoint::Ip(outside))).unwrap();
                let want = pod.host_network
                    || side_allows(&c, Direction::Egress, pod, None, Some(outside), None, PortProto { port, protocol });
                prop_assert_eq!(out.allowed, want, "{}", out);
                let inb = evaluate(&c, &flow(Endpoint::Ip(outside), Endpoint::Pod(pod.object_name()))).unwrap();
                let want = pod.host_network
                    || side_allows(&c, Direction::Ingress, pod, None, Some(outside), Some(pod), PortProto { port, protocol });
                prop_assert_eq!(inb.allowed, want, "{}", inb);
            }
        }
    }

    /// The grouped bitset table (label groups, namespace-first peer sets, per-group port
    /// caches) gives what the predicates give.
    #[test]
    fn matrix_agrees_with_predicates(c in cluster()) {
        let columns: Vec<PortProto> = COLUMNS.iter().map(|&(port, protocol)| PortProto { port, protocol }).collect();
        let m = compute(&c, &columns);
        for (i, from) in m.pods.iter().enumerate() {
            for (j, to) in m.pods.iter().enumerate() {
                for (k, col) in columns.iter().enumerate() {
                    let want = allowed(&c, &c.pods[from], &c.pods[to], col.protocol, col.port);
                    prop_assert_eq!(m.allowed(i, j, k), want, "{} -> {} {:?}", from, to, col);
                }
            }
        }
    }

    /// `Cluster::pod_peer_matches` and `Policy::selects`/`isolates` are the predicates.
    #[test]
    fn model_methods_are_the_predicates(c in cluster(), scope in prop::option::of(selector(NS_KEYS)), pods in selector(POD_KEYS)) {
        let scope = scope.map_or(NamespaceScope::PolicyNamespace, NamespaceScope::Selected);
        for pod in c.pods.values() {
            let want = clause::peer_pod_selector_selects(&pods, pod)
                && clause::peer_namespace_selects(&c, "x", &scope, &pod.namespace);
            prop_assert_eq!(c.pod_peer_matches("x", &scope, &pods, pod), want);
            prop_assert_eq!(pod_peer_selects(&c, "x", &scope, &pods, pod), want);
            for p in c.policies.values() {
                for dir in [Direction::Ingress, Direction::Egress] {
                    prop_assert_eq!(p.isolates(pod, dir), policy_applies(p, dir) && policy_selects(p, pod));
                }
            }
        }
    }
}

fn pod_with(ns: &str, labels: &[(&str, &str)], ports: &[(&str, u16, Protocol)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: "p".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: ports
            .iter()
            .map(|&(n, port, protocol)| ContainerPort {
                name: Some(n.into()),
                port,
                protocol,
            })
            .collect(),
        node: None,
        host_network: false,
        ips: vec![],
    }
}

#[test]
fn policy_types_default_to_ingress_and_egress_when_egress_rules_exist() {
    let none: Option<&[&str]> = None;
    assert!(policy_types_include(none, false, Direction::Ingress));
    assert!(!policy_types_include(none, false, Direction::Egress));
    assert!(policy_types_include(none, true, Direction::Egress));
    let empty: &[&str] = &[];
    assert!(!policy_types_include(Some(empty), false, Direction::Egress));
    assert!(policy_types_include(Some(empty), true, Direction::Egress));
    let egress_only: &[&str] = &["Egress"];
    assert!(!policy_types_include(
        Some(egress_only),
        false,
        Direction::Ingress
    ));
    assert!(policy_types_include(
        Some(egress_only),
        false,
        Direction::Egress
    ));
}

#[test]
fn port_clauses() {
    let dst = pod_with("x", &[], &[("web", 8080, Protocol::Tcp)]);
    let range = PortRule {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Number(80)),
        end_port: Some(82),
    };
    assert!(port_clause_matches(&range, Protocol::Tcp, 82, None));
    assert!(!port_clause_matches(&range, Protocol::Tcp, 83, None));
    assert!(!port_clause_matches(&range, Protocol::Udp, 80, None));
    let named = PortRule {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Name("web".into())),
        end_port: None,
    };
    assert!(port_clause_matches(&named, Protocol::Tcp, 8080, Some(&dst)));
    assert!(!port_clause_matches(&named, Protocol::Tcp, 8080, None));
    assert!(!port_clause_matches(
        &named,
        Protocol::Udp,
        8080,
        Some(&dst)
    ));
    let any_udp = PortRule {
        protocol: Protocol::Udp,
        port: None,
        end_port: None,
    };
    assert!(port_clause_matches(&any_udp, Protocol::Udp, 65535, None));
    assert_eq!(rule_port(&[], Protocol::Sctp, 1, None), Some(None));
    assert_eq!(
        rule_port(&[range, any_udp], Protocol::Udp, 9, None),
        Some(Some(1))
    );
}

#[test]
fn peers() {
    let mut c = Cluster::default();
    c.upsert_namespace(Namespace::new(
        "y",
        [("team".to_string(), "a".to_string())].into(),
    ));
    let pod = pod_with("y", &[("app", "a")], &[]);
    let app_a = Selector {
        requirements: vec![Requirement {
            key: "app".into(),
            operator: Operator::In,
            values: vec!["a".into()],
        }],
    };
    let here = NamespaceScope::PolicyNamespace;
    assert!(pod_peer_selects(&c, "y", &here, &app_a, &pod));
    assert!(!pod_peer_selects(&c, "x", &here, &app_a, &pod));
    let every_ns = NamespaceScope::Selected(Selector::everything());
    assert!(pod_peer_selects(&c, "x", &every_ns, &app_a, &pod));
    let host = Pod {
        host_network: true,
        ..pod.clone()
    };
    assert!(!pod_peer_selects(&c, "y", &here, &app_a, &host));
    // A namespace the snapshot lost has no labels, so no namespaceSelector selects it.
    c.namespaces.remove("y");
    assert!(!pod_peer_selects(&c, "x", &every_ns, &app_a, &pod));
    let block = IpBlock {
        cidr: "10.0.0.0/24".parse().unwrap(),
        except: vec!["10.0.0.0/30".parse().unwrap()],
    };
    assert!(ip_block_selects(&block, "10.0.0.4".parse().unwrap()));
    assert!(!ip_block_selects(&block, "10.0.0.3".parse().unwrap()));
    let rule = Rule {
        peers: vec![Peer::IpBlock(block)],
        ports: vec![],
    };
    assert_eq!(
        rule_peer(&c, "x", &rule, None, Some("10.0.0.9".parse().unwrap())),
        Some(Some(0))
    );
    assert_eq!(rule_peer(&c, "x", &rule, Some(&pod), None), None);
}
