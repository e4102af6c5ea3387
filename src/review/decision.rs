//! The deciding clauses of a verdict, without pod names, so that cells decided the same way
//! (replicas, many clients) share one line of a diff.

use crate::policy::evaluate::SideVerdict;
use crate::policy::{evaluate, Cluster, Endpoint, Flow, ObjectName, PortRef, Protocol};

/// What decided one cell: `allowed` and a sentence naming the policies and rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Decision {
    /// The cell of a pod that is not in this snapshot.
    pub fn absent(which: &str) -> Decision {
        Decision {
            allowed: false,
            reason: format!("no connection: a pod of the cell is only in {which}"),
        }
    }
}

fn side_reason(s: &SideVerdict) -> String {
    match (&s.allowed_by, s.isolated) {
        (_, false) => "not isolated".to_string(),
        (Some(by), true) => format!("{} rule {}", by.policy, by.rule),
        (None, true) => format!("isolated by {}, no rule allows", s.isolated_by.join(", ")),
    }
}

/// Evaluates one pod-to-pod cell and summarises the clauses that decide it.
pub fn decide(
    cluster: &Cluster,
    from: &ObjectName,
    to: &ObjectName,
    port: u16,
    protocol: Protocol,
) -> Decision {
    let flow = Flow {
        from: Endpoint::Pod(from.clone()),
        to: Endpoint::Pod(to.clone()),
        port: PortRef::Number(port),
        protocol,
    };
    match evaluate(cluster, &flow) {
        Ok(v) => {
            let reason = if v.allowed {
                format!(
                    "allowed: egress {}; ingress {}",
                    side_reason(&v.egress),
                    side_reason(&v.ingress)
                )
            } else {
                let mut parts = Vec::new();
                if !v.egress.allowed {
                    parts.push(format!("egress {}", side_reason(&v.egress)));
                }
                if !v.ingress.allowed {
                    parts.push(format!("ingress {}", side_reason(&v.ingress)));
                }
                format!("denied: {}", parts.join("; "))
            };
            Decision {
                allowed: v.allowed,
                reason,
            }
        }
        // Both pods come from the snapshot's own pod list, so this cannot name a missing pod;
        // keep the message rather than panic if it ever does.
        Err(e) => Decision {
            allowed: false,
            reason: format!("cannot evaluate: {e}"),
        },
    }
}
