//! Applying a ruleset: map updates ordered around attachment changes, and the `Dataplane` impl.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context as _, Result};

use super::entries::{self, Entries, Op};
use super::{translate, EbpfDataplane};
use crate::compile::NodeRuleset;
use crate::dataplane::{ApplyReport, Dataplane, Status};

impl EbpfDataplane {
    pub(super) fn run(&mut self, ops: &[Op]) -> Result<()> {
        let l = self.loaded()?;
        for op in ops {
            match op {
                Op::Update(m, k, v) => l.maps[m]
                    .update(k, v)
                    .with_context(|| format!("update {}", m.name()))?,
                Op::Delete(m, k) => l.maps[m]
                    .delete(k)
                    .with_context(|| format!("delete from {}", m.name()))?,
            }
        }
        Ok(())
    }

    /// What the maps hold now.
    pub(super) fn read_back(&mut self) -> Result<Entries> {
        let l = self.loaded()?;
        let mut e = Entries::new();
        for (m, raw) in &l.maps {
            let dump = raw.dump().with_context(|| format!("read {}", m.name()))?;
            e.insert(*m, dump.into_iter().collect());
        }
        Ok(e)
    }

    pub(super) fn apply(&mut self, rs: &NodeRuleset, full: bool) -> Result<ApplyReport> {
        let t = Instant::now();
        self.loaded()?;
        let tr = translate::translate(rs);
        let ifindex = self.ifindexes(tr.pods.keys().cloned().collect())?;
        if full || self.unsure {
            self.installed = self.read_back()?;
        }
        let ids = entries::assign_ids(&tr, &self.ids, &self.installed);
        let new = entries::entries(&tr, &ids, &ifindex, &self.nat);
        let plan = entries::plan(&self.installed, &new);
        let uplinks = self.uplink_interfaces(&ifindex)?;
        self.unsure = true;
        self.run(&plan.before_attach)?;
        let changed = self.sync_attachments(&ifindex)? + self.sync_uplinks(&uplinks)?;
        self.run(&plan.after_detach)?;
        self.sweep_pins();
        self.unsure = false;
        self.installed = new;
        self.ids = ids;
        let mut warnings = tr.warnings;
        for (iface, p) in &tr.pods {
            if !ifindex.contains_key(iface) {
                warnings.push(format!(
                    "{}: interface {iface} not found, not enforced until it exists and the ruleset is applied again",
                    p.pod
                ));
            }
        }
        self.warnings = warnings;
        Ok(ApplyReport {
            full,
            commands: plan.len() + changed,
            stats: None,
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn apply_full(&mut self, rs: &NodeRuleset) -> Result<ApplyReport> {
        self.apply(rs, true)
    }

    /// The maps are diffed against what we wrote, whatever `old` says.
    fn apply_delta(&mut self, _old: &NodeRuleset, new: &NodeRuleset) -> Result<ApplyReport> {
        self.apply(new, false)
    }

    fn status(&self, wanted: &NodeRuleset) -> Result<Status> {
        self.status_of(wanted)
    }

    fn remove(&mut self) -> Result<()> {
        if self.loaded.is_some() {
            self.sync_uplinks(&BTreeMap::new())?;
        }
        let ifaces: Vec<String> = self.attached.keys().cloned().collect();
        for iface in ifaces {
            let a = self.attached.remove(&iface).expect("listed");
            self.detach(&iface, a);
        }
        // Dropping the object closes the programs and maps; nothing is pinned, so the kernel
        // frees them with their last reference (the links just detached).
        if let Some(l) = self.loaded.take() {
            if self.netns_gone() {
                drop(l);
            } else {
                // clsact links detach over netlink when dropped: do it in their namespace.
                let netns = self.netns.clone();
                Self::in_ns(&netns, move || drop(l))?;
            }
        }
        self.installed.clear();
        self.ids.clear();
        self.unsure = false;
        if let Some(dir) = &self.pin {
            Self::remove_pinned(dir)?;
            std::fs::create_dir_all(dir)?;
        }
        Ok(())
    }
}
