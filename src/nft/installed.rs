//! What the kernel holds, read back from our own tables only: a normalised fingerprint
//! (for exact comparisons) and a summary (for `sluice status` and drift detection).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

use super::runner::Nft;
use crate::compile::ir::{NodeRuleset, TableFamily};
use crate::compile::TABLE;
use crate::dataplane::Summary;

/// Chains with their rules and sets with their sorted elements, handles stripped: equal
/// fingerprints mean the kernel holds the same ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(pub BTreeMap<String, Value>);

impl Fingerprint {
    /// What the kernel holds once `rs` is applied: `rs` applied with `nft` in a private,
    /// empty network namespace and read back there, so both sides of a comparison are
    /// normalised by the kernel and nft the same way. Needs the rights `apply` needs.
    pub fn expected(rs: &NodeRuleset) -> Result<Fingerprint> {
        let batch = super::json::full_replace(rs, &[]);
        std::thread::spawn(move || {
            // SAFETY: unshare affects only this short-lived thread (and the nft processes
            // it starts); the caller's namespace is untouched.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                anyhow::bail!(
                    "cannot create a scratch network namespace to compute the expected ruleset: {} (status needs root or CAP_SYS_ADMIN)",
                    std::io::Error::last_os_error()
                );
            }
            let nft = Nft::here();
            nft.apply_json(&batch)
                .context("the wanted ruleset does not apply in a scratch namespace")?;
            read(&nft).map(|(fp, _)| fp)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the scratch-namespace thread panicked"))?
    }

    /// What differs, a line per chain, set or map (empty when equal). `self` is what the
    /// kernel holds, `wanted` what it should.
    pub fn differences(&self, wanted: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (key, want) in &wanted.0 {
            let (what, name) = describe(key);
            match self.0.get(key) {
                None if what == "rules" => {}
                None => out.push(format!("{what} {name} is missing")),
                Some(have) if have == want => {}
                Some(have) => out.extend(differ(what, &name, have, want)),
            }
        }
        for key in self.0.keys().filter(|k| !wanted.0.contains_key(*k)) {
            let (what, name) = describe(key);
            if what != "rules" {
                out.push(format!("{what} {name} is installed but not wanted"));
            }
        }
        out
    }
}

/// `inet/rules/x` -> ("rules", "inet/x").
fn describe(key: &str) -> (&str, String) {
    let mut parts = key.splitn(3, '/');
    let family = parts.next().unwrap_or_default();
    let what = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    (what, format!("{family}/{name}"))
}

/// A value in a line: strings and bare verdicts as words (`accept`, `jump pod_x_a_ingress`),
/// the rest as compact JSON, cut at 160 characters.
fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "nothing".into(),
        Value::Object(m) if m.len() == 1 => {
            let (k, inner) = m.iter().next().expect("one key");
            match inner {
                Value::Null => k.clone(),
                Value::Object(t) if t.len() == 1 && t["target"].is_string() => {
                    format!("{k} {}", t["target"].as_str().unwrap_or_default())
                }
                _ => v.to_string(),
            }
        }
        v => v.to_string(),
    };
    if s.chars().count() > 160 {
        format!("{}...", s.chars().take(157).collect::<String>())
    } else {
        s
    }
}

/// A rule as its statements (and comment), without the table and chain it is in.
fn show_rule(r: &Value) -> String {
    let mut s = match r["expr"].as_array() {
        Some(stmts) => stmts.iter().map(show).collect::<Vec<_>>().join(" "),
        None => show(&r["expr"]),
    };
    if let Some(c) = r["comment"].as_str() {
        s.push_str(&format!(" comment {c:?}"));
    }
    s
}

/// `verb a, b, c and 4 more` (empty list: nothing). An empty verb lists the items alone.
fn listing(verb: &str, items: &[String]) -> Option<String> {
    if items.is_empty() {
        return None;
    }
    let more = if items.len() > SHOW {
        format!(" and {} more", items.len() - SHOW)
    } else {
        String::new()
    };
    let plural = if items.len() == 1 || verb.is_empty() {
        ""
    } else {
        "s"
    };
    let sep = if verb.is_empty() { "" } else { " " };
    Some(format!(
        "{verb}{plural}{sep}{}{more}",
        items[..items.len().min(SHOW)].join(", ")
    ))
}

/// At most this many items are named per chain, set or map; the rest are counted.
const SHOW: usize = 3;

fn differ(what: &str, name: &str, have: &Value, want: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match what {
        "rules" => {
            let empty = Vec::new();
            let h = have.as_array().unwrap_or(&empty);
            let w = want.as_array().unwrap_or(&empty);
            if h.len() != w.len() {
                out.push(format!(
                    "chain {name} has {} rules, wanted {}",
                    h.len(),
                    w.len()
                ));
            }
            let bad: Vec<usize> = (0..h.len().max(w.len()))
                .filter(|i| h.get(*i) != w.get(*i))
                .collect();
            for i in bad.iter().take(SHOW) {
                let side = |r: Option<&Value>| r.map_or("no rule".to_string(), show_rule);
                out.push(format!(
                    "chain {name} rule {i}: found {}, wanted {}",
                    side(h.get(*i)),
                    side(w.get(*i))
                ));
            }
            if bad.len() > SHOW {
                out.push(format!(
                    "chain {name}: {} more rules differ",
                    bad.len() - SHOW
                ));
            }
        }
        _ => {
            // A chain (type, hook, priority, policy) or a set/map: field by field, and
            // elements as found/missing.
            let empty = serde_json::Map::new();
            let h = have.as_object().unwrap_or(&empty);
            let w = want.as_object().unwrap_or(&empty);
            let mut fields: Vec<&String> = h.keys().chain(w.keys()).collect();
            fields.sort();
            fields.dedup();
            for f in fields.into_iter().filter(|f| *f != "elem") {
                let (a, b) = (h.get(f), w.get(f));
                if a != b {
                    out.push(format!(
                        "{what} {name}: {f} is {}, wanted {}",
                        a.map_or("unset".into(), show),
                        b.map_or("unset".into(), show)
                    ));
                }
            }
            let elems = |m: &serde_json::Map<String, Value>| -> Vec<Value> {
                m.get("elem")
                    .and_then(|e| e.as_array().cloned())
                    .unwrap_or_default()
            };
            let (he, we) = (elems(h), elems(w));
            let mut parts = Vec::new();
            if what == "map" {
                // Map elements are [key, value]: a key with another value is one change.
                let by_key = |v: &[Value]| -> BTreeMap<String, String> {
                    v.iter().map(|e| (show(&e[0]), show(&e[1]))).collect()
                };
                let (hk, wk) = (by_key(&he), by_key(&we));
                let changed: Vec<String> = wk
                    .iter()
                    .filter_map(|(k, wv)| {
                        let hv = hk.get(k)?;
                        (hv != wv).then(|| format!("{k} maps to {hv}, wanted {wv}"))
                    })
                    .collect();
                let missing: Vec<String> = wk
                    .keys()
                    .filter(|k| !hk.contains_key(*k))
                    .cloned()
                    .collect();
                let extra: Vec<String> = hk
                    .keys()
                    .filter(|k| !wk.contains_key(*k))
                    .cloned()
                    .collect();
                parts.extend(listing("", &changed));
                parts.extend(listing("lacks key", &missing));
                parts.extend(listing("has unwanted key", &extra));
            } else {
                let missing: Vec<String> =
                    we.iter().filter(|e| !he.contains(e)).map(show).collect();
                let extra: Vec<String> = he.iter().filter(|e| !we.contains(e)).map(show).collect();
                parts.extend(listing("lacks element", &missing));
                parts.extend(listing("has unwanted element", &extra));
            }
            if !parts.is_empty() {
                out.push(format!("{what} {name}: {}", parts.join("; ")));
            }
        }
    }
    if out.is_empty() {
        out.push(format!("{what} {name} differs"));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(entries: &[(&str, Value)]) -> Fingerprint {
        Fingerprint(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn differences_name_the_object_and_both_values() {
        let want = fp(&[
            (
                "inet/chain/egress",
                json!({"name": "egress", "policy": "accept"}),
            ),
            ("inet/rules/p", json!([{"expr": [{"drop": null}]}])),
            (
                "inet/set/s",
                json!({"name": "s", "elem": ["10.0.0.1", "10.0.0.2"]}),
            ),
            (
                "inet/map/m",
                json!({"name": "m", "elem": [["a", {"jump": {"target": "p"}}], ["b", {"jump": {"target": "p"}}]]}),
            ),
        ]);
        assert!(want.differences(&want).is_empty());
        let have = fp(&[
            (
                "inet/chain/egress",
                json!({"name": "egress", "policy": "drop"}),
            ),
            ("inet/rules/p", json!([{"expr": [{"accept": null}]}])),
            (
                "inet/set/s",
                json!({"name": "s", "elem": ["10.0.0.1", "10.0.0.9"]}),
            ),
            (
                "inet/map/m",
                json!({"name": "m", "elem": [["a", "accept"], ["c", {"jump": {"target": "p"}}]]}),
            ),
            ("inet/set/extra", json!({"name": "extra"})),
        ]);
        let d = have.differences(&want);
        let line = |needle: &str| {
            d.iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {d:#?}"))
                .clone()
        };
        assert_eq!(
            line("inet/egress"),
            "chain inet/egress: policy is drop, wanted accept"
        );
        let r = line("inet/p");
        assert!(r.contains("rule 0: found accept, wanted drop"), "{r}");
        assert_eq!(
            line("inet/s:"),
            "set inet/s: lacks element 10.0.0.2; has unwanted element 10.0.0.9"
        );
        let m = line("inet/m");
        for part in [
            "a maps to accept, wanted jump p",
            "lacks key b",
            "has unwanted key c",
        ] {
            assert!(m.contains(part), "{part} not in {m}");
        }
        assert!(d.contains(&"set inet/extra is installed but not wanted".to_string()));
        // A chain that lost its rules is still reported by count.
        let flushed = fp(&[("inet/rules/p", json!([]))]);
        let w = fp(&[("inet/rules/p", json!([{"expr": [{"drop": null}]}]))]);
        assert!(flushed.differences(&w)[0].contains("has 0 rules, wanted 1"));
    }
}
