//! Seeded synthetic clusters for benchmarks: realistic policy shapes at any scale.
//!
//! Each namespace holds apps of three tiers; each app is a deployment of a few replicas.
//! Policies per namespace: a default deny, DNS egress, tier-to-tier allows by app and tier
//! with named and numeric ports, a monitoring namespace selector, and ipBlocks. Pure: the same
//! parameters give the same cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::policy::ipblock::IpBlock;
use crate::policy::labels::{Operator, Requirement, Selector};
use crate::policy::model::{Cluster, Namespace, NamespaceScope, Peer, Pod, Policy, Rule};
use crate::policy::ports::{ContainerPort, PortRef, PortRule, Protocol};

#[derive(Debug, Clone)]
pub struct SynthParams {
    pub pods: usize,
    pub policies: usize,
    pub namespaces: usize,
    pub nodes: usize,
    pub seed: u64,
    /// Give each pod a unique label (like a StatefulSet's pod-name label), so no two pods
    /// can be grouped: the worst case for the matrix.
    pub unique_pod_labels: bool,
}

/// splitmix64: tiny, seeded, good enough to spread synthetic objects.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

const TIERS: [&str; 3] = ["web", "backend", "data"];

fn sel(pairs: &[(&str, &str)]) -> Selector {
    let mut requirements: Vec<Requirement> = pairs
        .iter()
        .map(|(k, v)| Requirement {
            key: k.to_string(),
            operator: Operator::In,
            values: vec![v.to_string()],
        })
        .collect();
    requirements.sort();
    Selector { requirements }
}

fn tcp(port: PortRef) -> PortRule {
    PortRule {
        protocol: Protocol::Tcp,
        port: Some(port),
        end_port: None,
    }
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Pod IPs: node `n` owns 10.(n / 256 + 1).(n % 256).0/24 ... extended to /16 per node when
/// a node has more than 254 pods; here each node gets a /20 inside 10.0.0.0/8.
fn pod_ip(node: usize, index_on_node: usize) -> IpAddr {
    let base: u32 = 0x0A00_0000 + ((node as u32) << 12) + 2 + index_on_node as u32;
    IpAddr::V4(Ipv4Addr::from(base))
}

pub fn generate(p: &SynthParams) -> Cluster {
    let mut rng = Rng::new(p.seed);
    let mut c = Cluster::default();
    let namespaces = p.namespaces.max(1);
    let ns_name = |i: usize| format!("ns-{i}");
    for i in 0..namespaces {
        let mut labels = BTreeMap::new();
        labels.insert("team".to_string(), format!("team-{}", i % 20));
        labels.insert(
            "env".to_string(),
            if i % 3 == 0 { "prod" } else { "dev" }.to_string(),
        );
        c.upsert_namespace(Namespace::new(&ns_name(i), labels));
    }
    c.upsert_namespace(Namespace::new(
        "monitoring",
        [("team".to_string(), "observability".to_string())].into(),
    ));
    // Apps of 3 replicas; pods spread round-robin over nodes.
    let apps_per_ns = (p.pods / 3 / namespaces).max(1);
    let mut on_node = vec![0usize; p.nodes.max(1)];
    for i in 0..p.pods {
        let app = i / 3;
        let ns = ns_name((app / apps_per_ns) % namespaces);
        let tier = TIERS[app % 3];
        let mut labels = BTreeMap::new();
        labels.insert("app".to_string(), format!("app-{}", app % apps_per_ns));
        labels.insert("tier".to_string(), tier.to_string());
        if p.unique_pod_labels {
            labels.insert("pod".to_string(), format!("pod-{i}"));
        }
        let node = i % p.nodes.max(1);
        let ip = pod_ip(node, on_node[node]);
        on_node[node] += 1;
        let port = match tier {
            "web" => 8080,
            "backend" => 8000 + (app % 3) as u16,
            _ => 5432,
        };
        c.upsert_pod(Pod {
            namespace: ns,
            name: format!("pod-{i}"),
            labels,
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    port,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("metrics".into()),
                    port: 9090,
                    protocol: Protocol::Tcp,
                },
            ],
            node: Some(node_name(node)),
            host_network: false,
            ips: vec![ip],
        });
    }
    // Policies: cycle through shapes, one namespace at a time.
    for i in 0..p.policies {
        // Every namespace gets the shapes in turn, so small policy counts still mix them.
        let ns_index = (i / 6) % namespaces;
        let ns = ns_name(ns_index);
        let app = format!("app-{}", rng.below(apps_per_ns));
        let shape = i % 6;
        let (pod_selector, ingress, egress) = match shape {
            // Default deny: ingress everywhere, egress too in every fourth namespace.
            0 => (
                Selector::default(),
                Some(vec![]),
                ns_index.is_multiple_of(4).then(Vec::new),
            ),
            1 => (
                Selector::default(),
                None,
                Some(vec![
                    // Anything inside the namespace.
                    Rule {
                        peers: vec![Peer::Pods {
                            namespaces: NamespaceScope::PolicyNamespace,
                            pods: Selector::default(),
                        }],
                        ports: vec![],
                    },
                    Rule {
                        peers: vec![Peer::Pods {
                            namespaces: NamespaceScope::Selected(sel(&[(
                                "kubernetes.io/metadata.name",
                                "kube-system",
                            )])),
                            pods: sel(&[("k8s-app", "kube-dns")]),
                        }],
                        ports: vec![
                            PortRule {
                                protocol: Protocol::Udp,
                                port: Some(PortRef::Number(53)),
                                end_port: None,
                            },
                            tcp(PortRef::Number(53)),
                        ],
                    },
                ]),
            ),
            2 => (
                sel(&[("app", &app), ("tier", "backend")]),
                Some(vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: NamespaceScope::PolicyNamespace,
                        pods: sel(&[("tier", "web")]),
                    }],
                    ports: vec![tcp(PortRef::Name("http".into()))],
                }]),
                None,
            ),
            3 => (
                sel(&[("tier", "data")]),
                Some(vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: NamespaceScope::PolicyNamespace,
                        pods: sel(&[("app", &app)]),
                    }],
                    ports: vec![tcp(PortRef::Number(5432))],
                }]),
                None,
            ),
            4 => (
                Selector::default(),
                Some(vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: NamespaceScope::Selected(sel(&[("team", "observability")])),
                        pods: Selector::default(),
                    }],
                    ports: vec![tcp(PortRef::Name("metrics".into()))],
                }]),
                None,
            ),
            _ => (
                sel(&[("app", &app)]),
                Some(vec![Rule {
                    peers: vec![
                        Peer::IpBlock(IpBlock {
                            cidr: "10.0.0.0/8".parse().unwrap(),
                            except: vec![format!("10.{}.0.0/16", rng.below(4)).parse().unwrap()],
                        }),
                        Peer::Pods {
                            namespaces: NamespaceScope::Selected(sel(&[("env", "prod")])),
                            pods: sel(&[("tier", "web")]),
                        },
                    ],
                    ports: vec![PortRule {
                        protocol: Protocol::Tcp,
                        port: Some(PortRef::Number(8000)),
                        end_port: Some(8002),
                    }],
                }]),
                None,
            ),
        };
        c.upsert_policy(Policy {
            namespace: ns,
            name: format!("policy-{i}"),
            pod_selector,
            ingress,
            egress,
        });
    }
    c
}
