//! The case generator: seeded cases in Cyclonus' categories (see the parent module), every
//! action valid against the generator's view of the case so far.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::PROBES;
use crate::bench::synth::Rng;
use crate::conformance::case::{
    Action, Case, Expect, LabelChanges, LabelNamespace, LabelPod, PodSpec, PolicyRef, Probe, Reach,
    Step, Topology,
};
use crate::conformance::topology::{DEFAULT_NAMESPACES, DEFAULT_PODS};
use crate::policy::ObjectName;

/// A pod the generator knows about.
#[derive(Clone)]
pub(super) struct GenPod {
    name: ObjectName,
    node: usize,
}

/// The generator's view of the case so far, so every action it emits is valid.
pub(super) struct Gen {
    rng: Rng,
    nodes: usize,
    /// Pods that exist now.
    pods: Vec<GenPod>,
    /// Pods that had an address at the end of the previous step: placeholders may name them.
    addressed: Vec<GenPod>,
    /// Deleted pods whose address no pod has taken again.
    free_ips: Vec<GenPod>,
    /// Nodes that got a pod without a requested address in this step: the backend syncs once
    /// per step, so such a pod may take the address of a pod deleted later in the same step.
    fresh_nodes: BTreeSet<usize>,
    policies: Vec<ObjectName>,
    role_pods: BTreeSet<ObjectName>,
    team_namespaces: BTreeSet<String>,
    next_policy: usize,
    next_pod: usize,
    tags: BTreeSet<&'static str>,
}

/// The seed of case `n`: splitmix of the run seed and the index, so cases do not share streams.
pub(super) fn case_seed(seed: u64, n: usize) -> u64 {
    Rng::new(seed.rotate_left(29) ^ (n as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// Case `n` of run `seed` on a lab of `nodes` nodes (node placement decides which addresses
/// can be reused, so it is part of the input).
pub fn generate(seed: u64, n: usize, nodes: usize) -> Case {
    let nodes = nodes.max(1);
    let mut pods = Vec::new();
    for ns in DEFAULT_NAMESPACES {
        for p in DEFAULT_PODS {
            let i = pods.len();
            pods.push(GenPod {
                name: ObjectName::new(ns, p),
                node: i % nodes, // as World places the default topology
            });
        }
    }
    let mut g = Gen {
        rng: Rng::new(case_seed(seed, n)),
        nodes,
        addressed: pods.clone(),
        pods,
        free_ips: Vec::new(),
        fresh_nodes: BTreeSet::new(),
        policies: Vec::new(),
        role_pods: BTreeSet::new(),
        team_namespaces: BTreeSet::new(),
        next_policy: 0,
        next_pod: 0,
        tags: BTreeSet::new(),
    };
    let mut steps = Vec::new();
    let first: Vec<Action> = (0..1 + g.rng.below(3)).map(|_| g.create_policy()).collect();
    steps.push(g.step(first));
    for _ in 0..g.rng.below(3) {
        let actions: Vec<Action> = (0..1 + g.rng.below(2)).map(|_| g.action()).collect();
        steps.push(g.step(actions));
    }
    g.tags.insert("tcp");
    g.tags.insert("udp");
    Case {
        id: format!("fuzz-{seed}-{n}"),
        name: format!(
            "generated case {n} of seed {seed}: {} policies, {} steps",
            g.next_policy,
            steps.len()
        ),
        source: "fuzz".into(),
        tags: g.tags.iter().map(|t| t.to_string()).collect(),
        topology: Topology::Default,
        steps,
    }
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.rng.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.rng.below(xs.len())].clone()
    }

    fn namespace(&mut self) -> String {
        self.pick(&DEFAULT_NAMESPACES).to_string()
    }

    /// Ends a step: its probes, and the pods that now have addresses.
    fn step(&mut self, actions: Vec<Action>) -> Step {
        let description = actions
            .iter()
            .map(Action::summary)
            .collect::<Vec<_>>()
            .join("; ");
        self.fresh_nodes.clear();
        for p in &self.pods {
            if !self.addressed.iter().any(|a| a.name == p.name) {
                self.addressed.push(p.clone());
            }
        }
        let probes = PROBES
            .iter()
            .map(|&(port, protocol)| Probe {
                port,
                protocol,
                expect: vec![Expect::All(Reach::Allowed)],
            })
            .collect();
        Step {
            description,
            actions,
            probes,
        }
    }

    fn action(&mut self) -> Action {
        loop {
            let a = match self.below(9) {
                0 | 1 => Some(self.create_policy()),
                2 => self.delete_policy(),
                3 => self.update_policy(),
                4 => self.label_pod(),
                5 => self.label_namespace(),
                6 | 7 => self.create_pod(),
                _ => self.delete_pod(),
            };
            if let Some(a) = a {
                return a;
            }
        }
    }

    fn create_policy(&mut self) -> Action {
        let ns = self.namespace();
        let name = format!("p{}", self.next_policy);
        self.next_policy += 1;
        let m = self.policy(&ns, &name);
        self.policies.push(ObjectName::new(&ns, &name));
        Action::Create(m)
    }

    fn delete_policy(&mut self) -> Option<Action> {
        if self.policies.is_empty() {
            return None;
        }
        let i = self.below(self.policies.len());
        let p = self.policies.remove(i);
        self.tags.insert("update");
        Some(Action::Delete(PolicyRef {
            kind: None,
            namespace: p.namespace,
            name: p.name,
        }))
    }

    fn update_policy(&mut self) -> Option<Action> {
        if self.policies.is_empty() {
            return None;
        }
        let p = self.pick(&self.policies.clone());
        self.tags.insert("update");
        Some(Action::Update(self.policy(&p.namespace, &p.name)))
    }

    fn label_pod(&mut self) -> Option<Action> {
        self.tags.insert("label");
        let labelled: Vec<ObjectName> = self.role_pods.iter().cloned().collect();
        if !labelled.is_empty() && self.chance(40) {
            let pod = self.pick(&labelled);
            self.role_pods.remove(&pod);
            return Some(Action::LabelPod(LabelPod {
                pod: pod.to_string(),
                labels: LabelChanges::from([("role".to_string(), None)]),
            }));
        }
        let pod = self.pick(&self.pods.clone()).name;
        let labels = if self.chance(30) {
            // Moves the pod between `pod=` selectors.
            let v = self.pick(&["a", "b", "c"]);
            LabelChanges::from([("pod".to_string(), Some(v.to_string()))])
        } else {
            self.role_pods.insert(pod.clone());
            LabelChanges::from([("role".to_string(), Some("client".to_string()))])
        };
        Some(Action::LabelPod(LabelPod {
            pod: pod.to_string(),
            labels,
        }))
    }

    fn label_namespace(&mut self) -> Option<Action> {
        self.tags.insert("label");
        let ns = self.namespace();
        let value = if self.team_namespaces.remove(&ns) {
            None
        } else {
            self.team_namespaces.insert(ns.clone());
            Some("blue".to_string())
        };
        Some(Action::LabelNamespace(LabelNamespace {
            name: ns,
            labels: LabelChanges::from([("team".to_string(), value)]),
        }))
    }

    fn create_pod(&mut self) -> Option<Action> {
        self.tags.insert("pod-lifecycle");
        let names = ["d", "e", "f", "g"];
        if self.next_pod >= names.len() {
            return None;
        }
        let reuse = if !self.free_ips.is_empty() && self.chance(60) {
            let i = self.below(self.free_ips.len());
            Some(self.free_ips.remove(i))
        } else {
            None
        };
        let ns = self.namespace();
        let name = ObjectName::new(&ns, names[self.next_pod]);
        self.next_pod += 1;
        let node = match &reuse {
            Some(old) => old.node,
            None => {
                let node = self.below(self.nodes);
                // The allocator may hand a freed address of this node to the new pod, so no
                // later pod may ask for one of them.
                self.free_ips.retain(|p| p.node != node);
                self.fresh_nodes.insert(node);
                node
            }
        };
        let label = self.pick(&["a", "b", "d"]);
        self.pods.push(GenPod {
            name: name.clone(),
            node,
        });
        Some(Action::CreatePod(PodSpec {
            pod: name.to_string(),
            labels: [("pod".to_string(), label.to_string())].into(),
            node: Some(node),
            ports: None,
            ip: reuse.map(|old| format!("${{ip:{}}}", old.name)),
        }))
    }

    fn delete_pod(&mut self) -> Option<Action> {
        if self.pods.len() <= 4 {
            return None;
        }
        self.tags.insert("pod-lifecycle");
        let i = self.below(self.pods.len());
        let pod = self.pods.remove(i);
        self.role_pods.remove(&pod.name);
        // Only a pod that got an address can hand it on, and only if no new pod of this
        // step may have taken it.
        if self.addressed.iter().any(|p| p.name == pod.name)
            && !self.fresh_nodes.contains(&pod.node)
        {
            self.free_ips.push(pod.clone());
        }
        Some(Action::DeletePod(pod.name.to_string()))
    }

    /// One NetworkPolicy manifest.
    fn policy(&mut self, ns: &str, name: &str) -> Value {
        let metadata = json!({ "name": name, "namespace": ns });
        let head = |spec: Value| {
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": metadata,
                "spec": spec,
            })
        };
        let target = self.target();
        // Rules category: deny-all and allow-all, in either direction.
        match self.below(12) {
            0 | 1 => {
                let dir = self.pick(&["Ingress", "Egress"]);
                self.tags.insert(if dir == "Ingress" {
                    "ingress"
                } else {
                    "egress"
                });
                let key = dir.to_ascii_lowercase();
                let rules = if self.chance(50) {
                    json!([])
                } else {
                    json!([{}])
                };
                return head(json!({ "podSelector": target, "policyTypes": [dir], key: rules }));
            }
            _ => {}
        }
        let dirs: Vec<&str> = match self.below(3) {
            0 => vec!["Ingress"],
            1 => vec!["Egress"],
            _ => vec!["Ingress", "Egress"],
        };
        let mut spec = json!({ "podSelector": target });
        // Sometimes leave policyTypes to defaulting (Ingress always, Egress with egress rules).
        if self.chance(75) {
            spec["policyTypes"] = json!(dirs);
        }
        for dir in &dirs {
            let egress = *dir == "Egress";
            self.tags.insert(if egress { "egress" } else { "ingress" });
            let rules: Vec<Value> = (0..self.below(3)).map(|_| self.rule(egress)).collect();
            if !rules.is_empty() || self.chance(50) {
                spec[dir.to_ascii_lowercase()] = json!(rules);
            }
        }
        head(spec)
    }

    fn target(&mut self) -> Value {
        match self.below(8) {
            0..=2 => json!({}),
            3 | 4 => json!({ "matchLabels": { "pod": "a" } }),
            5 | 6 => {
                json!({ "matchExpressions": [{ "key": "pod", "operator": "In", "values": ["a", "b"] }] })
            }
            _ => json!({ "matchLabels": { "role": "client" } }),
        }
    }

    fn rule(&mut self, egress: bool) -> Value {
        let mut rule = json!({});
        let key = if egress { "to" } else { "from" };
        match self.below(10) {
            0..=2 => {}
            3 => rule[key] = json!([]),
            _ => {
                let peers: Vec<Value> = (0..1 + self.below(2)).map(|_| self.peer()).collect();
                rule[key] = json!(peers);
            }
        }
        match self.below(10) {
            0..=3 => {}
            4 => rule["ports"] = json!([]),
            _ => {
                let ports: Vec<Value> = (0..1 + self.below(2)).map(|_| self.port()).collect();
                rule["ports"] = json!(ports);
            }
        }
        rule
    }

    fn peer(&mut self) -> Value {
        if self.chance(25) {
            self.tags.insert("ipblock");
            return json!({ "ipBlock": self.ip_block() });
        }
        let pods = [
            None,
            Some(json!({})),
            Some(json!({ "matchLabels": { "pod": "b" } })),
            Some(
                json!({ "matchExpressions": [{ "key": "pod", "operator": "In", "values": ["a", "c"] }] }),
            ),
            Some(json!({ "matchLabels": { "role": "client" } })),
            Some(json!({ "matchExpressions": [{ "key": "role", "operator": "DoesNotExist" }] })),
        ];
        let namespaces = [
            None,
            Some(json!({})),
            Some(json!({ "matchLabels": { "kubernetes.io/metadata.name": "y" } })),
            Some(
                json!({ "matchExpressions": [{ "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"] }] }),
            ),
            Some(json!({ "matchLabels": { "team": "blue" } })),
            // Conflict category: a namespace label nothing has.
            Some(json!({ "matchLabels": { "ns": "impossible" } })),
        ];
        let mut pod = self.pick(&pods);
        let namespace = self.pick(&namespaces);
        if pod.is_none() && namespace.is_none() {
            // A peer needs at least one selector.
            pod = Some(json!({ "matchLabels": { "pod": "a" } }));
        }
        let mut peer = json!({});
        if let Some(p) = pod {
            peer["podSelector"] = p;
        }
        if let Some(n) = namespace {
            peer["namespaceSelector"] = n;
        }
        peer
    }

    fn ip_block(&mut self) -> Value {
        let p = self.pick(&self.addressed.clone()).name;
        let q = self.pick(&self.addressed.clone()).name;
        match self.below(8) {
            0 | 1 => json!({ "cidr": format!("${{ip:{p}}}/32") }),
            // Every lab address lies in the /4 of any of them (upstream 35/36 assume it too).
            2 | 3 => {
                json!({ "cidr": format!("${{ip:{p}}}/4"), "except": [format!("${{ip:{q}}}/32")] })
            }
            // The pods of p's node.
            4 => json!({ "cidr": format!("${{ip:{p}}}/24") }),
            5 => json!({ "cidr": "0.0.0.0/0" }),
            6 => json!({ "cidr": "0.0.0.0/0", "except": [format!("${{ip:{q}}}/32")] }),
            // Conflict category: a block no pod is in.
            _ => json!({ "cidr": "0.0.0.0/31" }),
        }
    }

    fn port(&mut self) -> Value {
        let protocol = |g: &mut Gen| g.pick(&[None, Some("TCP"), Some("UDP"), Some("SCTP")]);
        let mut port = json!({});
        match self.below(10) {
            0..=3 => {
                if let Some(n) = self.pick(&[None, Some(80), Some(81)]) {
                    port["port"] = json!(n);
                }
                if let Some(p) = protocol(self) {
                    port["protocol"] = json!(p);
                }
            }
            4 | 5 => {
                self.tags.insert("named-port");
                let (name, proto) = self.pick(&[
                    ("serve-80-tcp", "TCP"),
                    ("serve-81-tcp", "TCP"),
                    ("serve-80-udp", "UDP"),
                    ("serve-81-udp", "UDP"),
                    ("serve-81-sctp", "SCTP"),
                ]);
                port["port"] = json!(name);
                // Matching protocol, omitted (TCP), or pathological: the wrong one.
                match self.below(3) {
                    0 => port["protocol"] = json!(proto),
                    1 => {}
                    _ => {
                        if let Some(p) = protocol(self) {
                            port["protocol"] = json!(p);
                        }
                    }
                }
            }
            6 => {
                self.tags.insert("named-port");
                // A name no pod serves.
                port["port"] = json!(self.pick(&["serve-82-tcp", "http"]));
                if self.chance(50) {
                    port["protocol"] = json!("TCP");
                }
            }
            7 | 8 => {
                self.tags.insert("endport");
                let (from, to) = self.pick(&[(53, 80), (53, 84), (80, 81), (81, 90), (79, 80)]);
                port["port"] = json!(from);
                port["endPort"] = json!(to);
                if let Some(p) = self.pick(&[None, Some("TCP"), Some("UDP")]) {
                    port["protocol"] = json!(p);
                }
            }
            _ => {
                // A number no pod serves.
                port["port"] = json!(self.pick(&[82, 8080]));
                if let Some(p) = protocol(self) {
                    port["protocol"] = json!(p);
                }
            }
        }
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::world::World;

    #[test]
    fn generation_is_deterministic_and_cases_differ() {
        assert_eq!(generate(7, 3, 2), generate(7, 3, 2));
        assert_ne!(generate(7, 3, 2).steps, generate(7, 4, 2).steps);
        assert_ne!(generate(7, 3, 2).steps, generate(8, 3, 2).steps);
    }

    /// Every action applies and every sync succeeds: in particular no pod asks for an address
    /// that the allocator may have handed to another pod.
    #[test]
    fn generated_actions_apply_and_sync() {
        use crate::conformance::backend::Enforcer;
        use crate::conformance::oracle::{Judge, OracleEnforcer};
        for nodes in [1, 2, 3] {
            for n in 0..1500 {
                let c = generate(3, n, nodes);
                let mut w = World::new(&c.topology, nodes).unwrap();
                let mut o = OracleEnforcer::new(Judge::Evaluate);
                o.sync(&mut w.cluster).unwrap();
                for (i, step) in c.steps.iter().enumerate() {
                    for a in &step.actions {
                        w.apply(a)
                            .unwrap_or_else(|e| panic!("{} step {}: {e}", c.id, i + 1));
                    }
                    o.sync(&mut w.cluster)
                        .unwrap_or_else(|e| panic!("{} step {}: {e}", c.id, i + 1));
                }
            }
        }
    }

    #[test]
    fn generated_cases_are_valid_cases() {
        for n in 0..200 {
            let c = generate(1, n, 2);
            c.validate().unwrap();
            assert!(c.nodes_needed() <= 2, "{}", c.id);
        }
    }
}
