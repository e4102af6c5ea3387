//! The lab's network namespaces (create, delete, list) and the commands that run inside
//! them. Entering a namespace is [`crate::netns`]'s (re-exported here).
//!
//! Namespaces are created with `ip netns add` (a bind mount under /run/netns), so they are
//! visible to `ip netns list`, survive our process, and can be cleaned up by name after a crash.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

pub use crate::netns::{exec_in, exists, inode, netns_path, NETNS_DIR};

/// `ip netns add` mounts /run/netns on itself the first time; two concurrent first calls can
/// stack mounts. Serialising creation inside one process (tests run in parallel threads)
/// avoids that; other processes are rare enough not to matter.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// Create a named network namespace with loopback up.
pub fn create(netns: &str) -> Result<()> {
    {
        let _g = CREATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        run("ip", &["netns", "add", netns])?;
    }
    // IPv4-only cluster: without IPv6, interfaces send no router solicitations, DAD or MLD
    // reports, so counters (e.g. flannel.1 tx) and captures show only the lab's own traffic.
    // Set before any interface exists so `default` covers all of them.
    for scope in ["all", "default"] {
        sysctl(netns, &format!("net.ipv6.conf.{scope}.disable_ipv6"), "1")?;
    }
    // A fresh namespace has lo down; servers and readiness checks use 127.0.0.1.
    ip(netns, &["link", "set", "lo", "up"])
}

/// Delete a named namespace; missing is fine (idempotent teardown).
///
/// `ip netns del` can fail transiently (EBUSY while another process's `ip netns exec` holds a
/// copy of the mount, or when /run/netns was mounted twice by racing first calls), and a
/// namespace left behind makes the next run's checks fail. So a failure is retried, and the
/// last resort detaches the bind mount and unlinks the file ourselves; only a namespace that
/// still exists after all that is an error.
pub fn delete(netns: &str) -> Result<()> {
    const ATTEMPTS: u32 = 5;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        if !exists(netns) {
            return Ok(());
        }
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
        }
        match run("ip", &["netns", "del", netns]) {
            Ok(()) if !exists(netns) => return Ok(()),
            Ok(()) => {
                last = Some(anyhow!(
                    "`ip netns del {netns}` succeeded but it still exists"
                ))
            }
            Err(e) => last = Some(e),
        }
    }
    let path = netns_path(netns);
    let _ = run("umount", &["--lazy", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    if !exists(netns) {
        return Ok(());
    }
    Err(last
        .unwrap_or_else(|| anyhow!("could not delete {netns}"))
        .context(format!(
            "delete network namespace {netns} ({ATTEMPTS} attempts)"
        )))
}

/// All named namespaces (from the bind-mount directory, so no `ip` parsing).
pub fn list() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Write a sysctl inside a namespace. /proc/sys/net resolves the namespace of the task that
/// opens the file, so a thread inside `netns` sees that namespace's values.
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    exec_in(netns, || std::fs::write(&path, value))?
        .with_context(|| format!("sysctl {key}={value} in {netns}"))
}

/// Run a command, fail with its stderr if it fails.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    output(prog, args, None).map(|_| ())
}

/// Run a command (optionally feeding stdin), return stdout.
pub fn output(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {prog} {}", args.join(" ")))?;
    if let Some(input) = stdin {
        // Dropped right after writing so the child sees EOF.
        let mut si = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        si.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n <netns> <args...>`
pub fn ip(netns: &str, args: &[&str]) -> Result<()> {
    let mut a = vec!["-n", netns];
    a.extend_from_slice(args);
    run("ip", &a)
}

/// `ip -n <netns> -json <args...>` parsed.
pub fn ip_json(netns: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["-n", netns, "-json"];
    a.extend_from_slice(args);
    let out = output("ip", &a, None)?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_str(&out).with_context(|| format!("parse `ip {}`", a.join(" ")))
}

/// Several `ip` commands in one process (`ip -n <netns> -batch -`): the first failure aborts
/// and is reported with its line.
pub fn ip_batch(netns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let script = lines.join("\n") + "\n";
    output("ip", &["-n", netns, "-batch", "-"], Some(&script))
        .map(|_| ())
        .with_context(|| format!("ip batch in {netns}:\n{script}"))
}

/// Run a program with the namespace as its current network namespace, via `ip netns exec`
/// (which also remounts /sys for that namespace, as CNI plugins expect).
pub fn exec_cmd(netns: &str, prog: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, prog]).args(args);
    cmd
}

/// Link statistics (`ip -s link show`) of one device: (tx_packets, rx_packets).
pub fn link_packets(netns: &str, dev: &str) -> Result<(u64, u64)> {
    let v = ip_json(netns, &["-s", "link", "show", "dev", dev])?;
    let s = &v[0]["stats64"];
    let get = |d: &str| {
        s[d]["packets"]
            .as_u64()
            .ok_or_else(|| anyhow!("no {d} stats for {dev} in {netns}"))
    };
    Ok((get("tx")?, get("rx")?))
}

fn parse_mac(mac: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = mac
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("MAC {mac:?}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow!("MAC {mac:?} is not 6 bytes"))
}

/// Send one gratuitous ARP (request, sender = target = `ip`) out of `dev` inside `netns`.
///
/// Why: when a pod IP is reused on a bridge, the node's cni0 and the other pods on the same
/// bridge may still hold a neighbour entry with the old pod's MAC; frames then go to a MAC
/// nobody owns until the entry times out (seconds). A passive server pod never ARPs by
/// itself, so we announce it, as many runtimes do. Linux updates existing entries on a GARP
/// even inside the neighbour locktime.
pub fn gratuitous_arp(netns: &str, dev: &str, ip: std::net::Ipv4Addr, mac: &str) -> Result<()> {
    let mac = parse_mac(mac)?;
    let dev = std::ffi::CString::new(dev)?;
    exec_in(netns, move || -> Result<()> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let proto = (libc::ETH_P_ARP as u16).to_be();
        // SAFETY: plain syscalls; the socket is owned by OwnedFd and closed on return.
        unsafe {
            let ifindex = libc::if_nametoindex(dev.as_ptr());
            if ifindex == 0 {
                bail!("no interface {dev:?}: {}", std::io::Error::last_os_error());
            }
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                proto as i32,
            );
            if fd < 0 {
                bail!("packet socket: {}", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let mut arp = Vec::with_capacity(28);
            arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
            arp.extend_from_slice(&mac);
            arp.extend_from_slice(&ip.octets());
            arp.extend_from_slice(&[0; 6]);
            arp.extend_from_slice(&ip.octets());
            let n = libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                arp.as_ptr() as *const libc::c_void,
                arp.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            if n < 0 {
                bail!("send gratuitous ARP: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    })?
}
