//! Kubernetes objects from the API into changes of the policy model.
//!
//! Validation is the policy core's (`pod_from_k8s`, `namespace_from_k8s`,
//! `networkpolicy::convert`, `cnp::read`); this module only decides what an event means for
//! the snapshot.

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::policy::cnp::{self, ClusterPolicy, Subject};
use crate::policy::labels::Selector;
use crate::policy::model::{Cluster, InvalidPolicy, Namespace, ObjectName, Pod, Policy, Problem};
use crate::policy::{networkpolicy, objects};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    Namespaces,
    Policies,
    /// ClusterNetworkPolicies. Listed (possibly as "none") even where the CRD is not
    /// installed, so the agent never enforces a snapshot missing the CNPs that exist.
    ClusterPolicies,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Pods,
        Kind::Namespaces,
        Kind::Policies,
        Kind::ClusterPolicies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pods => "pods",
            Kind::Namespaces => "namespaces",
            Kind::Policies => "networkpolicies",
            Kind::ClusterPolicies => "clusternetworkpolicies",
        }
    }
}

/// One object as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Pod(Pod),
    Namespace(Namespace),
    Policy(Policy),
    /// A policy the API server accepted but sluice cannot enforce (it should not happen: our
    /// validation follows the API server's). The pods it may select fail closed.
    InvalidPolicy {
        name: ObjectName,
        selector: Option<Selector>,
        problems: Vec<Problem>,
    },
    ClusterPolicy(ClusterPolicy),
    /// A ClusterNetworkPolicy the API server accepted but sluice refuses: its subject (when
    /// it alone is valid; None means every pod) fails closed.
    InvalidClusterPolicy {
        name: String,
        subject: Option<Subject>,
        problems: Vec<Problem>,
    },
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pods,
            Object::Namespace(_) => Kind::Namespaces,
            Object::Policy(_) | Object::InvalidPolicy { .. } => Kind::Policies,
            Object::ClusterPolicy(_) | Object::InvalidClusterPolicy { .. } => Kind::ClusterPolicies,
        }
    }

    /// Namespaces and ClusterNetworkPolicies are keyed with an empty namespace.
    pub fn key(&self) -> ObjectName {
        match self {
            Object::Pod(p) => p.object_name(),
            Object::Namespace(n) => ObjectName::new("", &n.name),
            Object::Policy(p) => p.object_name(),
            Object::InvalidPolicy { name, .. } => name.clone(),
            Object::ClusterPolicy(p) => ObjectName::new("", &p.name),
            Object::InvalidClusterPolicy { name, .. } => ObjectName::new("", name),
        }
    }

    /// What is wrong with it, for an object sluice refuses (it is still in the snapshot).
    pub fn problems(&self) -> Option<&[Problem]> {
        match self {
            Object::InvalidPolicy { problems, .. }
            | Object::InvalidClusterPolicy { problems, .. } => Some(problems),
            _ => None,
        }
    }
}

/// What one watch event means for the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Upsert(Object),
    Delete(Kind, ObjectName),
    /// A (re)list finished: these are all the objects of the kind; any other is gone.
    Relisted(Kind, Vec<Object>),
}

/// A pod that finished (Succeeded/Failed) has released its IP, which may already belong to a
/// new pod: it is treated as deleted, as kube-proxy and every policy engine do.
pub fn pod_is_terminal(pod: &K8sPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn key_of(ns: Option<&String>, name: Option<&String>) -> ObjectName {
    ObjectName::new(
        ns.cloned().unwrap_or_default(),
        name.cloned().unwrap_or_default(),
    )
}

/// A pod event: None means the pod no longer counts (terminal phase or invalid).
pub fn pod(p: &K8sPod) -> Result<Option<Object>, Vec<Problem>> {
    if pod_is_terminal(p) {
        return Ok(None);
    }
    objects::pod_from_k8s(p).map(|p| Some(Object::Pod(p)))
}

pub fn pod_key(p: &K8sPod) -> ObjectName {
    key_of(p.metadata.namespace.as_ref(), p.metadata.name.as_ref())
}

pub fn namespace(n: &K8sNamespace) -> Result<Object, Vec<Problem>> {
    objects::namespace_from_k8s(n).map(Object::Namespace)
}

pub fn namespace_key(n: &K8sNamespace) -> ObjectName {
    key_of(None, n.metadata.name.as_ref())
}

/// Never fails: an invalid policy is an object too (its pods fail closed).
pub fn policy(np: &NetworkPolicy) -> Object {
    let converted = networkpolicy::convert(np, "default");
    match converted.policy {
        Ok(p) => Object::Policy(p),
        Err(problems) => Object::InvalidPolicy {
            name: policy_key(np),
            selector: converted.pod_selector,
            problems,
        },
    }
}

pub fn policy_key(np: &NetworkPolicy) -> ObjectName {
    key_of(np.metadata.namespace.as_ref(), np.metadata.name.as_ref())
}

/// A ClusterNetworkPolicy as the API serves it (any served version: one schema), read by
/// [`cnp::read`] exactly like a manifest: the whole object, unknown fields included (the
/// rules carrying them fail closed). Never fails: an invalid CNP is an object too. Also
/// returns convert's warnings (fail-closed rules, ignored fields) for the log.
pub fn cluster_policy(doc: &serde_json::Value) -> (Object, Vec<String>) {
    let read = cnp::read(doc);
    let mut warnings = read.warnings;
    warnings.extend(
        read.unknown
            .iter()
            .map(|f| format!("{} {}: {f}: unknown field", cnp::KIND, read.name)),
    );
    let obj = match read.policy {
        Ok(p) => Object::ClusterPolicy(p),
        Err(problems) => Object::InvalidClusterPolicy {
            name: read.name,
            subject: read.subject,
            problems,
        },
    };
    (obj, warnings)
}

pub fn cluster_policy_key(doc: &serde_json::Value) -> ObjectName {
    ObjectName::new("", doc["metadata"]["name"].as_str().unwrap_or_default())
}

/// Applies one change to a snapshot. Returns whether anything changed.
pub fn apply(cluster: &mut Cluster, change: Change) -> bool {
    match change {
        Change::Upsert(obj) => upsert(cluster, obj),
        Change::Delete(kind, key) => remove(cluster, kind, &key),
        Change::Relisted(kind, objects) => {
            let keep: std::collections::BTreeSet<ObjectName> =
                objects.iter().map(Object::key).collect();
            let gone: Vec<ObjectName> = keys(cluster, kind)
                .into_iter()
                .filter(|k| !keep.contains(k))
                .collect();
            let mut changed = false;
            for k in gone {
                changed |= remove(cluster, kind, &k);
            }
            for obj in objects {
                changed |= upsert(cluster, obj);
            }
            changed
        }
    }
}

fn keys(cluster: &Cluster, kind: Kind) -> Vec<ObjectName> {
    match kind {
        Kind::Pods => cluster.pods.keys().cloned().collect(),
        Kind::Namespaces => cluster
            .namespaces
            .keys()
            .map(|n| ObjectName::new("", n))
            .collect(),
        Kind::Policies => cluster
            .policies
            .keys()
            .chain(cluster.invalid_policies.keys())
            .cloned()
            .collect(),
        Kind::ClusterPolicies => cluster
            .cluster_policies
            .keys()
            .chain(cluster.invalid_cluster_policies.keys())
            .map(|n| ObjectName::new("", n))
            .collect(),
    }
}

fn upsert(cluster: &mut Cluster, obj: Object) -> bool {
    match obj {
        Object::Pod(p) => {
            if cluster.pods.get(&p.object_name()) == Some(&p) {
                return false;
            }
            cluster.upsert_pod(p);
        }
        Object::Namespace(n) => {
            if cluster.namespaces.get(&n.name) == Some(&n) {
                return false;
            }
            cluster.upsert_namespace(n);
        }
        Object::Policy(p) => {
            if cluster.policies.get(&p.object_name()) == Some(&p) {
                return false;
            }
            cluster.upsert_policy(p);
        }
        Object::InvalidPolicy {
            name,
            selector,
            problems,
        } => {
            let invalid = InvalidPolicy { selector, problems };
            if cluster.invalid_policies.get(&name) == Some(&invalid) {
                return false;
            }
            cluster.mark_policy_invalid(name, invalid);
        }
        Object::ClusterPolicy(p) => {
            if cluster.cluster_policies.get(&p.name) == Some(&p) {
                return false;
            }
            cluster.upsert_cluster_policy(p);
        }
        Object::InvalidClusterPolicy { name, subject, .. } => {
            if cluster.invalid_cluster_policies.get(&name) == Some(&subject) {
                return false;
            }
            cluster.mark_cluster_policy_invalid(name, subject);
        }
    }
    // The snapshot lives for the agent's lifetime: its "undeclared namespace" warnings are
    // about manifests, and would only pile up here.
    cluster.warnings.clear();
    true
}

fn remove(cluster: &mut Cluster, kind: Kind, key: &ObjectName) -> bool {
    match kind {
        Kind::Pods => cluster.remove_pod(key).is_some(),
        // Pods of a deleted namespace are deleted too (their own events follow); in between
        // they match no namespaceSelector, which is right for pods about to go.
        Kind::Namespaces => cluster.namespaces.remove(&key.name).is_some(),
        Kind::Policies => {
            let invalid = cluster.invalid_policies.contains_key(key);
            cluster.remove_policy(key).is_some() || invalid
        }
        Kind::ClusterPolicies => {
            let invalid = cluster.invalid_cluster_policies.contains_key(&key.name);
            cluster.remove_cluster_policy(&key.name).is_some() || invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k8s_pod(v: serde_json::Value) -> K8sPod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn terminal_pods_count_as_deleted() {
        let p = k8s_pod(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c"}], "nodeName": "node-0"},
            "status": {"phase": "Succeeded", "podIP": "10.0.0.1"}
        }));
        assert_eq!(pod(&p).unwrap(), None);
        let mut running = p.clone();
        running.status.as_mut().unwrap().phase = Some("Running".into());
        match pod(&running).unwrap() {
            Some(Object::Pod(p)) => {
                assert_eq!(p.ips, vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
                assert_eq!(p.node.as_deref(), Some("node-0"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relist_replaces_a_kind_and_reports_changes() {
        let mut c = Cluster::default();
        let ns = |n: &str| Object::Namespace(Namespace::new(n, Default::default()));
        assert!(apply(
            &mut c,
            Change::Relisted(Kind::Namespaces, vec![ns("a"), ns("b")])
        ));
        assert!(!apply(&mut c, Change::Upsert(ns("a"))));
        assert!(apply(
            &mut c,
            Change::Relisted(Kind::Namespaces, vec![ns("b")])
        ));
        assert_eq!(c.namespaces.keys().collect::<Vec<_>>(), vec!["b"]);
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "b"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]}
        }))
        .unwrap();
        let obj = policy(&np);
        assert!(matches!(obj, Object::InvalidPolicy { .. }));
        assert!(apply(&mut c, Change::Upsert(obj)));
        assert!(c.invalid_policies.contains_key(&ObjectName::new("b", "p")));
        assert!(apply(&mut c, Change::Relisted(Kind::Policies, vec![])));
        assert!(c.invalid_policies.is_empty());
    }
}
