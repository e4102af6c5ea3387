//! Case results as text (for people), JSON (for machines) and JUnit XML (for CI).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::runner::{CaseResult, Outcome, ProbeResult, StepResult};
use super::table::{comparison_char, expected_char, observed_char};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn of(results: &[CaseResult]) -> Counts {
        let mut c = Counts::default();
        for r in results {
            c.add(r.result);
        }
        c
    }

    pub fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Pass => self.passed += 1,
            Outcome::Fail => self.failed += 1,
            Outcome::Skip => self.skipped += 1,
        }
    }

    /// The last line of every text report.
    pub fn line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// `PASS id  name  (reason)`.
pub fn case_line(r: &CaseResult) -> String {
    let mut s = format!("{} {}  {}", r.result.label(), r.id, r.name);
    if !r.reason.is_empty() {
        let _ = write!(s, "  ({})", r.reason);
    }
    s
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

/// The failing step of a case with its expected, observed and comparison tables.
pub fn failure_details(r: &CaseResult) -> String {
    let mut s = String::new();
    for step in r.steps.iter().filter(|s| s.result == Outcome::Fail) {
        let what = if step.step == 0 {
            "setup".to_string()
        } else {
            format!("step {}", step.step)
        };
        let _ = writeln!(s, "    {what}: {}", step.description);
        if let Some(e) = &step.error {
            let _ = writeln!(s, "      error: {e}");
        }
        for p in step.probes.iter().filter(|p| p.result == Outcome::Fail) {
            s.push_str(&probe_tables(p));
        }
    }
    s
}

pub fn probe_tables(p: &ProbeResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "      probe {}: {} of {} cells differ (rows = from, columns = to; loopback ignored)",
        p.column(),
        p.mismatches,
        p.cells
    );
    let _ = writeln!(s, "      expected (. allowed, X blocked):");
    s.push_str(&indent(&p.expected.render(expected_char), "        "));
    let _ = writeln!(s, "      observed (. allowed, X blocked, ? skipped):");
    s.push_str(&indent(&p.observed.render(observed_char), "        "));
    let _ = writeln!(s, "      comparison (. match, X mismatch, ? skipped):");
    s.push_str(&indent(&p.comparison.render(comparison_char), "        "));
    s
}

/// One line per case, failure tables under failing cases, then the counts line.
pub fn text(results: &[CaseResult]) -> String {
    let mut s = String::new();
    for r in results {
        s.push_str(&case_line(r));
        s.push('\n');
        if r.result == Outcome::Fail {
            s.push_str(&failure_details(r));
        }
    }
    s.push_str(&Counts::of(results).line());
    s.push('\n');
    s
}

fn probe_json(p: &ProbeResult) -> Value {
    json!({
        "port": p.port,
        "protocol": p.protocol,
        "result": p.result,
        "cells": p.cells,
        "mismatches": p.mismatches,
        "skipped": p.skipped,
        "skipReasons": p.skip_reasons,
        "pods": p.expected.pods.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "expected": p.expected.rows(expected_char),
        "observed": p.observed.rows(observed_char),
        "comparison": p.comparison.rows(comparison_char),
    })
}

fn step_json(s: &StepResult) -> Value {
    json!({
        "step": s.step,
        "description": s.description,
        "result": s.result,
        "error": s.error,
        "probes": s.probes.iter().map(probe_json).collect::<Vec<_>>(),
    })
}

pub fn case_json(r: &CaseResult) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "result": r.result,
        "reason": r.reason,
        "seconds": r.seconds,
        "steps": r.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

pub fn json(results: &[CaseResult], backend: &str) -> Value {
    let c = Counts::of(results);
    json!({
        "backend": backend,
        "cases": results.iter().map(case_json).collect::<Vec<_>>(),
        "passed": c.passed,
        "failed": c.failed,
        "skipped": c.skipped,
    })
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters; tabs and newlines are fine.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// One testsuite, one testcase per case, with `failure` or `skipped` elements.
pub fn junit(results: &[CaseResult], backend: &str) -> String {
    let c = Counts::of(results);
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"sluice conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" errors=\"0\" time=\"{total:.3}\">",
        results.len(),
        c.failed,
        c.skipped
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"sluice conformance ({})\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" errors=\"0\" time=\"{total:.3}\">",
        xml_escape(backend),
        results.len(),
        c.failed,
        c.skipped
    );
    for r in results {
        let class = r.id.split('-').next().unwrap_or("case");
        let _ = write!(
            s,
            "    <testcase classname=\"sluice.conformance.{}\" name=\"{}: {}\" time=\"{:.3}\"",
            xml_escape(class),
            xml_escape(&r.id),
            xml_escape(&r.name),
            r.seconds
        );
        match r.result {
            Outcome::Pass if r.reason.is_empty() => s.push_str("/>\n"),
            Outcome::Pass => {
                let _ = write!(
                    s,
                    ">\n      <system-out>{}</system-out>\n    </testcase>\n",
                    xml_escape(&r.reason)
                );
            }
            Outcome::Skip => {
                let _ = write!(
                    s,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                    xml_escape(&r.reason)
                );
            }
            Outcome::Fail => {
                let _ = write!(
                    s,
                    ">\n      <failure message=\"{}\" type=\"mismatch\">{}</failure>\n    </testcase>\n",
                    xml_escape(&r.reason),
                    xml_escape(&failure_details(r))
                );
            }
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}
