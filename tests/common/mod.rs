//! Helpers shared by the integration tests: throwaway network namespaces that are removed even
//! when a test fails, and cluster snapshots from fixture files; `spoof` (the anti-spoofing
//! check of both dataplanes) and `agent` (the agent tests' API server cluster).
#![allow(dead_code)]

pub mod agent;
pub mod cnp;
pub mod spoof;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice::policy::objects::ClusterBuilder;
use sluice::policy::Cluster;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace named uniquely for this process and test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("sltest-{tag}-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success();
        assert!(
            ok,
            "cannot create netns {name}: tests need root and iproute2"
        );
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn cluster_from(text: &str) -> Cluster {
    let mut b = ClusterBuilder::new();
    b.add_text("test", text);
    let (c, _) = b.build();
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    c
}

pub fn fixture(path: &str) -> Cluster {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    cluster_from(&text)
}

/// Whether eBPF tests must run: `SLUICE_REQUIRE_EBPF=1` (scripts/test, so CI) turns every
/// eBPF skip into a failure.
pub fn ebpf_required() -> bool {
    std::env::var("SLUICE_REQUIRE_EBPF").is_ok_and(|v| v == "1")
}

/// An eBPF test that cannot run here: says so and returns (the caller skips), or fails when
/// eBPF is required.
pub fn ebpf_skip(why: &str) {
    assert!(
        !ebpf_required(),
        "SLUICE_REQUIRE_EBPF=1 and this eBPF test cannot run: {why}"
    );
    eprintln!("skipped: {why}");
}

/// Whether the classifier is in this build; skips (or fails, see `ebpf_required`) otherwise.
pub fn ebpf_built() -> bool {
    match sluice::ebpf::object() {
        Ok(_) => true,
        Err(e) => {
            ebpf_skip(&format!("{e:#}"));
            false
        }
    }
}
