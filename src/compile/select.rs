//! Which pods a peer selects, fast: an inverted index from labels to pods, so a selector with
//! a `key=value` (or `key in (...)`) requirement looks at the pods carrying that label instead
//! of every pod in the cluster. Results are cached per distinct peer. The index is a fast path:
//! every candidate is decided by the predicates of [`crate::policy::clause`] (a property test
//! holds the result equal to filtering every pod with `clause::pod_peer_selects`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;

use crate::policy::clause;
use crate::policy::labels::{Operator, Selector};
use crate::policy::model::{Cluster, NamespaceScope, Pod};

/// A pod peer: the namespace it means (when it has no namespaceSelector), its scope, and
/// its podSelector.
type PeerKey = (String, NamespaceScope, Selector);

pub struct PodIndex<'a> {
    cluster: &'a Cluster,
    pods: Vec<&'a Pod>,
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
    by_namespace: HashMap<&'a str, Vec<u32>>,
    namespaces_of: RefCell<HashMap<Selector, Vec<String>>>,
    peers: RefCell<HashMap<PeerKey, Rc<Vec<u32>>>>,
}

impl<'a> PodIndex<'a> {
    pub fn new(cluster: &'a Cluster) -> Self {
        let pods: Vec<&Pod> = cluster.pods.values().filter(|p| !p.host_network).collect();
        let mut by_label: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
        let mut by_namespace: HashMap<&str, Vec<u32>> = HashMap::new();
        for (i, p) in pods.iter().enumerate() {
            for (k, v) in &p.labels {
                by_label
                    .entry((k.as_str(), v.as_str()))
                    .or_default()
                    .push(i as u32);
            }
            by_namespace
                .entry(p.namespace.as_str())
                .or_default()
                .push(i as u32);
        }
        PodIndex {
            cluster,
            pods,
            by_label,
            by_namespace,
            namespaces_of: Default::default(),
            peers: Default::default(),
        }
    }

    pub fn cluster(&self) -> &'a Cluster {
        self.cluster
    }

    pub fn pod(&self, i: u32) -> &'a Pod {
        self.pods[i as usize]
    }

    /// Namespaces a namespaceSelector selects (cached).
    fn namespaces(&self, sel: &Selector) -> Vec<String> {
        if let Some(v) = self.namespaces_of.borrow().get(sel) {
            return v.clone();
        }
        let v: Vec<String> = self
            .cluster
            .namespaces
            .keys()
            .filter(|n| clause::namespace_selector_selects(self.cluster, sel, n))
            .cloned()
            .collect();
        self.namespaces_of
            .borrow_mut()
            .insert(sel.clone(), v.clone());
        v
    }

    /// Indexes of the (non host-network) pods a pod peer of a policy in `policy_ns` selects,
    /// sorted.
    pub fn peer(&self, policy_ns: &str, scope: &NamespaceScope, pods: &Selector) -> Rc<Vec<u32>> {
        let ns_key = match scope {
            NamespaceScope::PolicyNamespace => policy_ns.to_string(),
            NamespaceScope::Selected(_) => String::new(),
        };
        let key = (ns_key, scope.clone(), pods.clone());
        if let Some(v) = self.peers.borrow().get(&key) {
            return v.clone();
        }
        let namespaces: Vec<String> = match scope {
            NamespaceScope::PolicyNamespace => vec![policy_ns.to_string()],
            NamespaceScope::Selected(sel) => self.namespaces(sel),
        };
        // Every namespace pods are in (a pod may outlive its Namespace object in a watched
        // cluster: no namespaceSelector selects it then).
        let wanted: HashSet<&str> = namespaces.iter().map(String::as_str).collect();
        let all_namespaces = self.by_namespace.keys().all(|n| wanted.contains(n));
        let ns_ok = |p: &Pod| all_namespaces || wanted.contains(p.namespace.as_str());
        // The most selective In requirement, if any, narrows the candidates.
        let postings = pods
            .requirements
            .iter()
            .filter(|r| r.operator == Operator::In)
            .map(|r| {
                let mut v: Vec<u32> = r
                    .values
                    .iter()
                    .flat_map(|val| {
                        self.by_label
                            .get(&(r.key.as_str(), val.as_str()))
                            .into_iter()
                            .flatten()
                    })
                    .copied()
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .min_by_key(|v| v.len());
        let mut out: Vec<u32> = match postings {
            Some(candidates) => candidates
                .into_iter()
                .filter(|&i| {
                    let p = self.pod(i);
                    ns_ok(p) && clause::peer_pod_selector_selects(pods, p)
                })
                .collect(),
            None => namespaces
                .iter()
                .flat_map(|n| self.by_namespace.get(n.as_str()).into_iter().flatten())
                .copied()
                .filter(|&i| clause::peer_pod_selector_selects(pods, self.pod(i)))
                .collect(),
        };
        out.sort_unstable();
        let out = Rc::new(out);
        self.peers.borrow_mut().insert(key, out.clone());
        out
    }

    /// Addresses of the given pods in one family.
    pub fn addresses<'s>(&'s self, pods: &'s [u32], v4: bool) -> impl Iterator<Item = IpAddr> + 's {
        pods.iter()
            .flat_map(move |&i| self.pod(i).ips.iter())
            .filter(move |ip| ip.is_ipv4() == v4)
            .copied()
    }

    /// Every pod of the cluster, host-network ones included (ipBlocks and rules without
    /// peers reach them by address).
    pub fn all(&self) -> impl Iterator<Item = &'a Pod> + 'a {
        self.cluster.pods.values()
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
