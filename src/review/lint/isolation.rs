//! Checks about isolation as a whole: allow-alls that undo a default deny, and egress
//! isolation that forgets DNS.

use std::collections::BTreeMap;

use super::{directed, few, object, rule_field, selected, Raw};
use crate::policy::ports::{PortRef, Protocol};
use crate::policy::{Cluster, Direction};

pub fn allow_all_defeats_deny(cluster: &Cluster) -> Vec<Raw> {
    let mut out = Vec::new();
    for (p, dir, rules) in directed(cluster) {
        for (i, rule) in rules.iter().enumerate() {
            if !(rule.peers.is_empty() && rule.ports.is_empty()) {
                continue;
            }
            let mine = selected(cluster, p);
            for q in cluster.policies_in(&p.namespace) {
                if q.rules(dir) != Some(&[]) {
                    continue; // not a default deny in this direction
                }
                let denied: Vec<String> = selected(cluster, q)
                    .iter()
                    .filter(|pod| mine.iter().any(|m| m.object_name() == pod.object_name()))
                    .map(|pod| pod.object_name().to_string())
                    .collect();
                let overlaps =
                    !denied.is_empty() || (mine.is_empty() && p.pod_selector.is_everything());
                if !overlaps {
                    continue;
                }
                out.push(Raw {
                    object: object(p),
                    field: rule_field(dir, i),
                    message: format!(
                        "allows every peer on every port for {}, which {}/{} default-denies for {dir}: the deny has no effect on them",
                        if denied.is_empty() { "every pod of the namespace".to_string() } else { format!("{} pods ({})", denied.len(), few(&denied)) },
                        q.namespace,
                        q.name
                    ),
                    fix: "list the peers and ports these pods need in this rule, or delete the rule if the deny is meant to hold".into(),
                });
            }
        }
    }
    out
}

/// Whether a rule allows UDP port 53 to some destination.
fn allows_dns(cluster: &Cluster, rule: &crate::policy::model::Rule) -> bool {
    rule.ports.is_empty()
        || rule.ports.iter().any(|c| {
            c.protocol == Protocol::Udp
                && match (&c.port, c.numeric_range()) {
                    (_, Some((lo, hi))) => lo <= 53 && 53 <= hi,
                    (Some(PortRef::Name(n)), None) => cluster
                        .pods
                        .values()
                        .any(|pod| pod.resolve_named_port(n, Protocol::Udp) == Some(53)),
                    _ => false,
                }
        })
}

pub fn egress_without_dns(cluster: &Cluster) -> Vec<Raw> {
    // Pods grouped by the set of policies that isolate them for egress.
    let mut by_set: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for pod in cluster.pods.values().filter(|p| !p.host_network) {
        let policies = cluster.isolating(pod, Direction::Egress);
        if policies.is_empty() {
            continue;
        }
        let dns = policies
            .iter()
            .flat_map(|p| p.egress.iter().flatten())
            .any(|r| allows_dns(cluster, r));
        if !dns {
            let names = policies
                .iter()
                .map(|p| p.object_name().to_string())
                .collect();
            by_set
                .entry(names)
                .or_default()
                .push(pod.object_name().to_string());
        }
    }
    let mut out = Vec::new();
    for (set, pods) in by_set {
        // Report on the default deny when there is one: that is where DNS is usually added.
        let policies: Vec<_> = set
            .iter()
            .filter_map(|n| cluster.policies.get(&crate::policy::ObjectName::parse(n)))
            .collect();
        let Some(at) = policies
            .iter()
            .find(|p| p.egress.as_deref() == Some(&[]))
            .or(policies.first())
        else {
            continue;
        };
        out.push(Raw {
            object: object(at),
            field: "spec.policyTypes".into(),
            message: format!(
                "{} pods ({}) are isolated for egress by {} and no rule of these allows DNS (UDP port 53): name lookups will fail",
                pods.len(),
                few(&pods),
                set.join(", ")
            ),
            fix: "add an egress rule to UDP and TCP port 53 of the cluster DNS (namespaceSelector kubernetes.io/metadata.name: kube-system, podSelector k8s-app: kube-dns)".into(),
        });
    }
    out
}
