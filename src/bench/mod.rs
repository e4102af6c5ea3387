//! `sluice bench`: benchmarks that write machine-readable results.
//!
//! Each section measures one thing on seeded synthetic clusters ([`synth`]) and reports
//! wall-clock figures; ratios are computed between runs made in the same process.

mod dataplane;
mod matrix;
pub mod memory;
mod netperf;
pub mod review;
pub mod synth;

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
    Dataplane,
    Netperf,
    Memory,
    /// diff of two 10k-policy sets; matrix at 150k pods x 10k policies (time, peak RSS).
    Review,
}

pub fn run(sections: &[Section], quick: bool) -> anyhow::Result<Vec<Measurement>> {
    let mut out = Vec::new();
    for s in sections {
        match s {
            Section::Matrix => out.extend(matrix::run(quick)),
            Section::Dataplane => out.extend(dataplane::run(quick)?),
            Section::Netperf => out.extend(netperf::run(quick)?),
            Section::Memory => out.extend(memory::run(quick)?),
            Section::Review => out.extend(review::run(quick)?),
        }
    }
    Ok(out)
}

/// The `q` quantile (0..=1) of a sample, nearest rank.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

/// Median of a sample, in the sample's unit.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}
