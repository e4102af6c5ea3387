//! The policy model back into Kubernetes objects, for tools that write to an API server (the
//! conformance suite through the API). `networkpolicy::convert(export::policy(p)) == p`, and
//! `cnp::read(export::cluster_policy(c)) == c` (v1beta1).

use k8s_openapi::api::core::v1::{
    Container, ContainerPort as K8sContainerPort, Namespace as K8sNamespace, Pod as K8sPod, PodSpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::policy::cnp::{self, ClusterPolicy, CnpPeer, CnpPort, CnpRule, Subject};
use crate::policy::labels::{Operator, Selector};
use crate::policy::model::{
    Namespace, NamespaceScope, Peer, Pod, Policy, Rule, NAMESPACE_NAME_LABEL,
};
use crate::policy::ports::{PortRef, PortRule, Protocol};

pub fn selector(s: &Selector) -> LabelSelector {
    let exprs: Vec<LabelSelectorRequirement> = s
        .requirements
        .iter()
        .map(|r| LabelSelectorRequirement {
            key: r.key.clone(),
            operator: match r.operator {
                Operator::In => "In",
                Operator::NotIn => "NotIn",
                Operator::Exists => "Exists",
                Operator::DoesNotExist => "DoesNotExist",
            }
            .to_string(),
            values: (!r.values.is_empty()).then(|| r.values.clone()),
        })
        .collect();
    LabelSelector {
        match_expressions: (!exprs.is_empty()).then_some(exprs),
        match_labels: None,
    }
}

fn peer(p: &Peer) -> NetworkPolicyPeer {
    match p {
        Peer::IpBlock(b) => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: b.cidr.to_string(),
                except: (!b.except.is_empty())
                    .then(|| b.except.iter().map(|e| e.to_string()).collect()),
            }),
            ..Default::default()
        },
        Peer::Pods {
            namespaces: NamespaceScope::PolicyNamespace,
            pods,
        } => NetworkPolicyPeer {
            pod_selector: Some(selector(pods)),
            ..Default::default()
        },
        Peer::Pods {
            namespaces: NamespaceScope::Selected(ns),
            pods,
        } => NetworkPolicyPeer {
            namespace_selector: Some(selector(ns)),
            pod_selector: (!pods.is_everything()).then(|| selector(pods)),
            ..Default::default()
        },
    }
}

fn port(p: &PortRule) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(p.protocol.as_str().to_string()),
        port: p.port.as_ref().map(|r| match r {
            PortRef::Number(n) => IntOrString::Int(i32::from(*n)),
            PortRef::Name(s) => IntOrString::String(s.clone()),
        }),
        end_port: p.end_port.map(i32::from),
    }
}

type Parts = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn parts(r: &Rule) -> Parts {
    (
        (!r.peers.is_empty()).then(|| r.peers.iter().map(peer).collect()),
        (!r.ports.is_empty()).then(|| r.ports.iter().map(port).collect()),
    )
}

pub fn policy(p: &Policy) -> NetworkPolicy {
    let mut types = Vec::new();
    if p.ingress.is_some() {
        types.push("Ingress".to_string());
    }
    if p.egress.is_some() {
        types.push("Egress".to_string());
    }
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(&p.pod_selector)),
            policy_types: Some(types),
            ingress: p.ingress.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        let (from, ports) = parts(r);
                        NetworkPolicyIngressRule { from, ports }
                    })
                    .collect()
            }),
            egress: p.egress.as_ref().map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        let (to, ports) = parts(r);
                        NetworkPolicyEgressRule { to, ports }
                    })
                    .collect()
            }),
        }),
    }
}

fn raw_pods(namespaces: &Selector, pods: &Selector) -> cnp::RawNamespacedPod {
    cnp::RawNamespacedPod {
        namespace_selector: Some(selector(namespaces)),
        pod_selector: Some(selector(pods)),
    }
}

fn cnp_ports(ports: &[CnpPort]) -> Option<Vec<cnp::RawProtocol>> {
    if ports.is_empty() {
        return None; // every protocol and port
    }
    let out = ports
        .iter()
        .map(|p| match p {
            CnpPort::Named(n) => cnp::RawProtocol {
                destination_named_port: Some(n.clone()),
                ..Default::default()
            },
            CnpPort::Range { protocol, lo, hi } => {
                // A single port is `number`: the CRD refuses a range with start == end.
                let port = if lo == hi {
                    cnp::RawPort {
                        number: Some(i64::from(*lo)),
                        range: None,
                    }
                } else {
                    cnp::RawPort {
                        number: None,
                        range: Some(cnp::RawRange {
                            start: Some(i64::from(*lo)),
                            end: Some(i64::from(*hi)),
                        }),
                    }
                };
                let pp = Some(cnp::RawProtoPort {
                    destination_port: Some(port),
                });
                match protocol {
                    Protocol::Tcp => cnp::RawProtocol {
                        tcp: pp,
                        ..Default::default()
                    },
                    Protocol::Udp => cnp::RawProtocol {
                        udp: pp,
                        ..Default::default()
                    },
                    Protocol::Sctp => cnp::RawProtocol {
                        sctp: pp,
                        ..Default::default()
                    },
                }
            }
        })
        .collect();
    Some(out)
}

/// A rule the model only knows fails closed (a `nodes` or `domainNames` peer, an unknown
/// field) cannot be written back: what it said is not in the model.
fn check_rule(p: &ClusterPolicy, dir: &str, i: usize, r: &CnpRule) -> Result<(), String> {
    match &r.fail_closed {
        Some(why) => Err(format!(
            "{} {}: spec.{dir}[{i}] cannot be written back ({why}): the model keeps only that it fails closed",
            cnp::KIND, p.name
        )),
        None => Ok(()),
    }
}

/// A ClusterNetworkPolicy as a v1beta1 object (served by both CRD channels). Errors name
/// the rule the model cannot express as an object.
pub fn cluster_policy(p: &ClusterPolicy) -> Result<cnp::RawCnp, String> {
    let subject = match &p.subject {
        Subject::Namespaces(ns) => cnp::RawSubject {
            namespaces: Some(selector(ns)),
            pods: None,
        },
        Subject::Pods { namespaces, pods } => cnp::RawSubject {
            namespaces: None,
            pods: Some(raw_pods(namespaces, pods)),
        },
    };
    let mut ingress = Vec::new();
    for (i, r) in p.ingress.iter().enumerate() {
        check_rule(p, "ingress", i, r)?;
        let mut from = Vec::new();
        for (j, peer) in r.peers.iter().enumerate() {
            from.push(match peer {
                CnpPeer::Namespaces(ns) => cnp::RawIngressPeer {
                    namespaces: Some(selector(ns)),
                    pods: None,
                },
                CnpPeer::Pods { namespaces, pods } => cnp::RawIngressPeer {
                    namespaces: None,
                    pods: Some(raw_pods(namespaces, pods)),
                },
                CnpPeer::Networks(_) => {
                    return Err(format!(
                        "{} {}: spec.ingress[{i}].from[{j}]: networks peers are egress only",
                        cnp::KIND,
                        p.name
                    ))
                }
            });
        }
        ingress.push(cnp::RawIngressRule {
            name: r.name.clone(),
            action: Some(r.action.to_string()),
            from: Some(from),
            protocols: cnp_ports(&r.ports),
        });
    }
    let mut egress = Vec::new();
    for (i, r) in p.egress.iter().enumerate() {
        check_rule(p, "egress", i, r)?;
        let to = r
            .peers
            .iter()
            .map(|peer| match peer {
                CnpPeer::Namespaces(ns) => cnp::RawEgressPeer {
                    namespaces: Some(selector(ns)),
                    ..Default::default()
                },
                CnpPeer::Pods { namespaces, pods } => cnp::RawEgressPeer {
                    pods: Some(raw_pods(namespaces, pods)),
                    ..Default::default()
                },
                CnpPeer::Networks(nets) => cnp::RawEgressPeer {
                    networks: Some(nets.iter().map(|n| n.to_string()).collect()),
                    ..Default::default()
                },
            })
            .collect();
        egress.push(cnp::RawEgressRule {
            name: r.name.clone(),
            action: Some(r.action.to_string()),
            to: Some(to),
            protocols: cnp_ports(&r.ports),
        });
    }
    Ok(cnp::RawCnp {
        api_version: Some(cnp::API_VERSIONS[0].to_string()),
        kind: Some(cnp::KIND.to_string()),
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            ..Default::default()
        },
        spec: Some(cnp::RawSpec {
            tier: Some(p.tier.to_string()),
            priority: Some(i64::from(p.priority)),
            subject: Some(subject),
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
        }),
        status: None,
    })
}

/// The namespace; `kubernetes.io/metadata.name` is left to the API server, which sets it.
pub fn namespace(n: &Namespace) -> K8sNamespace {
    let mut labels = n.labels.clone();
    labels.remove(NAMESPACE_NAME_LABEL);
    K8sNamespace {
        metadata: ObjectMeta {
            name: Some(n.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A pod as a workload would declare it (no status: the kubelet writes that). One container
/// declares every port; no service account token, and no grace period so deletes are
/// immediate when nothing runs the containers.
pub fn pod(p: &Pod, image: &str) -> K8sPod {
    let ports: Vec<K8sContainerPort> = p
        .ports
        .iter()
        .map(|c| K8sContainerPort {
            name: c.name.clone(),
            container_port: i32::from(c.port),
            protocol: Some(c.protocol.as_str().to_string()),
            ..Default::default()
        })
        .collect();
    K8sPod {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: Some(p.labels.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: p.node.clone(),
            host_network: p.host_network.then_some(true),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(0),
            containers: vec![Container {
                name: "serve".into(),
                image: Some(image.to_string()),
                ports: (!ports.is_empty()).then_some(ports),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::networkpolicy;
    use crate::policy::objects::ClusterBuilder;

    #[test]
    fn policies_round_trip_through_kubernetes_objects() {
        let text = r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}, matchExpressions: [{key: t, operator: NotIn, values: [b, a]}]}
  ingress:
  - from:
    - podSelector: {}
    - namespaceSelector: {matchExpressions: [{key: ns, operator: Exists}]}
      podSelector: {matchLabels: {app: b}}
    - namespaceSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 80}, {port: http, protocol: UDP}, {port: 81, endPort: 90, protocol: SCTP}, {protocol: UDP}]
  - {}
  egress:
  - to: [{podSelector: {matchExpressions: [{key: x, operator: DoesNotExist}]}}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: q, namespace: x}
spec: {podSelector: {}, policyTypes: [Egress]}
"#;
        let mut b = ClusterBuilder::new();
        b.add_text("t", text);
        let (cluster, _) = b.build();
        assert_eq!(cluster.policies.len(), 2, "{:?}", cluster.errors);
        for p in cluster.policies.values() {
            let back = networkpolicy::convert(&policy(p), "default")
                .policy
                .unwrap();
            assert_eq!(&back, p);
        }
    }

    /// Hand-written CNPs covering every subject, peer and port form, both tiers and every
    /// action: model -> v1beta1 object -> `cnp::read` gives the same model.
    #[test]
    fn cluster_policies_round_trip_through_kubernetes_objects() {
        let text = r#"
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: admin-a}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - name: from-b
    action: Accept
    from:
    - namespaces: {matchExpressions: [{key: team, operator: In, values: [b, c]}]}
    - pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}
    protocols: [{tcp: {destinationPort: {number: 80}}}, {udp: {destinationPort: {range: {start: 5000, end: 5010}}}}, {destinationNamedPort: http}]
  - action: Deny
    from: [{namespaces: {}}]
  egress:
  - action: Pass
    to: [{networks: [10.0.0.0/8, "fd00::/64"]}, {pods: {namespaceSelector: {matchLabels: {x: y}}, podSelector: {matchExpressions: [{key: t, operator: DoesNotExist}]}}}]
    protocols: [{sctp: {destinationPort: {number: 9}}}]
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: baseline-b}
spec:
  tier: Baseline
  priority: 1000
  subject: {pods: {namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}, podSelector: {matchLabels: {app: db}}}}
  egress:
  - action: Deny
    to: [{networks: ["0.0.0.0/0"]}]
"#;
        let mut b = ClusterBuilder::new();
        b.add_text("t", text);
        let (cluster, _) = b.build();
        assert_eq!(cluster.cluster_policies.len(), 2, "{:?}", cluster.errors);
        for p in cluster.cluster_policies.values() {
            let doc = serde_json::to_value(cluster_policy(p).unwrap()).unwrap();
            assert_eq!(doc["apiVersion"], "policy.networking.k8s.io/v1beta1");
            let read = cnp::read(&doc);
            assert!(read.unknown.is_empty(), "{:?}", read.unknown);
            assert_eq!(&read.policy.unwrap(), p);
        }
        // What the round trip is held to, written out for one rule (not derived from export).
        let a = &cluster.cluster_policies["admin-a"];
        let doc = serde_json::to_value(cluster_policy(a).unwrap()).unwrap();
        assert_eq!(
            doc["spec"]["ingress"][0]["protocols"][1],
            serde_json::json!({"udp": {"destinationPort": {"range": {"start": 5000, "end": 5010}}}})
        );
        assert_eq!(doc["spec"]["ingress"][0]["name"], "from-b");
        assert_eq!(doc["spec"]["tier"], "Admin");
    }

    #[test]
    fn a_cluster_policy_rule_that_only_fails_closed_cannot_be_written_back() {
        let text = r#"
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: n}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{nodes: {matchLabels: {role: control}}}]
"#;
        let mut b = ClusterBuilder::new();
        b.add_text("t", text);
        let (cluster, _) = b.build();
        let err = cluster_policy(&cluster.cluster_policies["n"]).unwrap_err();
        assert!(
            err.contains("ClusterNetworkPolicy n: spec.egress[0]"),
            "{err}"
        );
    }

    #[test]
    fn pods_and_namespaces_round_trip() {
        let text = r#"
{"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "x", "labels": {"team": "a"}}}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
"#;
        let mut b = ClusterBuilder::new();
        b.add_text("t", text);
        let (cluster, _) = b.build();
        let p = cluster.pods.values().next().unwrap();
        let back = crate::policy::objects::pod_from_k8s(&pod(p, "img")).unwrap();
        assert_eq!(&back, p);
        let n = &cluster.namespaces["x"];
        let back = crate::policy::objects::namespace_from_k8s(&namespace(n)).unwrap();
        assert_eq!(&back, n);
    }
}
