//! Entering a network namespace: the one place that knows how a namespace is named and how
//! a thread or a child process joins it. Used by the dataplanes (nftables, eBPF), the agent's
//! interface detection and the lab (which also creates and deletes its own namespaces, in
//! `lab::netns`).
//!
//! A namespace is named as `ip netns` names it (a bind mount under /var/run/netns, which is
//! /run/netns) or given as an absolute path (e.g. /proc/<pid>/ns/net).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Path of a named namespace, or the argument itself if it is already a path.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new(NETNS_DIR).join(netns)
    }
}

pub fn exists(netns: &str) -> bool {
    netns_path(netns).exists()
}

/// Inode of the namespace behind a name: identifies one namespace instance, so a pod that was
/// removed and re-created under the same name is recognised as new.
pub fn inode(netns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(netns_path(netns)).ok().map(|m| m.ino())
}

fn open(netns: &str) -> Result<File> {
    let path = netns_path(netns);
    File::open(&path).with_context(|| {
        format!(
            "network namespace {netns} does not exist (open {})",
            path.display()
        )
    })
}

/// Run `f` on a fresh thread that has joined the network namespace `netns`.
///
/// A fresh thread is used rather than switching the caller back and forth: the namespace is a
/// per-thread property, and a thread that dies right after the closure can never leak its
/// namespace into unrelated work, even if `f` panics. Sockets created inside `f` stay bound to
/// `netns` for their whole life and may be returned and used from any thread. Child processes
/// spawned inside `f` inherit `netns` too.
pub fn exec_in<R, F>(netns: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let file = open(netns)?;
    std::thread::scope(|s| {
        let h = s.spawn(move || -> Result<R> {
            // SAFETY: setns on a valid fd; only affects this (short-lived) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {netns}: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// [`exec_in`] when a namespace is named, `f` right here when it is None (the current one).
pub fn exec_in_opt<R, F>(netns: Option<&str>, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    match netns {
        Some(ns) => exec_in(ns, f),
        None => Ok(f()),
    }
}

/// Makes `cmd`'s child join `netns` just before it execs: one process, not `ip netns exec`'s
/// two, which matters for short commands run often (an `nft` delta of a few elements).
pub fn enter_before_exec(cmd: &mut Command, netns: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let file = open(netns)?;
    // SAFETY: setns is async-signal-safe; the fd stays open in `file`, which the closure
    // owns, until the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(netns_path("x"), PathBuf::from("/var/run/netns/x"));
        assert_eq!(
            netns_path("/proc/1/ns/net"),
            PathBuf::from("/proc/1/ns/net")
        );
        assert!(!exists("sluice-no-such-netns"));
        let e = exec_in("sluice-no-such-netns", || ()).unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
        assert_eq!(exec_in_opt(None, || 7).unwrap(), 7);
    }
}
