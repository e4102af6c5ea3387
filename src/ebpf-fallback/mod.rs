//! The eBPF fallback dataplane: the same [`NodeRuleset`](crate::compile::NodeRuleset) the nftables dataplane renders, held
//! in BPF maps and enforced by one fixed tc classifier (classifier.bpf.c, compiled by clang
//! in build.rs, loaded with aya) on every local pod's host-side veth.
//!
//! - `translate`: ruleset -> per-pod tiers of contexts. `context`: one rulebook as clause bits
//!   over peers and ports, in clause order. Pure.
//! - `entries`: contexts -> map entries, and the ordered, never-over-allowing updates. Pure.
//! - `layout`: the C structs as bytes. `sys`: map syscalls on bytes.
//! - `load`: the object through the verifier, the maps opened. `attach`: tcx on kernels >= 6.6,
//!   clsact before. `pin`: bpffs pins that outlive the agent.
//! - `apply`: ruleset -> maps and attachments, the `Dataplane` impl. `status`: installed vs wanted.
//! - this file: the `EbpfDataplane` and its configuration.
//!
//! See docs/ebpf.md.

mod apply;
mod attach;
pub mod context;
pub mod entries;
pub mod layout;
mod load;
mod pin;
mod pin_key;
mod status;
mod sys;
mod tcx_query;
pub mod translate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use ipnet::IpNet;
use serde::Serialize;

use crate::dataplane::Dataplane;

use self::attach::{ifindex, Attached, Uplink};
use self::entries::Entries;
use self::load::{load, Loaded};

pub use self::pin::pin_dir;

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

    /// Runs `f` inside our network namespace (on a short-lived thread when it is not ours).
    fn in_ns<R: Send>(netns: &Option<String>, f: impl FnOnce() -> R + Send) -> Result<R> {
        crate::netns::exec_in_opt(netns.as_deref(), f)
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

    /// Interfaces with the post-NAT program attached (for tests and status).
    pub fn uplink_interfaces_attached(&self) -> Vec<String> {
        self.uplinks.keys().cloned().collect()
    }

    /// Interfaces with our programs attached (for tests and status).
    pub fn attached_interfaces(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
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
