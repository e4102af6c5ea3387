//! The validated, defaulted model sluice reasons about: namespaces, pods and policies.
//!
//! These types carry only what NetworkPolicy semantics need. They are built from Kubernetes
//! objects by [`super::networkpolicy`] and [`super::objects`], which do the validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::cnp::{self, ClusterPolicy, CnpRule, Subject};
use super::ipblock::IpBlock;
use super::labels::{Labels, Selector};
use super::ports::{ContainerPort, PortRule, Protocol};

/// The label every namespace carries with its own name (set by the API server).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `namespace/name`, how pods and policies are named everywhere in sluice's output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

impl ObjectName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `namespace/name`; a bare `name` is in `default`.
    pub fn parse(s: &str) -> ObjectName {
        match s.split_once('/') {
            Some((ns, n)) => ObjectName::new(ns, n),
            None => ObjectName::new("default", s),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub name: String,
    /// Always includes `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, mut labels: Labels) -> Namespace {
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        Namespace {
            name: name.to_string(),
            labels,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ports: Vec<ContainerPort>,
    pub node: Option<String>,
    /// Host-network pods use their node's addresses; no NetworkPolicy selects them.
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
}

impl Pod {
    pub fn object_name(&self) -> ObjectName {
        ObjectName::new(&self.namespace, &self.name)
    }

    /// Resolves a named port on this pod: the containerPort with that name and protocol.
    pub fn resolve_named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }

    /// Describes how `name` resolves on this pod, for explanations.
    pub fn describe_named_port(&self, name: &str) -> String {
        let found: Vec<String> = self
            .ports
            .iter()
            .filter(|p| p.name.as_deref() == Some(name))
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        if found.is_empty() {
            format!("{} has no port named {name}", self.object_name())
        } else {
            format!(
                "named port {name} resolves to {} on {}",
                found.join(", "),
                self.object_name()
            )
        }
    }
}

/// Where the pods of a pod peer may live.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceScope {
    /// No namespaceSelector: the policy's own namespace.
    PolicyNamespace,
    /// A namespaceSelector (`{}` selects every namespace).
    Selected(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// podSelector and/or namespaceSelector; both given means both must match (AND).
    Pods {
        namespaces: NamespaceScope,
        /// No podSelector: every pod in the selected namespaces.
        pods: Selector,
    },
    IpBlock(IpBlock),
}

/// One ingress or egress rule. Empty `peers` means every peer; empty `ports` every port
/// (that is how the API defines an absent or empty list).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `Some` when policyTypes (after defaulting) includes Ingress: the pods it selects are
    /// isolated for ingress, and these rules allow. `Some(vec![])` denies all ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn object_name(&self) -> ObjectName {
        ObjectName::new(&self.namespace, &self.name)
    }

    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A problem found in an input object; the object is left out and everything else goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `Kind namespace/name` or `Kind name`.
    pub object: String,
    /// Field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.object, self.message)
        } else {
            write!(f, "{}: {}: {}", self.object, self.field, self.message)
        }
    }
}

/// A NetworkPolicy that could not be read or validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy {
    /// Its podSelector when it alone is valid; None: it may select every pod of its namespace.
    pub selector: Option<Selector>,
    /// What is wrong with it (field and message).
    pub problems: Vec<Problem>,
}

impl InvalidPolicy {
    /// `field: message` of each problem, for people.
    pub fn what(&self) -> String {
        if self.problems.is_empty() {
            return "it cannot be enforced".into();
        }
        self.problems
            .iter()
            .map(|p| {
                if p.field.is_empty() {
                    p.message.clone()
                } else {
                    format!("field {}: {}", p.field, p.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A pod the dataplane fails closed, and why (see [`Cluster::fails_closed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailClosed {
    /// The invalid policies that may select it, in name order.
    pub policies: Vec<String>,
    /// One sentence naming each policy, the field and the problem.
    pub reason: String,
}

/// A snapshot of everything policy decisions depend on, indexed for lookups.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectName, Pod>,
    /// Keyed by namespace, then name, so iteration is sorted.
    pub policies: BTreeMap<ObjectName, Policy>,
    /// Invalid objects that were left out.
    pub errors: Vec<Problem>,
    /// Invalid policies, with their podSelector when it alone is valid and what is wrong.
    /// Pods they may select fail closed: see [`Cluster::fails_closed`].
    pub invalid_policies: BTreeMap<ObjectName, InvalidPolicy>,
    /// Things that work but deserve a look (undeclared namespaces, normalised CIDRs, ...).
    pub warnings: Vec<String>,
    /// Namespaces that pods or policies use but no Namespace object declares (lint reports
    /// policies in them: the API server refuses objects in a namespace that does not exist).
    pub undeclared_namespaces: std::collections::BTreeSet<String>,
    /// ClusterNetworkPolicies (cluster-scoped), by name.
    pub cluster_policies: BTreeMap<String, ClusterPolicy>,
    /// Invalid ClusterNetworkPolicies, with their subject when it alone is valid (None: every
    /// pod may be a subject). Their subjects fail closed (see [`Cluster::cnp_fail_closed_for`]).
    pub invalid_cluster_policies: BTreeMap<String, Option<Subject>>,
}

impl Cluster {
    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    pub fn pod(&self, name: &ObjectName) -> Option<&Pod> {
        self.pods.get(name)
    }

    /// The pod (not host-network) with this IP, if any.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.host_network && p.ips.contains(&ip))
    }

    pub fn policies_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        let start = ObjectName::new(ns, "");
        self.policies
            .range(start..)
            .take_while(move |(k, _)| k.namespace == ns)
            .map(|(_, p)| p)
    }

    /// Policies that isolate `pod` in `dir`, in name order.
    pub fn isolating<'a>(&'a self, pod: &'a Pod, dir: Direction) -> Vec<&'a Policy> {
        self.policies_in(&pod.namespace)
            .filter(|p| p.isolates(pod, dir))
            .collect()
    }

    /// Adds or replaces a namespace, making sure it carries its name label.
    pub fn upsert_namespace(&mut self, ns: Namespace) {
        self.undeclared_namespaces.remove(&ns.name);
        self.namespaces.insert(ns.name.clone(), ns);
    }

    /// Adds or replaces a pod; a namespace it names that is not declared is created with only
    /// its name label, and a warning says so.
    pub fn upsert_pod(&mut self, pod: Pod) {
        self.ensure_namespace(&pod.namespace, "pod", &pod.object_name().to_string());
        self.pods.insert(pod.object_name(), pod);
    }

    pub fn remove_pod(&mut self, name: &ObjectName) -> Option<Pod> {
        self.pods.remove(name)
    }

    pub fn upsert_policy(&mut self, policy: Policy) {
        self.invalid_policies.remove(&policy.object_name());
        self.ensure_namespace(
            &policy.namespace,
            "NetworkPolicy",
            &policy.object_name().to_string(),
        );
        self.policies.insert(policy.object_name(), policy);
    }

    pub fn remove_policy(&mut self, name: &ObjectName) -> Option<Policy> {
        self.invalid_policies.remove(name);
        self.policies.remove(name)
    }

    /// Records a policy that failed validation: the valid version (if any) is removed, and
    /// pods it may select fail closed in the dataplane.
    pub fn mark_policy_invalid(&mut self, name: ObjectName, invalid: InvalidPolicy) {
        self.policies.remove(&name);
        self.invalid_policies.insert(name, invalid);
    }

    /// Whether `pod` fails closed (every packet it sends or receives through the dataplane is
    /// dropped, both directions) and why. The one rule the compiler and the oracle share: a
    /// pod fails closed when an invalid policy of its namespace may select it (its podSelector
    /// matches, or cannot be read either). Host-network pods are never selected.
    pub fn fails_closed(&self, pod: &Pod) -> Option<FailClosed> {
        if pod.host_network {
            return None;
        }
        let hits: Vec<(&ObjectName, &InvalidPolicy)> = self
            .invalid_policies
            .iter()
            .filter(|(n, inv)| {
                n.namespace == pod.namespace
                    && inv.selector.as_ref().is_none_or(|s| s.matches(&pod.labels))
            })
            .collect();
        // Subjects of invalid ClusterNetworkPolicies (valid ones are enforced in their tiers).
        let cnps = self.cnp_fail_closed_for(pod);
        if hits.is_empty() && cnps.is_empty() {
            return None;
        }
        let mut reasons = Vec::new();
        if !hits.is_empty() {
            let why: Vec<String> = hits
                .iter()
                .map(|(n, inv)| format!("policy {n} is invalid ({})", inv.what()))
                .collect();
            let many = hits.len() > 1;
            reasons.push(format!(
                "{}, so pods {} may select fail closed until {} fixed",
                why.join("; "),
                if many { "they" } else { "it" },
                if many { "they are" } else { "it is" },
            ));
        }
        if !cnps.is_empty() {
            reasons.push(format!(
                "it may be a subject of {} (ClusterNetworkPolicy), so it fails closed until that is fixed",
                cnps.join(", ")
            ));
        }
        Some(FailClosed {
            policies: hits
                .iter()
                .map(|(n, _)| n.to_string())
                .chain(cnps)
                .collect(),
            reason: reasons.join("; "),
        })
    }

    fn ensure_namespace(&mut self, ns: &str, kind: &str, user: &str) {
        if !self.namespaces.contains_key(ns) {
            self.warnings.push(format!(
                "namespace {ns} is used by {kind} {user} but not declared: assuming it has only the label {NAMESPACE_NAME_LABEL}={ns}"
            ));
            self.namespaces
                .insert(ns.to_string(), Namespace::new(ns, Labels::new()));
            self.undeclared_namespaces.insert(ns.to_string());
        }
    }

    /// Whether any ClusterNetworkPolicy (valid or not) was read.
    pub fn has_cluster_policies(&self) -> bool {
        !self.cluster_policies.is_empty() || !self.invalid_cluster_policies.is_empty()
    }

    pub fn upsert_cluster_policy(&mut self, policy: ClusterPolicy) {
        self.invalid_cluster_policies.remove(&policy.name);
        self.cluster_policies.insert(policy.name.clone(), policy);
    }

    pub fn remove_cluster_policy(&mut self, name: &str) -> Option<ClusterPolicy> {
        self.invalid_cluster_policies.remove(name);
        self.cluster_policies.remove(name)
    }

    /// Records a ClusterNetworkPolicy that failed validation (see `invalid_cluster_policies`).
    pub fn mark_cluster_policy_invalid(&mut self, name: String, subject: Option<Subject>) {
        self.cluster_policies.remove(&name);
        self.invalid_cluster_policies.insert(name, subject);
    }

    /// Invalid ClusterNetworkPolicies whose subject may select `pod` (their subject is invalid
    /// too, or selects it), as `cnp/<name> (invalid)`. These pods fail closed in the kernel (both
    /// directions): a CNP that cannot be read cannot be put in its tier. Host-network pods are
    /// never subjects.
    pub fn cnp_fail_closed_for(&self, pod: &Pod) -> Vec<String> {
        if pod.host_network {
            return vec![];
        }
        let invalid = self
            .invalid_cluster_policies
            .iter()
            .filter(|(_, s)| s.as_ref().is_none_or(|s| s.selects(self, pod)))
            .map(|(n, _)| format!("{} (invalid)", cnp::label(n)));
        invalid.collect()
    }
}

// ClusterNetworkPolicy methods that need the model: here, so that `cnp` uses nothing of it.

impl Subject {
    /// Whether this subject selects `pod` (namespace labels from `cluster`).
    pub fn selects(&self, cluster: &Cluster, pod: &Pod) -> bool {
        if pod.host_network {
            return false;
        }
        let Some(ns) = cluster.namespace_labels(&pod.namespace) else {
            return false;
        };
        match self {
            Subject::Namespaces(sel) => sel.matches(ns),
            Subject::Pods { namespaces, pods } => {
                namespaces.matches(ns) && pods.matches(&pod.labels)
            }
        }
    }
}

impl ClusterPolicy {
    pub fn rules(&self, dir: Direction) -> &[CnpRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}
