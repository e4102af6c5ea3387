//! Map element syscalls on raw bytes. aya's typed maps want a Rust type per key and value;
//! the dataplane diffs every map the same way as bytes, so it talks to the kernel directly.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_ANY: u64 = 0;

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut ElemAttr) -> io::Result<()> {
    // SAFETY: attr is a valid bpf_attr prefix for the element commands; the pointers in it
    // point at buffers of the map's key and value sizes, owned by our caller.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One map, by file descriptor, with its key and value sizes.
#[derive(Debug)]
pub struct RawMap {
    pub fd: OwnedFd,
    pub key_size: usize,
    pub value_size: usize,
}

impl RawMap {
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.check(key, Some(value))?;
        let mut a = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value_or_next_key: value.as_ptr() as u64,
            flags: BPF_ANY,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut a)
    }

    /// Deleting a missing key is fine (idempotent).
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.check(key, None)?;
        let mut a = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.check(key, None)?;
        let mut value = vec![0u8; self.value_size];
        let mut a = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(()) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every (key, value). Entries changing meanwhile may be missed or repeated (we are the
    /// only writer of the maps this is used on).
    pub fn dump(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut key: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; self.key_size];
            let mut a = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: key.as_ref().map_or(0, |k| k.as_ptr() as u64),
                value_or_next_key: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
            if let Some(v) = self.lookup(&next)? {
                out.push((next.clone(), v));
            }
            key = Some(next);
        }
        Ok(out)
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        if key.len() != self.key_size || value.is_some_and(|v| v.len() != self.value_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "map element of {}+{} bytes, the map wants {}+{}",
                    key.len(),
                    value.map_or(0, |v| v.len()),
                    self.key_size,
                    self.value_size
                ),
            ));
        }
        Ok(())
    }
}
