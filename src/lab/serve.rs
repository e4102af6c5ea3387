//! Servers: every pod serves each of its ports on TCP and UDP (and SCTP where the kernel has
//! it). Sockets are created on a thread that has entered the pod's namespace and stay bound
//! to it; one event loop (poll) then serves all pods from the original thread.
//!
//! TCP: accept, write the banner "namespace/name\n", close. UDP: answer every datagram with
//! the banner. The banner lets a probe tell which pod answered (e.g. behind a service IP).
//!
//! The set of pods to serve is the lab's state file, re-read periodically, so one server
//! follows pods added or removed by any process (CLI invocations included). Each pod's
//! namespace is tracked by inode: a pod re-created under the same name gets fresh sockets, and
//! sockets of a removed pod are closed, which also lets the kernel free its old namespace.
//! (The kernel reuses the inode numbers of freed namespaces, but a namespace in which we hold
//! sockets is not freed, so while we serve it its number cannot be taken by a new one.)

use super::{netns, state_path, Lab, PodInfo};
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the state file is re-read without a kick.
const RESCAN: Duration = Duration::from_millis(500);
/// poll() timeout: bounds how late a stop request is noticed.
const TICK_MS: i32 = 100;

struct Shared {
    lab: String,
    stop: AtomicBool,
    /// eventfd that wakes the loop out of poll() for a kick or stop.
    wake: OwnedFd,
    /// (kicks requested, kicks completed)
    gen: Mutex<(u64, u64)>,
    cv: Condvar,
}

/// In-process servers of all pods of a lab; stop (and close every socket) on drop.
pub struct ServerHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// In-process servers, so that `Lab::add_pod`/`remove_pod` can make them catch up at once
/// instead of waiting for the next rescan.
static REGISTRY: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(anyhow!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: 8-byte write to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
}

fn drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: 8-byte read from a non-blocking eventfd.
    unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
}

/// Start serving `lab` in this process. Returns once every pod that exists now is served.
pub fn start(lab: &str) -> Result<ServerHandle> {
    let shared = Arc::new(Shared {
        lab: lab.to_string(),
        stop: AtomicBool::new(false),
        wake: eventfd()?,
        gen: Mutex::new((0, 0)),
        cv: Condvar::new(),
    });
    let mut server = Server::new(lab);
    server.reconcile();
    let sh = shared.clone();
    let thread = std::thread::Builder::new()
        .name(format!("lab-serve-{lab}"))
        .spawn(move || server.run(Some(&sh), false))?;
    lock(&REGISTRY).push(Arc::downgrade(&shared));
    Ok(ServerHandle {
        shared,
        thread: Some(thread),
    })
}

/// Serve `lab` on the current thread until its state file disappears (lab torn down).
/// This is what a detached `lab serve` process runs.
pub fn serve_forever(lab: &str) -> Result<()> {
    if !state_path(lab).exists() {
        return Err(anyhow!("lab {lab} has no state file"));
    }
    let mut server = Server::new(lab);
    server.run(None, true);
    Ok(())
}

/// Make every in-process server of `lab` re-read the state now, and wait (bounded) until done.
pub fn kick(lab: &str) {
    let servers: Vec<Arc<Shared>> = {
        let mut reg = lock(&REGISTRY);
        reg.retain(|w| w.strong_count() > 0);
        reg.iter()
            .filter_map(|w| w.upgrade())
            .filter(|s| s.lab == lab)
            .collect()
    };
    for s in servers {
        let target = {
            let mut g = lock(&s.gen);
            g.0 += 1;
            g.0
        };
        signal(&s.wake);
        let g = lock(&s.gen);
        let _ =
            s.cv.wait_timeout_while(g, Duration::from_secs(5), |g| g.1 < target);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        signal(&self.shared.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ServerHandle {
    /// Re-read the lab state now (normally done automatically).
    pub fn sync(&self) {
        kick(&self.shared.lab);
    }
}

/// Sockets of one pod namespace instance.
struct Served {
    inode: u64,
    ports: Vec<u16>,
    banner: Vec<u8>,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    sctp: Vec<OwnedFd>,
}

struct Server {
    lab: String,
    pods: HashMap<String, Served>,
    /// Pod namespaces (and their inode) we already failed to serve, so the error is logged once.
    failed: HashMap<String, u64>,
    state_present: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Wake,
    Tcp,
    Udp,
    Sctp,
}

impl Server {
    fn new(lab: &str) -> Self {
        Server {
            lab: lab.to_string(),
            pods: HashMap::new(),
            failed: HashMap::new(),
            state_present: true,
        }
    }

    /// Bring the open sockets in line with the state file.
    fn reconcile(&mut self) {
        let pods: Vec<PodInfo> = match Lab::load(&self.lab) {
            Ok(l) => {
                self.state_present = true;
                l.pods().to_vec()
            }
            Err(_) => {
                self.state_present = state_path(&self.lab).exists();
                if self.state_present {
                    // Unreadable right now (should not happen: writes are atomic renames);
                    // keep serving what we have.
                    return;
                }
                Vec::new()
            }
        };
        let mut keep = HashMap::new();
        for p in &pods {
            let Some(inode) = netns::inode(&p.netns) else {
                continue;
            };
            if let Some(s) = self.pods.remove(&p.netns) {
                if s.inode == inode && s.ports == p.ports {
                    keep.insert(p.netns.clone(), s);
                    continue;
                }
            }
            if self.failed.get(&p.netns) == Some(&inode) {
                continue;
            }
            match open(p, inode) {
                Ok(s) => {
                    self.failed.remove(&p.netns);
                    keep.insert(p.netns.clone(), s);
                }
                Err(e) => {
                    eprintln!("sluice lab serve: {}/{}: {e:#}", p.namespace, p.name);
                    self.failed.insert(p.netns.clone(), inode);
                }
            }
        }
        // Whatever is left in self.pods belongs to removed pods: dropped (closed) here.
        self.pods = keep;
    }

    fn run(&mut self, shared: Option<&Shared>, exit_when_gone: bool) {
        let mut last_scan = Instant::now();
        loop {
            if let Some(sh) = shared {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            if last_scan.elapsed() >= RESCAN {
                self.reconcile();
                last_scan = Instant::now();
                if exit_when_gone && !self.state_present {
                    break;
                }
            }
            // (fd, kind, pod key, socket index)
            let mut index: Vec<(Kind, Option<&str>, usize)> = Vec::new();
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let pfd = |fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if let Some(sh) = shared {
                fds.push(pfd(sh.wake.as_raw_fd()));
                index.push((Kind::Wake, None, 0));
            }
            for (key, s) in &self.pods {
                for (i, l) in s.tcp.iter().enumerate() {
                    fds.push(pfd(l.as_raw_fd()));
                    index.push((Kind::Tcp, Some(key), i));
                }
                for (i, u) in s.udp.iter().enumerate() {
                    fds.push(pfd(u.as_raw_fd()));
                    index.push((Kind::Udp, Some(key), i));
                }
                for (i, f) in s.sctp.iter().enumerate() {
                    fds.push(pfd(f.as_raw_fd()));
                    index.push((Kind::Sctp, Some(key), i));
                }
            }
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
            if n <= 0 {
                continue;
            }
            let mut kicked = false;
            for (p, (kind, key, i)) in fds.iter().zip(index.iter()) {
                if p.revents == 0 {
                    continue;
                }
                let s = key.and_then(|k| self.pods.get(k));
                match (kind, s) {
                    (Kind::Wake, _) => {
                        drain(p.fd);
                        kicked = true;
                    }
                    (Kind::Tcp, Some(s)) => serve_tcp(&s.tcp[*i], &s.banner),
                    (Kind::Udp, Some(s)) => serve_udp(&s.udp[*i], &s.banner),
                    (Kind::Sctp, Some(s)) => serve_sctp(s.sctp[*i].as_raw_fd(), &s.banner),
                    _ => {}
                }
            }
            if kicked {
                let sh = shared.expect("wake fd only with shared");
                let target = lock(&sh.gen).0;
                self.reconcile();
                last_scan = Instant::now();
                lock(&sh.gen).1 = target;
                sh.cv.notify_all();
            }
        }
        self.pods.clear();
        if let Some(sh) = shared {
            // Release anyone waiting in kick().
            lock(&sh.gen).1 = u64::MAX;
            sh.cv.notify_all();
        }
    }
}

/// Open all listening sockets of one pod inside its namespace.
fn open(p: &PodInfo, inode: u64) -> Result<Served> {
    let ports = p.ports.clone();
    let (tcp, udp, sctp) = netns::exec_in(&p.netns, move || -> Result<_> {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let mut sctp = Vec::new();
        for &port in &ports {
            let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            let l = TcpListener::bind(any).map_err(|e| anyhow!("tcp bind {any}: {e}"))?;
            l.set_nonblocking(true)?;
            tcp.push(l);
            let u = UdpSocket::bind(any).map_err(|e| anyhow!("udp bind {any}: {e}"))?;
            u.set_nonblocking(true)?;
            udp.push(u);
            // SCTP only where the kernel has it (not on these machines).
            if let Some(fd) = sctp_listen(any) {
                sctp.push(fd);
            }
        }
        Ok((tcp, udp, sctp))
    })??;
    Ok(Served {
        inode,
        ports: p.ports.clone(),
        banner: format!("{}/{}\n", p.namespace, p.name).into_bytes(),
        tcp,
        udp,
        sctp,
    })
}

fn serve_tcp(l: &TcpListener, banner: &[u8]) {
    // Drain the accept queue; the listener is non-blocking.
    while let Ok((mut s, _)) = l.accept() {
        // A few bytes into a fresh socket buffer never block; failure (peer gone) is fine.
        let _ = s.write_all(banner);
    }
}

fn serve_udp(u: &UdpSocket, banner: &[u8]) {
    let mut buf = [0u8; 2048];
    while let Ok((_, from)) = u.recv_from(&mut buf) {
        let _ = u.send_to(banner, from);
    }
}

fn sctp_listen(addr: SocketAddrV4) -> Option<OwnedFd> {
    // SAFETY: plain socket syscalls on a descriptor we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_SCTP,
        );
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = super::probe::sockaddr_in(addr);
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
            || libc::listen(fd.as_raw_fd(), 64) != 0
        {
            return None;
        }
        Some(fd)
    }
}

fn serve_sctp(fd: RawFd, banner: &[u8]) {
    loop {
        // SAFETY: accept on our non-blocking listener; the new fd is owned and closed below.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c < 0 {
            break;
        }
        // SAFETY: c is a fresh descriptor we own.
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        unsafe {
            libc::write(
                c.as_raw_fd(),
                banner.as_ptr() as *const libc::c_void,
                banner.len(),
            )
        };
    }
}
