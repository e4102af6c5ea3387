//! Stable, readable nftables names derived from Kubernetes names, injective by construction.
//!
//! A name is its parts joined by `_`. Each part keeps the characters valid Kubernetes names
//! use (`a-z`, `0-9`, `.`, `-`), so real names stay readable (`pod_shop_deployment_api_egress`),
//! and spells every other byte as `X` + two upper-case hex digits (`_` is `X5F`, `A` is `X41`).
//! Only a pod name keeps `/` (a workload pod, `deployment/api`), written as `_`; a namespace
//! never does. So the namespace ends at the first `_`, the direction is the fixed last part,
//! and what is between is the pod: two different inputs cannot give one name (a Pod
//! `deployment_web` and a Deployment `web` used to share a chain). A name longer than
//! [`MAX_NAME`] is cut and given `_H` + a 64-bit hash of the whole name; `H` appears in no
//! spelled-out name, so a hashed name never equals a spelled-out one.

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

/// One part of a name: `a-z0-9.-` as they are, `/` as itself when `keep_slash` (pod names),
/// every other byte as `X` + two upper-case hex digits.
fn escape(part: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-') {
            out.push(c);
        } else if c == '/' && keep_slash {
            out.push('/');
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("X{b:02X}"));
            }
        }
    }
    out
}

/// Makes `name` safe for nft text syntax and short enough: `/` becomes `_`, any character
/// outside `A-Za-z0-9_.-` or a name longer than [`MAX_NAME`] gets a hash of the whole name.
/// Callers that join untrusted parts escape them first (see the module comment).
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
    let hash = format!("H{:016x}", fnv1a(name.as_bytes()));
    let keep = MAX_NAME.min(clean.len()).saturating_sub(hash.len() + 1);
    format!("{}_{hash}", &clean[..keep])
}

/// `pod_<ns>_<name>_<dir>`
pub fn pod_chain(ns: &str, pod: &str, dir: &str) -> String {
    object_name(&format!(
        "pod_{}_{}_{dir}",
        escape(ns, false),
        escape(pod, true)
    ))
}

/// `np_<ns>_<policy>_<dir>`
pub fn policy_chain(ns: &str, policy: &str, dir: &str) -> String {
    object_name(&format!(
        "np_{}_{}_{dir}",
        escape(ns, false),
        escape(policy, false)
    ))
}

/// `guard_<ns>_<name>` (bridge anti-spoofing chain of one port)
pub fn guard_chain(ns: &str, pod: &str) -> String {
    object_name(&format!(
        "guard_{}_{}",
        escape(ns, false),
        escape(pod, true)
    ))
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

/// Whether the kernel would take `name` as an interface name (its `dev_valid_name`): 1 to 15
/// bytes (IFNAMSIZ is 16 with the NUL), not `.` or `..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface names are 1 to 15 bytes (Linux IFNAMSIZ), this one is {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface names cannot contain {c:?} (no '/', ':', spaces or control characters)"
        ));
    }
    Ok(())
}

/// A MAC address as six colon-separated pairs of hex digits, returned in lower case.
pub fn check_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(mac.to_ascii_lowercase())
    } else {
        Err("a MAC address is six pairs of hex digits separated by ':' (aa:bb:cc:dd:ee:ff)".into())
    }
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

    /// Reverses [`escape`]: the proof that spelled-out names are injective.
    fn unescape(s: &str) -> Option<String> {
        let mut bytes = Vec::new();
        let mut it = s.bytes();
        while let Some(b) = it.next() {
            if b == b'X' {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        String::from_utf8(bytes).ok()
    }

    /// Reads (namespace, pod, direction) back out of a spelled-out pod chain name.
    fn decode_pod_chain(name: &str) -> Option<(String, String, String)> {
        let rest = name.strip_prefix("pod_")?;
        let (ns, rest) = rest.split_once('_')?;
        let (pod, dir) = rest.rsplit_once('_')?;
        Some((
            unescape(ns)?,
            unescape(&pod.replace('_', "/"))?,
            dir.to_string(),
        ))
    }

    fn decode_policy_chain(name: &str) -> Option<(String, String, String)> {
        let rest = name.strip_prefix("np_")?;
        let (ns, rest) = rest.split_once('_')?;
        let (policy, dir) = rest.rsplit_once('_')?;
        Some((unescape(ns)?, unescape(policy)?, dir.to_string()))
    }

    #[test]
    fn a_pod_named_like_a_workload_pod_gets_its_own_chain() {
        // Issue 17: Pod x/deployment_web and Deployment x/web (pod deployment/web).
        let pod = pod_chain("x", "deployment_web", "ingress");
        let workload = pod_chain("x", "deployment/web", "ingress");
        assert_ne!(pod, workload);
        assert_eq!(
            workload, "pod_x_deployment_web_ingress",
            "real names stay readable"
        );
        assert_ne!(
            guard_chain("x", "deployment_web"),
            guard_chain("x", "deployment/web")
        );
        assert_ne!(
            pod_chain("a_b", "c", "egress"),
            pod_chain("a", "b_c", "egress")
        );
        assert_ne!(
            policy_chain("a_b", "c", "egress"),
            policy_chain("a", "b_c", "egress")
        );
        assert_ne!(
            pod_chain("x", "Web", "egress"),
            pod_chain("x", "web", "egress")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Every name is either spelled out, and then decodes back to exactly its input
        /// (so no two inputs share it), or hashed, and then carries the `H` no spelled-out
        /// name has, within the length bound. Inputs are any strings: `_`, `/`, `X`, hex
        /// digits, upper case and non-ASCII included.
        #[test]
        fn chain_names_are_injective(
            ns in "[-a-zA-Z0-9_/X.é\\ ]{0,20}",
            pod in "[-a-zA-Z0-9_/X.é\\ ]{0,40}",
            other_ns in "[a-z_/X]{0,6}",
            other_pod in "[a-z_/X]{0,6}",
            ingress in proptest::bool::ANY,
        ) {
            let dir = if ingress { "ingress" } else { "egress" };
            for (name, decoded) in [
                (pod_chain(&ns, &pod, dir), decode_pod_chain(&pod_chain(&ns, &pod, dir))),
                (policy_chain(&ns, &pod, dir), decode_policy_chain(&policy_chain(&ns, &pod, dir))),
            ] {
                proptest::prop_assert!(name.len() <= MAX_NAME);
                if name.contains('H') {
                    proptest::prop_assert!(name.len() > 18);
                } else {
                    proptest::prop_assert_eq!(decoded, Some((ns.clone(), pod.clone(), dir.to_string())), "{}", name);
                }
            }
            if (ns.as_str(), pod.as_str()) != (other_ns.as_str(), other_pod.as_str()) {
                proptest::prop_assert_ne!(pod_chain(&ns, &pod, dir), pod_chain(&other_ns, &other_pod, dir));
                proptest::prop_assert_ne!(guard_chain(&ns, &pod), guard_chain(&other_ns, &other_pod));
            }
        }
    }

    #[test]
    fn slash_names_cannot_collide_with_dash_names() {
        // "deployment/api" and "deployment-api" must not share a chain.
        assert_ne!(
            pod_chain("x", "deployment/api", "ingress"),
            pod_chain("x", "deployment-api", "ingress")
        );
    }

    #[test]
    fn interface_names_the_kernel_refuses_are_refused() {
        for bad in [
            "",
            "a b",
            "a/b",
            "a:b",
            ".",
            "..",
            "abcdefghijklmnop",
            "tab\tx",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["eth0", "veth04e24404", "abcdefghijklmno", "cali-1.x_y"] {
            assert!(check_ifname(good).is_ok(), "{good:?} refused");
        }
        // Bytes, not characters: five 3-byte characters are 15 bytes, six are 18.
        assert!(check_ifname("ééééééé").is_ok());
        assert!(check_ifname("€€€€€€").is_err());
    }

    #[test]
    fn macs_are_six_hex_pairs() {
        assert_eq!(check_mac("AA:bb:0c:dd:ee:ff").unwrap(), "aa:bb:0c:dd:ee:ff");
        for bad in [
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "zz:bb:cc:dd:ee:ff",
            "a:bb:cc:dd:ee:fff",
            "",
        ] {
            assert!(check_mac(bad).is_err(), "{bad:?} accepted");
        }
    }
}
