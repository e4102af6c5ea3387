//! Which kinds sluice reads, which it knows to ignore, and which must be typos.
//!
//! A document whose kind sluice cannot place could be a misspelled NetworkPolicy
//! (`kind: Networkpolicy`): ignoring it would silently drop a policy and open the pods it
//! protected. So in the API groups sluice reads from, every real kind is listed, and a kind
//! that is not one of them refuses the whole load. Kinds of other groups (custom resources,
//! other built-in groups) are counted and ignored.

/// The kinds sluice reads, with the only apiVersion each is served as.
pub const READ: &[(&str, &str)] = &[
    ("Namespace", "v1"),
    ("Pod", "v1"),
    ("NetworkPolicy", "networking.k8s.io/v1"),
    ("Deployment", "apps/v1"),
    ("StatefulSet", "apps/v1"),
    ("DaemonSet", "apps/v1"),
    ("ReplicaSet", "apps/v1"),
    ("Job", "batch/v1"),
    ("CronJob", "batch/v1"),
    // Also served as policy.networking.k8s.io/v1alpha2 (same schema): see `accepted_versions`.
    ("ClusterNetworkPolicy", "policy.networking.k8s.io/v1beta1"),
];

/// Every kind served in the groups sluice reads from (Kubernetes 1.34), besides `List` and
/// `<Kind>List`. Meta kinds (`Status`, `APIResourceList`, ...) appear in `v1` output too.
const GROUPS: &[(&str, &[&str])] = &[
    (
        "v1",
        &[
            "Binding",
            "ComponentStatus",
            "ConfigMap",
            "Endpoints",
            "Event",
            "LimitRange",
            "Namespace",
            "Node",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Pod",
            "PodTemplate",
            "ReplicationController",
            "ResourceQuota",
            "Secret",
            "Service",
            "ServiceAccount",
            "Status",
            "APIVersions",
            "APIGroup",
            "APIGroupList",
            "APIResourceList",
            "DeleteOptions",
            "WatchEvent",
        ],
    ),
    (
        "apps",
        &[
            "ControllerRevision",
            "DaemonSet",
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
        ],
    ),
    ("batch", &["CronJob", "Job"]),
    (
        "policy.networking.k8s.io",
        &[
            "ClusterNetworkPolicy",
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
        ],
    ),
    (
        "networking.k8s.io",
        &[
            "Ingress",
            "IngressClass",
            "IPAddress",
            "NetworkPolicy",
            "ServiceCIDR",
        ],
    ),
];

/// What a document's `kind` (and apiVersion) means to the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindClass {
    /// A kind sluice reads.
    Read,
    /// `List` or `<Kind>List`: its `items` are objects.
    List,
    /// A real kind sluice does not use (counted, ignored).
    Ignored,
    /// Cannot be a real kind: refuse the load, with this explanation.
    Unknown(String),
}

/// The group of an apiVersion (`v1` is the core group, spelled `v1` here).
fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((group, _)) => group,
        None => api_version,
    }
}

/// Groups whose kinds of the names sluice reads are sluice's kinds, in any version: a
/// NetworkPolicy in `extensions/v1beta1` (no longer served) is a wrong apiVersion, never a
/// different kind to ignore. Elsewhere (`crd.projectcalico.org/v1`) a same-named kind is
/// another project's resource.
const OWN_GROUPS: &[&str] = &[
    "",
    "v1",
    "apps",
    "batch",
    "networking.k8s.io",
    "extensions",
    "policy.networking.k8s.io",
];

pub fn classify(kind: &str, api_version: &str) -> KindClass {
    if READ.iter().any(|(k, _)| *k == kind) {
        let group = if api_version.contains('/') {
            group_of(api_version)
        } else {
            ""
        };
        return if OWN_GROUPS.contains(&group) {
            KindClass::Read
        } else {
            KindClass::Ignored
        };
    }
    if kind == "List" || (kind.ends_with("List") && kind.len() > 4) {
        return KindClass::List;
    }
    if let Some((read, _)) = READ
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(kind) || squash(k) == squash(kind))
    {
        return KindClass::Unknown(format!(
            "kind {kind:?} is not a Kubernetes kind: did you mean {read}?"
        ));
    }
    let group = group_of(api_version);
    let core = api_version == "v1";
    let known = GROUPS
        .iter()
        .find(|(g, _)| if core { *g == "v1" } else { *g == group });
    match known {
        Some((_, kinds)) if !kinds.contains(&kind) => {
            let hint = kinds
                .iter()
                .find(|k| k.eq_ignore_ascii_case(kind))
                .map(|k| format!(": did you mean {k}?"))
                .unwrap_or_default();
            KindClass::Unknown(format!(
                "kind {kind:?} does not exist in {api_version}{hint}"
            ))
        }
        _ => KindClass::Ignored,
    }
}

/// The apiVersion a kind sluice reads must have, if `kind` is one.
pub fn expected_api_version(kind: &str) -> Option<&'static str> {
    READ.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// Every apiVersion that serves `kind` (ClusterNetworkPolicy has two, one schema).
pub fn accepted_versions(kind: &str) -> Vec<&'static str> {
    if kind == super::cnp::KIND {
        return super::cnp::API_VERSIONS.to_vec();
    }
    expected_api_version(kind).into_iter().collect()
}

/// Lower case without separators, so `Network-Policy` and `network_policy` are caught too.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_of_read_kinds_and_unknown_kinds_in_known_groups_are_unknown() {
        for (kind, api) in [
            ("Networkpolicy", "networking.k8s.io/v1"),
            ("networkpolicy", "v1"),
            ("Network-Policy", "example.com/v1"),
            ("POD", "v1"),
            ("Deploymnet", "apps/v1"),
            ("Podd", "v1"),
            ("NetPolicy", "networking.k8s.io/v1"),
            ("Cronjob", "batch/v1beta1"),
        ] {
            assert!(
                matches!(classify(kind, api), KindClass::Unknown(_)),
                "{kind} {api}"
            );
        }
    }

    #[test]
    fn real_kinds_are_read_listed_or_ignored() {
        assert_eq!(
            classify("NetworkPolicy", "networking.k8s.io/v1"),
            KindClass::Read
        );
        assert_eq!(classify("List", "v1"), KindClass::List);
        // A read kind in a version that is not served is still that kind (a wrong apiVersion,
        // reported on the object), never silently ignored.
        for api in ["", "v1", "extensions/v1beta1", "networking.k8s.io/v1beta1"] {
            assert_eq!(classify("NetworkPolicy", api), KindClass::Read, "{api}");
        }
        assert_eq!(classify("PodList", "v1"), KindClass::List);
        for api in [
            "policy.networking.k8s.io/v1beta1",
            "policy.networking.k8s.io/v1alpha2",
        ] {
            assert_eq!(
                classify("ClusterNetworkPolicy", api),
                KindClass::Read,
                "{api}"
            );
        }
        assert!(matches!(
            classify("ClusterNetworkpolicy", "policy.networking.k8s.io/v1beta1"),
            KindClass::Unknown(_)
        ));
        for (kind, api) in [
            ("Service", "v1"),
            ("ConfigMap", "v1"),
            ("Ingress", "networking.k8s.io/v1"),
            ("ControllerRevision", "apps/v1"),
            ("CiliumNetworkPolicy", "cilium.io/v2"),
            ("AdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1"),
            ("HorizontalPodAutoscaler", "autoscaling/v2"),
            ("NetworkPolicy", "crd.projectcalico.org/v1"),
            ("NetworkPolicy", "projectcalico.org/v3"),
        ] {
            assert_eq!(classify(kind, api), KindClass::Ignored, "{kind} {api}");
        }
    }
}
