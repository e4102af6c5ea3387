//! The label index is a fast path: for every pod peer of every generated cluster it must
//! select exactly the pods [`clause::pod_peer_selects`] selects.

use proptest::prelude::*;

use super::PodIndex;
use crate::policy::clause;
use crate::policy::clause_tests::{cluster, config};
use crate::policy::model::{NamespaceScope, ObjectName, Peer};

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn index_agrees_with_predicates(c in cluster()) {
        let index = PodIndex::new(&c);
        // Each peer twice: the second answer comes from the cache.
        for _ in 0..2 {
            for policy in c.policies.values() {
                let rules = policy.ingress.iter().chain(policy.egress.iter()).flatten();
                for peer in rules.flat_map(|r| r.peers.iter()) {
                    let Peer::Pods { namespaces, pods } = peer else { continue };
                    let got: Vec<ObjectName> = index
                        .peer(&policy.namespace, namespaces, pods)
                        .iter()
                        .map(|&i| index.pod(i).object_name())
                        .collect();
                    let want: Vec<ObjectName> = c
                        .pods
                        .values()
                        .filter(|p| clause::pod_peer_selects(&c, &policy.namespace, namespaces, pods, p))
                        .map(|p| p.object_name())
                        .collect();
                    prop_assert_eq!(&got, &want, "{} {:?}", policy.object_name(), peer);
                    // The same selectors from another namespace's policy.
                    if let NamespaceScope::PolicyNamespace = namespaces {
                        let got = index.peer("y", namespaces, pods).len();
                        let want = c
                            .pods
                            .values()
                            .filter(|p| clause::pod_peer_selects(&c, "y", namespaces, pods, p))
                            .count();
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
