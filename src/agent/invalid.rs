//! Objects the API server holds that sluice refuses (invalid NetworkPolicies and
//! ClusterNetworkPolicies): they are in the snapshot (their pods fail closed) and reported by
//! kind, name and field in the log, the `invalid_object` error metric and the status.

use std::collections::BTreeMap;

use crate::k8s::convert::{Change, Kind, Object};
use crate::policy::model::Problem;
use crate::policy::ObjectName;

/// `networkpolicies ns/name`, `clusternetworkpolicies name`.
pub fn key(kind: Kind, name: &ObjectName) -> String {
    if name.namespace.is_empty() {
        format!("{} {}", kind.as_str(), name.name)
    } else {
        format!("{} {name}", kind.as_str())
    }
}

/// Updates `invalid` (key -> problems) for one change; returns what is newly invalid or
/// invalid differently (to report once, not at every relist).
pub fn track(
    invalid: &mut BTreeMap<String, Vec<Problem>>,
    change: &Change,
) -> Vec<(String, Vec<Problem>)> {
    let mut fresh = Vec::new();
    let mut note = |invalid: &mut BTreeMap<String, Vec<Problem>>, o: &Object| {
        let k = key(o.kind(), &o.key());
        match o.problems() {
            Some(p) => {
                if invalid.get(&k).map(Vec::as_slice) != Some(p) {
                    invalid.insert(k.clone(), p.to_vec());
                    fresh.push((k, p.to_vec()));
                }
            }
            None => {
                invalid.remove(&k);
            }
        }
    };
    match change {
        Change::Upsert(o) => note(invalid, o),
        Change::Delete(kind, name) => {
            invalid.remove(&key(*kind, name));
        }
        Change::Relisted(kind, objects) => {
            let prefix = format!("{} ", kind.as_str());
            let keep: std::collections::BTreeSet<String> =
                objects.iter().map(|o| key(o.kind(), &o.key())).collect();
            invalid.retain(|k, _| !k.starts_with(&prefix) || keep.contains(k));
            for o in objects {
                note(invalid, o);
            }
        }
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(name: &str) -> Object {
        Object::InvalidClusterPolicy {
            name: name.into(),
            subject: None,
            problems: vec![Problem {
                object: format!("ClusterNetworkPolicy {name}"),
                field: "spec.priority".into(),
                message: "m".into(),
            }],
        }
    }

    #[test]
    fn reports_once_and_forgets_deleted_or_fixed_objects() {
        let mut m = BTreeMap::new();
        let fresh = track(&mut m, &Change::Upsert(bad("a")));
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].0, "clusternetworkpolicies a");
        assert_eq!(fresh[0].1[0].field, "spec.priority");
        // A relist holding the same object does not report it again.
        let relist = Change::Relisted(Kind::ClusterPolicies, vec![bad("a"), bad("b")]);
        let fresh = track(&mut m, &relist);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].0, "clusternetworkpolicies b");
        // Other kinds' relists leave these alone.
        track(&mut m, &Change::Relisted(Kind::Policies, vec![]));
        assert_eq!(m.len(), 2);
        track(
            &mut m,
            &Change::Delete(Kind::ClusterPolicies, ObjectName::new("", "a")),
        );
        track(&mut m, &Change::Relisted(Kind::ClusterPolicies, vec![]));
        assert!(m.is_empty());
    }
}
