//! Helpers shared by kernel tests: throwaway network namespaces that are removed even when
//! a test fails, and cluster snapshots from fixture files.
#![allow(dead_code)]

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
