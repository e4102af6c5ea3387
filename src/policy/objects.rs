//! Kubernetes objects (already read into memory) into a [`Cluster`].
//!
//! Pure: callers read files or watch the API, this module only interprets what they got.
//! Workload kinds stand for one representative pod named `<kind>/<name>` (lower-case kind)
//! with the template's labels and ports, because that is what selectors see.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod, PodSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use super::labels::{validate_label_key, validate_label_value, Labels};
use super::model::{Cluster, Namespace, Pod, Problem};
use super::networkpolicy;
use super::ports::{validate_port_name, validate_port_number, ContainerPort, Protocol};

/// Workload kinds that stand for a representative pod, with the path to their pod template.
const WORKLOADS: &[(&str, &[&str])] = &[
    ("Deployment", &["spec", "template"]),
    ("StatefulSet", &["spec", "template"]),
    ("DaemonSet", &["spec", "template"]),
    ("ReplicaSet", &["spec", "template"]),
    ("Job", &["spec", "template"]),
    ("CronJob", &["spec", "jobTemplate", "spec", "template"]),
];

/// Counts of what was read, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct LoadSummary {
    pub namespaces: usize,
    pub pods: usize,
    pub workloads: usize,
    pub policies: usize,
    /// Kinds that sluice does not use, with how many of each.
    pub ignored: BTreeMap<String, usize>,
    pub invalid: usize,
}

impl LoadSummary {
    pub fn line(&self) -> String {
        let mut s = format!(
            "read {} namespaces, {} pods, {} workloads, {} network policies",
            self.namespaces, self.pods, self.workloads, self.policies
        );
        if self.invalid > 0 {
            s.push_str(&format!(", {} invalid objects left out", self.invalid));
        }
        if !self.ignored.is_empty() {
            let kinds: Vec<String> = self
                .ignored
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            s.push_str(&format!("; ignored {}", kinds.join(", ")));
        }
        s
    }
}

/// Builds a cluster snapshot from manifest documents, in order. Later objects with the same
/// kind and name replace earlier ones. Invalid objects are recorded in `Cluster::errors`.
#[derive(Default)]
pub struct ClusterBuilder {
    cluster: Cluster,
    pub summary: LoadSummary,
    declared_namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<super::model::Policy>,
    invalid_policies: Vec<(super::model::ObjectName, Option<super::labels::Selector>)>,
}

impl ClusterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses YAML (several documents allowed) or JSON text from `source` (a file name, for
    /// messages) and adds every object in it.
    pub fn add_text(&mut self, source: &str, text: &str) {
        match serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options()) {
            Ok(docs) => {
                for doc in docs {
                    self.add_value(source, doc);
                }
            }
            Err(e) => self.problem(
                format!("file {source}"),
                "",
                format!("is not valid YAML or JSON: {e}"),
            ),
        }
    }

    /// Adds one object (or a `List` of them).
    pub fn add_value(&mut self, source: &str, doc: Value) {
        if doc.is_null() {
            return;
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        match kind {
            "" => self.problem(
                format!("object in {source}"),
                "kind",
                "is missing: every manifest needs apiVersion and kind",
            ),
            "List" => {
                if let Some(items) = doc.get("items").and_then(Value::as_array) {
                    for item in items.clone() {
                        self.add_value(source, item);
                    }
                }
            }
            k if k.ends_with("List") && doc.get("items").is_some() => {
                for item in doc["items"].as_array().cloned().unwrap_or_default() {
                    self.add_value(source, item);
                }
            }
            "Namespace" => self.add_namespace(doc),
            "Pod" => self.add_pod(doc),
            "NetworkPolicy" => self.add_policy(doc),
            k => match WORKLOADS.iter().find(|(w, _)| *w == k) {
                Some((w, path)) => self.add_workload(w, path, doc),
                None => *self.summary.ignored.entry(k.to_string()).or_default() += 1,
            },
        }
    }

    fn problem(&mut self, object: String, field: &str, message: impl Into<String>) {
        self.summary.invalid += 1;
        self.cluster.errors.push(Problem {
            object,
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn add_namespace(&mut self, doc: Value) {
        let name = object_id(&doc).1;
        let ns: K8sNamespace = match serde_json::from_value(doc) {
            Ok(n) => n,
            Err(e) => {
                return self.problem(
                    format!("Namespace {name}"),
                    "",
                    format!("cannot be read: {e}"),
                )
            }
        };
        match namespace_from_k8s(&ns) {
            Ok(n) => {
                self.summary.namespaces += 1;
                self.declared_namespaces.push(n);
            }
            Err(ps) => {
                self.summary.invalid += 1;
                self.cluster.errors.extend(ps);
            }
        }
    }

    fn add_pod(&mut self, doc: Value) {
        let (ns, name) = object_id(&doc);
        let pod: K8sPod = match serde_json::from_value(doc) {
            Ok(p) => p,
            Err(e) => {
                return self.problem(
                    format!("Pod {ns}/{name}"),
                    "",
                    format!("cannot be read: {e}"),
                )
            }
        };
        match pod_from_k8s(&pod) {
            Ok(p) => {
                self.summary.pods += 1;
                self.pods.push(p);
            }
            Err(ps) => {
                self.summary.invalid += 1;
                self.cluster.errors.extend(ps);
            }
        }
    }

    fn add_workload(&mut self, kind: &str, path: &[&str], doc: Value) {
        let (ns, name) = object_id(&doc);
        let object = format!("{kind} {ns}/{name}");
        let mut template = &doc;
        for p in path {
            template = &template[*p];
        }
        let field = path.join(".");
        if template.is_null() {
            return self.problem(
                object,
                &field,
                "is missing: a workload needs a pod template",
            );
        }
        let template: k8s_openapi::api::core::v1::PodTemplateSpec =
            match serde_json::from_value(template.clone()) {
                Ok(t) => t,
                Err(e) => return self.problem(object, &field, format!("cannot be read: {e}")),
            };
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let pod_name = format!("{}/{name}", kind.to_ascii_lowercase());
        match build_pod(
            &object,
            &ns,
            &pod_name,
            labels,
            template.spec.as_ref(),
            vec![],
        ) {
            Ok(p) => {
                self.summary.workloads += 1;
                self.pods.push(p);
            }
            Err(ps) => {
                self.summary.invalid += 1;
                self.cluster.errors.extend(ps);
            }
        }
    }

    fn add_policy(&mut self, doc: Value) {
        let (ns, name) = object_id(&doc);
        let np: NetworkPolicy = match serde_json::from_value(doc) {
            Ok(p) => p,
            Err(e) => {
                // Unreadable: nothing is known of what it selects, so its whole namespace
                // fails closed in the dataplane.
                self.invalid_policies
                    .push((super::model::ObjectName::new(&ns, &name), None));
                return self.problem(
                    format!("NetworkPolicy {ns}/{name}"),
                    "",
                    format!("cannot be read: {e}"),
                );
            }
        };
        let converted = networkpolicy::convert(&np, "default");
        self.cluster.warnings.extend(converted.warnings);
        match converted.policy {
            Ok(p) => {
                self.summary.policies += 1;
                self.policies.push(p);
            }
            Err(ps) => {
                self.summary.invalid += 1;
                self.cluster.errors.extend(ps);
                self.invalid_policies.push((
                    super::model::ObjectName::new(ns, name),
                    converted.pod_selector,
                ));
            }
        }
    }

    /// Finishes the snapshot: namespaces first, so pods and policies find them declared.
    pub fn build(mut self) -> (Cluster, LoadSummary) {
        for ns in self.declared_namespaces.drain(..) {
            self.cluster.upsert_namespace(ns);
        }
        for pod in self.pods.drain(..) {
            self.cluster.upsert_pod(pod);
        }
        for p in self.policies.drain(..) {
            self.cluster.upsert_policy(p);
        }
        for (name, sel) in self.invalid_policies.drain(..) {
            self.cluster.mark_policy_invalid(name, sel);
        }
        self.cluster.warnings.sort();
        self.cluster.warnings.dedup();
        (self.cluster, self.summary)
    }
}

/// YAML 1.2 booleans only: in YAML 1.1 `y` and `n` are booleans, and namespaces called `y`
/// are common in NetworkPolicy examples (the upstream suite uses x, y, z).
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options
}

/// (namespace, name) of a raw object, for messages before it is parsed.
fn object_id(doc: &Value) -> (String, String) {
    let meta = &doc["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
    let name = meta["name"].as_str().unwrap_or("<unnamed>").to_string();
    (ns, name)
}

pub fn namespace_from_k8s(ns: &K8sNamespace) -> Result<Namespace, Vec<Problem>> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let object = format!("Namespace {name}");
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    let mut problems = check_labels(&object, &labels);
    if let Err(e) = super::labels::validate_dns_label(&name) {
        problems.push(Problem {
            object,
            field: "metadata.name".into(),
            message: e,
        });
    }
    if problems.is_empty() {
        Ok(Namespace::new(&name, labels))
    } else {
        Err(problems)
    }
}

pub fn pod_from_k8s(pod: &K8sPod) -> Result<Pod, Vec<Problem>> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let object = format!("Pod {ns}/{name}");
    let mut ips = Vec::new();
    let mut problems = Vec::new();
    if let Some(status) = &pod.status {
        let listed: Vec<String> = match &status.pod_ips {
            Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.clone()).collect(),
            _ => status.pod_ip.iter().cloned().collect(),
        };
        for (i, s) in listed.iter().enumerate() {
            match s.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => problems.push(Problem {
                    object: object.clone(),
                    field: format!("status.podIPs[{i}]"),
                    message: format!("{s:?} is not an IP address"),
                }),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    build_pod(&object, &ns, &name, labels, pod.spec.as_ref(), ips)
}

fn build_pod(
    object: &str,
    ns: &str,
    name: &str,
    labels: Labels,
    spec: Option<&PodSpec>,
    ips: Vec<IpAddr>,
) -> Result<Pod, Vec<Problem>> {
    let mut problems = check_labels(object, &labels);
    if name.is_empty() {
        problems.push(Problem {
            object: object.into(),
            field: "metadata.name".into(),
            message: "is required".into(),
        });
    }
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        for (i, c) in spec.containers.iter().enumerate() {
            for (j, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{i}].ports[{j}]");
                let protocol = match p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
                    Ok(pr) => pr,
                    Err(e) => {
                        problems.push(problem(object, &format!("{field}.protocol"), e));
                        continue;
                    }
                };
                let port = match validate_port_number(i64::from(p.container_port)) {
                    Ok(n) => n,
                    Err(e) => {
                        problems.push(problem(object, &format!("{field}.containerPort"), e));
                        continue;
                    }
                };
                if let Some(n) = &p.name {
                    if let Err(e) = validate_port_name(n) {
                        problems.push(problem(object, &format!("{field}.name"), e));
                        continue;
                    }
                }
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    ports.sort();
    ports.dedup();
    Ok(Pod {
        namespace: ns.to_string(),
        name: name.to_string(),
        labels,
        ports,
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
    })
}

fn problem(object: &str, field: &str, message: String) -> Problem {
    Problem {
        object: object.into(),
        field: field.into(),
        message,
    }
}

fn check_labels(object: &str, labels: &Labels) -> Vec<Problem> {
    let mut out = Vec::new();
    for (k, v) in labels {
        let field = format!("metadata.labels.{k}");
        if let Err(e) = validate_label_key(k).and_then(|_| validate_label_value(v)) {
            out.push(problem(object, &field, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::ObjectName;

    #[test]
    fn reads_lists_workloads_and_counts_ignored_kinds() {
        let text = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: web}}}
- {apiVersion: v1, kind: Service, metadata: {name: api, namespace: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: report}}
        spec: {containers: [{name: r}], restartPolicy: Never}
---
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "other"}, "spec": {"containers": []}, "status": {"podIP": "10.0.0.5"}}
"#;
        let mut b = ClusterBuilder::new();
        b.add_text("test.yaml", text);
        let (cluster, summary) = b.build();
        assert!(cluster.errors.is_empty(), "{:?}", cluster.errors);
        assert_eq!(summary.workloads, 2);
        assert_eq!(summary.ignored.get("Service"), Some(&1));
        let api = cluster
            .pod(&ObjectName::new("shop", "deployment/api"))
            .unwrap();
        assert_eq!(api.resolve_named_port("http", Protocol::Tcp), Some(8080));
        assert!(cluster
            .pod(&ObjectName::new("shop", "cronjob/report"))
            .is_some());
        assert_eq!(cluster.namespaces["shop"].labels["team"], "web");
        assert_eq!(
            cluster.namespaces["other"].labels["kubernetes.io/metadata.name"],
            "other"
        );
        assert!(cluster.warnings.iter().any(|w| w.contains("other")));
    }

    #[test]
    fn invalid_objects_are_reported_and_the_rest_kept() {
        let text = r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: bad, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: good, namespace: x}
spec: {podSelector: {}}
---
kind: Pod
apiVersion: v1
metadata: {name: p, namespace: x}
spec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}
"#;
        let mut b = ClusterBuilder::new();
        b.add_text("t", text);
        let (cluster, summary) = b.build();
        assert_eq!(summary.invalid, 2);
        assert_eq!(cluster.policies.len(), 1);
        let msgs: Vec<String> = cluster.errors.iter().map(|e| e.to_string()).collect();
        assert!(msgs[0].starts_with("NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.cidr:"));
        assert!(msgs[1].starts_with("Pod x/p: spec.containers[0].ports[0].containerPort:"));
    }
}
