//! Labs by name: state files, name checks, listing and removing what a lab left behind.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

use super::{netns, Lab, MAX_NAME, NETNS_PREFIX, STATE_ROOT};

pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

pub fn state_path(name: &str) -> PathBuf {
    state_dir(name).join("state.json")
}

pub(super) fn ipam_dir(name: &str) -> PathBuf {
    state_dir(name).join("ipam")
}

pub(super) fn lab_netns_prefix(name: &str) -> String {
    format!("{NETNS_PREFIX}{name}-")
}

pub fn validate_name(name: &str) -> Result<()> {
    // No '-' so that "sl<name>-" prefixes of two labs can never overlap.
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        bail!("lab name {name:?} must be 1-{MAX_NAME} characters of [a-z0-9]");
    }
    Ok(())
}

pub(super) fn validate_k8s_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > 253
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        bail!("{what} {s:?} is not a valid Kubernetes name");
    }
    Ok(())
}

/// Whether anything of lab `name` exists (state dir or any namespace).
pub fn exists(name: &str) -> bool {
    let prefix = lab_netns_prefix(name);
    state_dir(name).exists() || netns::list().iter().any(|n| n.starts_with(&prefix))
}

/// Names of the labs present on this machine: a state directory, or a hub namespace
/// (`sl<name>-ul`, which `up` creates first) left by a run that lost its state directory.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| validate_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    for ns in netns::list() {
        if let Some(rest) = ns.strip_prefix(NETNS_PREFIX) {
            if let Some(name) = rest.strip_suffix("-ul") {
                if validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Remove lab `name` after a crash: from its state file if readable (CNI DEL for every pod),
/// then every namespace named `sl<name>-*` and the state directory. Idempotent.
pub fn down_by_name(name: &str) -> Result<()> {
    validate_name(name)?;
    match Lab::load(name) {
        Ok(lab) => lab.teardown(),
        Err(_) => remove_remains(name),
    }
}

/// Remove every lab on this machine (see `list`). Returns the names removed.
pub fn down_all() -> Result<Vec<String>> {
    let names = list();
    let mut errors = Vec::new();
    for n in &names {
        if let Err(e) = down_by_name(n) {
            errors.push(format!("{n}: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("down_all: {}", errors.join("; "));
    }
    Ok(names)
}

/// Delete all namespaces `sl<name>-*` (deleting a node namespace takes its veths, vxlan,
/// bridge and nft tables with it) and the state dir; then check nothing is left.
pub(super) fn remove_remains(name: &str) -> Result<()> {
    let prefix = lab_netns_prefix(name);
    let mut errors = Vec::new();
    for ns in netns::list().into_iter().filter(|n| n.starts_with(&prefix)) {
        if let Err(e) = netns::delete(&ns) {
            errors.push(format!("{e:#}"));
        }
    }
    let dir = state_dir(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            errors.push(format!("remove {}: {e}", dir.display()));
        }
    }
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if !left.is_empty() {
        errors.push(format!("namespaces left: {}", left.join(" ")));
    }
    if !errors.is_empty() {
        bail!("cleanup of lab {name}: {}", errors.join("; "));
    }
    Ok(())
}
