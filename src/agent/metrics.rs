//! Prometheus metrics of one agent, and the text exposition served at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Where errors are counted (`sluice_errors_total{stage}`).
pub const STAGES: [&str; 6] = [
    "watch",
    "invalid_object",
    "detect",
    "apply",
    "check",
    "drift",
];

pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    /// kind = full | delta | noop.
    pub syncs: Family<Labels, Counter>,
    pub rules: Gauge,
    pub chains: Gauge,
    pub sets: Gauge,
    pub elements: Gauge,
    /// stage = watch | invalid_object | detect | apply | check | drift.
    pub errors: Family<Labels, Counter>,
    pub last_success: Gauge<f64, AtomicU64>,
    pub local_pods: Gauge,
    /// Local pods some policy isolates (in either direction).
    pub local_pods_selected: Gauge,
    /// Local pods with an IP whose interface was not found.
    pub local_pods_unattached: Gauge,
    /// resource = pods | namespaces | networkpolicies.
    pub watch_events: Family<Labels, Counter>,
    pub drift_repairs: Counter,
    pub ready: Gauge,
    /// 1 for the dataplane enforcing (dataplane = nftables | ebpf, requested = auto | ...).
    pub dataplane: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            syncs: Family::default(),
            rules: Gauge::default(),
            chains: Gauge::default(),
            sets: Gauge::default(),
            elements: Gauge::default(),
            errors: Family::default(),
            last_success: Gauge::default(),
            local_pods: Gauge::default(),
            local_pods_selected: Gauge::default(),
            local_pods_unattached: Gauge::default(),
            watch_events: Family::default(),
            drift_repairs: Counter::default(),
            ready: Gauge::default(),
            dataplane: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "sync_duration_seconds",
            "Time from the start of a sync (compile, apply, read back) to its end",
            m.sync_duration.clone(),
        );
        registry.register(
            "deltas_applied",
            "Rulesets applied to the kernel, by kind: full replacement, delta, or nothing to do",
            m.syncs.clone(),
        );
        registry.register("ruleset_rules", "Rules in sluice's tables", m.rules.clone());
        registry.register(
            "ruleset_chains",
            "Chains in sluice's tables",
            m.chains.clone(),
        );
        registry.register(
            "ruleset_sets",
            "Sets and maps in sluice's tables",
            m.sets.clone(),
        );
        registry.register(
            "ruleset_elements",
            "Set and map elements in sluice's tables",
            m.elements.clone(),
        );
        registry.register(
            "errors",
            "Errors by stage (watch, invalid_object, detect, apply, check, drift)",
            m.errors.clone(),
        );
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last sync that applied and verified the ruleset",
            m.last_success.clone(),
        );
        registry.register(
            "local_pods",
            "Pods on this node (not host-network)",
            m.local_pods.clone(),
        );
        registry.register(
            "local_pods_selected",
            "Pods on this node isolated by at least one policy",
            m.local_pods_selected.clone(),
        );
        registry.register(
            "local_pods_unattached",
            "Pods on this node with an IP whose interface was not found yet",
            m.local_pods_unattached.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events received, by resource",
            m.watch_events.clone(),
        );
        registry.register(
            "drift_repairs",
            "Times the installed table differed from the last applied one and was restored",
            m.drift_repairs.clone(),
        );
        registry.register(
            "ready",
            "1 once the first full snapshot is enforced",
            m.ready.clone(),
        );
        registry.register(
            "dataplane_info",
            "The dataplane enforcing on this node (label dataplane) and the one asked for (label requested)",
            m.dataplane.clone(),
        );
        // Every series exists from the start (at 0), so dashboards and alerts need no
        // "absent" special case.
        for stage in STAGES {
            let _ = m.errors.get_or_create(&vec![("stage", stage)]);
        }
        for kind in ["full", "delta", "noop"] {
            let _ = m.syncs.get_or_create(&vec![("kind", kind)]);
        }
        for resource in ["pods", "namespaces", "networkpolicies"] {
            let _ = m.watch_events.get_or_create(&vec![("resource", resource)]);
        }
        Metrics { registry, ..m }
    }

    pub fn error(&self, stage: &'static str) {
        self.errors.get_or_create(&vec![("stage", stage)]).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_series() {
        let m = Metrics::new();
        m.error("apply");
        m.syncs.get_or_create(&vec![("kind", "delta")]).inc();
        m.sync_duration.observe(0.01);
        let text = m.render();
        for name in [
            "sluice_sync_duration_seconds_bucket",
            "sluice_deltas_applied_total{kind=\"delta\"} 1",
            "sluice_ruleset_rules",
            "sluice_ruleset_sets",
            "sluice_ruleset_elements",
            "sluice_errors_total{stage=\"apply\"} 1",
            "sluice_errors_total{stage=\"watch\"} 0",
            "sluice_last_successful_sync_timestamp_seconds",
            "sluice_local_pods_selected",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
