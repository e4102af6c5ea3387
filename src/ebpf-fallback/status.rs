//! What is installed against what is wanted (`Dataplane::status`), and the classifier counters.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use aya::programs::SchedClassifier;

use super::entries::{self, Entries};
use super::layout::MapId;
use super::{tcx_query, translate, AttachMode, EbpfDataplane, PROG_POD_EGRESS, PROG_POD_INGRESS};
use crate::compile::NodeRuleset;
use crate::dataplane::Status;
use crate::dataplane::Summary;

impl EbpfDataplane {
    /// `Dataplane::status`: the maps and attachments against what `wanted` needs.
    pub(super) fn status_of(&self, wanted: &NodeRuleset) -> Result<Status> {
        let Some(l) = &self.loaded else {
            let want = wanted_summary(wanted, &BTreeMap::new(), &BTreeMap::new());
            return Ok(Status {
                in_sync: false,
                differences: vec!["the eBPF dataplane is not loaded".into()],
                installed: Summary::default(),
                wanted: want,
            });
        };
        let mut have = Entries::new();
        for (m, raw) in &l.maps {
            have.insert(*m, raw.dump()?.into_iter().collect());
        }
        let tr = translate::translate(wanted);
        let ifindex = self.ifindexes(tr.pods.keys().cloned().collect())?;
        let ids = entries::assign_ids(&tr, &self.ids, &have);
        let want = entries::entries(&tr, &ids, &ifindex, &self.nat);
        let mut differences = Vec::new();
        for m in MapId::ALL {
            let empty = BTreeMap::new();
            let h = have.get(&m).unwrap_or(&empty);
            let w = want.get(&m).unwrap_or(&empty);
            let missing = w.keys().filter(|k| !h.contains_key(*k)).count();
            let extra = h.keys().filter(|k| !w.contains_key(*k)).count();
            let differ = w
                .iter()
                .filter(|(k, v)| h.get(*k).is_some_and(|hv| hv != *v))
                .count();
            if missing + extra + differ > 0 {
                differences.push(format!(
                    "map {}: {missing} entries missing, {extra} extra, {differ} different",
                    m.name()
                ));
            }
        }
        // Attachments, as the kernel reports them (tcx), or as we made them (clsact).
        let attached: BTreeMap<String, usize> = match self.mode {
            AttachMode::Tcx => {
                let ours: Vec<u32> = [PROG_POD_EGRESS, PROG_POD_INGRESS]
                    .iter()
                    .filter_map(|n| l.ebpf.program(n))
                    .filter_map(|p| {
                        let p: &SchedClassifier = p.try_into().ok()?;
                        p.info().ok().map(|i| i.id())
                    })
                    .collect();
                let ifaces: Vec<(String, u32)> =
                    ifindex.iter().map(|(i, x)| (i.clone(), *x)).collect();
                Self::in_ns(&self.netns, move || {
                    ifaces
                        .into_iter()
                        .map(|(i, x)| {
                            let n = [true, false]
                                .iter()
                                .filter(|ingress| {
                                    tcx_query::tcx_program_ids(x, **ingress)
                                        .is_ok_and(|ids| ids.iter().any(|id| ours.contains(id)))
                                })
                                .count();
                            (i, n)
                        })
                        .filter(|(_, n)| *n > 0)
                        .collect()
                })?
            }
            AttachMode::Clsact => self.attached.keys().map(|i| (i.clone(), 2)).collect(),
        };
        for (iface, p) in &tr.pods {
            match (ifindex.contains_key(iface), attached.get(iface)) {
                (false, _) => differences.push(format!("{}: interface {iface} not found", p.pod)),
                (true, Some(2)) => {}
                (true, n) => differences.push(format!(
                    "{}: {} of 2 programs attached to {iface}",
                    p.pod,
                    n.unwrap_or(&0)
                )),
            }
        }
        // The post-NAT check must be on every other interface, also one that appeared since.
        let uplinks = self.uplink_interfaces(&ifindex)?;
        for (iface, x) in &uplinks {
            if self.uplinks.get(iface).map(|u| u.ifindex) != Some(*x) {
                differences.push(format!(
                    "{iface}: the post-NAT check of Service traffic is not attached"
                ));
            }
        }
        let mut installed = summary(&have, &attached);
        for i in self.uplinks.keys() {
            installed.chains.insert(format!("tc-post-nat/{i}"), 1);
        }
        Ok(Status {
            in_sync: differences.is_empty(),
            differences,
            installed,
            wanted: {
                let mut w = wanted_summary(wanted, &want, &ifindex);
                for i in uplinks.keys() {
                    w.chains.insert(format!("tc-post-nat/{i}"), 1);
                }
                w
            },
        })
    }

    /// Per-reason packet counters of the classifier, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>> {
        let Some(l) = &self.loaded else {
            return Ok(BTreeMap::new());
        };
        let map = l.ebpf.map("sluice_stats").context("no stats map")?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        let mut out = BTreeMap::new();
        for (i, name) in COUNTERS.iter().enumerate() {
            let v = arr.get(&(i as u32), 0)?;
            out.insert(*name, v.iter().sum());
        }
        Ok(out)
    }
}

/// The classifier's `enum stat`, in order.
pub(super) const COUNTERS: [&str; 17] = [
    "pass_reply",
    "pass_established",
    "pass_related",
    "pass_fragment",
    "pass_open",
    "pass_node",
    "pass_self",
    "pass_policy",
    "pass_not_ip",
    "pass_not_ours",
    "drop_policy",
    "drop_fail_closed",
    "drop_guard",
    "drop_malformed",
    "defer_service",
    "pass_deferred",
    "drop_deferred",
];

/// Maps as "sets" (entries) and interfaces as "chains" (attached programs).
pub(super) fn summary(e: &Entries, attached: &BTreeMap<String, usize>) -> Summary {
    let mut s = Summary::default();
    for (m, es) in e {
        s.sets.insert(format!("ebpf/{}", m.name()), es.len());
    }
    for (i, n) in attached {
        s.chains.insert(format!("tc/{i}"), *n);
    }
    s
}

pub(super) fn wanted_summary(
    _rs: &NodeRuleset,
    want: &Entries,
    ifindex: &BTreeMap<String, u32>,
) -> Summary {
    let attached = ifindex.keys().map(|i| (i.clone(), 2)).collect();
    summary(want, &attached)
}
