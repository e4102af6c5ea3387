//! The policy model back into Kubernetes objects, for tools that write to an API server (the
//! conformance suite through the API). `networkpolicy::convert(export::policy(p)) == p`.

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

use crate::policy::labels::{Operator, Selector};
use crate::policy::model::{
    Namespace, NamespaceScope, Peer, Pod, Policy, Rule, NAMESPACE_NAME_LABEL,
};
use crate::policy::ports::{PortRef, PortRule};

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
