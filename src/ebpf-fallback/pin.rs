//! Pinning in bpffs: where pins live, keeping links and maps past the agent, and removing them.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLinkId;
use aya::Ebpf;

use super::load::program;
use super::{pin_key, AttachMode, EbpfDataplane};

/// Where a node's pinned programs and maps live: one directory per network namespace, a named
/// one by its name, the current one by its identity (see `pin_key`).
pub fn pin_dir(netns: Option<&str>) -> PathBuf {
    let base = Path::new("/sys/fs/bpf/sluice");
    match netns {
        Some(name) => base.join(name),
        None => base.join(pin_key::current_netns_key()),
    }
}

/// One attachment of ours: owned by the loaded object (detached when it goes), or pinned in
/// bpffs (it stays attached after our process ends, and the next agent adopts it).
pub(super) enum LinkHandle {
    Owned(SchedClassifierLinkId),
    Pinned(PinnedLink),
}

/// bpffs refuses names with a dot (`flannel.1`): `%` escapes, so names stay distinct.
pub(super) fn link_pin(dir: &Path, iface: &str, what: &str) -> PathBuf {
    let iface = iface.replace('%', "%25").replace('.', "%2e");
    dir.join(format!("link_{iface}_{what}"))
}

impl EbpfDataplane {
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

    /// Pinned links of a previous agent on interfaces we no longer hold: unpinned, so they go.
    pub(super) fn sweep_pins(&self) {
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
}

/// Keeps a fresh link owned, or takes it from the object and pins it at `pin` (replacing, and
/// so detaching, a previous agent's link pinned there: ours is already attached).
pub(super) fn keep(
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

/// Detaches a link pinned at `path` (by a previous agent, or by us).
pub(super) fn unpin_link(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(p) => drop(p.unpin()),
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// bpffs at /sys/fs/bpf, mounted when it is not (a DaemonSet mounts the host's).
pub(super) fn mount_bpffs() -> Result<()> {
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
