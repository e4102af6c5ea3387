//! The desired state a case builds up step by step: a `policy::Cluster` plus what the runner
//! must remember that the cluster does not hold (last addresses of deleted pods, the policy
//! manifests as applied, the round-robin position).
//!
//! Actions are checked the way an API server would check them: creating a policy that exists,
//! deleting one that does not, or a policy the API would reject is an error of the case.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use super::case::{
    cnp_from_manifest, parse_pod_name, substitute, substitute_value, Action, LabelChanges, PodSpec,
    Topology,
};
use super::topology;
use crate::policy::model::{ObjectName, NAMESPACE_NAME_LABEL};
use crate::policy::Cluster;
use crate::policy::{cnp, networkpolicy};

#[derive(Debug, Clone)]
pub struct World {
    /// What the backend is asked to make real. After `Enforcer::sync` every pod has its IPs.
    pub cluster: Cluster,
    /// The policy manifests as applied (placeholders substituted), for reproductions.
    pub policy_manifests: BTreeMap<ObjectName, Value>,
    /// The ClusterNetworkPolicy manifests as applied, by name (cluster-scoped).
    pub cnp_manifests: BTreeMap<String, Value>,
    /// Addresses of pods that were deleted, for `${ip:..}` of a deleted pod.
    last_ips: BTreeMap<ObjectName, Vec<IpAddr>>,
    nodes: usize,
    /// Round-robin position of the next pod without a pinned node.
    next_index: usize,
}

impl World {
    /// The topology's namespaces and pods: pod `i` of the sorted list on node `i % nodes`
    /// unless pinned. `nodes` must be at least the case's `nodes_needed`.
    pub fn new(t: &Topology, nodes: usize) -> Result<World, String> {
        let nodes = nodes.max(1);
        let t = topology::expand(t);
        let mut cluster = Cluster::default();
        for (name, spec) in &t.namespaces {
            cluster.upsert_namespace(topology::namespace(name, spec)?);
        }
        let mut specs: Vec<(ObjectName, &PodSpec)> = t
            .pods
            .iter()
            .map(|p| parse_pod_name(&p.pod).map(|n| (n, p)))
            .collect::<Result<_, _>>()?;
        specs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut world = World {
            cluster,
            policy_manifests: BTreeMap::new(),
            cnp_manifests: BTreeMap::new(),
            last_ips: BTreeMap::new(),
            nodes,
            next_index: 0,
        };
        for (name, spec) in specs {
            if world.cluster.pods.contains_key(&name) {
                return Err(format!("topology lists pod {name} twice"));
            }
            world.add_pod(spec)?;
        }
        Ok(world)
    }

    /// A pod's current address, or the last address of a deleted pod.
    pub fn ip_of(&self, name: &ObjectName) -> Option<IpAddr> {
        match self.cluster.pod(name) {
            Some(p) => p.ips.first().copied(),
            None => self.last_ips.get(name).and_then(|ips| ips.first().copied()),
        }
    }

    /// Pods that exist now, sorted: the rows and columns of every table.
    pub fn pod_names(&self) -> Vec<ObjectName> {
        self.cluster.pods.keys().cloned().collect()
    }

    pub fn apply(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Create(m) => self.put_policy(m, false),
            Action::Update(m) => self.put_policy(m, true),
            Action::Delete(r) if r.is_cnp() => {
                self.cluster
                    .remove_cluster_policy(&r.name)
                    .ok_or_else(|| format!("there is no {} {} to delete", cnp::KIND, r.name))?;
                self.cnp_manifests.remove(&r.name);
                Ok(())
            }
            Action::Delete(r) => {
                let name = ObjectName::new(&r.namespace, &r.name);
                self.cluster
                    .remove_policy(&name)
                    .ok_or_else(|| format!("there is no policy {name} to delete"))?;
                self.policy_manifests.remove(&name);
                Ok(())
            }
            Action::DeleteAllPolicies(ns) => {
                // NetworkPolicies only: ClusterNetworkPolicies belong to no namespace.
                self.require_namespace(ns)?;
                self.cluster.policies.retain(|k, _| &k.namespace != ns);
                self.policy_manifests.retain(|k, _| &k.namespace != ns);
                Ok(())
            }
            Action::LabelNamespace(l) => {
                let ns = self
                    .cluster
                    .namespaces
                    .get_mut(&l.name)
                    .ok_or_else(|| format!("there is no namespace {}", l.name))?;
                if l.labels.contains_key(NAMESPACE_NAME_LABEL) {
                    // The API server owns this label and puts it back.
                    return Err(format!(
                        "namespace {}: {NAMESPACE_NAME_LABEL} is set by the API server and cannot be changed",
                        l.name
                    ));
                }
                merge_labels(&mut ns.labels, &l.labels);
                topology::check_labels(&format!("namespace {}", l.name), &ns.labels)
            }
            Action::LabelPod(l) => {
                let name = parse_pod_name(&l.pod)?;
                let pod = self
                    .cluster
                    .pods
                    .get_mut(&name)
                    .ok_or_else(|| format!("there is no pod {name} to label"))?;
                merge_labels(&mut pod.labels, &l.labels);
                topology::check_labels(&format!("pod {name}"), &pod.labels)
            }
            Action::CreatePod(spec) => {
                let name = parse_pod_name(&spec.pod)?;
                if self.cluster.pods.contains_key(&name) {
                    return Err(format!("pod {name} already exists"));
                }
                self.add_pod(spec)
            }
            Action::DeletePod(p) => {
                let name = parse_pod_name(p)?;
                let pod = self
                    .cluster
                    .remove_pod(&name)
                    .ok_or_else(|| format!("there is no pod {name} to delete"))?;
                self.last_ips.insert(name, pod.ips);
                Ok(())
            }
        }
    }

    fn require_namespace(&self, ns: &str) -> Result<(), String> {
        if self.cluster.namespaces.contains_key(ns) {
            Ok(())
        } else {
            Err(format!("there is no namespace {ns} in the topology"))
        }
    }

    fn add_pod(&mut self, spec: &PodSpec) -> Result<(), String> {
        let name = parse_pod_name(&spec.pod)?;
        self.require_namespace(&name.namespace)?;
        let index = self.next_index;
        self.next_index += 1;
        let node = spec.node.unwrap_or(index % self.nodes);
        if node >= self.nodes {
            return Err(format!(
                "pod {name} is pinned to node {node}, and the lab has {} nodes",
                self.nodes
            ));
        }
        let ip = match &spec.ip {
            None => None,
            Some(text) => {
                let text = substitute(text, &|n| self.ip_of(n))?;
                Some(
                    text.parse::<IpAddr>()
                        .map_err(|_| format!("pod {name}: ip {text:?} is not an IP address"))?,
                )
            }
        };
        let pod = topology::pod(spec, node, ip)?;
        self.last_ips.remove(&name);
        self.cluster.upsert_pod(pod);
        Ok(())
    }

    fn put_policy(&mut self, manifest: &Value, replace: bool) -> Result<(), String> {
        let manifest = substitute_value(manifest, &|n| self.ip_of(n))?;
        let kind = manifest["kind"].as_str().unwrap_or("");
        if kind == cnp::KIND {
            return self.put_cluster_policy(manifest, replace);
        }
        if kind != "NetworkPolicy" {
            return Err(format!(
                "create/update takes a NetworkPolicy or {} manifest, got kind {kind:?}",
                cnp::KIND
            ));
        }
        let np: NetworkPolicy = serde_json::from_value(manifest.clone())
            .map_err(|e| format!("not a valid NetworkPolicy: {e}"))?;
        let Some(ns) = np.metadata.namespace.clone() else {
            return Err("the manifest has no metadata.namespace".into());
        };
        self.require_namespace(&ns)?;
        let converted = networkpolicy::convert(&np, &ns);
        let policy = converted.policy.map_err(|problems| {
            let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            format!("the API server would reject it: {}", list.join("; "))
        })?;
        let name = policy.object_name();
        match (replace, self.cluster.policies.contains_key(&name)) {
            (false, true) => return Err(format!("policy {name} already exists: use update")),
            (true, false) => return Err(format!("there is no policy {name} to update")),
            _ => {}
        }
        self.cluster.upsert_policy(policy);
        self.policy_manifests.insert(name, manifest);
        Ok(())
    }
}

impl World {
    fn put_cluster_policy(&mut self, manifest: Value, replace: bool) -> Result<(), String> {
        let policy = cnp_from_manifest(&manifest)?;
        let name = policy.name.clone();
        match (replace, self.cluster.cluster_policies.contains_key(&name)) {
            (false, true) => {
                return Err(format!("{} {name} already exists: use update", cnp::KIND))
            }
            (true, false) => return Err(format!("there is no {} {name} to update", cnp::KIND)),
            _ => {}
        }
        self.cluster.upsert_cluster_policy(policy);
        self.cnp_manifests.insert(name, manifest);
        Ok(())
    }
}

fn merge_labels(labels: &mut crate::policy::labels::Labels, changes: &LabelChanges) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                labels.insert(k.clone(), v.clone());
            }
            None => {
                labels.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::case::{LabelPod, PolicyRef};

    #[test]
    fn default_pods_are_spread_round_robin() {
        let w = World::new(&Topology::Default, 2).unwrap();
        let nodes: Vec<String> = w
            .cluster
            .pods
            .values()
            .map(|p| p.node.clone().unwrap())
            .collect();
        assert_eq!(nodes[0], "node-0");
        assert_eq!(nodes[1], "node-1");
        assert_eq!(nodes[2], "node-0");
        assert_eq!(w.cluster.namespaces["y"].labels[NAMESPACE_NAME_LABEL], "y");
    }

    #[test]
    fn actions_are_checked_like_the_api_server_would() {
        let mut w = World::new(&Topology::Default, 1).unwrap();
        let np = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "${ip:x/b}/33"}}]}]}
        });
        // No IPs yet: the placeholder cannot be resolved.
        assert!(w
            .apply(&Action::Create(np.clone()))
            .unwrap_err()
            .contains("no address"));
        w.cluster
            .pods
            .get_mut(&ObjectName::new("x", "b"))
            .unwrap()
            .ips = vec!["10.244.0.3".parse().unwrap()];
        assert!(w.apply(&Action::Create(np)).unwrap_err().contains("reject"));
        let ok = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}
        });
        w.apply(&Action::Create(ok.clone())).unwrap();
        assert!(w.apply(&Action::Create(ok.clone())).is_err());
        w.apply(&Action::Update(ok)).unwrap();
        let del = Action::Delete(PolicyRef {
            kind: None,
            namespace: "x".into(),
            name: "p".into(),
        });
        w.apply(&del).unwrap();
        assert!(w.apply(&del).is_err());
        w.apply(&Action::LabelPod(LabelPod {
            pod: "x/a".into(),
            labels: LabelChanges::from([("pod".into(), None), ("r".into(), Some("1".into()))]),
        }))
        .unwrap();
        let a = &w.cluster.pods[&ObjectName::new("x", "a")];
        assert_eq!(a.labels.len(), 1);
        w.apply(&Action::DeletePod("x/b".into())).unwrap();
        assert_eq!(
            w.ip_of(&ObjectName::new("x", "b")),
            Some("10.244.0.3".parse().unwrap())
        );
    }

    fn cnp(name: &str, priority: u32) -> Value {
        serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1beta1", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name},
            "spec": {"tier": "Admin", "priority": priority,
                     "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
        })
    }

    #[test]
    fn cluster_network_policies_are_created_updated_and_deleted_by_name() {
        let mut w = World::new(&Topology::Default, 1).unwrap();
        w.apply(&Action::Create(cnp("deny", 5))).unwrap();
        assert_eq!(w.cluster.cluster_policies["deny"].priority, 5);
        assert!(w.apply(&Action::Create(cnp("deny", 5))).is_err());
        w.apply(&Action::Update(cnp("deny", 7))).unwrap();
        assert_eq!(w.cluster.cluster_policies["deny"].priority, 7);
        assert!(w.apply(&Action::Update(cnp("other", 7))).is_err());
        // deleteAllPolicies is about NetworkPolicies of one namespace: CNPs stay.
        w.apply(&Action::DeleteAllPolicies("x".into())).unwrap();
        assert!(w.cluster.cluster_policies.contains_key("deny"));
        assert!(w.cnp_manifests.contains_key("deny"));
        let del = Action::Delete(PolicyRef {
            kind: Some("ClusterNetworkPolicy".into()),
            namespace: String::new(),
            name: "deny".into(),
        });
        w.apply(&del).unwrap();
        assert!(w.cluster.cluster_policies.is_empty() && w.cnp_manifests.is_empty());
        assert!(w
            .apply(&del)
            .unwrap_err()
            .contains("no ClusterNetworkPolicy deny"));
    }

    #[test]
    fn invalid_cluster_network_policies_are_errors_naming_the_field() {
        let mut w = World::new(&Topology::Default, 1).unwrap();
        let err = w.apply(&Action::Create(cnp("bad", 1001))).unwrap_err();
        assert!(
            err.contains("ClusterNetworkPolicy bad") && err.contains("spec.priority"),
            "{err}"
        );
        let mut namespaced = cnp("ns", 1);
        namespaced["metadata"]["namespace"] = "x".into();
        let err = w.apply(&Action::Create(namespaced)).unwrap_err();
        assert!(err.contains("metadata.namespace"), "{err}");
        let mut typo = cnp("typo", 1);
        typo["spec"]["ingress"][0]["acton"] = "Deny".into();
        let err = w.apply(&Action::Create(typo)).unwrap_err();
        assert!(err.contains("acton"), "{err}");
        let mut version = cnp("v", 1);
        version["apiVersion"] = "policy.networking.k8s.io/v1alpha1".into();
        assert!(w
            .apply(&Action::Create(version))
            .unwrap_err()
            .contains("apiVersion"));
        assert!(w.cluster.cluster_policies.is_empty());
    }
}
