//! What the kernel holds, read back from our own tables only: a normalised fingerprint
//! (for exact comparisons) and a summary (for `sluice status` and drift detection).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::runner::Nft;
use crate::compile::ir::{NodeRuleset, Table, TableFamily};
use crate::compile::TABLE;

/// Chains with their rules and sets with their sorted elements, handles stripped: equal
/// fingerprints mean the kernel holds the same ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(pub BTreeMap<String, Value>);

/// Names and sizes, enough to see at a glance whether installed matches wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `family/chain` -> number of rules.
    pub chains: BTreeMap<String, usize>,
    /// `family/set` -> number of elements.
    pub sets: BTreeMap<String, usize>,
}

impl Summary {
    pub fn of_tables(tables: &[Table]) -> Summary {
        let mut s = Summary::default();
        for t in tables {
            for (name, c) in &t.chains {
                s.chains
                    .insert(format!("{}/{name}", t.family.name()), c.rules.len());
            }
            for (name, set) in &t.sets {
                s.sets
                    .insert(format!("{}/{name}", t.family.name()), set.elements.len());
            }
        }
        s
    }

    pub fn wanted(rs: &NodeRuleset) -> Summary {
        Summary::of_tables(&rs.tables)
    }

    /// Human-readable differences (empty when equal).
    pub fn differences(&self, wanted: &Summary) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, have, want) in [
            ("chain", &self.chains, &wanted.chains),
            ("set", &self.sets, &wanted.sets),
        ] {
            let unit = if kind == "chain" { "rules" } else { "elements" };
            for (name, n) in want {
                match have.get(name) {
                    None => out.push(format!("{kind} {name} is missing")),
                    Some(h) if h != n => {
                        out.push(format!("{kind} {name} has {h} {unit}, wanted {n}"))
                    }
                    Some(_) => {}
                }
            }
            for name in have.keys() {
                if !want.contains_key(name) {
                    out.push(format!("{kind} {name} is installed but not wanted"));
                }
            }
        }
        out
    }
}

fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            for x in map.values_mut() {
                strip_handles(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

/// Reads our tables (both families) and normalises them.
pub fn read(nft: &Nft) -> Result<(Fingerprint, Summary)> {
    let mut fp = Fingerprint::default();
    let mut summary = Summary::default();
    for family in [TableFamily::Inet, TableFamily::Bridge] {
        let Some(doc) = nft.list_table(family.name(), TABLE)? else {
            continue;
        };
        let objects = doc["nftables"].as_array().cloned().unwrap_or_default();
        let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for mut obj in objects {
            strip_handles(&mut obj);
            if let Some(c) = obj.get("chain") {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                rules.entry(name.clone()).or_default();
                fp.0.insert(format!("{}/chain/{name}", family.name()), c.clone());
            } else if let Some(r) = obj.get("rule") {
                let chain = r["chain"].as_str().unwrap_or_default().to_string();
                rules.entry(chain).or_default().push(r.clone());
            } else if let Some((kind, s)) = obj
                .get("set")
                .map(|s| ("set", s))
                .or_else(|| obj.get("map").map(|m| ("map", m)))
            {
                let name = s["name"].as_str().unwrap_or_default().to_string();
                let mut s = s.clone();
                let mut elems: Vec<Value> = s["elem"].as_array().cloned().unwrap_or_default();
                elems.sort_by_key(|e| e.to_string());
                summary
                    .sets
                    .insert(format!("{}/{name}", family.name()), elems.len());
                s["elem"] = Value::Array(elems);
                fp.0.insert(format!("{}/{kind}/{name}", family.name()), s);
            }
        }
        for (chain, rs) in rules {
            summary
                .chains
                .insert(format!("{}/{chain}", family.name()), rs.len());
            fp.0.insert(format!("{}/rules/{chain}", family.name()), Value::Array(rs));
        }
    }
    Ok((fp, summary))
}
