//! The name of the pin directory of the agent's own network namespace.
//!
//! Two agents whose nodes share one bpffs (nodes that are network namespaces or containers on
//! one kernel: this project's cluster, kind) must not adopt each other's pinned links, so the
//! directory names the network namespace itself: `host-<inode>`. The inode is fixed for the
//! namespace's lifetime, so a restarted agent finds its pins, and `sluice agent --cleanup` run
//! in the same namespace finds the same directory.

use std::os::unix::fs::MetadataExt;

/// `host-<inode of this thread's network namespace>`; `host` if /proc cannot tell.
pub fn current_netns_key() -> String {
    match std::fs::metadata("/proc/thread-self/ns/net") {
        Ok(m) => format!("host-{}", m.ino()),
        Err(_) => "host".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_stable_within_a_namespace() {
        let key = current_netns_key();
        assert!(key.starts_with("host-"), "{key}");
        assert_eq!(key, current_netns_key());
        assert_eq!(
            crate::ebpf::pin_dir(None),
            std::path::Path::new("/sys/fs/bpf/sluice").join(&key)
        );
    }

    #[test]
    fn a_named_namespace_keeps_its_name() {
        assert_eq!(
            crate::ebpf::pin_dir(Some("lab-n1")),
            std::path::Path::new("/sys/fs/bpf/sluice/lab-n1")
        );
    }

    /// Two network namespaces (here: this thread's and a fresh one) get two directories.
    #[test]
    fn two_namespaces_get_two_directories() {
        let here = crate::ebpf::pin_dir(None);
        let there = std::thread::spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(crate::ebpf::pin_dir(None))
        })
        .join()
        .expect("thread")
        .expect("unshare(CLONE_NEWNET) needs root (the tests run as root)");
        assert_ne!(here, there);
    }
}
