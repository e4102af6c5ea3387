//! Probes: real connections made from inside a namespace.
//!
//! TCP is Connected when the handshake completes; UDP when the server's reply datagram comes
//! back (so both directions were allowed). Everything else is Blocked with the reason the
//! kernel gave: a timeout (a drop somewhere), a refusal (RST / ICMP port unreachable: nobody
//! listening, or an nft `reject`), an unreachable network, or a local EPERM (an nft drop in the
//! sender's own output path). Our own failures (missing namespace...) are `Error`, never
//! Blocked, so a broken lab can't pass an "expect blocked" check.

use super::netns;
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

impl std::str::FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            _ => anyhow::bail!("unknown protocol {s:?} (tcp, udp, sctp)"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockReason {
    /// No answer in time: dropped somewhere.
    Timeout,
    /// RST or ICMP port unreachable: nothing listening, or rejected.
    Refused,
    /// ICMP host/net unreachable or no route.
    Unreachable,
    /// EPERM/EACCES from our own stack: a local netfilter drop on output.
    Denied,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum ProbeResult {
    /// `answered_by` is the "namespace/name" banner of the serving pod, when it sent one (it
    /// tells which backend a service probe reached).
    Connected {
        answered_by: Option<String>,
        detail: String,
    },
    Blocked {
        reason: BlockReason,
        detail: String,
    },
    /// Not probed (e.g. SCTP on a kernel without SCTP sockets).
    Skipped {
        reason: String,
    },
    /// The probe itself could not run.
    Error {
        detail: String,
    },
}

impl ProbeResult {
    pub fn is_connected(&self) -> bool {
        matches!(self, ProbeResult::Connected { .. })
    }
    pub fn is_blocked(&self) -> bool {
        matches!(self, ProbeResult::Blocked { .. })
    }
    /// Whether this result settles an expectation (`true` = connected expected).
    pub fn matches(&self, expect_connected: bool) -> bool {
        match self {
            ProbeResult::Connected { .. } => expect_connected,
            ProbeResult::Blocked { .. } => !expect_connected,
            _ => false,
        }
    }
    pub fn answered_by(&self) -> Option<&str> {
        match self {
            ProbeResult::Connected { answered_by, .. } => answered_by.as_deref(),
            _ => None,
        }
    }
}

impl std::fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeResult::Connected { detail, .. } => write!(f, "connected ({detail})"),
            ProbeResult::Blocked { reason, detail } => {
                write!(f, "blocked: {reason:?} ({detail})")
            }
            ProbeResult::Skipped { reason } => write!(f, "skipped: {reason}"),
            ProbeResult::Error { detail } => write!(f, "error: {detail}"),
        }
    }
}

/// Payload of a UDP probe; servers answer any datagram, this only makes captures readable.
pub const PROBE_PAYLOAD: &[u8] = b"sluice-probe\n";

/// Probe `to:port` from inside `netns` (a pod's or a node's namespace).
pub fn probe_from(
    netns: &str,
    to: Ipv4Addr,
    port: u16,
    proto: Proto,
    timeout: Duration,
) -> ProbeResult {
    let addr = SocketAddrV4::new(to, port);
    let r = netns::exec_in(netns, move || match proto {
        Proto::Tcp => tcp(addr, timeout),
        Proto::Udp => udp(addr, timeout),
        Proto::Sctp => sctp(addr, timeout),
    });
    match r {
        Ok(r) => r,
        Err(e) => ProbeResult::Error {
            detail: format!("{e:#}"),
        },
    }
}

/// Retry while the result differs from the expectation (as the upstream e2e suite does, so
/// rules that are still being applied get a chance), at most `attempts` times; returns the last
/// result. Skipped and Error results are returned at once.
pub fn probe_from_with_retry(
    netns: &str,
    to: Ipv4Addr,
    port: u16,
    proto: Proto,
    timeout: Duration,
    expect_connected: bool,
    attempts: usize,
) -> ProbeResult {
    let mut last = ProbeResult::Error {
        detail: "no attempt".into(),
    };
    for i in 0..attempts.max(1) {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        last = probe_from(netns, to, port, proto, timeout);
        if last.matches(expect_connected)
            || matches!(
                last,
                ProbeResult::Skipped { .. } | ProbeResult::Error { .. }
            )
        {
            break;
        }
    }
    last
}

fn blocked(e: &std::io::Error, what: &str) -> ProbeResult {
    let reason = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => BlockReason::Refused,
        Some(libc::ETIMEDOUT) => BlockReason::Timeout,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => BlockReason::Unreachable,
        Some(libc::EPERM | libc::EACCES) => BlockReason::Denied,
        _ if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            BlockReason::Timeout
        }
        _ => BlockReason::Other,
    };
    ProbeResult::Blocked {
        reason,
        detail: format!("{what}: {e}"),
    }
}

/// First line of what the server sent, if it looks like our "ns/name" banner.
fn banner(buf: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(buf);
    let line = s.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

fn tcp(addr: SocketAddrV4, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    match TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout) {
        Ok(mut s) => {
            // The handshake is the verdict; the banner only names the server. Servers write
            // it immediately, so a short wait is enough.
            let _ = s.set_read_timeout(Some(timeout.min(Duration::from_millis(500))));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            while buf.len() < 256 {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.contains(&b'\n') {
                            break;
                        }
                    }
                }
            }
            let who = banner(&buf);
            ProbeResult::Connected {
                detail: format!(
                    "tcp {addr} handshake in {:?}{}",
                    start.elapsed(),
                    who.as_ref()
                        .map(|w| format!(", served by {w}"))
                        .unwrap_or_default()
                ),
                answered_by: who,
            }
        }
        Err(e) => blocked(&e, &format!("tcp connect {addr}")),
    }
}

fn udp(addr: SocketAddrV4, timeout: Duration) -> ProbeResult {
    let s = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => {
            return ProbeResult::Error {
                detail: format!("udp bind: {e}"),
            }
        }
    };
    // A connected UDP socket gets ICMP errors (port unreachable -> ECONNREFUSED) reported.
    if let Err(e) = s.connect(addr) {
        return blocked(&e, &format!("udp connect {addr}"));
    }
    let start = Instant::now();
    let deadline = start + timeout;
    // Up to three sends spread over the timeout: a lone datagram can be lost while the first
    // packet of a flow waits for ARP or a rule change; retransmitting is what clients do.
    let slice = timeout / 3;
    let mut buf = [0u8; 512];
    loop {
        if let Err(e) = s.send(PROBE_PAYLOAD) {
            return blocked(&e, &format!("udp send {addr}"));
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = slice.min(deadline - now).max(Duration::from_millis(1));
        let _ = s.set_read_timeout(Some(wait));
        match s.recv(&mut buf) {
            Ok(n) => {
                let who = banner(&buf[..n]);
                return ProbeResult::Connected {
                    detail: format!(
                        "udp {addr} reply in {:?}{}",
                        start.elapsed(),
                        who.as_ref()
                            .map(|w| format!(" from {w}"))
                            .unwrap_or_default()
                    ),
                    answered_by: who,
                };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    break;
                }
            }
            Err(e) => return blocked(&e, &format!("udp {addr}")),
        }
    }
    ProbeResult::Blocked {
        reason: BlockReason::Timeout,
        detail: format!("udp {addr}: no reply within {timeout:?}"),
    }
}

/// SCTP via raw libc (std has no SCTP). Kernels without SCTP (as on these machines) refuse the
/// socket, which is reported as Skipped with that reason rather than as Blocked.
fn sctp(addr: SocketAddrV4, timeout: Duration) -> ProbeResult {
    match sctp_connect(addr, timeout) {
        Ok(()) => ProbeResult::Connected {
            answered_by: None,
            detail: format!("sctp {addr} association established"),
        },
        Err(SctpErr::Unsupported(e)) => ProbeResult::Skipped {
            reason: format!("SCTP sockets unavailable on this kernel: {e}"),
        },
        Err(SctpErr::Io(e)) => blocked(&e, &format!("sctp connect {addr}")),
    }
}

enum SctpErr {
    Unsupported(std::io::Error),
    Io(std::io::Error),
}

fn sctp_connect(addr: SocketAddrV4, timeout: Duration) -> Result<(), SctpErr> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket syscalls on a descriptor we own (closed by OwnedFd).
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_SCTP,
        );
        if fd < 0 {
            return Err(SctpErr::Unsupported(std::io::Error::last_os_error()));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let sa = sockaddr_in(addr);
        let rc = libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(SctpErr::Io(err));
        }
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLOUT,
            revents: 0,
        };
        let n = libc::poll(
            &mut pfd,
            1,
            timeout.as_millis().min(i32::MAX as u128) as i32,
        );
        if n == 0 {
            return Err(SctpErr::Io(std::io::Error::from_raw_os_error(
                libc::ETIMEDOUT,
            )));
        }
        let mut so_err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            pfd.fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut so_err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        );
        if so_err != 0 {
            return Err(SctpErr::Io(std::io::Error::from_raw_os_error(so_err)));
        }
        Ok(())
    }
}

pub(crate) fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}
