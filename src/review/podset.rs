//! Short names for sets of pods: `ns/*` for a whole namespace, `every pod` for all of them.

use std::collections::BTreeMap;

use crate::policy::ObjectName;

/// How many entries a description lists before it says "and N more".
const SHOWN: usize = 6;

/// Describes `set` (sorted) as a part of `all` (every pod compared).
pub fn describe(set: &[ObjectName], all: &[ObjectName]) -> String {
    if set.len() == all.len() && set.len() > 1 {
        return format!("every pod ({})", set.len());
    }
    let mut total: BTreeMap<&str, usize> = BTreeMap::new();
    for p in all {
        *total.entry(p.namespace.as_str()).or_default() += 1;
    }
    let mut by_ns: BTreeMap<&str, Vec<&ObjectName>> = BTreeMap::new();
    for p in set {
        by_ns.entry(p.namespace.as_str()).or_default().push(p);
    }
    let mut parts: Vec<String> = Vec::new();
    for (ns, pods) in by_ns {
        if pods.len() > 1 && total.get(ns) == Some(&pods.len()) {
            parts.push(format!("{ns}/* ({})", pods.len()));
        } else {
            parts.extend(pods.iter().map(|p| p.to_string()));
        }
    }
    if parts.len() > SHOWN {
        let more = parts.len() - SHOWN;
        parts.truncate(SHOWN);
        return format!("{} pods: {}, and {more} more", set.len(), parts.join(", "));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<ObjectName> {
        v.iter().map(|s| ObjectName::parse(s)).collect()
    }

    #[test]
    fn whole_namespaces_and_everything_are_named_as_such() {
        let all = names(&["x/a", "x/b", "y/a", "y/b"]);
        assert_eq!(describe(&all, &all), "every pod (4)");
        assert_eq!(
            describe(&names(&["x/a", "x/b", "y/a"]), &all),
            "x/* (2), y/a"
        );
        assert_eq!(describe(&names(&["y/b"]), &all), "y/b");
    }

    #[test]
    fn long_lists_are_cut() {
        let all: Vec<ObjectName> = (0..20)
            .map(|i| ObjectName::new("n", format!("p{i:02}")))
            .collect();
        let set: Vec<ObjectName> = all[..10].to_vec();
        assert_eq!(
            describe(&set, &all),
            "10 pods: n/p00, n/p01, n/p02, n/p03, n/p04, n/p05, and 4 more"
        );
    }
}
