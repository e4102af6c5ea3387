//! ClusterNetworkPolicy manifests in cases: decoded and validated the way the API server with
//! the v0.3.0 CRDs would, through `policy::cnp::convert`. A case whose CNP the API would refuse
//! (or that carries a field the schema does not know) is a broken case, not a policy that
//! fails closed: the error names the field so the author can fix it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use super::substitute_value;
use crate::policy::cnp::{self, ClusterPolicy, RawCnp};
use crate::policy::fields::{decode, unknown_fields, TypeError};
use crate::policy::ObjectName;

/// The validated policy of a ClusterNetworkPolicy manifest (placeholders already substituted).
pub fn cnp_from_manifest(m: &Value) -> Result<ClusterPolicy, String> {
    let name = m["metadata"]["name"].as_str().unwrap_or("?");
    let object = format!("{} {name}", cnp::KIND);
    let version = m["apiVersion"].as_str().unwrap_or("");
    if !cnp::API_VERSIONS.contains(&version) {
        return Err(format!(
            "{object}: apiVersion: {version:?} does not serve ClusterNetworkPolicy (use one of {})",
            cnp::API_VERSIONS.join(", ")
        ));
    }
    if let Some(ns) = m["metadata"]["namespace"].as_str() {
        return Err(format!(
            "{object}: metadata.namespace: {ns:?}: ClusterNetworkPolicy is cluster-scoped, drop it"
        ));
    }
    let raw: RawCnp = decode(m.clone()).map_err(|TypeError { field, message }| {
        format!("{object}: {field}: cannot be read: {message}")
    })?;
    let unknown = unknown_fields(m, &raw);
    if !unknown.is_empty() {
        // In a case an unknown field is a typo, not something to fail closed on.
        return Err(format!("{object}: unknown field(s) {}", unknown.join(", ")));
    }
    cnp::convert(&raw, &[]).policy.map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        format!("the API server would reject it: {}", list.join("; "))
    })
}

/// Load-time check of a CNP manifest. `${ip:..}` placeholders only resolve while a case runs,
/// so here each pod stands for its own benchmarking address (198.18.0.0/15): a valid /32
/// either way, and two pods never collide (the CRD refuses a CIDR listed twice).
pub fn check_cnp_manifest(m: &Value) -> Result<(), String> {
    let seen: RefCell<BTreeMap<ObjectName, IpAddr>> = RefCell::default();
    let m = substitute_value(m, &|n| {
        let mut seen = seen.borrow_mut();
        let next = u32::from(Ipv4Addr::new(198, 18, 0, 1)) + seen.len() as u32;
        Some(
            *seen
                .entry(n.clone())
                .or_insert(IpAddr::V4(Ipv4Addr::from(next))),
        )
    })?;
    cnp_from_manifest(&m).map(|_| ())
}
