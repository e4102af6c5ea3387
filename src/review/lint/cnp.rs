//! Checks about ClusterNetworkPolicies.

use super::{few, Raw};
use crate::policy::cnp::ClusterPolicy;
use crate::policy::{Cluster, Direction};

/// Two CNPs of one tier and priority that select a common pod (in the snapshot) and have rules
/// in a common direction: the API leaves their order to the implementation, so which one
/// decides a connection both match is not portable. Reported on the later one in name order
/// (sluice evaluates same-priority policies by name).
pub fn same_priority_overlap(cluster: &Cluster) -> Vec<Raw> {
    let policies: Vec<&ClusterPolicy> = cluster.cluster_policies.values().collect();
    let mut out = Vec::new();
    for (i, a) in policies.iter().enumerate() {
        for b in &policies[i + 1..] {
            if a.tier != b.tier || a.priority != b.priority {
                continue;
            }
            let dirs: Vec<String> = [Direction::Ingress, Direction::Egress]
                .into_iter()
                .filter(|d| !a.rules(*d).is_empty() && !b.rules(*d).is_empty())
                .map(|d| d.to_string())
                .collect();
            if dirs.is_empty() {
                continue;
            }
            let both: Vec<String> = cluster
                .pods
                .values()
                .filter(|p| a.subject.selects(cluster, p) && b.subject.selects(cluster, p))
                .map(|p| p.object_name().to_string())
                .collect();
            if both.is_empty() {
                continue;
            }
            out.push(Raw {
                object: format!("ClusterNetworkPolicy {}", b.name),
                field: "spec.priority".into(),
                message: format!(
                    "has the same {} tier priority {} as {}, and both select {} ({} pods) with {} rules: the API leaves their order to the implementation (sluice takes {} first, by name)",
                    b.tier,
                    b.priority,
                    a.label(),
                    few(&both),
                    both.len(),
                    dirs.join(" and "),
                    a.label()
                ),
                fix: format!(
                    "give {} or {} a different spec.priority (lower is evaluated first)",
                    a.label(),
                    b.label()
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::policy::objects::ClusterBuilder;

    fn cnp(name: &str, priority: u32, subject: &str, dir: &str) -> String {
        format!("---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {{tier: Admin, priority: {priority}, subject: {subject}, {dir}: [{{action: Deny, {}: [{{namespaces: {{}}}}]}}]}}\n", if dir == "ingress" { "from" } else { "to" })
    }

    #[test]
    fn same_priority_with_overlapping_subjects_is_reported_once_on_the_later_name() {
        let world = "{kind: Namespace, apiVersion: v1, metadata: {name: x, labels: {t: a}}}\n---\n{kind: Namespace, apiVersion: v1, metadata: {name: y}}\n---\n{kind: Pod, apiVersion: v1, metadata: {name: p, namespace: x}}\n---\n{kind: Pod, apiVersion: v1, metadata: {name: q, namespace: y}}\n";
        let mut b = ClusterBuilder::new();
        b.add_text("w", world);
        b.add_text(
            "p",
            &[
                cnp("a", 5, "{namespaces: {}}", "ingress"),
                cnp("b", 5, "{namespaces: {matchLabels: {t: a}}}", "ingress"),
                // Same priority, but only egress rules: no common direction with a or b.
                cnp("c", 5, "{namespaces: {}}", "egress"),
                // Same priority and direction, but its subject selects no pod a selects... y
                // only, which a selects too: reported against a (d is later by name).
                cnp(
                    "d",
                    5,
                    "{namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}}",
                    "ingress",
                ),
                // Different priority: never reported.
                cnp("e", 6, "{namespaces: {}}", "ingress"),
            ]
            .concat(),
        );
        let (c, _) = b.build();
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let found = super::same_priority_overlap(&c);
        let got: Vec<(String, String)> = found
            .iter()
            .map(|r| {
                (
                    r.object.clone(),
                    r.message
                        .split(" as ")
                        .nth(1)
                        .unwrap()
                        .split(',')
                        .next()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        // Written by hand: (a, b) overlap on x/p; (a, d) on y/q; (b, d) do not overlap.
        assert_eq!(
            got,
            vec![
                ("ClusterNetworkPolicy b".to_string(), "cnp/a".to_string()),
                ("ClusterNetworkPolicy d".to_string(), "cnp/a".to_string()),
            ]
        );
        assert!(found[0].message.contains("x/p"), "{}", found[0].message);
        assert!(found[0].fix.contains("spec.priority"));
    }
}
