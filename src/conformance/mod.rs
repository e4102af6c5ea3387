//! The conformance suite runner and the differential fuzzer.
//!
//! ```text
//!  conformance/cases/*.yaml ──> case::Case ──> runner ──> report (text / JSON / JUnit)
//!  fuzz (seeded generator) ──┘      │  world::World (desired policy::Cluster, step by step)
//!                                   └─> backend::Enforcer: sync(desired), probe(from, to, port)
//!                                         oracle::OracleEnforcer (policy::evaluate or matrix)
//!                                         the lab + nftables (plugged in at make::make_enforcer)
//! ```
//!
//! Hand-written cases carry expectations from the Kubernetes spec; generated cases take the
//! oracle's, so running them against a real dataplane is oracle-vs-kernel differential testing.

pub mod apiserver;
pub mod backend;
pub mod case;
pub mod export;
pub mod fuzz;
pub mod lab;
pub mod make;
pub mod oracle;
pub mod report;
pub mod runner;
pub mod table;
pub mod topology;
pub mod world;

pub use backend::{AttachMode, Enforcer, Observed};
pub use case::{load_cases, Case};
pub use make::{make_enforcer, BackendKind, BackendOptions};
pub use runner::{run_case, CaseResult, ExpectFrom, Outcome, RunOptions};
