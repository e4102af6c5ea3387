//! The case format of `conformance/README.md`: serde types, loading, validation, patterns
//! and `${ip:NS/POD}` placeholders.
//!
//! A case is data only. Files are checked when they are loaded (unknown fields, a first
//! expectation that is not `all`, patterns that do not parse), so a typo is an error that
//! names the file rather than a case that silently tests something else.

mod cnp;
mod load;
mod substitute;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::policy::{ObjectName, Protocol};

pub use self::cnp::{check_cnp_manifest, cnp_from_manifest};
pub use self::load::{case_files, load_case_file, load_cases, parse_case};
pub use self::substitute::{substitute, substitute_value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique; `upstream-NN`, `extra-<slug>`, or `fuzz-<seed>-<n>` for generated cases.
    pub id: String,
    pub name: String,
    /// `upstream`, `sluice` or `fuzz`.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub topology: Topology,
    pub steps: Vec<Step>,
}

/// `default` (3 namespaces x 3 pods) or the exact namespaces and pods of the case.
#[derive(Debug, Clone, PartialEq)]
pub enum Topology {
    Default,
    Explicit(ExplicitTopology),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplicitTopology {
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    pub pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    /// `kubernetes.io/metadata.name` is always added.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod of an explicit topology, or the value of a `createPod` action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// `namespace/name`.
    pub pod: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// 0-based node index; omitted: round-robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    /// Omitted: the default topology's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
    /// A requested address, usually `${ip:NS/POD}` of a deleted pod (IP reuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub actions: Vec<Action>,
    pub probes: Vec<Probe>,
}

/// One change applied before a step's probes. Serialised as a map with exactly one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Action {
    /// A full NetworkPolicy or ClusterNetworkPolicy manifest (chosen by `kind`).
    Create(Value),
    /// Replaces the policy of the same kind with the same namespace/name (CNP: name).
    Update(Value),
    Delete(PolicyRef),
    /// Every NetworkPolicy of this namespace. ClusterNetworkPolicies are cluster-scoped and
    /// stay, as with `kubectl delete networkpolicy --all -n NS`.
    DeleteAllPolicies(String),
    LabelNamespace(LabelNamespace),
    LabelPod(LabelPod),
    CreatePod(PodSpec),
    /// `namespace/name`.
    DeletePod(String),
}

impl Action {
    /// A short description for error messages: `create x/allow-80`.
    pub fn summary(&self) -> String {
        let policy = |v: &Value| {
            let m = &v["metadata"];
            let name = m["name"].as_str().unwrap_or("?");
            if is_cnp_manifest(v) {
                crate::policy::cnp::label(name)
            } else {
                format!("{}/{name}", m["namespace"].as_str().unwrap_or("?"))
            }
        };
        match self {
            Action::Create(v) => format!("create {}", policy(v)),
            Action::Update(v) => format!("update {}", policy(v)),
            Action::Delete(r) if r.is_cnp() => {
                format!("delete {}", crate::policy::cnp::label(&r.name))
            }
            Action::Delete(r) => format!("delete {}/{}", r.namespace, r.name),
            Action::DeleteAllPolicies(ns) => format!("deleteAllPolicies {ns}"),
            Action::LabelNamespace(l) => format!("labelNamespace {}", l.name),
            Action::LabelPod(l) => format!("labelPod {}", l.pod),
            Action::CreatePod(p) => format!("createPod {}", p.pod),
            Action::DeletePod(p) => format!("deletePod {p}"),
        }
    }
}

/// Whether a `create`/`update` value is a ClusterNetworkPolicy (otherwise a NetworkPolicy).
pub fn is_cnp_manifest(v: &Value) -> bool {
    v["kind"].as_str() == Some(crate::policy::cnp::KIND)
}

/// What `delete` names: `{ namespace: x, name: p }` (a NetworkPolicy) or
/// `{ kind: ClusterNetworkPolicy, name: p }` (cluster-scoped: no namespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// Omitted: NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    pub fn is_cnp(&self) -> bool {
        self.kind.as_deref() == Some(crate::policy::cnp::KIND)
    }

    /// The kind and namespace must agree: a NetworkPolicy has one, a CNP has none.
    fn check(&self) -> Result<(), String> {
        match self.kind.as_deref() {
            None | Some("NetworkPolicy") if self.namespace.is_empty() => Err(format!(
                "delete {}: a NetworkPolicy needs a namespace",
                self.name
            )),
            None | Some("NetworkPolicy") => Ok(()),
            Some(crate::policy::cnp::KIND) if !self.namespace.is_empty() => Err(format!(
                "delete {}: ClusterNetworkPolicy is cluster-scoped: drop namespace {:?}",
                self.name, self.namespace
            )),
            Some(crate::policy::cnp::KIND) => Ok(()),
            Some(k) => Err(format!(
                "delete {}: kind {k:?} is neither NetworkPolicy nor ClusterNetworkPolicy",
                self.name
            )),
        }
    }
}

/// Labels to merge; a `null` value removes the key.
pub type LabelChanges = BTreeMap<String, Option<String>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelNamespace {
    pub name: String,
    pub labels: LabelChanges,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelPod {
    pub pod: String,
    pub labels: LabelChanges,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// In order; the first is `all`, later entries override earlier ones.
    pub expect: Vec<Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    Allowed,
    Blocked,
}

impl Reach {
    pub fn allowed(self) -> bool {
        self == Reach::Allowed
    }
}

/// One entry of a probe's `expect` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Expect {
    All(Reach),
    Allowed(String),
    Blocked(String),
}

// `topology:` is either the word `default` or a map. Going through a JSON value gives the
// explicit form serde's own error messages (an untagged enum would only say "no variant").
impl<'de> Deserialize<'de> for Topology {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        match v {
            Value::String(s) if s == "default" => Ok(Topology::Default),
            Value::String(s) => Err(D::Error::custom(format!(
                "unknown topology {s:?}: use `default` or a map with namespaces and pods"
            ))),
            other => serde_json::from_value(other)
                .map(Topology::Explicit)
                .map_err(|e| D::Error::custom(format!("topology: {e}"))),
        }
    }
}

impl Serialize for Topology {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Topology::Default => s.serialize_str("default"),
            Topology::Explicit(t) => t.serialize(s),
        }
    }
}

/// One side of a pattern: a namespace or pod name, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Glob {
    Any,
    Exactly(String),
}

impl Glob {
    fn parse(s: &str) -> Result<Glob, String> {
        match s.trim() {
            "" => Err("empty name".into()),
            "*" => Ok(Glob::Any),
            s if s.contains('*') => Err(format!("{s:?}: `*` must stand alone")),
            s => Ok(Glob::Exactly(s.to_string())),
        }
    }
    fn matches(&self, s: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exactly(x) => x == s,
        }
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Glob::Any => f.write_str("*"),
            Glob::Exactly(s) => f.write_str(s),
        }
    }
}

/// `ns/pod -> ns/pod`, where any part may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    from: (Glob, Glob),
    to: (Glob, Glob),
}

impl Pattern {
    pub fn matches(&self, from: &ObjectName, to: &ObjectName) -> bool {
        self.from.0.matches(&from.namespace)
            && self.from.1.matches(&from.name)
            && self.to.0.matches(&to.namespace)
            && self.to.1.matches(&to.name)
    }
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Pattern, String> {
        let side = |part: &str| -> Result<(Glob, Glob), String> {
            let (ns, pod) = part
                .split_once('/')
                .ok_or_else(|| format!("{:?} is not ns/pod", part.trim()))?;
            Ok((Glob::parse(ns)?, Glob::parse(pod)?))
        };
        let (from, to) = s
            .split_once("->")
            .ok_or_else(|| format!("pattern {s:?} has no `->`: write \"ns/pod -> ns/pod\""))?;
        let from = side(from).map_err(|e| format!("pattern {s:?}: {e}"))?;
        let to = side(to).map_err(|e| format!("pattern {s:?}: {e}"))?;
        Ok(Pattern { from, to })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} -> {}/{}",
            self.from.0, self.from.1, self.to.0, self.to.1
        )
    }
}

/// A probe's expectations, parsed: the start value and the ordered overrides.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub start: bool,
    pub overrides: Vec<(Pattern, bool)>,
}

impl Expectations {
    pub fn parse(expect: &[Expect]) -> Result<Expectations, String> {
        let start = match expect.first() {
            Some(Expect::All(r)) => r.allowed(),
            Some(_) => return Err("the first expectation must be `all: allowed|blocked`".into()),
            None => return Err("no expectations: start with `all: allowed|blocked`".into()),
        };
        let mut overrides = Vec::new();
        for e in &expect[1..] {
            match e {
                Expect::All(_) => {
                    return Err("`all` may only be the first expectation".into());
                }
                Expect::Allowed(p) => overrides.push((p.parse()?, true)),
                Expect::Blocked(p) => overrides.push((p.parse()?, false)),
            }
        }
        Ok(Expectations { start, overrides })
    }

    /// The expected value of one cell: the last matching entry wins.
    pub fn allowed(&self, from: &ObjectName, to: &ObjectName) -> bool {
        self.overrides
            .iter()
            .rev()
            .find(|(p, _)| p.matches(from, to))
            .map_or(self.start, |(_, v)| *v)
    }
}

/// `ns/name`, insisting on the namespace (cases never mean `default`).
pub fn parse_pod_name(s: &str) -> Result<ObjectName, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectName::new(ns, name))
        }
        _ => Err(format!("{s:?} is not a pod name: write namespace/name")),
    }
}

impl Case {
    /// Checks what serde cannot: expectations, pattern syntax, pod names, declared namespaces.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("id is empty".into());
        }
        if self.steps.is_empty() {
            return Err("a case needs at least one step".into());
        }
        if let Topology::Explicit(t) = &self.topology {
            for p in &t.pods {
                let name = parse_pod_name(&p.pod).map_err(|e| format!("topology: {e}"))?;
                if !t.namespaces.contains_key(&name.namespace) {
                    return Err(format!(
                        "topology: pod {} is in namespace {}, which the topology does not list",
                        p.pod, name.namespace
                    ));
                }
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            let at = |what: String| format!("step {}: {what}", i + 1);
            for a in &step.actions {
                match a {
                    Action::CreatePod(p) => {
                        parse_pod_name(&p.pod).map_err(at)?;
                    }
                    Action::DeletePod(p) => {
                        parse_pod_name(p).map_err(at)?;
                    }
                    Action::LabelPod(l) => {
                        parse_pod_name(&l.pod).map_err(at)?;
                    }
                    Action::Delete(r) => r.check().map_err(at)?,
                    Action::Create(m) | Action::Update(m) if is_cnp_manifest(m) => {
                        check_cnp_manifest(m).map_err(at)?;
                    }
                    _ => {}
                }
            }
            for (j, probe) in step.probes.iter().enumerate() {
                if probe.port == 0 {
                    return Err(at(format!("probe {}: port 0", j + 1)));
                }
                Expectations::parse(&probe.expect)
                    .map_err(|e| at(format!("probe {}: {e}", j + 1)))?;
            }
        }
        Ok(())
    }

    /// The highest node index the case pins a pod to, plus one (0 when nothing is pinned).
    pub fn nodes_needed(&self) -> usize {
        let topo = match &self.topology {
            Topology::Explicit(t) => t.pods.iter().filter_map(|p| p.node).max(),
            Topology::Default => None,
        };
        let created = self
            .steps
            .iter()
            .flat_map(|s| s.actions.iter())
            .filter_map(|a| match a {
                Action::CreatePod(p) => p.node,
                _ => None,
            })
            .max();
        topo.max(created).map_or(0, |n| n + 1)
    }

    /// Whether `--filter TEXT` selects this case (substring of id or name, any case).
    pub fn matches_filter(&self, filter: &str) -> bool {
        let f = filter.to_lowercase();
        self.id.to_lowercase().contains(&f) || self.name.to_lowercase().contains(&f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_with_wildcards_and_later_entries_win() {
        let e = Expectations::parse(&[
            Expect::All(Reach::Allowed),
            Expect::Blocked("*/* -> x/*".into()),
            Expect::Allowed("x/b -> x/a".into()),
        ])
        .unwrap();
        let n = ObjectName::new;
        assert!(!e.allowed(&n("y", "a"), &n("x", "a")));
        assert!(e.allowed(&n("x", "b"), &n("x", "a")));
        assert!(e.allowed(&n("x", "a"), &n("y", "a")));
    }

    #[test]
    fn bad_expectations_are_rejected() {
        assert!(Expectations::parse(&[Expect::Blocked("*/* -> */*".into())]).is_err());
        assert!(
            Expectations::parse(&[Expect::All(Reach::Allowed), Expect::All(Reach::Blocked)])
                .is_err()
        );
        for bad in ["x/a", "x -> y/a", "x/a* -> y/a", "/a -> x/b"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn placeholders_use_the_given_addresses() {
        let ip_of =
            |n: &ObjectName| (n.to_string() == "x/b").then(|| "10.244.1.2".parse().unwrap());
        assert_eq!(
            substitute("${ip:x/b}/4 and ${ip:x/b}/32", &ip_of).unwrap(),
            "10.244.1.2/4 and 10.244.1.2/32"
        );
        assert!(substitute("${ip:x/c}/32", &ip_of).is_err());
        assert!(substitute("${ip:x/b/32", &ip_of).is_err());
    }

    #[test]
    fn parses_the_readme_example_and_keeps_y_a_string() {
        let text = r#"
id: t
name: "t"
topology:
  namespaces:
    x: { labels: { team: web } }
    "y": {}
  pods:
    - { pod: x/a, labels: { pod: a }, node: 0, ports: [ {name: http, port: 8080, protocol: TCP} ] }
    - { pod: y/a, labels: { pod: y } }
steps:
  - actions:
      - labelPod: { pod: x/a, labels: { pod: null, role: y } }
      - deleteAllPolicies: "y"
    probes:
      - port: 80
        expect:
          - all: allowed
          - blocked: "*/* -> x/*"
"#;
        let case = parse_case(text).unwrap();
        let Topology::Explicit(t) = &case.topology else {
            panic!()
        };
        assert_eq!(t.pods[1].labels["pod"], "y");
        assert_eq!(case.nodes_needed(), 1);
        let Action::LabelPod(l) = &case.steps[0].actions[0] else {
            panic!()
        };
        assert_eq!(l.labels["pod"], None);
        assert_eq!(l.labels["role"].as_deref(), Some("y"));
        assert_eq!(case.steps[0].probes[0].protocol, Protocol::Tcp);
        // Round trip through the serializer: `y` must come back as a string.
        let again = parse_case(&serde_saphyr::to_string(&case).unwrap()).unwrap();
        assert_eq!(again, case);
    }

    #[test]
    fn unknown_fields_and_undeclared_namespaces_are_errors() {
        let base = "id: t\nname: t\ntopology: default\nsteps:\n  - probes: []\n";
        assert!(parse_case(base).is_ok());
        assert!(parse_case(&base.replace("probes", "probez")).is_err());
        assert!(parse_case(&base.replace("default", "defualt")).is_err());
        let undeclared = "id: t\nname: t\ntopology: {namespaces: {x: {}}, pods: [{pod: q/a}]}\nsteps:\n  - probes: []\n";
        assert!(parse_case(undeclared).unwrap_err().contains("namespace q"));
    }

    #[test]
    fn cnp_actions_are_checked_when_the_case_is_loaded() {
        let case = |action: &str| {
            format!("id: t\nname: t\ntopology: default\nsteps:\n  - probes: []\n  - actions: [{action}]\n    probes: []\n")
        };
        let good = "create: {apiVersion: policy.networking.k8s.io/v1beta1, kind: ClusterNetworkPolicy, metadata: {name: c}, spec: {tier: Baseline, priority: 3, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: ['${ip:x/a}/32']}]}]}}";
        assert!(parse_case(&case(good)).is_ok());
        let err = parse_case(&case(&good.replace("priority: 3", "priority: -1"))).unwrap_err();
        assert!(
            err.starts_with("step 2:") && err.contains("spec.priority"),
            "{err}"
        );
        assert!(parse_case(&case("delete: {kind: ClusterNetworkPolicy, name: c}")).is_ok());
        let err = parse_case(&case(
            "delete: {kind: ClusterNetworkPolicy, namespace: x, name: c}",
        ))
        .unwrap_err();
        assert!(err.contains("cluster-scoped"), "{err}");
        assert!(parse_case(&case("delete: {name: c}"))
            .unwrap_err()
            .contains("namespace"));
    }
}
