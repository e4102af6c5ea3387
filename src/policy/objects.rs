//! Kubernetes objects (already read into memory) into a [`Cluster`].
//!
//! Pure: callers read files or watch the API, this module only interprets what they got.
//! Workload kinds stand for one representative pod named `<kind>/<name>` (lower-case kind)
//! with the template's labels and ports, because that is what selectors see.
//!
//! Two levels of trouble, on purpose:
//! - an *object* that is invalid is left out and reported with its kind, name and field; an
//!   invalid NetworkPolicy still fails the pods it may select closed in the dataplane;
//! - a *document or file* that cannot be read at all (YAML syntax, a kind that does not
//!   exist, a limit against YAML bombs) is a refusal: nothing tells which policies it held,
//!   so no snapshot is produced from it and callers exit 2 without touching a dataplane.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod, PodTemplateSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::cnp::{self, ClusterPolicy, Subject};
use super::fields::{decode, unknown_fields, unknown_keys, TypeError};
use super::kinds::{accepted_versions, classify, expected_api_version, KindClass};
use super::labels::Selector;
use super::model::{Cluster, InvalidPolicy, Namespace, ObjectName, Pod, Policy, Problem};
use super::networkpolicy;
use super::pods::{build_pod, check_names, shared_port_names};
pub use super::pods::{namespace_from_k8s, pod_from_k8s};

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;

/// Counts of what was read, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct LoadSummary {
    pub namespaces: usize,
    pub pods: usize,
    pub workloads: usize,
    pub policies: usize,
    pub cluster_policies: usize,
    /// Kinds that sluice does not use, with how many of each.
    pub ignored: BTreeMap<String, usize>,
    pub invalid: usize,
    /// Fields the schema does not know (typos, usually): warnings, errors under `--strict`.
    pub unknown_fields: Vec<Problem>,
    /// Documents or files that could not be read at all: the load is refused.
    pub refused: Vec<String>,
}

impl LoadSummary {
    pub fn line(&self) -> String {
        let mut s = format!(
            "read {} namespaces, {} pods, {} workloads, {} network policies",
            self.namespaces, self.pods, self.workloads, self.policies
        );
        if self.cluster_policies > 0 {
            s.push_str(&format!(
                ", {} cluster network policies",
                self.cluster_policies
            ));
        }
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

/// Where an object was read: file (or other source), document (from 1), List item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub source: String,
    pub document: usize,
    pub items: Vec<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.source, self.document)?;
        for i in &self.items {
            write!(f, " items[{i}]")?;
        }
        Ok(())
    }
}

impl Place {
    fn item(&self, i: usize) -> Place {
        let mut p = self.clone();
        p.items.push(i);
        p
    }
}

/// Builds a cluster snapshot from manifest documents, in order. Later objects with the same
/// kind and name replace earlier ones (with a warning naming both places).
#[derive(Default)]
pub struct ClusterBuilder {
    cluster: Cluster,
    pub summary: LoadSummary,
    /// First place each (kind, namespace, name) was seen.
    seen: BTreeMap<(String, String, String), Place>,
    namespaces: BTreeMap<String, Namespace>,
    /// Pods and workload pods, with where they were read and whether they are workloads.
    pods: BTreeMap<ObjectName, (Pod, Place, bool)>,
    policies: BTreeMap<ObjectName, Policy>,
    invalid_policies: BTreeMap<ObjectName, InvalidPolicy>,
    cluster_policies: BTreeMap<String, ClusterPolicy>,
    invalid_cluster_policies: BTreeMap<String, Option<Subject>>,
    /// Non-empty documents seen, valid or not.
    documents: usize,
}

impl ClusterBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses YAML (several documents allowed) or JSON text from `source` (a file name, for
    /// messages) and adds every object in it. A file that cannot be parsed is refused.
    pub fn add_text(&mut self, source: &str, text: &str) {
        let mut document = 0;
        let result = super::parse::documents(source, text, |doc| {
            document += 1;
            let place = Place {
                source: source.to_string(),
                document,
                items: vec![],
            };
            self.add_value_at(&place, doc);
        });
        if let Err(e) = result {
            self.summary.refused.push(e);
        }
    }

    /// Adds one object (or a `List` of them) read from `source`.
    pub fn add_value(&mut self, source: &str, doc: Value) {
        let place = Place {
            source: source.to_string(),
            document: 1,
            items: vec![],
        };
        self.add_value_at(&place, doc);
    }

    /// A warning from the caller (e.g. a file it skipped), reported with the others.
    pub fn warn(&mut self, warning: String) {
        self.cluster.warnings.push(warning);
    }

    /// How many non-empty documents were added so far.
    pub fn documents(&self) -> usize {
        self.documents
    }

    fn refuse(&mut self, place: &Place, doc: &Value, message: impl fmt::Display) {
        let (ns, name) = object_id(doc);
        let named = if doc.get("metadata").is_some() {
            format!(" ({ns}/{name})")
        } else {
            String::new()
        };
        self.summary
            .refused
            .push(format!("{place}{named}: {message}"));
    }

    fn add_value_at(&mut self, place: &Place, doc: Value) {
        if doc.is_null() {
            return;
        }
        if place.items.is_empty() {
            self.documents += 1;
        }
        if !doc.is_object() {
            let what = match &doc {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                _ => "a scalar",
            };
            return self.refuse(
                place,
                &doc,
                format!("is {what}, not a Kubernetes object (apiVersion, kind, metadata)"),
            );
        }
        let kind = match doc.get("kind") {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return self.refuse(
                    place,
                    &doc,
                    "kind is missing: every manifest needs apiVersion and kind",
                )
            }
            Some(other) => {
                return self.refuse(place, &doc, format!("kind: {other} is not a string"))
            }
        };
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match classify(&kind, &api_version) {
            KindClass::Unknown(why) => self.refuse(
                place,
                &doc,
                format!(
                    "{why} (sluice refuses the whole input rather than guess: a misspelled NetworkPolicy left out would open the pods it protects)"
                ),
            ),
            KindClass::Ignored => {
                // Another project's kind of the same name says whose it is.
                let key = if expected_api_version(&kind).is_some() {
                    format!("{kind} ({api_version})")
                } else {
                    kind
                };
                *self.summary.ignored.entry(key).or_default() += 1
            }
            KindClass::List => self.add_list(place, &kind, doc),
            KindClass::Read => self.add_object(place, &kind, &api_version, doc),
        }
    }

    fn add_list(&mut self, place: &Place, kind: &str, mut doc: Value) {
        let items = match doc.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            None | Some(Value::Null) => vec![],
            Some(_) => {
                return self.refuse(
                    place,
                    &doc,
                    format!("{kind}: items must be an array of objects"),
                )
            }
        };
        for key in unknown_keys(&doc, &["apiVersion", "kind", "items", "metadata"]) {
            self.summary.unknown_fields.push(Problem {
                object: format!("{kind} in {place}"),
                field: key,
                message: "unknown field".into(),
            });
        }
        for (i, item) in items.into_iter().enumerate() {
            self.add_value_at(&place.item(i), item);
        }
    }

    fn invalid(&mut self, problems: Vec<Problem>) {
        self.summary.invalid += 1;
        self.cluster.errors.extend(problems);
    }

    /// Records where (kind, ns, name) was read; a second sighting is a warning naming both.
    fn note_place(&mut self, kind: &str, ns: &str, name: &str, place: &Place) {
        let key = (kind.to_string(), ns.to_string(), name.to_string());
        if let Some(first) = self.seen.get(&key) {
            let id = if ns.is_empty() {
                name.to_string()
            } else {
                format!("{ns}/{name}")
            };
            self.cluster.warnings.push(format!(
                "{kind} {id} is declared twice, in {first} and in {place}: the later one is used"
            ));
        } else {
            self.seen.insert(key, place.clone());
        }
    }

    fn add_object(&mut self, place: &Place, kind: &str, api_version: &str, doc: Value) {
        let (ns, name) = object_id(&doc);
        let cluster_scoped = kind == "Namespace" || kind == cnp::KIND;
        let object = if cluster_scoped {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        };
        let ns_key = if cluster_scoped { "" } else { ns.as_str() };
        self.note_place(kind, ns_key, &name, place);
        let expected = expected_api_version(kind).unwrap_or("");
        let served = accepted_versions(kind).contains(&api_version);
        let version_problem = (!served).then(|| Problem {
            object: object.clone(),
            field: "apiVersion".into(),
            message: if api_version.is_empty() {
                format!("is missing: a {kind} needs apiVersion: {expected}")
            } else {
                format!("{api_version:?} does not serve {kind}: use apiVersion: {expected}")
            },
        });
        let mut doc = doc;
        if version_problem.is_some() {
            // Reported once, above; the typed decoders would reject it again, less clearly.
            doc["apiVersion"] = Value::String(expected.to_string());
        }
        match kind {
            "Namespace" => self.add_namespace(object, doc, version_problem),
            "Pod" => self.add_pod(object, place, doc, version_problem),
            "NetworkPolicy" => self.add_policy(object, doc, version_problem),
            cnp::KIND => self.add_cluster_policy(object, doc, version_problem),
            _ => self.add_workload(object, place, kind, doc, version_problem),
        }
    }

    /// Decodes `doc` as `T`, recording unknown fields; a type error becomes a problem.
    fn typed<T>(&mut self, object: &str, doc: &Value) -> Result<T, Problem>
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
    {
        match decode::<T>(doc.clone()) {
            Ok(t) => {
                for field in unknown_fields(doc, &t) {
                    self.summary.unknown_fields.push(Problem {
                        object: object.to_string(),
                        field,
                        message: "unknown field".into(),
                    });
                }
                Ok(t)
            }
            Err(TypeError { field, message }) => Err(Problem {
                object: object.to_string(),
                field,
                message: format!("cannot be read: {message}"),
            }),
        }
    }

    fn add_namespace(&mut self, object: String, doc: Value, version: Option<Problem>) {
        let ns: K8sNamespace = match self.typed(&object, &doc) {
            Ok(n) => n,
            Err(p) => return self.invalid(vec![p]),
        };
        let name = ns.metadata.name.clone().unwrap_or_default();
        let result = namespace_from_k8s(&ns);
        match (result, version) {
            (Ok(n), None) => {
                self.namespaces.insert(name, n);
            }
            (result, version) => {
                self.namespaces.remove(&name);
                self.invalid(merge(version, result.err()));
            }
        }
    }

    fn add_pod(&mut self, object: String, place: &Place, doc: Value, version: Option<Problem>) {
        let (ns, name) = object_id(&doc);
        let key = ObjectName::new(&ns, &name);
        let pod: K8sPod = match self.typed(&object, &doc) {
            Ok(p) => p,
            Err(p) => {
                self.pods.remove(&key);
                return self.invalid(vec![p]);
            }
        };
        self.cluster
            .warnings
            .extend(shared_port_names(&object, pod.spec.as_ref()));
        match (pod_from_k8s(&pod), version) {
            (Ok(p), None) => {
                self.pods.insert(key, (p, place.clone(), false));
            }
            (result, version) => {
                self.pods.remove(&key);
                self.invalid(merge(version, result.err()));
            }
        }
    }

    fn add_workload(
        &mut self,
        object: String,
        place: &Place,
        kind: &str,
        doc: Value,
        version: Option<Problem>,
    ) {
        let (ns, name) = object_id(&doc);
        let pod_name = format!("{}/{name}", kind.to_ascii_lowercase());
        let key = ObjectName::new(&ns, &pod_name);
        self.pods.remove(&key);
        let template = match self.workload_template(&object, kind, &doc) {
            Ok(t) => t,
            Err(p) => return self.invalid(vec![p]),
        };
        let mut problems: Vec<Problem> = version.into_iter().collect();
        problems.extend(check_names(&object, kind, &ns, &name));
        let field = if kind == "CronJob" {
            "spec.jobTemplate.spec.template"
        } else {
            "spec.template"
        };
        let Some(template) = template else {
            problems.push(Problem {
                object,
                field: field.into(),
                message: "is missing: a workload needs a pod template".into(),
            });
            return self.invalid(problems);
        };
        self.cluster
            .warnings
            .extend(shared_port_names(&object, template.spec.as_ref()));
        let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
        let built = build_pod(
            &object,
            &ns,
            &pod_name,
            labels,
            template.spec.as_ref(),
            vec![],
        );
        match built {
            Ok(p) if problems.is_empty() => {
                self.pods.insert(key, (p, place.clone(), true));
            }
            result => {
                problems.extend(result.err().unwrap_or_default());
                self.invalid(problems);
            }
        }
    }

    fn workload_template(
        &mut self,
        object: &str,
        kind: &str,
        doc: &Value,
    ) -> Result<Option<PodTemplateSpec>, Problem> {
        Ok(match kind {
            "Deployment" => self
                .typed::<Deployment>(object, doc)?
                .spec
                .map(|s| s.template),
            "StatefulSet" => self
                .typed::<StatefulSet>(object, doc)?
                .spec
                .map(|s| s.template),
            "DaemonSet" => self
                .typed::<DaemonSet>(object, doc)?
                .spec
                .map(|s| s.template),
            "ReplicaSet" => self
                .typed::<ReplicaSet>(object, doc)?
                .spec
                .and_then(|s| s.template),
            "Job" => self.typed::<Job>(object, doc)?.spec.map(|s| s.template),
            "CronJob" => self
                .typed::<CronJob>(object, doc)?
                .spec
                .and_then(|s| s.job_template.spec)
                .map(|s| s.template),
            _ => None,
        })
    }

    fn add_policy(&mut self, object: String, doc: Value, version: Option<Problem>) {
        let (ns, name) = object_id(&doc);
        let key = ObjectName::new(&ns, &name);
        self.policies.remove(&key);
        let np: NetworkPolicy = match self.typed(&object, &doc) {
            Ok(p) => p,
            Err(p) => {
                // Unreadable: its podSelector alone may still say which pods it protects;
                // otherwise its whole namespace fails closed in the dataplane.
                let selector = decode::<LabelSelector>(doc["spec"]["podSelector"].clone())
                    .ok()
                    .and_then(|s| Selector::from_k8s(&s).ok());
                self.invalid_policies.insert(
                    key,
                    InvalidPolicy {
                        selector,
                        problems: vec![p.clone()],
                    },
                );
                return self.invalid(vec![p]);
            }
        };
        let converted = networkpolicy::convert(&np, "default");
        self.cluster.warnings.extend(converted.warnings);
        match (converted.policy, version) {
            (Ok(p), None) => {
                self.invalid_policies.remove(&key);
                self.policies.insert(key, p);
            }
            (result, version) => {
                let problems = merge(version, result.err());
                self.invalid_policies.insert(
                    key,
                    InvalidPolicy {
                        selector: converted.pod_selector,
                        problems: problems.clone(),
                    },
                );
                self.invalid(problems);
            }
        }
    }

    fn add_cluster_policy(&mut self, object: String, doc: Value, version: Option<Problem>) {
        let (_, name) = object_id(&doc);
        self.cluster_policies.remove(&name);
        let raw: cnp::RawCnp = match decode::<cnp::RawCnp>(doc.clone()) {
            Ok(r) => r,
            Err(TypeError { field, message }) => {
                // Unreadable: its subject alone may still say which pods it applies to;
                // otherwise every pod may be a subject and fails closed.
                let subject = decode::<cnp::RawCnp>(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"tier": "Admin", "priority": 0, "subject": doc["spec"]["subject"].clone()}
                }))
                .ok()
                .and_then(|r| cnp::convert(&r, &[]).subject);
                self.invalid_cluster_policies.insert(name, subject);
                return self.invalid(vec![Problem {
                    object,
                    field,
                    message: format!("cannot be read: {message}"),
                }]);
            }
        };
        let unknown = unknown_fields(&doc, &raw);
        for field in &unknown {
            self.summary.unknown_fields.push(Problem {
                object: object.clone(),
                field: field.clone(),
                message: "unknown field".into(),
            });
        }
        let converted = cnp::convert(&raw, &unknown);
        self.cluster.warnings.extend(converted.warnings);
        match (converted.policy, version) {
            (Ok(p), None) => {
                self.invalid_cluster_policies.remove(&name);
                self.cluster_policies.insert(name, p);
            }
            (result, version) => {
                self.invalid_cluster_policies
                    .insert(name, converted.subject);
                self.invalid(merge(version, result.err()));
            }
        }
    }

    /// Finishes the snapshot: namespaces first, so pods and policies find them declared.
    /// Refusals are in `summary.refused`; [`ClusterBuilder::finish`] turns them into an error.
    pub fn build(mut self) -> (Cluster, LoadSummary) {
        self.summary.namespaces = self.namespaces.len();
        for (_, ns) in std::mem::take(&mut self.namespaces) {
            self.cluster.upsert_namespace(ns);
        }
        let pods = std::mem::take(&mut self.pods);
        self.summary.workloads = pods.values().filter(|(_, _, w)| *w).count();
        self.summary.pods = pods.len() - self.summary.workloads;
        self.warn_shared_ips(&pods);
        for (_, (pod, _, _)) in pods {
            self.cluster.upsert_pod(pod);
        }
        self.summary.policies = self.policies.len();
        for (_, p) in std::mem::take(&mut self.policies) {
            self.cluster.upsert_policy(p);
        }
        for (name, invalid) in std::mem::take(&mut self.invalid_policies) {
            self.cluster.mark_policy_invalid(name, invalid);
        }
        self.summary.cluster_policies = self.cluster_policies.len();
        for (_, p) in std::mem::take(&mut self.cluster_policies) {
            self.cluster.upsert_cluster_policy(p);
        }
        for (name, subject) in std::mem::take(&mut self.invalid_cluster_policies) {
            self.cluster.mark_cluster_policy_invalid(name, subject);
        }
        self.cluster.warnings.sort();
        self.cluster.warnings.dedup();
        (self.cluster, self.summary)
    }

    /// Like [`ClusterBuilder::build`], but an input that had to be refused is an error that
    /// lists every refusal.
    pub fn finish(self) -> Result<(Cluster, LoadSummary), String> {
        let (cluster, summary) = self.build();
        if summary.refused.is_empty() {
            Ok((cluster, summary))
        } else {
            Err(refusal_message(&summary.refused))
        }
    }

    /// Two pods with one IP: lookups by IP can find only one of them.
    fn warn_shared_ips(&mut self, pods: &BTreeMap<ObjectName, (Pod, Place, bool)>) {
        let mut first: BTreeMap<std::net::IpAddr, (&ObjectName, &Place)> = BTreeMap::new();
        for (name, (pod, place, _)) in pods.iter().filter(|(_, (p, _, _))| !p.host_network) {
            for ip in &pod.ips {
                match first.get(ip) {
                    Some((other, other_place)) => self.cluster.warnings.push(format!(
                        "pods {other} ({other_place}) and {name} ({place}) both have IP {ip}: an address names one pod, so traffic from or to {ip} is judged as {other}'s"
                    )),
                    None => {
                        first.insert(*ip, (name, place));
                    }
                }
            }
        }
    }
}

/// The message for a refused input: every reason, and what sluice did about it.
pub fn refusal_message(refused: &[String]) -> String {
    let mut s = format!(
        "refusing the manifests: {} could not be read, and leaving them out could drop policies (nothing was changed)",
        if refused.len() == 1 {
            "1 document".to_string()
        } else {
            format!("{} documents", refused.len())
        }
    );
    for r in refused {
        s.push_str("\n  ");
        s.push_str(r);
    }
    s
}

/// The apiVersion problem (if any) followed by the object's own problems (if any).
fn merge(version: Option<Problem>, problems: Option<Vec<Problem>>) -> Vec<Problem> {
    version
        .into_iter()
        .chain(problems.into_iter().flatten())
        .collect()
}

/// (namespace, name) of a raw object, for messages before it is parsed. A name that is not
/// a string is shown as written (`123`), so the message still points at the object.
pub fn object_id(doc: &Value) -> (String, String) {
    let meta = &doc["metadata"];
    let ns = match &meta["namespace"] {
        Value::String(s) => s.clone(),
        Value::Null => "default".to_string(),
        other => other.to_string(),
    };
    let name = match &meta["name"] {
        Value::String(s) => s.clone(),
        Value::Null => "<unnamed>".to_string(),
        other => other.to_string(),
    };
    (ns, name)
}

/// YAML 1.2 booleans only: in YAML 1.1 `y` and `n` are booleans, and namespaces called `y`
/// are common in NetworkPolicy examples (the upstream suite uses x, y, z).
pub fn yaml_options() -> serde_saphyr::Options {
    super::parse::yaml_options()
}
