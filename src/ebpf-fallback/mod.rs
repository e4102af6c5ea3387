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
mod pin_key;
mod sys;
mod tcx_query;
pub mod translate;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;
use serde::Serialize;

use self::entries::{Entries, Op};
use self::layout::MapId;
use self::sys::RawMap;
use crate::compile::NodeRuleset;
use crate::dataplane::{ApplyReport, Dataplane, Status, Summary};

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
    /// tcx from kernel 6.6 on, clsact before; `SLUICE_EBPF_ATTACH=clsact|tcx` forces one
    /// (a kernel whose tcx misbehaves, or testing the clsact path on a new kernel).
    pub fn for_running_kernel() -> AttachMode {
        match std::env::var("SLUICE_EBPF_ATTACH").as_deref() {
            Ok("clsact") => return AttachMode::Clsact,
            Ok("tcx") => return AttachMode::Tcx,
            _ => {}
        }
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
    pod_egress: LinkHandle,
    pod_ingress: LinkHandle,
}

/// Our post-NAT link on one of the node's other interfaces.
struct Uplink {
    ifindex: u32,
    link: LinkHandle,
}

/// One attachment of ours: owned by the loaded object (detached when it goes), or pinned in
/// bpffs (it stays attached after our process ends, and the next agent adopts it).
enum LinkHandle {
    Owned(SchedClassifierLinkId),
    Pinned(PinnedLink),
}

/// Maps kept in the pin directory, so that a restarted agent finds the policy, the flow table
/// (established connections go on) and the counters where it left them.
const PINNED_MAPS: [&str; 11] = [
    "sluice_pods",
    "sluice_ctxs",
    "sluice_peers4",
    "sluice_peers6",
    "sluice_ports",
    "sluice_named",
    "sluice_nat",
    "sluice_flows",
    "sluice_frags",
    "sluice_pending",
    "sluice_stats",
];

/// Where a node's pinned programs and maps live: one directory per network namespace, a named
/// one by its name, the current one by its identity (see `pin_key`).
pub fn pin_dir(netns: Option<&str>) -> PathBuf {
    let base = Path::new("/sys/fs/bpf/sluice");
    match netns {
        Some(name) => base.join(name),
        None => base.join(pin_key::current_netns_key()),
    }
}

/// bpffs refuses names with a dot (`flannel.1`): `%` escapes, so names stay distinct.
fn link_pin(dir: &Path, iface: &str, what: &str) -> PathBuf {
    let iface = iface.replace('%', "%25").replace('.', "%2e");
    dir.join(format!("link_{iface}_{what}"))
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
    /// Pin links and maps here (see `persist_in`); None: everything goes with this object.
    pin: Option<PathBuf>,
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
            pin: None,
            warnings: Vec::new(),
        })
    }

    /// Keeps the programs attached and the maps alive after this object (and the process) is
    /// gone, pinned under `dir` in bpffs (mounted when it is not): an agent that stops leaves
    /// the pods enforced, and the next one adopts the maps (policy and flow table) and replaces
    /// the links without a gap (its links are attached before the old ones are unpinned).
    /// Needs tcx links (kernel >= 6.6); `remove` unpins everything. Call before the first apply.
    pub fn persist_in(&mut self, dir: &Path) -> Result<()> {
        if self.loaded.is_some() {
            bail!("persist_in is called before the first apply");
        }
        if self.mode != AttachMode::Tcx {
            bail!(
                "rules cannot outlive the agent with clsact filters (kernel < 6.6 has no tcx links): \
                 the eBPF programs detach when the agent stops"
            );
        }
        mount_bpffs()?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the pin directory {}", dir.display()))?;
        self.pin = Some(dir.to_path_buf());
        Ok(())
    }

    /// Detaches and unpins what an agent left pinned in `dir` (`sluice agent --cleanup`).
    /// Returns how many links were detached.
    pub fn remove_pinned(dir: &Path) -> Result<usize> {
        let mut links = 0;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("link_") {
                unpin_link(&path);
                links += 1;
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
        Ok(links)
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
        load(None).map(|_| ())
    }

    fn loaded(&mut self) -> Result<&mut Loaded> {
        if self.loaded.is_none() {
            let loaded = match &self.pin {
                None => load(None)?,
                Some(dir) => match load(Some(dir)) {
                    Ok(l) => l,
                    Err(e) => {
                        // Maps pinned by another version (other sizes): start from fresh maps.
                        // The old links keep their maps and enforce until ours replace them.
                        eprintln!(
                            "sluice: ebpf: the pinned maps in {} cannot be reused ({e:#}); starting with fresh maps",
                            dir.display()
                        );
                        for m in PINNED_MAPS {
                            let _ = std::fs::remove_file(dir.join(m));
                        }
                        load(Some(dir))?
                    }
                },
            };
            self.loaded = Some(loaded);
        }
        Ok(self.loaded.as_mut().expect("just loaded"))
    }

    /// Pinned links of a previous agent on interfaces we no longer hold: unpinned, so they go.
    fn sweep_pins(&self) {
        let Some(dir) = &self.pin else { return };
        let mut ours = std::collections::BTreeSet::new();
        for i in self.attached.keys() {
            ours.insert(link_pin(dir, i, "egress"));
            ours.insert(link_pin(dir, i, "ingress"));
        }
        for i in self.uplinks.keys() {
            ours.insert(link_pin(dir, i, "postnat"));
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with("link_") && !ours.contains(&path) {
                unpin_link(&path);
            }
        }
    }

    /// Runs `f` inside our network namespace (on a short-lived thread when it is not ours).
    fn in_ns<R: Send>(netns: &Option<String>, f: impl FnOnce() -> R + Send) -> Result<R> {
        match netns {
            Some(n) => crate::netns::exec_in(n, f),
            None => Ok(f()),
        }
    }

    /// Whether our namespace is gone (with its interfaces, and so with our attachments).
    fn netns_gone(&self) -> bool {
        self.netns
            .as_deref()
            .is_some_and(|n| !crate::netns::exists(n))
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

    /// Attaches to interfaces that are new (or came back with a new index), detaches from
    /// those that are gone. Returns how many interfaces changed.
    fn sync_attachments(&mut self, want: &BTreeMap<String, u32>) -> Result<usize> {
        let (stale, new) = changed_interfaces(&self.attached, |a| a.ifindex, want);
        let n = stale.len() + new.len();
        for iface in stale {
            let a = self.attached.remove(&iface).expect("listed");
            self.detach(&iface, a);
        }
        let mode = self.mode;
        let netns = self.netns.clone();
        let pin = self.pin.clone();
        let l = self.loaded()?;
        // What was attached is recorded even when a later interface fails, so the next
        // apply neither attaches it twice (tcx says EEXIST) nor forgets to detach it.
        let (attached, failed) = Self::in_ns(&netns, || {
            let mut out = Vec::new();
            for (iface, ifindex) in new {
                let (pod_egress, pod_ingress) =
                    match attach_kept(&mut l.ebpf, &iface, mode, pin.as_deref()) {
                        Ok(links) => links,
                        Err(e) => return (out, Some(e)),
                    };
                out.push((
                    iface,
                    Attached {
                        ifindex,
                        pod_egress,
                        pod_ingress,
                    },
                ));
            }
            (out, None)
        })?;
        self.attached.extend(attached);
        if let Some(e) = failed {
            return Err(e);
        }
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
        let (stale, new) = changed_interfaces(&self.uplinks, |u| u.ifindex, want);
        let n = stale.len() + new.len();
        let gone = self.netns_gone();
        let mode = self.mode;
        let netns = self.netns.clone();
        let pin = self.pin.clone();
        let stale: Vec<Uplink> = stale
            .iter()
            .filter_map(|i| self.uplinks.remove(i))
            .collect();
        let l = self.loaded()?;
        let (attached, failed) = Self::in_ns(&netns, || {
            for u in stale {
                release(&mut l.ebpf, PROG_POST_NAT, u.link, gone);
            }
            let mut out = Vec::new();
            for (iface, ifindex) in new {
                let pin_path = pin.as_ref().map(|d| link_pin(d, &iface, "postnat"));
                match attach_post_nat(&mut l.ebpf, &iface, mode, pin_path) {
                    Ok(link) => out.push((iface, Uplink { ifindex, link })),
                    Err(e) => return (out, Some(e)),
                }
            }
            (out, None)
        })?;
        self.uplinks.extend(attached);
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(n)
    }

    /// Interfaces with the post-NAT program attached (for tests and status).
    pub fn uplink_interfaces_attached(&self) -> Vec<String> {
        self.uplinks.keys().cloned().collect()
    }

    /// Detaches our programs from one interface; an interface already gone took them along.
    fn detach(&mut self, iface: &str, a: Attached) {
        let gone = self.netns_gone();
        let netns = self.netns.clone();
        let Some(l) = self.loaded.as_mut() else {
            return;
        };
        if gone {
            release(&mut l.ebpf, PROG_POD_EGRESS, a.pod_egress, true);
            release(&mut l.ebpf, PROG_POD_INGRESS, a.pod_ingress, true);
            return;
        }
        let r = Self::in_ns(&netns, || {
            release(&mut l.ebpf, PROG_POD_EGRESS, a.pod_egress, false);
            release(&mut l.ebpf, PROG_POD_INGRESS, a.pod_ingress, false);
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

/// Against the interfaces we hold (`have`), those of `want` that are gone or came back with
/// another index (stale: to detach) and those that are new or came back (to attach).
fn changed_interfaces<T>(
    have: &BTreeMap<String, T>,
    index: impl Fn(&T) -> u32,
    want: &BTreeMap<String, u32>,
) -> (Vec<String>, Vec<(String, u32)>) {
    let stale = have
        .iter()
        .filter(|(i, h)| want.get(*i) != Some(&index(h)))
        .map(|(i, _)| i.clone())
        .collect();
    let new = want
        .iter()
        .filter(|(i, x)| have.get(*i).map(&index) != Some(**x))
        .map(|(i, x)| (i.clone(), *x))
        .collect();
    (stale, new)
}

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

/// Loads the object, verifies the programs, and opens the maps we write; with `pin`, the maps
/// pinned there are reused (and created and pinned there when missing).
fn load(pin: Option<&Path>) -> Result<Loaded> {
    let btf = aya::Btf::from_sys_fs().ok();
    let mut loader = EbpfLoader::new();
    loader.btf(btf.as_ref());
    if let Some(dir) = pin {
        for m in PINNED_MAPS {
            loader.map_pin_path(m, dir.join(m));
        }
    }
    let mut ebpf = loader.load(object()?).context("loading the eBPF object")?;
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

/// Both pod programs on `iface`, kept (pinned under `pin`); nothing stays attached on failure.
fn attach_kept(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: AttachMode,
    pin: Option<&Path>,
) -> Result<(LinkHandle, LinkHandle)> {
    let (eg, ing) = attach(ebpf, iface, mode)?;
    let pin_of = |what| pin.map(|d| link_pin(d, iface, what));
    let egress = match keep(ebpf, PROG_POD_EGRESS, eg, pin_of("egress")) {
        Ok(h) => h,
        Err(e) => {
            if let Ok(p) = program(ebpf, PROG_POD_INGRESS) {
                let _ = p.detach(ing);
            }
            return Err(e);
        }
    };
    match keep(ebpf, PROG_POD_INGRESS, ing, pin_of("ingress")) {
        Ok(ingress) => Ok((egress, ingress)),
        Err(e) => {
            release(ebpf, PROG_POD_EGRESS, egress, false);
            Err(e)
        }
    }
}

/// The post-NAT program on `iface`'s tc egress, kept (pinned at `pin`).
fn attach_post_nat(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: AttachMode,
    pin: Option<PathBuf>,
) -> Result<LinkHandle> {
    if mode == AttachMode::Clsact {
        add_clsact(iface)?;
    }
    let id = program(ebpf, PROG_POST_NAT)?
        .attach_with_options(iface, TcAttachType::Egress, attach_options(mode))
        .with_context(|| format!("attach {PROG_POST_NAT} to {iface} egress ({})", mode.name()))?;
    keep(ebpf, PROG_POST_NAT, id, pin)
}

/// Keeps a fresh link owned, or takes it from the object and pins it at `pin` (replacing, and
/// so detaching, a previous agent's link pinned there: ours is already attached).
fn keep(
    ebpf: &mut Ebpf,
    prog: &str,
    id: SchedClassifierLinkId,
    pin: Option<PathBuf>,
) -> Result<LinkHandle> {
    let Some(path) = pin else {
        return Ok(LinkHandle::Owned(id));
    };
    let link = program(ebpf, prog)?.take_link(id)?;
    let fd: FdLink = link.try_into().context("only tcx links can be pinned")?;
    if path.exists() {
        unpin_link(&path);
    }
    let pinned = fd
        .pin(&path)
        .with_context(|| format!("pinning a link at {}", path.display()))?;
    Ok(LinkHandle::Pinned(pinned))
}

/// Detaches one of our links (`gone`: its interface went with its namespace, nothing to do in
/// the kernel but unpinning).
fn release(ebpf: &mut Ebpf, prog: &str, h: LinkHandle, gone: bool) {
    match h {
        LinkHandle::Owned(id) => {
            if !gone {
                if let Ok(p) = program(ebpf, prog) {
                    let _ = p.detach(id);
                }
            }
        }
        // Unpinned and closed, the link's last reference goes and the kernel detaches it.
        LinkHandle::Pinned(p) => drop(p.unpin()),
    }
}

/// Detaches a link pinned at `path` (by a previous agent, or by us).
fn unpin_link(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(p) => drop(p.unpin()),
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// bpffs at /sys/fs/bpf, mounted when it is not (a DaemonSet mounts the host's).
fn mount_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let target = CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(target.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        bail!(
            "/sys/fs/bpf is not a bpf filesystem and mounting one failed ({}): mount it (the DaemonSet mounts the host's)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
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

impl Drop for EbpfDataplane {
    /// Without a pin directory everything goes with us; with one, the pinned links keep
    /// enforcing for the next agent.
    fn drop(&mut self) {
        if self.pin.is_some() {
            return;
        }
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
