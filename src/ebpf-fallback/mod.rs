//! The eBPF fallback dataplane: the same [`NodeRuleset`] the nftables dataplane renders, held
//! in BPF maps and enforced by one fixed tc classifier (classifier.bpf.c, compiled by clang
//! in build.rs, loaded with aya) on every local pod's host-side veth.
//!
//! - `translate`: ruleset -> per-pod contexts (rule bits over peers and ports). Pure.
//! - `entries`: contexts -> map entries, and the ordered, never-over-allowing updates. Pure.
//! - `layout`: the C structs as bytes. `sys`: map syscalls on bytes.
//! - this file: loading, attaching (tcx on kernels >= 6.6, clsact before), the `Dataplane`.
//!
//! See docs/ebpf.md.

pub mod entries;
pub mod layout;
mod sys;
pub mod translate;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use serde::Serialize;

use self::entries::{Entries, Op};
use self::layout::MapId;
use self::sys::RawMap;
use crate::compile::NodeRuleset;
use crate::dataplane::{ApplyReport, Dataplane, Status};
use crate::nft::installed::Summary;

#[cfg(sluice_ebpf_object)]
const OBJECT: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/classifier.bpf.o"
)));
#[cfg(not(sluice_ebpf_object))]
const OBJECT: Option<&[u8]> = None;

/// Program names in the object (tc ingress of the veth = the pod's egress, and back).
const PROG_POD_EGRESS: &str = "sluice_pod_egress";
const PROG_POD_INGRESS: &str = "sluice_pod_ingress";
/// tc egress of the node's other interfaces: the deferred egress check of Service traffic.
const PROG_POST_NAT: &str = "sluice_post_nat";

/// Whether this binary carries the classifier (clang was there when it was built).
pub fn built() -> bool {
    OBJECT.is_some()
}

/// The compiled classifier, or why there is none and what to do about it.
pub fn object() -> Result<&'static [u8]> {
    OBJECT.ok_or_else(|| {
        anyhow!(
            "this sluice was built without the eBPF dataplane ({}): install clang and \
             libbpf-dev (scripts/install-deps does) and rebuild",
            option_env!("SLUICE_EBPF_MISSING").unwrap_or("no classifier object")
        )
    })
}

/// How programs are attached: tcx links (kernel >= 6.6) or the clsact qdisc before that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Tcx,
    Clsact,
}

impl AttachMode {
    pub fn for_running_kernel() -> AttachMode {
        match aya::util::KernelVersion::current() {
            Ok(v) if v >= aya::util::KernelVersion::new(6, 6, 0) => AttachMode::Tcx,
            _ => AttachMode::Clsact,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
        }
    }
}

struct Loaded {
    ebpf: Ebpf,
    maps: BTreeMap<MapId, RawMap>,
}

/// Our two links on one interface.
struct Attached {
    ifindex: u32,
    pod_egress: SchedClassifierLinkId,
    pod_ingress: SchedClassifierLinkId,
}

/// Our post-NAT link on one of the node's other interfaces.
struct Uplink {
    ifindex: u32,
    link: SchedClassifierLinkId,
}

/// The eBPF dataplane of one node: a network namespace (None: the current one).
pub struct EbpfDataplane {
    netns: Option<String>,
    mode: AttachMode,
    /// Service ranges: a pod's egress to them is judged after the node's NAT.
    nat: Vec<IpNet>,
    uplinks: BTreeMap<String, Uplink>,
    loaded: Option<Loaded>,
    /// Context key -> id, as installed.
    ids: BTreeMap<String, u32>,
    /// What the maps hold, as far as we wrote them.
    installed: Entries,
    /// A failed apply leaves `installed` unsure: the next apply reads the maps back.
    unsure: bool,
    attached: BTreeMap<String, Attached>,
    /// Why some pods fail closed or are not enforced, from the last apply.
    pub warnings: Vec<String>,
}

impl EbpfDataplane {
    /// Checks that the classifier is built in; loading happens at the first apply.
    pub fn new(netns: Option<&str>) -> Result<EbpfDataplane> {
        object()?;
        Ok(EbpfDataplane {
            netns: netns.map(str::to_string),
            mode: AttachMode::for_running_kernel(),
            nat: Vec::new(),
            uplinks: BTreeMap::new(),
            loaded: None,
            ids: BTreeMap::new(),
            installed: Entries::new(),
            unsure: false,
            attached: BTreeMap::new(),
            warnings: Vec::new(),
        })
    }

    pub fn in_netns(netns: &str) -> Result<EbpfDataplane> {
        Self::new(Some(netns))
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.mode
    }

    /// The Service (ClusterIP) ranges of the cluster, from the next apply on. Packets a pod
    /// sends to them are still addressed to the ClusterIP when the veth sees them; their egress
    /// check is deferred to the first tc egress after the node's NAT, where the destination is
    /// the backend the policy is about (nftables judges in the forward hook, after NAT, too).
    /// Without ranges, such packets are judged against the ClusterIP itself.
    pub fn set_service_ranges(&mut self, nets: &[IpNet]) {
        self.nat = nets.iter().map(IpNet::trunc).collect();
        self.nat.sort();
        self.nat.dedup();
    }

    /// Loads the classifier and its maps (verifier included): whether eBPF works here.
    pub fn probe() -> Result<()> {
        load().map(|_| ())
    }

    fn loaded(&mut self) -> Result<&mut Loaded> {
        if self.loaded.is_none() {
            self.loaded = Some(load()?);
        }
        Ok(self.loaded.as_mut().expect("just loaded"))
    }

    /// Runs `f` inside our network namespace (on a short-lived thread when it is not ours).
    fn in_ns<R: Send>(netns: &Option<String>, f: impl FnOnce() -> R + Send) -> Result<R> {
        match netns {
            Some(n) => crate::lab::netns::exec_in(n, f),
            None => Ok(f()),
        }
    }

    /// Whether our namespace is gone (with its interfaces, and so with our attachments).
    fn netns_gone(&self) -> bool {
        self.netns
            .as_deref()
            .is_some_and(|n| !crate::lab::netns::exists(n))
    }

    fn ifindexes(&self, ifaces: Vec<String>) -> Result<BTreeMap<String, u32>> {
        Self::in_ns(&self.netns, move || {
            ifaces
                .into_iter()
                .filter_map(|i| ifindex(&i).map(|x| (i, x)))
                .collect()
        })
    }

    fn run(&mut self, ops: &[Op]) -> Result<()> {
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
    fn read_back(&mut self) -> Result<Entries> {
        let l = self.loaded()?;
        let mut e = Entries::new();
        for (m, raw) in &l.maps {
            let dump = raw.dump().with_context(|| format!("read {}", m.name()))?;
            e.insert(*m, dump.into_iter().collect());
        }
        Ok(e)
    }

    fn apply(&mut self, rs: &NodeRuleset, full: bool) -> Result<ApplyReport> {
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

    /// Attaches to interfaces that are new (or came back with a new index), detaches from
    /// those that are gone. Returns how many interfaces changed.
    fn sync_attachments(&mut self, want: &BTreeMap<String, u32>) -> Result<usize> {
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(i, a)| want.get(*i) != Some(&a.ifindex))
            .map(|(i, _)| i.clone())
            .collect();
        let new: Vec<(String, u32)> = want
            .iter()
            .filter(|(i, x)| self.attached.get(*i).map(|a| a.ifindex) != Some(**x))
            .map(|(i, x)| (i.clone(), *x))
            .collect();
        let n = stale.len() + new.len();
        for iface in stale {
            let a = self.attached.remove(&iface).expect("listed");
            self.detach(&iface, a);
        }
        let mode = self.mode;
        let netns = self.netns.clone();
        let l = self.loaded()?;
        let attached = Self::in_ns(&netns, || -> Result<Vec<(String, Attached)>> {
            let mut out = Vec::new();
            for (iface, ifindex) in new {
                let (pod_egress, pod_ingress) = attach(&mut l.ebpf, &iface, mode)?;
                out.push((
                    iface,
                    Attached {
                        ifindex,
                        pod_egress,
                        pod_ingress,
                    },
                ));
            }
            Ok(out)
        })??;
        self.attached.extend(attached);
        Ok(n)
    }

    /// The interfaces that need the post-NAT check: every interface of the namespace but the
    /// loopback and the pods' own (their ingress program does it), when there are Service
    /// ranges at all.
    fn uplink_interfaces(&self, pods: &BTreeMap<String, u32>) -> Result<BTreeMap<String, u32>> {
        if self.nat.is_empty() {
            return Ok(BTreeMap::new());
        }
        let all = Self::in_ns(&self.netns, interfaces)?;
        Ok(all
            .into_iter()
            .filter(|(name, _)| name != "lo" && !pods.contains_key(name))
            .collect())
    }

    /// Attaches the post-NAT program to new uplinks, detaches it from those gone or now pods.
    fn sync_uplinks(&mut self, want: &BTreeMap<String, u32>) -> Result<usize> {
        let stale: Vec<String> = self
            .uplinks
            .iter()
            .filter(|(i, u)| want.get(*i) != Some(&u.ifindex))
            .map(|(i, _)| i.clone())
            .collect();
        let new: Vec<(String, u32)> = want
            .iter()
            .filter(|(i, x)| self.uplinks.get(*i).map(|u| u.ifindex) != Some(**x))
            .map(|(i, x)| (i.clone(), *x))
            .collect();
        let n = stale.len() + new.len();
        let gone = self.netns_gone();
        let mode = self.mode;
        let netns = self.netns.clone();
        let stale: Vec<Uplink> = stale
            .iter()
            .filter_map(|i| self.uplinks.remove(i))
            .collect();
        let l = self.loaded()?;
        let attached = Self::in_ns(&netns, || -> Result<Vec<(String, Uplink)>> {
            if !gone {
                if let Ok(p) = program(&mut l.ebpf, PROG_POST_NAT) {
                    for u in stale {
                        let _ = p.detach(u.link);
                    }
                }
            }
            let mut out = Vec::new();
            for (iface, ifindex) in new {
                if mode == AttachMode::Clsact {
                    add_clsact(&iface)?;
                }
                let link = program(&mut l.ebpf, PROG_POST_NAT)?
                    .attach_with_options(&iface, TcAttachType::Egress, attach_options(mode))
                    .with_context(|| {
                        format!("attach {PROG_POST_NAT} to {iface} egress ({})", mode.name())
                    })?;
                out.push((iface, Uplink { ifindex, link }));
            }
            Ok(out)
        })??;
        self.uplinks.extend(attached);
        Ok(n)
    }

    /// Interfaces with the post-NAT program attached (for tests and status).
    pub fn uplink_interfaces_attached(&self) -> Vec<String> {
        self.uplinks.keys().cloned().collect()
    }

    /// Detaches our programs from one interface; an interface already gone took them along.
    fn detach(&mut self, iface: &str, a: Attached) {
        if self.netns_gone() {
            return;
        }
        let netns = self.netns.clone();
        let Some(l) = self.loaded.as_mut() else {
            return;
        };
        let r = Self::in_ns(&netns, || {
            for (name, id) in [
                (PROG_POD_EGRESS, a.pod_egress),
                (PROG_POD_INGRESS, a.pod_ingress),
            ] {
                if let Ok(p) = program(&mut l.ebpf, name) {
                    let _ = p.detach(id);
                }
            }
        });
        if let Err(e) = r {
            eprintln!("sluice: ebpf: detach from {iface}: {e:#}");
        }
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

    /// Interfaces with our programs attached (for tests and status).
    pub fn attached_interfaces(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }
}

/// The classifier's `enum stat`, in order.
const COUNTERS: [&str; 17] = [
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

/// Every interface of the current network namespace, by name.
fn interfaces() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry (or NULL), freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push((name, (*p).if_index));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))
}

fn map_data(m: &Map) -> &MapData {
    match m {
        Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::Array(d)
        | Map::PerCpuHashMap(d)
        | Map::Unsupported(d) => d,
        other => panic!("unexpected map kind {other:?}"),
    }
}

/// Loads the object, verifies both programs, and opens the maps we write.
fn load() -> Result<Loaded> {
    let mut ebpf = EbpfLoader::new()
        .btf(aya::Btf::from_sys_fs().ok().as_ref())
        .load(object()?)
        .context("loading the eBPF object")?;
    for name in [PROG_POD_EGRESS, PROG_POD_INGRESS, PROG_POST_NAT] {
        program(&mut ebpf, name)?
            .load()
            .with_context(|| format!("the verifier rejected {name}"))?;
    }
    let mut maps = BTreeMap::new();
    for m in MapId::ALL {
        let data = map_data(
            ebpf.map(m.name())
                .with_context(|| format!("map {} missing from the object", m.name()))?,
        );
        let info = data.info()?;
        if info.key_size() as usize != m.key_size() || info.value_size() as usize != m.value_size()
        {
            bail!(
                "map {}: the object has {}+{} bytes, sluice writes {}+{} (layout.rs and classifier.bpf.c disagree)",
                m.name(),
                info.key_size(),
                info.value_size(),
                m.key_size(),
                m.value_size()
            );
        }
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        maps.insert(
            m,
            RawMap {
                fd,
                key_size: m.key_size(),
                value_size: m.value_size(),
            },
        );
    }
    for (name, k, v) in [
        ("sluice_flows", layout::FLOW_KEY_SIZE, layout::FLOW_VAL_SIZE),
        ("sluice_frags", layout::FRAG_KEY_SIZE, 8),
        (
            "sluice_pending",
            layout::PENDING_KEY_SIZE,
            layout::FLOW_KEY_SIZE,
        ),
    ] {
        let info = map_data(ebpf.map(name).with_context(|| format!("map {name}"))?).info()?;
        if info.key_size() as usize != k || info.value_size() as usize != v {
            bail!("map {name}: layout.rs and classifier.bpf.c disagree");
        }
    }
    Ok(Loaded { ebpf, maps })
}

fn attach_options(mode: AttachMode) -> TcAttachOptions {
    match mode {
        AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        AttachMode::Clsact => TcAttachOptions::Netlink(tc::NlOptions::default()),
    }
}

/// The clsact qdisc on `iface` (kept when it is already there).
fn add_clsact(iface: &str) -> Result<()> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(tc::TcError::NetlinkError(e))
            if e.to_string().contains("exists") || e.to_string().contains("EEXIST") =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context(format!("clsact qdisc on {iface}"))),
    }
}

/// Attaches both programs to one interface (in the current network namespace).
fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: AttachMode,
) -> Result<(SchedClassifierLinkId, SchedClassifierLinkId)> {
    let opts = || attach_options(mode);
    if mode == AttachMode::Clsact {
        add_clsact(iface)?;
    }
    let eg = program(ebpf, PROG_POD_EGRESS)?
        .attach_with_options(iface, TcAttachType::Ingress, opts())
        .with_context(|| {
            format!(
                "attach {PROG_POD_EGRESS} to {iface} ingress ({})",
                mode.name()
            )
        })?;
    let ing = match program(ebpf, PROG_POD_INGRESS)?.attach_with_options(
        iface,
        TcAttachType::Egress,
        opts(),
    ) {
        Ok(id) => id,
        Err(e) => {
            let _ = program(ebpf, PROG_POD_EGRESS).map(|p| p.detach(eg));
            return Err(anyhow!(e).context(format!(
                "attach {PROG_POD_INGRESS} to {iface} egress ({})",
                mode.name()
            )));
        }
    };
    Ok((eg, ing))
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
                let ifaces: Vec<String> = ifindex.keys().cloned().collect();
                Self::in_ns(&self.netns, move || {
                    ifaces
                        .into_iter()
                        .map(|i| {
                            let n = [TcAttachType::Ingress, TcAttachType::Egress]
                                .iter()
                                .filter(|t| {
                                    SchedClassifier::query_tcx(&i, **t).is_ok_and(|(_, progs)| {
                                        progs.iter().any(|p| ours.contains(&p.id()))
                                    })
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
        Ok(())
    }
}

impl Drop for EbpfDataplane {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("sluice: ebpf: remove: {e:#}");
        }
    }
}

/// Maps as "sets" (entries) and interfaces as "chains" (attached programs).
fn summary(e: &Entries, attached: &BTreeMap<String, usize>) -> Summary {
    let mut s = Summary::default();
    for (m, es) in e {
        s.sets.insert(format!("ebpf/{}", m.name()), es.len());
    }
    for (i, n) in attached {
        s.chains.insert(format!("tc/{i}"), *n);
    }
    s
}

fn wanted_summary(_rs: &NodeRuleset, want: &Entries, ifindex: &BTreeMap<String, u32>) -> Summary {
    let attached = ifindex.keys().map(|i| (i.clone(), 2)).collect();
    summary(want, &attached)
}
