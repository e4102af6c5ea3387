//! The smallest batch that turns one installed ruleset into another: set elements and map
//! entries for pod churn, whole chains only where rules changed.
//!
//! Order inside the (atomic) batch matters because nft checks references command by command:
//! new chains and sets first, then new elements, then rewritten chains, then removals.

use std::collections::BTreeSet;

use serde_json::Value;

use super::json;
use crate::compile::ir::*;
use crate::dataplane::DeltaStats;

pub struct Delta {
    pub commands: Vec<Value>,
    pub stats: DeltaStats,
}

/// Why a delta cannot express a change, so a full replacement is needed.
fn needs_full(old: &Table, new: &Table) -> bool {
    old.chains
        .iter()
        .any(|(name, c)| new.chains.get(name).is_some_and(|n| n.base != c.base))
        || new
            .chains
            .iter()
            .any(|(name, c)| c.base.is_some() && !old.chains.contains_key(name))
        || old.sets.iter().any(|(name, s)| {
            new.sets
                .get(name)
                .is_some_and(|n| n.ty != s.ty || n.comment != s.comment)
        })
}

/// The delta from `old` to `new`, or None when only a full replacement can do it (a table
/// appears or disappears, a base chain or a set's type changes).
pub fn delta(old: &NodeRuleset, new: &NodeRuleset) -> Option<Delta> {
    let old_families: BTreeSet<TableFamily> = old.tables.iter().map(|t| t.family).collect();
    let new_families: BTreeSet<TableFamily> = new.tables.iter().map(|t| t.family).collect();
    if old_families != new_families {
        return None;
    }
    let mut commands = Vec::new();
    let mut stats = DeltaStats::default();
    for new_t in &new.tables {
        let old_t = old.table(new_t.family).expect("same families");
        if needs_full(old_t, new_t) {
            return None;
        }
        table_delta(old_t, new_t, &mut commands, &mut stats);
    }
    stats.commands = commands.len();
    Some(Delta { commands, stats })
}

fn table_delta(old: &Table, new: &Table, out: &mut Vec<Value>, stats: &mut DeltaStats) {
    // 1. New chains, empty for now: map entries and jumps may refer to them.
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            out.push(json::add_chain(new, name, chain));
            stats.chains_added += 1;
        }
    }
    // 2. New sets with their elements.
    for (name, set) in &new.sets {
        if !old.sets.contains_key(name) {
            out.push(json::add_set(new, name, set, true));
            stats.sets_added += 1;
        }
    }
    // 3. New elements of existing sets.
    let mut removals = Vec::new();
    for (name, set) in &new.sets {
        if let Some(old_set) = old.sets.get(name) {
            let added: Vec<&Element> = set.elements.difference(&old_set.elements).collect();
            let removed: Vec<&Element> = old_set.elements.difference(&set.elements).collect();
            if !added.is_empty() {
                stats.elements_added += added.len();
                out.push(json::elements(new, name, &added, true));
            }
            if !removed.is_empty() {
                stats.elements_removed += removed.len();
                removals.push(json::elements(new, name, &removed, false));
            }
        }
    }
    // 4. Rules of new chains; rewritten chains are flushed and refilled.
    for (name, chain) in &new.chains {
        match old.chains.get(name) {
            None => {
                for r in &chain.rules {
                    out.push(json::add_rule(new, name, r));
                }
            }
            Some(old_chain) if old_chain.rules != chain.rules => {
                out.push(json::flush_chain(new, name));
                for r in &chain.rules {
                    out.push(json::add_rule(new, name, r));
                }
                stats.chains_rewritten += 1;
            }
            Some(_) => {}
        }
    }
    // 5. Old elements (including map entries that jump to chains about to go).
    out.extend(removals);
    // 6. Chains that are gone: flush all first (they may jump to each other), then delete.
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|n| !new.chains.contains_key(*n))
        .collect();
    for name in &gone {
        out.push(json::flush_chain(old, name));
    }
    for name in &gone {
        out.push(json::delete_chain(old, name));
        stats.chains_removed += 1;
    }
    // 7. Sets that are gone (no rule refers to them any more).
    for (name, set) in &old.sets {
        if !new.sets.contains_key(name) {
            out.push(json::delete_set(old, name, set.ty));
            stats.sets_removed += 1;
        }
    }
}
