//! `explain --fix`: the smallest change that allows (or, with `--fix deny`, denies) one flow,
//! as NetworkPolicy YAML, verified by applying it on top of the snapshot and re-evaluating
//! the whole cluster, with every other cell the change also flips.
//!
//! Allow: each denying side (the source's egress, the destination's ingress) needs one of
//!   - a peer added to an existing rule whose ports already match the flow,
//!   - the flow's port added to an existing rule whose peers already match,
//!   - a new policy selecting the pod (and its replicas) with one rule for the flow
//!     (policyTypes of that direction only, so it isolates nothing new).
//!
//! Deny: one side suffices; every rule on that side that allows the flow is narrowed to
//! (peers minus the far end) x ports + peers x (ports minus the port), or, when the side is
//! not isolated, a new policy isolates the pod with an allow-all narrowed the same way.
//!
//! Every combination is applied as YAML on top of the snapshot ([`super::render::apply_on_top`]),
//! the flow is evaluated again, and the two truth tables are compared over [`fix_columns`].
//! The one with the fewest other changed cells wins; ties go to edits of existing policies.

pub mod edit;

use std::collections::{BTreeMap, BTreeSet};

use edit::{narrow, peer_for_ip, peer_for_pod, peers_match, pod_selector, ports_match, Far};

use super::diff::{diff, AbsentPods, Cell, Diff};
use super::render::{apply_on_top, policies_yaml};
use crate::policy::matrix::PortProto;
use crate::policy::model::{Peer, Rule};
use crate::policy::ports::{PortRef, PortRule};
use crate::policy::{
    evaluate, Cluster, Direction, Endpoint, Flow, ObjectName, Pod, Policy, Protocol,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Allow,
    Deny,
}

/// A verified change.
#[derive(Debug, Clone)]
pub struct Fix {
    pub description: Vec<String>,
    /// The objects to apply, as YAML (`---` between documents).
    pub manifests: String,
    /// `NetworkPolicy ns/name` of each object in `manifests`.
    pub objects: Vec<String>,
    /// Every cell that changes, the flow's own cell included.
    pub changes: Diff,
    /// Every changed cell except the flow's own.
    pub also: Vec<Cell>,
    /// Other candidates that also worked: their description and how many other cells they flip.
    pub alternatives: Vec<(String, usize)>,
}

/// The cell of the flow, when both ends are pods (its own change is not an "also" change).
fn own_cell(flow: &Flow, port: u16) -> Option<(ObjectName, ObjectName, PortProto)> {
    match (&flow.from, &flow.to) {
        (Endpoint::Pod(a), Endpoint::Pod(b)) => Some((
            a.clone(),
            b.clone(),
            PortProto {
                port,
                protocol: flow.protocol,
            },
        )),
        _ => None,
    }
}

/// Columns compared: every declared port number and the flow's port, each with TCP, UDP and
/// SCTP (a change can open a protocol no pod declares on that port).
pub fn fix_columns(cluster: &Cluster, port: u16) -> Vec<PortProto> {
    let mut ports: BTreeSet<u16> = cluster
        .pods
        .values()
        .flat_map(|p| p.ports.iter().map(|c| c.port))
        .collect();
    ports.insert(port);
    ports
        .into_iter()
        .flat_map(|port| {
            Protocol::ALL
                .iter()
                .map(move |&protocol| PortProto { port, protocol })
        })
        .collect()
}

/// One way to change one side: one or more policy edits that belong together.
#[derive(Clone)]
struct Edit {
    description: String,
    new_policy: bool,
    kinds: Vec<EditKind>,
}

#[derive(Clone)]
enum EditKind {
    AddPeer {
        policy: ObjectName,
        dir: Direction,
        rule: usize,
        peer: Peer,
    },
    AddPort {
        policy: ObjectName,
        dir: Direction,
        rule: usize,
        port: PortRule,
    },
    /// Rules (by index) replaced by 0, 1 or 2 narrower rules.
    Replace {
        policy: ObjectName,
        dir: Direction,
        rules: BTreeMap<usize, Vec<Rule>>,
    },
    New(Policy),
}

fn rules_mut(p: &mut Policy, dir: Direction) -> &mut Vec<Rule> {
    match dir {
        Direction::Ingress => p.ingress.get_or_insert_with(Vec::new),
        Direction::Egress => p.egress.get_or_insert_with(Vec::new),
    }
}

/// The policies the edits touch, edited.
fn apply_edits(cluster: &Cluster, edits: &[&Edit]) -> BTreeMap<ObjectName, Policy> {
    let mut touched: BTreeMap<ObjectName, Policy> = BTreeMap::new();
    for kind in edits.iter().flat_map(|e| e.kinds.iter()) {
        fn existing<'a>(
            touched: &'a mut BTreeMap<ObjectName, Policy>,
            cluster: &Cluster,
            name: &ObjectName,
        ) -> &'a mut Policy {
            touched
                .entry(name.clone())
                .or_insert_with(|| cluster.policies[name].clone())
        }
        match kind {
            EditKind::AddPeer {
                policy,
                dir,
                rule,
                peer,
            } => {
                let p = existing(&mut touched, cluster, policy);
                rules_mut(p, *dir)[*rule].peers.push(peer.clone());
            }
            EditKind::AddPort {
                policy,
                dir,
                rule,
                port,
            } => {
                let p = existing(&mut touched, cluster, policy);
                rules_mut(p, *dir)[*rule].ports.push(port.clone());
            }
            EditKind::Replace { policy, dir, rules } => {
                let p = existing(&mut touched, cluster, policy);
                let old = std::mem::take(rules_mut(p, *dir));
                let mut new = Vec::new();
                for (i, r) in old.into_iter().enumerate() {
                    match rules.get(&i) {
                        Some(replacement) => new.extend(replacement.iter().cloned()),
                        None => new.push(r),
                    }
                }
                *rules_mut(p, *dir) = new;
            }
            EditKind::New(p) => {
                touched.insert(p.object_name(), p.clone());
            }
        }
    }
    touched
}

/// The resolved flow.
struct Ends {
    port: u16,
    port_ref: PortRef,
    protocol: Protocol,
}

type Resolved<'a> = (Option<&'a Pod>, Option<std::net::IpAddr>);

fn resolve<'a>(cluster: &'a Cluster, e: &Endpoint) -> Result<Resolved<'a>, String> {
    match e {
        Endpoint::Pod(n) => cluster
            .pod(n)
            .map(|p| (Some(p), None))
            .ok_or_else(|| format!("no pod {n} in the snapshot")),
        Endpoint::Ip(ip) => Ok((cluster.pod_by_ip(*ip), Some(*ip))),
    }
}

fn short(pod: Option<&Pod>, ip: Option<std::net::IpAddr>) -> String {
    match (pod, ip) {
        (Some(p), _) => p.name.rsplit('/').next().unwrap_or(&p.name).to_string(),
        (None, Some(ip)) => ip.to_string(),
        _ => "peer".into(),
    }
}

fn verb(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

/// Where named ports resolve: the subject for ingress, the far end for egress.
fn destination<'a>(dir: Direction, subject: &'a Pod, far: Far<'a>) -> Option<&'a Pod> {
    match dir {
        Direction::Ingress => Some(subject),
        Direction::Egress => far.pod,
    }
}

/// Edits that make `dir` of `subject` allow the flow.
fn allow_edits(
    cluster: &Cluster,
    dir: Direction,
    subject: &Pod,
    far: Far,
    ends: &Ends,
) -> Vec<Edit> {
    let dst = destination(dir, subject, far);
    let peer = match (far.pod, far.ip) {
        (_, Some(ip)) => Some(peer_for_ip(ip)),
        (Some(p), None) => peer_for_pod(cluster, &subject.namespace, p),
        (None, None) => None,
    };
    let clause = PortRule {
        protocol: ends.protocol,
        port: Some(ends.port_ref.clone()),
        end_port: None,
    };
    let mut out = Vec::new();
    for q in cluster.isolating(subject, dir) {
        for (k, r) in q.rules(dir).unwrap_or_default().iter().enumerate() {
            let name = q.object_name();
            if let Some(peer) = &peer {
                if !r.peers.is_empty() && ports_match(r, ends.port, ends.protocol, dst) {
                    out.push(Edit {
                        description: format!("add a peer to {name} {dir} rule {k}"),
                        new_policy: false,
                        kinds: vec![EditKind::AddPeer {
                            policy: name.clone(),
                            dir,
                            rule: k,
                            peer: peer.clone(),
                        }],
                    });
                }
            }
            if !r.ports.is_empty() && peers_match(cluster, &q.namespace, r, far) {
                out.push(Edit {
                    description: format!(
                        "add port {}/{} to {name} {dir} rule {k}",
                        ends.port_ref, ends.protocol
                    ),
                    new_policy: false,
                    kinds: vec![EditKind::AddPort {
                        policy: name,
                        dir,
                        rule: k,
                        port: clause.clone(),
                    }],
                });
            }
        }
    }
    if let Some(peer) = peer {
        let name = edit::free_name(
            cluster,
            &subject.namespace,
            &[
                "allow",
                &short(Some(subject), None),
                verb(dir),
                &short(far.pod, far.ip),
                &ends.port_ref.to_string(),
            ],
        );
        let rule = Rule {
            peers: vec![peer],
            ports: vec![clause],
        };
        out.push(Edit {
            description: format!("new policy {}/{name} ({dir} only)", subject.namespace),
            new_policy: true,
            kinds: vec![EditKind::New(Policy {
                namespace: subject.namespace.clone(),
                name,
                pod_selector: pod_selector(cluster, subject),
                ingress: (dir == Direction::Ingress).then(|| vec![rule.clone()]),
                egress: (dir == Direction::Egress).then(|| vec![rule]),
            })],
        });
    }
    out
}

/// The edit that makes `dir` of `subject` deny the flow.
fn deny_edit(cluster: &Cluster, dir: Direction, subject: &Pod, far: Far, ends: &Ends) -> Edit {
    let dst = destination(dir, subject, far);
    let policies = cluster.isolating(subject, dir);
    if policies.is_empty() {
        let everything = Rule {
            peers: vec![],
            ports: vec![],
        };
        let rules = narrow(
            cluster,
            &subject.namespace,
            &everything,
            far,
            ends.port,
            ends.protocol,
            dst,
        );
        let name = edit::free_name(
            cluster,
            &subject.namespace,
            &[
                "deny",
                &short(Some(subject), None),
                verb(dir),
                &short(far.pod, far.ip),
                &ends.port_ref.to_string(),
            ],
        );
        return Edit {
            description: format!(
                "new policy {}/{name} isolating {dir} and allowing everything else",
                subject.namespace
            ),
            new_policy: true,
            kinds: vec![EditKind::New(Policy {
                namespace: subject.namespace.clone(),
                name,
                pod_selector: pod_selector(cluster, subject),
                ingress: (dir == Direction::Ingress).then(|| rules.clone()),
                egress: (dir == Direction::Egress).then_some(rules),
            })],
        };
    }
    // Policies are a union: every rule that allows the flow must stop allowing it.
    let mut parts = Vec::new();
    let mut kinds = Vec::new();
    for q in policies {
        let mut replaced = BTreeMap::new();
        for (k, r) in q.rules(dir).unwrap_or_default().iter().enumerate() {
            if peers_match(cluster, &q.namespace, r, far)
                && ports_match(r, ends.port, ends.protocol, dst)
            {
                replaced.insert(
                    k,
                    narrow(cluster, &q.namespace, r, far, ends.port, ends.protocol, dst),
                );
                parts.push(format!("narrow {} {dir} rule {k}", q.object_name()));
            }
        }
        if !replaced.is_empty() {
            kinds.push(EditKind::Replace {
                policy: q.object_name(),
                dir,
                rules: replaced,
            });
        }
    }
    Edit {
        description: parts.join(", "),
        new_policy: false,
        kinds,
    }
}

/// A candidate after verification.
struct Tried {
    fix: Fix,
    score: (usize, usize, usize),
}

fn try_edits(
    cluster: &Cluster,
    flow: &Flow,
    goal: Goal,
    edits: Vec<Edit>,
    columns: &[PortProto],
    own: &Option<(ObjectName, ObjectName, PortProto)>,
) -> Option<Tried> {
    let refs: Vec<&Edit> = edits.iter().collect();
    let touched = apply_edits(cluster, &refs);
    let policies: Vec<&Policy> = touched.values().collect();
    let manifests = policies_yaml(&policies);
    // Verified the way a user would apply it: the YAML loaded on top of the snapshot.
    let after = apply_on_top(cluster, &manifests).ok()?;
    let verdict = evaluate(&after, flow).ok()?;
    if verdict.allowed != (goal == Goal::Allow) {
        return None;
    }
    let changes = diff(cluster, &after, columns, AbsentPods::Skip);
    let also: Vec<Cell> = changes
        .cells()
        .filter(|c| {
            own.as_ref()
                .is_none_or(|(f, t, col)| !(c.from == *f && c.to == *t && c.column == *col))
        })
        .collect();
    let new_policies = edits.iter().filter(|e| e.new_policy).count();
    let score = (also.len(), new_policies, touched.len());
    Some(Tried {
        fix: Fix {
            description: edits.iter().map(|e| e.description.clone()).collect(),
            manifests,
            objects: touched
                .keys()
                .map(|n| {
                    let verb = if cluster.policies.contains_key(n) {
                        "changed"
                    } else {
                        "new"
                    };
                    format!("NetworkPolicy {n} ({verb})")
                })
                .collect(),
            changes,
            also,
            alternatives: vec![],
        },
        score,
    })
}

/// Proposes the smallest verified change that makes `flow` allowed (or denied). `Ok(None)`
/// when the flow already is; `Err` for bad input or when no candidate verifies.
pub fn propose(cluster: &Cluster, flow: &Flow, goal: Goal) -> Result<Option<Fix>, String> {
    let verdict = evaluate(cluster, flow)?;
    if verdict.allowed == (goal == Goal::Allow) {
        return Ok(None);
    }
    let (from_pod, from_ip) = resolve(cluster, &flow.from)?;
    let (to_pod, to_ip) = resolve(cluster, &flow.to)?;
    // An Admin tier Accept or Deny decides before any NetworkPolicy is consulted: no
    // NetworkPolicy edit changes that side, so say so rather than propose one. (A Pass, or a
    // Baseline decision, leaves room for a NetworkPolicy: candidates are verified below.)
    for side in [&verdict.egress, &verdict.ingress] {
        if let Some(d) = side
            .decision
            .as_ref()
            .filter(|d| d.tier == crate::policy::cnp::Tier::Admin)
        {
            if (goal == Goal::Allow) != side.allowed {
                return Err(format!(
                    "cannot propose a fix: {} {} ({}) of the Admin tier decides {}'s side before any NetworkPolicy is consulted, so no NetworkPolicy edit can change it; change the ClusterNetworkPolicy by hand",
                    d.policy,
                    match &d.rule_name {
                        Some(n) => format!("rule {} '{n}'", d.rule),
                        None => format!("rule {}", d.rule),
                    },
                    d.action,
                    side.pod.as_deref().unwrap_or("this end"),
                ));
            }
        }
    }
    if goal == Goal::Allow {
        // The dataplane drops everything of such a pod: no policy edit can help.
        for p in [from_pod, to_pod].into_iter().flatten() {
            if let Some(fc) = cluster.fails_closed(p) {
                return Err(format!(
                    "no policy edit can allow it: {} fails closed: {}; correct the field named first",
                    p.object_name(),
                    fc.reason
                ));
            }
        }
    }
    let ends = Ends {
        port: verdict.port,
        port_ref: flow.port.clone(),
        protocol: flow.protocol,
    };
    let from = Far {
        pod: from_pod,
        ip: from_ip,
    };
    let to = Far {
        pod: to_pod,
        ip: to_ip,
    };
    // Sides whose policies can change: a pod (not host-network) at that end.
    fn subject(p: Option<&Pod>) -> Option<&Pod> {
        p.filter(|p| !p.host_network)
    }
    let mut options: Vec<Vec<Vec<Edit>>> = Vec::new(); // per side: alternatives (each a set of edits)
    match goal {
        Goal::Allow => {
            for (allowed, dir, me, far) in [
                (verdict.egress.allowed, Direction::Egress, from_pod, to),
                (verdict.ingress.allowed, Direction::Ingress, to_pod, from),
            ] {
                if allowed {
                    continue;
                }
                let me = subject(me).ok_or("the denying side is not a pod")?;
                options.push(
                    allow_edits(cluster, dir, me, far, &ends)
                        .into_iter()
                        .map(|e| vec![e])
                        .collect(),
                );
            }
        }
        Goal::Deny => {
            // One side suffices: the alternatives are "deny at egress" or "deny at ingress".
            let mut either = Vec::new();
            if let Some(me) = subject(from_pod) {
                either.push(vec![deny_edit(cluster, Direction::Egress, me, to, &ends)]);
            }
            if let Some(me) = subject(to_pod) {
                either.push(vec![deny_edit(
                    cluster,
                    Direction::Ingress,
                    me,
                    from,
                    &ends,
                )]);
            }
            options.push(either);
        }
    }
    // Every combination of one alternative per side.
    let mut combos: Vec<Vec<Edit>> = vec![vec![]];
    for side in &options {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                side.iter().map(move |alt| {
                    let mut c = c.clone();
                    c.extend(alt.iter().cloned());
                    c
                })
            })
            .collect();
    }
    let columns = fix_columns(cluster, ends.port);
    let own = own_cell(flow, ends.port);
    let mut tried: Vec<Tried> = combos
        .into_iter()
        .filter_map(|edits| try_edits(cluster, flow, goal, edits, &columns, &own))
        .collect();
    tried.sort_by(|a, b| {
        a.score
            .cmp(&b.score)
            .then_with(|| a.fix.description.cmp(&b.fix.description))
    });
    let mut it = tried.into_iter();
    let Some(best) = it.next() else {
        return Err(format!(
            "no change verified: none of the candidate edits makes the flow {}",
            if goal == Goal::Allow {
                "allowed"
            } else {
                "denied"
            }
        ));
    };
    let mut fix = best.fix;
    fix.alternatives = it
        .take(5)
        .map(|t| (t.fix.description.join("; "), t.score.0))
        .collect();
    Ok(Some(fix))
}
