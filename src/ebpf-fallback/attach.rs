//! Attaching the programs to interfaces (tcx links on kernels >= 6.6, clsact before) and detaching them.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, TcAttachType};
use aya::Ebpf;

use super::load::program;
use super::pin::{keep, link_pin, LinkHandle};
use super::{AttachMode, EbpfDataplane, PROG_POD_EGRESS, PROG_POD_INGRESS, PROG_POST_NAT};

/// Our two links on one interface.
pub(super) struct Attached {
    pub(super) ifindex: u32,
    pub(super) pod_egress: LinkHandle,
    pub(super) pod_ingress: LinkHandle,
}

/// Our post-NAT link on one of the node's other interfaces.
pub(super) struct Uplink {
    pub(super) ifindex: u32,
    pub(super) link: LinkHandle,
}

impl EbpfDataplane {
    /// Attaches to interfaces that are new (or came back with a new index), detaches from
    /// those that are gone. Returns how many interfaces changed.
    pub(super) fn sync_attachments(&mut self, want: &BTreeMap<String, u32>) -> Result<usize> {
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
    pub(super) fn uplink_interfaces(
        &self,
        pods: &BTreeMap<String, u32>,
    ) -> Result<BTreeMap<String, u32>> {
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
    pub(super) fn sync_uplinks(&mut self, want: &BTreeMap<String, u32>) -> Result<usize> {
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

    /// Detaches our programs from one interface; an interface already gone took them along.
    pub(super) fn detach(&mut self, iface: &str, a: Attached) {
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
}

/// Against the interfaces we hold (`have`), those of `want` that are gone or came back with
/// another index (stale: to detach) and those that are new or came back (to attach).
pub(super) fn changed_interfaces<T>(
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
pub(super) fn interfaces() -> Vec<(String, u32)> {
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

pub(super) fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Both pod programs on `iface`, kept (pinned under `pin`); nothing stays attached on failure.
pub(super) fn attach_kept(
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
pub(super) fn attach_post_nat(
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

/// Detaches one of our links (`gone`: its interface went with its namespace, nothing to do in
/// the kernel but unpinning).
pub(super) fn release(ebpf: &mut Ebpf, prog: &str, h: LinkHandle, gone: bool) {
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

pub(super) fn attach_options(mode: AttachMode) -> TcAttachOptions {
    match mode {
        AttachMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        AttachMode::Clsact => TcAttachOptions::Netlink(tc::NlOptions::default()),
    }
}

/// The clsact qdisc on `iface` (kept when it is already there).
pub(super) fn add_clsact(iface: &str) -> Result<()> {
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
pub(super) fn attach(
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
