//! `sluice bench`: benchmarks that write machine-readable results.
//!
//! Each section measures one thing on seeded synthetic clusters ([`crate::synth`]) and reports
//! wall-clock figures; ratios are computed between runs made in the same process.

mod matrix;

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub section: String,
    pub name: String,
    pub params: serde_json::Value,
    pub value: f64,
    pub unit: String,
    /// Anything that explains the figure (groups formed, cells computed, ...).
    pub notes: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Matrix,
}

pub fn run(sections: &[Section], quick: bool) -> Vec<Measurement> {
    let mut out = Vec::new();
    for s in sections {
        match s {
            Section::Matrix => out.extend(matrix::run(quick)),
        }
    }
    out
}

/// Median of a sample, in the sample's unit.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}
