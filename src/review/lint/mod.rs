//! `sluice lint`: findings about policies that load fine but probably do not do what their
//! author meant, each with a stable code, a severity, the object and field, and a one-line fix.
//!
//! Every check is one entry of [`CHECKS`]: a code, a severity and a function of the snapshot.
//! A new check is one more function and one more entry; codes never change meaning.
//! Findings are judged against the snapshot: "selects no pod" means no pod in these manifests
//! (or this cluster) matches.

mod addresses;
mod cnp;
mod isolation;
mod selection;
mod shadow;

use serde::Serialize;

use crate::policy::{Cluster, Direction, Policy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The object is refused or cannot work: fix before applying (exit code 1).
    Error,
    /// Works, but almost certainly not as meant.
    Warning,
    /// Worth knowing; often intended.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    /// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
    pub object: String,
    /// Field path inside the object, e.g. `spec.ingress[0].from[1]`.
    pub field: String,
    pub message: String,
    /// What to change, in one line.
    pub fix: String,
}

/// What a check reports before the registry adds its code and severity.
pub struct Raw {
    pub object: String,
    pub field: String,
    pub message: String,
    pub fix: String,
}

/// One lint: a stable code, its severity, a summary for the docs, and the check itself.
pub struct Check {
    pub code: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    pub run: fn(&Cluster) -> Vec<Raw>,
}

/// Every check, in the order findings are reported. Codes are stable: add, never rename.
pub const CHECKS: &[Check] = &[
    Check {
        code: "invalid-object",
        severity: Severity::Error,
        summary:
            "an object the API server would refuse; sluice leaves it out (its pods fail closed)",
        run: addresses::invalid_objects,
    },
    Check {
        code: "except-outside-cidr",
        severity: Severity::Error,
        summary:
            "an ipBlock except that is not strictly inside its cidr (refused by the API server)",
        run: addresses::except_outside_cidr,
    },
    Check {
        code: "namespace-not-declared",
        severity: Severity::Warning,
        summary: "a policy in a namespace no Namespace object declares",
        run: selection::namespace_not_declared,
    },
    Check {
        code: "selects-no-pod",
        severity: Severity::Warning,
        summary: "a policy whose podSelector matches no pod",
        run: selection::selects_no_pod,
    },
    Check {
        code: "peer-selects-nothing",
        severity: Severity::Warning,
        summary: "a from/to peer whose selectors match no pod",
        run: selection::peer_selects_nothing,
    },
    Check {
        code: "named-port-undeclared",
        severity: Severity::Warning,
        summary: "a named port that no pod it resolves on declares (with that protocol)",
        run: selection::named_port_undeclared,
    },
    Check {
        code: "rule-shadowed",
        severity: Severity::Warning,
        summary: "a rule that never decides anything: other rules allow everything it allows",
        run: shadow::rule_shadowed,
    },
    Check {
        code: "allow-all-defeats-deny",
        severity: Severity::Warning,
        summary: "a rule allowing every peer and port on pods a default-deny policy isolates",
        run: isolation::allow_all_defeats_deny,
    },
    Check {
        code: "egress-without-dns",
        severity: Severity::Warning,
        summary: "pods isolated for egress with no rule allowing DNS (UDP port 53)",
        run: isolation::egress_without_dns,
    },
    Check {
        code: "ipblock-covers-pods",
        severity: Severity::Warning,
        summary: "an ipBlock (other than /0) containing pod addresses: it matches those pods too",
        run: addresses::ipblock_covers_pods,
    },
    Check {
        code: "cnp-same-priority-overlap",
        severity: Severity::Warning,
        summary: "ClusterNetworkPolicies of one tier and priority whose subjects overlap (their order is implementation-defined)",
        run: cnp::same_priority_overlap,
    },
];

/// Runs every check not in `ignore`, sorted by severity, object and field.
pub fn lint(cluster: &Cluster, ignore: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    for check in CHECKS {
        if ignore.iter().any(|c| c == check.code) {
            continue;
        }
        out.extend((check.run)(cluster).into_iter().map(|r| Finding {
            code: check.code,
            severity: check.severity,
            object: r.object,
            field: r.field,
            message: r.message,
            fix: r.fix,
        }));
    }
    out.sort_by(|a, b| {
        (a.severity, &a.object, &a.field, a.code).cmp(&(b.severity, &b.object, &b.field, b.code))
    });
    out
}

// Helpers shared by the checks.

pub(crate) fn object(p: &Policy) -> String {
    format!("NetworkPolicy {}/{}", p.namespace, p.name)
}

pub(crate) fn rule_field(dir: Direction, rule: usize) -> String {
    format!("spec.{dir}[{rule}]")
}

pub(crate) fn peer_field(dir: Direction, rule: usize, peer: usize) -> String {
    let list = match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    format!("spec.{dir}[{rule}].{list}[{peer}]")
}

/// Every policy with the rules of one direction it has.
pub(crate) fn directed(
    cluster: &Cluster,
) -> impl Iterator<Item = (&Policy, Direction, &[crate::policy::model::Rule])> {
    cluster.policies.values().flat_map(|p| {
        [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter_map(move |d| p.rules(d).map(|r| (p, d, r)))
    })
}

/// Pods a policy selects (never host-network ones).
pub(crate) fn selected<'a>(cluster: &'a Cluster, p: &'a Policy) -> Vec<&'a crate::policy::Pod> {
    cluster.pods.values().filter(|pod| p.selects(pod)).collect()
}

/// Up to three names and a count, for messages.
pub(crate) fn few<T: std::fmt::Display>(items: &[T]) -> String {
    let names: Vec<String> = items.iter().take(3).map(|i| i.to_string()).collect();
    if items.len() > 3 {
        format!("{}, and {} more", names.join(", "), items.len() - 3)
    } else {
        names.join(", ")
    }
}
