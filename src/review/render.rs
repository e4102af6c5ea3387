//! Policies as YAML ready to `kubectl apply`, and reading such YAML back on top of a snapshot
//! (the way the loader would: an object replaces the one with the same kind/namespace/name).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use crate::k8s::export;
use crate::policy::labels::Operator;
use crate::policy::objects::ClusterBuilder;
use crate::policy::{Cluster, Policy};

/// `key In (v)` requirements become `matchLabels`, as people write them.
fn tidy(sel: &mut LabelSelector) {
    let Some(exprs) = sel.match_expressions.take() else {
        return;
    };
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = Vec::new();
    for e in exprs {
        match e.values.as_deref() {
            Some([v]) if e.operator == "In" && !labels.contains_key(&e.key) => {
                labels.insert(e.key.clone(), v.clone());
            }
            _ => rest.push(e),
        }
    }
    sel.match_labels = (!labels.is_empty()).then_some(labels);
    sel.match_expressions = (!rest.is_empty()).then_some(rest);
}

/// A policy as a NetworkPolicy manifest (JSON value).
pub fn policy_value(p: &Policy) -> Value {
    let mut np = export::policy(p);
    if let Some(spec) = np.spec.as_mut() {
        if let Some(s) = spec.pod_selector.as_mut() {
            tidy(s);
        }
        let peers = spec
            .ingress
            .iter_mut()
            .flatten()
            .flat_map(|r| r.from.iter_mut().flatten())
            .chain(
                spec.egress
                    .iter_mut()
                    .flatten()
                    .flat_map(|r| r.to.iter_mut().flatten()),
            );
        for peer in peers {
            for s in [peer.pod_selector.as_mut(), peer.namespace_selector.as_mut()]
                .into_iter()
                .flatten()
            {
                tidy(s);
            }
        }
    }
    serde_json::to_value(&np).expect("a NetworkPolicy serialises")
}

/// Several policies as one YAML stream (`---` between documents).
pub fn policies_yaml(policies: &[&Policy]) -> String {
    let docs: Vec<Value> = policies.iter().map(|p| policy_value(p)).collect();
    serde_saphyr::to_string_multiple(&docs).expect("JSON values serialise as YAML")
}

/// `cluster` with the NetworkPolicies of `yaml` applied on top. Any object that does not load
/// is an error: a fix must apply cleanly.
pub fn apply_on_top(cluster: &Cluster, yaml: &str) -> Result<Cluster, String> {
    let mut b = ClusterBuilder::new();
    b.add_text("fix", yaml);
    let (parsed, _) = b.build();
    if let Some(p) = parsed.errors.first() {
        return Err(format!("the proposed manifests do not load: {p}"));
    }
    let mut out = cluster.clone();
    for p in parsed.policies.into_values() {
        out.upsert_policy(p);
    }
    Ok(out)
}

/// Whether a requirement set is plain equality (renders as matchLabels only).
pub fn is_plain(sel: &crate::policy::labels::Selector) -> bool {
    sel.requirements
        .iter()
        .all(|r| r.operator == Operator::In && r.values.len() == 1)
}
