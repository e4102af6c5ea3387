//! The truth table between all pods, fast.
//!
//! Pods that no selector, ipBlock or named port can tell apart (same namespace, labels,
//! ports, host-network flag and ipBlock memberships) form one group, and the table is
//! computed between groups with bitsets: cost follows distinct groups, not pods.
//! It computes the same relation as [`super::evaluate`], deciding each clause with the
//! predicates of [`super::clause`] on group representatives; property tests hold the table
//! equal to the oracle and the bitsets equal to the predicates.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::clause;
use super::ipblock::IpBlock;
use super::labels::Selector;
use super::model::{Cluster, Direction, NamespaceScope, ObjectName, Peer, Pod, Policy};
use super::ports::Protocol;

/// A fixed-size set of group indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn or(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

/// Which address of each pod ipBlocks see, chosen per pair like the oracle does: IPv4 when
/// both have one, else IPv6 when both have one, else each pod's first address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Family {
    V4,
    V6,
    First,
}

fn family_of(a: &Pod, b: &Pod) -> Family {
    let has = |p: &Pod, v4: bool| p.ips.iter().any(|ip| ip.is_ipv4() == v4);
    if has(a, true) && has(b, true) {
        Family::V4
    } else if has(a, false) && has(b, false) {
        Family::V6
    } else {
        Family::First
    }
}

fn address(p: &Pod, f: Family) -> Option<IpAddr> {
    match f {
        Family::V4 => p.ips.iter().find(|ip| ip.is_ipv4()).copied(),
        Family::V6 => p.ips.iter().find(|ip| ip.is_ipv6()).copied(),
        Family::First => p.ips.first().copied(),
    }
}

/// A column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortProto {
    pub port: u16,
    pub protocol: Protocol,
}

/// The computed truth table.
pub struct Matrix {
    /// Pods in name order; rows and columns of every table.
    pub pods: Vec<ObjectName>,
    pub columns: Vec<PortProto>,
    group_of: Vec<usize>,
    families: Vec<Family>,
    /// Index into `families` for each (src group, dst group), via `class_of`.
    class_of: Vec<u8>,
    pair_family: [[Family; 4]; 4],
    /// Per family, per column, per group: egress isolation and allowed destination groups.
    egress: Vec<Vec<Vec<Option<Bits>>>>,
    ingress: Vec<Vec<Vec<Option<Bits>>>>,
    pub group_count: usize,
    /// Per pod: the policies that make it fail closed (invalid policies and invalid
    /// ClusterNetworkPolicies that may select it):
    /// every cell from or to it (but loopback) is denied, as in [`super::evaluate`].
    pub failed_closed: Vec<Vec<String>>,
    /// With ClusterNetworkPolicies, every cell decided by [`super::evaluate`] (pods x pods x
    /// columns, row-major): the grouped bitsets model NetworkPolicy only, and CNP tiers are
    /// enforced by the kernel now, so the table must walk them too.
    exact: Option<Vec<bool>>,
}

impl Matrix {
    /// The group of pod `pod` (index into `pods`): two pods of one group have the same verdict
    /// towards and from every other pod, so callers can work per group instead of per pod.
    pub fn group_of(&self, pod: usize) -> usize {
        self.group_of[pod]
    }

    /// Whether pod `from` (index into `pods`) may reach pod `to` on column `col`.
    pub fn allowed(&self, from: usize, to: usize, col: usize) -> bool {
        if from == to {
            return true; // loopback is never filtered
        }
        if let Some(exact) = &self.exact {
            let n = self.pods.len();
            return exact[(from * n + to) * self.columns.len() + col];
        }
        if !self.failed_closed[from].is_empty() || !self.failed_closed[to].is_empty() {
            return false;
        }
        let (s, d) = (self.group_of[from], self.group_of[to]);
        let fam = self.pair_family[self.class_of[s] as usize][self.class_of[d] as usize];
        let fi = self.families.iter().position(|f| *f == fam).unwrap_or(0);
        let eg = self.egress[fi][col][s].as_ref().is_none_or(|b| b.get(d));
        let ing = self.ingress[fi][col][d].as_ref().is_none_or(|b| b.get(s));
        eg && ing
    }
}

/// Address-family class of a pod: bit 0 has IPv4, bit 1 has IPv6.
fn class(p: &Pod) -> u8 {
    let v4 = p.ips.iter().any(|ip| ip.is_ipv4()) as u8;
    let v6 = p.ips.iter().any(|ip| ip.is_ipv6()) as u8;
    v4 | (v6 << 1)
}

/// Computes the table for every pod pair and every column.
pub fn compute(cluster: &Cluster, columns: &[PortProto]) -> Matrix {
    let pods: Vec<&Pod> = cluster.pods.values().collect();
    let blocks: Vec<&IpBlock> = distinct_ip_blocks(cluster);

    // Group pods by everything policies can observe.
    let mut key_to_group: HashMap<GroupKey, usize> = HashMap::new();
    let mut reps: Vec<&Pod> = Vec::new();
    let mut group_of = Vec::with_capacity(pods.len());
    for p in &pods {
        let key = GroupKey::of(p, &blocks);
        let g = *key_to_group.entry(key).or_insert_with(|| {
            reps.push(p);
            reps.len() - 1
        });
        group_of.push(g);
    }
    let n = reps.len();
    let class_of: Vec<u8> = reps.iter().map(|p| class(p)).collect();
    let class_rep = |c: u8| -> Pod {
        let mut ips = Vec::new();
        if c & 1 != 0 {
            ips.push(IpAddr::from([0, 0, 0, 0]));
        }
        if c & 2 != 0 {
            ips.push(IpAddr::from([0u16; 8]));
        }
        Pod {
            namespace: String::new(),
            name: String::new(),
            labels: Default::default(),
            ports: vec![],
            node: None,
            host_network: false,
            ips,
        }
    };
    let mut pair_family = [[Family::First; 4]; 4];
    let mut families: Vec<Family> = Vec::new();
    let present: Vec<u8> = {
        let mut v = class_of.clone();
        v.sort();
        v.dedup();
        v
    };
    for a in 0..4u8 {
        for b in 0..4u8 {
            let f = family_of(&class_rep(a), &class_rep(b));
            pair_family[a as usize][b as usize] = f;
            if present.contains(&a) && present.contains(&b) && !families.contains(&f) {
                families.push(f);
            }
        }
    }
    if families.is_empty() {
        families.push(Family::First);
    }

    let ctx = Ctx::new(cluster, &reps);
    let mut egress = Vec::new();
    let mut ingress = Vec::new();
    for &fam in &families {
        let peers = PeerCache::new(&ctx, fam);
        egress.push(side(&ctx, &peers, Direction::Egress, columns));
        ingress.push(side(&ctx, &peers, Direction::Ingress, columns));
    }
    Matrix {
        pods: pods.iter().map(|p| p.object_name()).collect(),
        columns: columns.to_vec(),
        group_of,
        families,
        class_of,
        pair_family,
        egress,
        ingress,
        group_count: n,
        failed_closed: pods
            .iter()
            .map(|p| {
                cluster
                    .fails_closed(p)
                    .map(|f| f.policies)
                    .unwrap_or_default()
            })
            .collect(),
        exact: exact_cells(cluster, &pods, columns),
    }
}

/// Every cell by the oracle's tier walk, when the cluster has valid ClusterNetworkPolicies.
fn exact_cells(cluster: &Cluster, pods: &[&Pod], columns: &[PortProto]) -> Option<Vec<bool>> {
    use super::evaluate::{evaluate, Endpoint, Flow};
    use super::ports::PortRef;
    if cluster.cluster_policies.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(pods.len() * pods.len() * columns.len());
    for from in pods {
        for to in pods {
            for col in columns {
                let flow = Flow {
                    from: Endpoint::Pod(from.object_name()),
                    to: Endpoint::Pod(to.object_name()),
                    port: PortRef::Number(col.port),
                    protocol: col.protocol,
                };
                out.push(evaluate(cluster, &flow).is_ok_and(|v| v.allowed));
            }
        }
    }
    Some(out)
}

/// What policies can observe of a pod.
#[derive(Hash, PartialEq, Eq)]
struct GroupKey {
    namespace: String,
    labels: Vec<(String, String)>,
    ports: Vec<super::ports::ContainerPort>,
    host_network: bool,
    class: u8,
    /// For each family, which distinct ipBlocks contain the address ipBlocks would see.
    blocks: [Vec<bool>; 3],
}

impl GroupKey {
    fn of(p: &Pod, blocks: &[&IpBlock]) -> GroupKey {
        let member = |f: Family| -> Vec<bool> {
            match address(p, f) {
                Some(ip) => blocks.iter().map(|b| b.contains(ip)).collect(),
                None => Vec::new(),
            }
        };
        GroupKey {
            namespace: p.namespace.clone(),
            labels: p
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ports: p.ports.clone(),
            host_network: p.host_network,
            class: class(p),
            blocks: [
                member(Family::V4),
                member(Family::V6),
                member(Family::First),
            ],
        }
    }
}

fn distinct_ip_blocks(cluster: &Cluster) -> Vec<&IpBlock> {
    let mut v: Vec<&IpBlock> = cluster
        .policies
        .values()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()))
        .flatten()
        .flat_map(|r| r.peers.iter())
        .filter_map(|peer| match peer {
            Peer::IpBlock(b) => Some(b),
            Peer::Pods { .. } => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Group representatives, indexed by namespace for fast selection.
struct Ctx<'a> {
    cluster: &'a Cluster,
    reps: &'a [&'a Pod],
    by_namespace: BTreeMap<&'a str, Vec<usize>>,
}

impl<'a> Ctx<'a> {
    fn new(cluster: &'a Cluster, reps: &'a [&'a Pod]) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (g, p) in reps.iter().enumerate() {
            by_namespace
                .entry(p.namespace.as_str())
                .or_default()
                .push(g);
        }
        Ctx {
            cluster,
            reps,
            by_namespace,
        }
    }

    /// Groups a policy selects (isolates, if it has the direction).
    fn selected(&self, policy: &Policy) -> Vec<usize> {
        self.by_namespace
            .get(policy.namespace.as_str())
            .map(|gs| {
                gs.iter()
                    .copied()
                    .filter(|&g| clause::policy_selects(policy, self.reps[g]))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Peer bitsets, shared between policies that use the same selectors.
struct PeerCache<'a> {
    ctx: &'a Ctx<'a>,
    family: Family,
    pods: std::cell::RefCell<HashMap<(String, NamespaceScope, Selector), Bits>>,
    /// ipBlocks repeat across policies (the same egress CIDR in every namespace): each is
    /// matched against every group once.
    blocks: std::cell::RefCell<HashMap<IpBlock, Bits>>,
}

impl<'a> PeerCache<'a> {
    fn new(ctx: &'a Ctx<'a>, family: Family) -> Self {
        PeerCache {
            ctx,
            family,
            pods: Default::default(),
            blocks: Default::default(),
        }
    }

    fn peer(&self, policy_ns: &str, peer: &Peer) -> Bits {
        let n = self.ctx.reps.len();
        match peer {
            Peer::IpBlock(block) => {
                if let Some(b) = self.blocks.borrow().get(block) {
                    return b.clone();
                }
                let mut b = Bits::new(n);
                for (g, p) in self.ctx.reps.iter().enumerate() {
                    if address(p, self.family).is_some_and(|ip| clause::ip_block_selects(block, ip))
                    {
                        b.set(g);
                    }
                }
                self.blocks.borrow_mut().insert(block.clone(), b.clone());
                b
            }
            Peer::Pods { namespaces, pods } => {
                let ns_key = match namespaces {
                    NamespaceScope::PolicyNamespace => policy_ns.to_string(),
                    NamespaceScope::Selected(_) => String::new(),
                };
                let key = (ns_key, namespaces.clone(), pods.clone());
                if let Some(b) = self.pods.borrow().get(&key) {
                    return b.clone();
                }
                let mut b = Bits::new(n);
                // The namespace half once per namespace, the pod half per group: together
                // `clause::pod_peer_selects`.
                for (ns, groups) in &self.ctx.by_namespace {
                    if !clause::peer_namespace_selects(self.ctx.cluster, policy_ns, namespaces, ns)
                    {
                        continue;
                    }
                    for &g in groups {
                        if clause::peer_pod_selector_selects(pods, self.ctx.reps[g]) {
                            b.set(g);
                        }
                    }
                }
                self.pods.borrow_mut().insert(key, b.clone());
                b
            }
        }
    }

    /// Union of a rule's peers; None when the rule has no peers (everyone).
    fn rule_peers(&self, policy_ns: &str, peers: &[Peer]) -> Option<Bits> {
        if peers.is_empty() {
            return None;
        }
        let mut b = Bits::new(self.ctx.reps.len());
        for p in peers {
            b.or(&self.peer(policy_ns, p));
        }
        Some(b)
    }
}

/// For one direction: per column, per subject group, None if not isolated, else the set of
/// peer groups allowed.
fn side(
    ctx: &Ctx,
    peers: &PeerCache,
    dir: Direction,
    columns: &[PortProto],
) -> Vec<Vec<Option<Bits>>> {
    let n = ctx.reps.len();
    let mut out: Vec<Vec<Option<Bits>>> = vec![vec![None; n]; columns.len()];
    let everyone = {
        let mut b = Bits::new(n);
        for g in 0..n {
            b.set(g);
        }
        b
    };
    // Groups that fail closed (an invalid policy may select them: the rule is
    // `Cluster::fails_closed`, a function of namespace and labels, so of the group) allow
    // nothing; their policies need not be looked at.
    let closed: Vec<bool> = ctx
        .reps
        .iter()
        .map(|p| ctx.cluster.fails_closed(p).is_some())
        .collect();
    for (g, _) in closed.iter().enumerate().filter(|(_, c)| **c) {
        for col in out.iter_mut() {
            col[g] = Some(Bits::new(n));
        }
    }
    for policy in ctx.cluster.policies.values() {
        let Some(rules) = policy.rules(dir) else {
            continue;
        };
        let selected: Vec<usize> = ctx
            .selected(policy)
            .into_iter()
            .filter(|&g| !closed[g])
            .collect();
        if selected.is_empty() {
            continue;
        }
        let rule_peers: Vec<Bits> = rules
            .iter()
            .map(|r| {
                peers
                    .rule_peers(&policy.namespace, &r.peers)
                    .unwrap_or_else(|| everyone.clone())
            })
            .collect();
        for (c, col) in columns.iter().enumerate() {
            match dir {
                Direction::Ingress => {
                    // Named ports resolve on the subject (the destination): group subjects by
                    // which rules match the port, and OR each distinct rule set once.
                    let mut cache: HashMap<Vec<bool>, Bits> = HashMap::new();
                    for &g in &selected {
                        let hits: Vec<bool> = rules
                            .iter()
                            .map(|r| {
                                clause::rule_port(
                                    &r.ports,
                                    col.protocol,
                                    col.port,
                                    Some(ctx.reps[g]),
                                )
                                .is_some()
                            })
                            .collect();
                        let allowed = cache.entry(hits).or_insert_with_key(|hits| {
                            let mut b = Bits::new(n);
                            for (r, hit) in hits.iter().enumerate() {
                                if *hit {
                                    b.or(&rule_peers[r]);
                                }
                            }
                            b
                        });
                        out[c][g].get_or_insert_with(|| Bits::new(n)).or(allowed);
                    }
                }
                Direction::Egress => {
                    // Named ports resolve on the peer (the destination): restrict each rule's
                    // peers to groups where its port clauses match.
                    let mut allowed = Bits::new(n);
                    for (r, rule) in rules.iter().enumerate() {
                        let numeric_hit =
                            clause::rule_port(&rule.ports, col.protocol, col.port, None).is_some();
                        if numeric_hit {
                            allowed.or(&rule_peers[r]);
                            continue;
                        }
                        for (d, p) in ctx.reps.iter().enumerate() {
                            if rule_peers[r].get(d)
                                && clause::rule_port(&rule.ports, col.protocol, col.port, Some(p))
                                    .is_some()
                            {
                                allowed.set(d);
                            }
                        }
                    }
                    for &g in &selected {
                        out[c][g].get_or_insert_with(|| Bits::new(n)).or(&allowed);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::evaluate::{evaluate, Endpoint, Flow};
    use crate::policy::objects::ClusterBuilder;
    use crate::policy::ports::PortRef;
    use proptest::prelude::*;

    /// A small random cluster as manifest text: namespaces x, y; pods with labels from a small
    /// alphabet; policies mixing every peer and port form.
    fn world() -> impl Strategy<Value = String> {
        let pod = (
            prop::sample::select(vec!["x", "y"]),
            prop::sample::select(vec!["a", "b"]),
            prop::sample::select(vec![80u16, 81]),
            any::<bool>(),
            0u8..4,
        );
        let peer = prop::sample::select(vec![
            "{podSelector: {matchLabels: {app: a}}}",
            "{namespaceSelector: {}}",
            "{namespaceSelector: {matchLabels: {team: t}}, podSelector: {matchLabels: {app: b}}}",
            "{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a]}]}}",
            "{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.0/30]}}",
            "{ipBlock: {cidr: 10.0.0.2/31}}",
        ]);
        let port = prop::sample::select(vec![
            "{port: 80}",
            "{port: 81, protocol: UDP}",
            "{port: web}",
            "{port: web, protocol: UDP}",
            "{port: 80, endPort: 81}",
            "{protocol: SCTP}",
        ]);
        let rule = (
            prop::collection::vec(peer, 0..3),
            prop::collection::vec(port, 0..3),
        );
        let policy = (
            prop::sample::select(vec!["x", "y"]),
            prop::sample::select(vec!["{}", "{matchLabels: {app: a}}"]),
            prop::sample::select(vec![
                "",
                "policyTypes: [Ingress, Egress],",
                "policyTypes: [Egress],",
                // Invalid, with a readable podSelector: the pods it may select fail closed.
                "policyTypes: [Sideways],",
            ]),
            prop::collection::vec(rule.clone(), 0..3),
            prop::collection::vec(rule, 0..3),
        );
        // A ClusterNetworkPolicy subject (or none): the table walks its tiers exactly as the
        // oracle does (the kernel enforces them).
        let cnp_subject = prop::sample::select(vec![
            "",
            "{pods: {podSelector: {matchLabels: {app: a}}}}",
            "{namespaces: {matchLabels: {team: t}}}",
        ]);
        (prop::collection::vec(pod, 1..7), prop::collection::vec(policy, 0..4), any::<bool>(), cnp_subject).prop_map(
            |(pods, policies, team, subject)| {
                let mut s = String::new();
                s += &format!(
                    "---\nkind: Namespace\napiVersion: v1\nmetadata: {{name: y, labels: {{team: {}}}}}\n",
                    if team { "t" } else { "u" }
                );
                for (i, (ns, app, web, udp, ip)) in pods.iter().enumerate() {
                    let proto = if *udp { "UDP" } else { "TCP" };
                    s += &format!(
                        "---\nkind: Pod\napiVersion: v1\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: web, containerPort: {web}, protocol: {proto}}}]}}]}}\nstatus: {{podIP: 10.0.0.{ip}}}\n"
                    );
                }
                let rules = |rs: &Vec<(Vec<&str>, Vec<&str>)>, key: &str| -> String {
                    let items: Vec<String> = rs
                        .iter()
                        .map(|(peers, ports)| format!("{{{key}: [{}], ports: [{}]}}", peers.join(", "), ports.join(", ")))
                        .collect();
                    format!("[{}]", items.join(", "))
                };
                for (i, (ns, sel, types, ing, eg)) in policies.iter().enumerate() {
                    s += &format!(
                        "---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: n{i}, namespace: {ns}}}\nspec: {{podSelector: {sel}, {types} ingress: {}, egress: {}}}\n",
                        rules(ing, "from"),
                        rules(eg, "to")
                    );
                }
                if !subject.is_empty() {
                    s += &format!(
                        "---\nkind: ClusterNetworkPolicy\napiVersion: policy.networking.k8s.io/v1beta1\nmetadata: {{name: c}}\nspec: {{tier: Admin, priority: 1, subject: {subject}, ingress: [{{action: Accept, from: [{{namespaces: {{}}}}]}}]}}\n"
                    );
                }
                s
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The grouped bitset table equals the oracle cell by cell.
        #[test]
        fn matrix_equals_oracle(text in world()) {
            let mut b = ClusterBuilder::new();
            b.add_text("gen", &text);
            let (cluster, _) = b.build();
            prop_assert!(
                cluster.errors.iter().all(|e| e.field == "spec.policyTypes[0]"),
                "{:?}",
                cluster.errors
            );
            let columns: Vec<PortProto> = [(80, Protocol::Tcp), (81, Protocol::Tcp), (80, Protocol::Udp), (81, Protocol::Udp), (80, Protocol::Sctp)]
                .iter().map(|&(port, protocol)| PortProto { port, protocol }).collect();
            let m = compute(&cluster, &columns);
            for (i, from) in m.pods.iter().enumerate() {
                for (j, to) in m.pods.iter().enumerate() {
                    for (c, col) in columns.iter().enumerate() {
                        let v = evaluate(&cluster, &Flow {
                            from: Endpoint::Pod(from.clone()),
                            to: Endpoint::Pod(to.clone()),
                            port: PortRef::Number(col.port),
                            protocol: col.protocol,
                        }).unwrap();
                        prop_assert_eq!(m.allowed(i, j, c), v.allowed, "{} -> {} {:?}\n{}", from, to, col, v);
                    }
                }
            }
        }
    }

    #[test]
    fn identical_pods_share_a_group() {
        let mut text = String::new();
        for i in 0..50 {
            text += &format!("---\nkind: Pod\napiVersion: v1\nmetadata: {{name: p{i}, namespace: x, labels: {{app: a}}}}\nspec: {{containers: []}}\n");
        }
        let mut b = ClusterBuilder::new();
        b.add_text("t", &text);
        let (cluster, _) = b.build();
        let m = compute(
            &cluster,
            &[PortProto {
                port: 80,
                protocol: Protocol::Tcp,
            }],
        );
        assert_eq!(m.group_count, 1);
        assert!(m.allowed(0, 1, 0));
    }
}
