//! Checks about objects the loader refused and about ipBlocks.

use super::{directed, few, object, peer_field, Raw};
use crate::policy::model::{Peer, Problem};
use crate::policy::Cluster;

/// The loader's message for an except outside its cidr (`ipblock::check_except`).
fn is_except_outside(p: &Problem) -> bool {
    p.field.contains(".ipBlock.except[") && p.message.contains("strictly inside")
}

pub fn invalid_objects(cluster: &Cluster) -> Vec<Raw> {
    cluster
        .errors
        .iter()
        .filter(|p| !is_except_outside(p))
        .map(|p| Raw {
            object: p.object.clone(),
            field: p.field.clone(),
            message: p.message.clone(),
            fix: "correct the field as the message says; until then the object is left out (pods it may select fail closed)".into(),
        })
        .collect()
}

pub fn except_outside_cidr(cluster: &Cluster) -> Vec<Raw> {
    cluster
        .errors
        .iter()
        .filter(|p| is_except_outside(p))
        .map(|p| Raw {
            object: p.object.clone(),
            field: p.field.clone(),
            message: p.message.clone(),
            fix: "make the except a subnet strictly inside cidr (longer prefix), or remove it"
                .into(),
        })
        .collect()
}

pub fn ipblock_covers_pods(cluster: &Cluster) -> Vec<Raw> {
    let mut out = Vec::new();
    for (p, dir, rules) in directed(cluster) {
        for (i, rule) in rules.iter().enumerate() {
            for (j, peer) in rule.peers.iter().enumerate() {
                let Peer::IpBlock(block) = peer else { continue };
                // A /0 says "any address" on purpose; pods included is what it means.
                if block.cidr.prefix_len() == 0 {
                    continue;
                }
                let pods: Vec<String> = cluster
                    .pods
                    .values()
                    .filter(|pod| pod.ips.iter().any(|ip| block.contains(*ip)))
                    .map(|pod| pod.object_name().to_string())
                    .collect();
                if pods.is_empty() {
                    continue;
                }
                out.push(Raw {
                    object: object(p),
                    field: format!("{}.ipBlock.cidr", peer_field(dir, i, j)),
                    message: format!(
                        "{} contains the addresses of {} pods ({}): an ipBlock matches pods too, by their current IP",
                        block.cidr,
                        pods.len(),
                        few(&pods)
                    ),
                    fix: "select those pods with podSelector/namespaceSelector, and add their range to except if the block is meant for outside addresses".into(),
                });
            }
        }
    }
    out
}
