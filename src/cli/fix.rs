//! `sluice explain ... --fix [allow|deny]`: the verified change and what else it changes.

use std::fmt::Write as _;

use clap::ValueEnum;
use serde_json::json;

use super::TextOrJson;
use crate::policy::{Cluster, Flow, Verdict};
use crate::review::fix::{propose, Fix, Goal};
use crate::review::podset::describe;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FixGoal {
    Allow,
    Deny,
}

fn cells_json(fix: &Fix) -> Vec<serde_json::Value> {
    fix.also
        .iter()
        .map(|c| {
            json!({
                "from": c.from.to_string(),
                "to": c.to.to_string(),
                "port": c.column.port,
                "protocol": c.column.protocol.as_str(),
                "before": c.before,
                "after": c.after,
                "group": c.line,
            })
        })
        .collect()
}

pub fn run(
    cluster: &Cluster,
    flow: &Flow,
    verdict: Verdict,
    goal: FixGoal,
    output: TextOrJson,
) -> anyhow::Result<i32> {
    let goal = match goal {
        FixGoal::Allow => Goal::Allow,
        FixGoal::Deny => Goal::Deny,
    };
    let code = if verdict.allowed { 0 } else { 1 };
    let wanted = if goal == Goal::Allow {
        "allowed"
    } else {
        "denied"
    };
    let result = propose(cluster, flow, goal);
    let (fix, message) = match result {
        Ok(Some(f)) => (Some(f), None),
        Ok(None) => (
            None,
            Some(format!("the flow is already {wanted}: nothing to change")),
        ),
        Err(e) => (None, Some(e)),
    };
    match output {
        TextOrJson::Json => {
            let body = json!({
                "goal": if goal == Goal::Allow { "allow" } else { "deny" },
                "allowed": verdict.allowed,
                "fix": fix.as_ref().map(|f| json!({
                    "manifests": f.manifests,
                    "description": f.description,
                    "objects": f.objects,
                    "verified": true,
                    "alternatives": f.alternatives.iter().map(|(d, n)| json!({"description": d, "alsoChanges": n})).collect::<Vec<_>>(),
                })),
                "alsoChanges": fix.as_ref().map(cells_json).unwrap_or_default(),
                "columns": fix.as_ref().map(|f| f.changes.columns.iter().map(|c| format!("{}/{}", c.port, c.protocol)).collect::<Vec<_>>()).unwrap_or_default(),
                "message": message,
                "verdict": verdict,
            });
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        TextOrJson::Text => {
            print!("{verdict}");
            println!();
            match (&fix, &message) {
                (Some(f), _) => print!("{}", render_text(f, wanted)),
                (None, Some(m)) => println!("fix: {m}"),
                (None, None) => {}
            }
        }
    }
    Ok(code)
}

fn render_text(f: &Fix, wanted: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fix (verified: with it the flow is {wanted}): {}",
        f.description.join("; ")
    );
    let _ = writeln!(s, "  apply: {}", f.objects.join(", "));
    let cols: Vec<String> = f
        .changes
        .columns
        .iter()
        .map(|c| format!("{}/{}", c.port, c.protocol))
        .collect();
    if f.also.is_empty() {
        let _ = writeln!(
            s,
            "  also changes: nothing else (compared every pod pair on {})",
            cols.join(", ")
        );
    } else {
        let _ = writeln!(
            s,
            "  also changes {} (compared on {}):",
            super::count(f.also.len(), "other cell"),
            cols.join(", ")
        );
        for (i, l) in f.changes.lines.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {} [{i}] {} -> {}  on {}  ({}{})",
                if l.opens() { '+' } else { '-' },
                describe(&l.from, &f.changes.pods),
                describe(&l.to, &f.changes.pods),
                l.columns
                    .iter()
                    .map(|c| format!("{}/{}", c.port, c.protocol))
                    .collect::<Vec<_>>()
                    .join(", "),
                super::count(l.cell_count(), "cell"),
                if f.also.iter().all(|c| c.line != i) {
                    ", the flow itself"
                } else {
                    ""
                }
            );
        }
    }
    for (d, n) in &f.alternatives {
        let n = super::count(*n, "other cell");
        let _ = writeln!(s, "  alternative: {d} (also changes {n})");
    }
    let _ = writeln!(s, "---");
    s.push_str(&f.manifests);
    s
}
