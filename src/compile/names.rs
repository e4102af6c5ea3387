//! Stable, readable nftables names derived from Kubernetes names.
//!
//! Kubernetes names never contain `_`, so `_` separates the parts unambiguously; names are
//! kept readable and only shortened (with a hash of the full name) when they get long.

/// nftables accepts longer names, but long names make `nft list` unreadable.
const MAX_NAME: usize = 96;

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Makes `name` safe for nft text syntax and short enough. `/` (in workload pod names like
/// `deployment/api`) becomes `_`, which no Kubernetes name contains, so no collision; any
/// other unusual character, or a name that is too long, gets a hash of the whole name.
pub fn object_name(name: &str) -> String {
    let mut unusual = false;
    let clean: String = name
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => c,
            '/' => '_',
            _ => {
                unusual = true;
                '-'
            }
        })
        .collect();
    if clean.len() <= MAX_NAME && !unusual {
        return clean;
    }
    let hash = format!("{:012x}", fnv1a(name.as_bytes()) & 0xffff_ffff_ffff);
    let keep = MAX_NAME.min(clean.len()).saturating_sub(hash.len() + 1);
    format!("{}_{hash}", &clean[..keep])
}

/// `pod_<ns>_<name>_<dir>`
pub fn pod_chain(ns: &str, pod: &str, dir: &str) -> String {
    object_name(&format!("pod_{ns}_{pod}_{dir}"))
}

/// `np_<ns>_<policy>_<dir>`
pub fn policy_chain(ns: &str, policy: &str, dir: &str) -> String {
    object_name(&format!("np_{ns}_{policy}_{dir}"))
}

/// `guard_<ns>_<name>` (bridge anti-spoofing chain of one port)
pub fn guard_chain(ns: &str, pod: &str) -> String {
    object_name(&format!("guard_{ns}_{pod}"))
}

/// Content-addressed set name: sets with the same meaning share one name (and one set).
pub fn content_set(kind: &str, key: &str, family: &str) -> String {
    format!(
        "{kind}_{:012x}_{family}",
        fnv1a(key.as_bytes()) & 0xffff_ffff_ffff
    )
}

/// The documented default host-side interface of a pod when none is given: `sl` followed by
/// 11 hex digits of the FNV-1a hash of `namespace/name` (15 characters at most, like
/// Calico's `cali` + hash scheme).
pub fn default_iface(ns: &str, pod: &str) -> String {
    format!(
        "sl{:011x}",
        fnv1a(format!("{ns}/{pod}").as_bytes()) & 0xfff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_readable_and_bounded() {
        assert_eq!(pod_chain("x", "a", "ingress"), "pod_x_a_ingress");
        assert_eq!(
            pod_chain("shop", "deployment/api", "egress"),
            "pod_shop_deployment_api_egress"
        );
        let long = policy_chain("ns", &"a".repeat(200), "ingress");
        assert!(long.len() <= MAX_NAME);
        assert_ne!(long, policy_chain("ns", &"a".repeat(201), "ingress"));
        assert!(default_iface("x", "a").len() <= 15);
    }

    #[test]
    fn slash_names_cannot_collide_with_dash_names() {
        // "deployment/api" and "deployment-api" must not share a chain.
        assert_ne!(
            pod_chain("x", "deployment/api", "ingress"),
            pod_chain("x", "deployment-api", "ingress")
        );
    }
}
