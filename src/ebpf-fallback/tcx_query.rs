//! Which programs an interface's tcx hooks run, by id, with CAP_NET_ADMIN alone.
//!
//! aya's `SchedClassifier::query_tcx` also opens every attached program by id
//! (BPF_PROG_GET_FD_BY_ID), which needs CAP_SYS_ADMIN. The DaemonSet grants the agent
//! NET_ADMIN, BPF and PERFMON only, so on a real cluster that query failed and every status
//! check reported "0 of 2 programs attached" (and the agent re-applied in a loop). Comparing
//! ids needs only BPF_PROG_QUERY.

use std::io;

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// The `query` member of `union bpf_attr` (kernel >= 6.6 layout; older kernels read a prefix).
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The ids of the programs on the tcx ingress (or egress) hook of interface `ifindex`.
pub fn tcx_program_ids(ifindex: u32, ingress: bool) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 16];
    loop {
        let mut a = QueryAttr {
            target_ifindex: ifindex,
            attach_type: if ingress {
                BPF_TCX_INGRESS
            } else {
                BPF_TCX_EGRESS
            },
            prog_ids: ids.as_mut_ptr() as u64,
            count: ids.len() as u32,
            ..Default::default()
        };
        // SAFETY: `a` is a valid bpf_attr for BPF_PROG_QUERY; prog_ids points at `ids`, which
        // holds `count` u32s and outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut a as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>(),
            )
        };
        if rc == 0 {
            ids.truncate(a.count as usize);
            return Ok(ids);
        }
        let e = io::Error::last_os_error();
        // ENOSPC: more programs than room; the kernel says how many.
        if e.raw_os_error() == Some(libc::ENOSPC) && a.count as usize > ids.len() {
            ids.resize(a.count as usize, 0);
            continue;
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh network namespace's loopback: the query works and nothing is attached.
    #[test]
    fn an_empty_hook_has_no_programs() {
        let r = std::thread::spawn(|| {
            // SAFETY: unshare affects only this short-lived thread.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "needs root"
            );
            (tcx_program_ids(1, true), tcx_program_ids(1, false))
        })
        .join()
        .expect("thread");
        assert_eq!(r.0.expect("ingress query"), Vec::<u32>::new());
        assert_eq!(r.1.expect("egress query"), Vec::<u32>::new());
    }
}
