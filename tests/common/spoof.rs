//! Anti-spoofing, checked with real packets: hand-built IPv4 TCP SYNs and UDP datagrams sent
//! from a raw socket inside the sending pod's namespace (any source address we like), and a
//! raw socket inside the receiving pod's namespace that sees every TCP or UDP packet its stack
//! is handed. The same scenario runs for both attachments and both dataplanes.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sluice::dataplane::DataplaneKind;
use sluice::lab::enforce::EnforcedLab;
use sluice::lab::netns::exec_in;
use sluice::lab::Attach;
use sluice::policy::ObjectName;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// x/a (the spoofer) and x/b on node-0; x/c on node-0 admits only x/b; x/far on node-1 admits
/// only x/b; x/open on node-1 is not isolated.
pub const WORLD: &str = r#"
kind: Namespace
apiVersion: v1
metadata: {name: x}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: far, namespace: x, labels: {app: c}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: open, namespace: x, labels: {app: open}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: only-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
"#;

fn csum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut bytes = chunks.iter().flat_map(|c| c.iter().copied());
    loop {
        match (bytes.next(), bytes.next()) {
            (Some(h), Some(l)) => sum += u32::from(u16::from_be_bytes([h, l])),
            (Some(h), None) => {
                sum += u32::from(u16::from_be_bytes([h, 0]));
                break;
            }
            _ => break,
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv4 packet: a TCP SYN (sequence number `seq`) or a UDP datagram carrying `seq`.
pub fn packet(
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    if proto == TCP {
        l4.extend(seq.to_be_bytes());
        l4.extend(0u32.to_be_bytes()); // ack
        l4.extend([5 << 4, 0x02]); // header length 20, SYN
        l4.extend(64240u16.to_be_bytes()); // window
        l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
    } else {
        l4.extend(12u16.to_be_bytes()); // length: header + 4 bytes
        l4.extend([0, 0]);
        l4.extend(seq.to_be_bytes());
    }
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, proto],
        &(l4.len() as u16).to_be_bytes()[..],
    ]
    .concat();
    let at = if proto == TCP { 16 } else { 6 };
    let c = csum(&[&pseudo, &l4]);
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + l4.len()) as u16).to_be_bytes());
    ip.extend([0, 0, 0x40, 0, 64, proto, 0, 0]); // id, DF, ttl, protocol, checksum
    ip.extend(src.octets());
    ip.extend(dst.octets());
    let c = csum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend(l4);
    ip
}

fn raw_socket(proto: i32) -> OwnedFd {
    // SAFETY: plain socket(2); the descriptor is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, proto) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends `pkt` as is (IPPROTO_RAW implies IP_HDRINCL: our source address goes on the wire).
fn send(fd: &OwnedFd, pkt: &[u8], dst: Ipv4Addr) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address of the stated lengths.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        n,
        pkt.len() as isize,
        "sendto: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether `rx` (a raw socket of protocol `proto`) sees a packet from `src` to port `dport`
/// carrying `seq` within `wait`.
fn seen(rx: &OwnedFd, proto: u8, src: Ipv4Addr, dport: u16, seq: u32, wait: Duration) -> bool {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid option value of the stated length.
    unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: buffer of the stated length.
        let n = unsafe { libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 20 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if p[9] != proto || p.len() < ihl + 12 || p[12..16] != src.octets() {
            continue;
        }
        let l4 = &p[ihl..];
        let got_seq = if proto == TCP { &l4[4..8] } else { &l4[8..12] };
        if l4[2..4] == dport.to_be_bytes() && got_seq == seq.to_be_bytes() {
            return true;
        }
    }
    false
}

/// Sends one packet from the namespace of `from` with source `src` to `to`; whether `to`'s
/// stack received it.
pub fn delivered(
    lab: &EnforcedLab,
    from: &str,
    src: Ipv4Addr,
    to: &str,
    proto: u8,
    seq: u32,
) -> bool {
    let from = lab.pod(&ObjectName::parse(from)).unwrap().clone();
    let to = lab.pod(&ObjectName::parse(to)).unwrap().clone();
    let rx = exec_in(&to.netns, || raw_socket(i32::from(proto))).unwrap();
    let tx = exec_in(&from.netns, || raw_socket(libc::IPPROTO_RAW)).unwrap();
    let (sport, dport) = (40000 + (seq % 20000) as u16, 7777);
    let pkt = packet(proto, src, to.ip, sport, dport, seq);
    // Three copies, in case the first waits for neighbour resolution.
    for _ in 0..3 {
        send(&tx, &pkt, to.ip);
        std::thread::sleep(Duration::from_millis(50));
    }
    seen(&rx, proto, src, dport, seq, Duration::from_millis(700))
}

/// The whole check for one attachment and dataplane; `tag` keeps namespace names unique.
pub fn check(tag: &str, attach: Attach, kind: DataplaneKind) {
    let name = format!("{tag}{}{}", std::process::id() % 10_000, attach as u8);
    let mut lab = EnforcedLab::up_with(&name, 2, attach, kind).unwrap();
    let mut cluster = super::cluster_from(WORLD);
    lab.sync(&mut cluster).unwrap();
    let ip = |p: &str| lab.pod(&ObjectName::parse(p)).unwrap().ip;
    let (a, b) = (ip("x/a"), ip("x/b"));
    let mut seq = 1000;
    let mut failures = Vec::new();
    for (proto, pname) in [(TCP, "TCP"), (UDP, "UDP")] {
        // (sender, source address, receiver, should arrive)
        let cases = [
            // The genuine packet: x/b is admitted, on its node and across nodes.
            ("x/b", b, "x/c", true),
            ("x/b", b, "x/far", true),
            // x/a with its own address reaches a pod that is not isolated.
            ("x/a", a, "x/open", true),
            // x/a with x/b's address: never, whatever the receiver's policy says.
            ("x/a", b, "x/c", false),
            ("x/a", b, "x/far", false),
            ("x/a", b, "x/open", false),
            // Nor with an address no pod has.
            ("x/a", Ipv4Addr::new(192, 0, 2, 9), "x/open", false),
        ];
        for (from, src, to, want) in cases {
            seq += 1;
            let got = delivered(&lab, from, src, to, proto, seq);
            if got != want {
                failures.push(format!(
                    "{attach}/{kind}: {pname} {from} with source {src} -> {to}: {} (want {})",
                    if got { "received" } else { "not received" },
                    if want { "received" } else { "not received" },
                ));
            }
        }
    }
    lab.down().unwrap();
    assert!(
        !sluice::lab::netns::list()
            .iter()
            .any(|n| n.starts_with(&format!("sl{name}-"))),
        "namespaces left"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
