//! Traffic in a lab: probes from pods and nodes, and the servers that answer them.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{probe, serve, Lab, PodInfo, ProbeResult, Proto, ServerHandle, SERVER_ENV};

impl Lab {
    /// Probe from a pod: a real TCP/UDP connection from its namespace.
    pub fn probe(
        &self,
        from: &PodInfo,
        to: Ipv4Addr,
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> ProbeResult {
        probe::probe_from(&from.netns, to, port, proto, timeout)
    }

    /// Probe, retrying (up to `attempts`) only while the result differs from `expect_connected`.
    #[allow(clippy::too_many_arguments)]
    pub fn probe_with_retry(
        &self,
        from: &PodInfo,
        to: Ipv4Addr,
        port: u16,
        proto: Proto,
        timeout: Duration,
        expect_connected: bool,
        attempts: usize,
    ) -> ProbeResult {
        probe::probe_from_with_retry(
            &from.netns,
            to,
            port,
            proto,
            timeout,
            expect_connected,
            attempts,
        )
    }

    /// Probe from a node's own namespace (host network: kubelet-style traffic).
    pub fn probe_from_node(
        &self,
        node: usize,
        to: Ipv4Addr,
        port: u16,
        proto: Proto,
        timeout: Duration,
    ) -> ProbeResult {
        probe::probe_from(self.node_netns(node), to, port, proto, timeout)
    }

    /// Serve every pod's ports in this process until the handle is dropped. Follows pods
    /// added/removed later. Returns when the current pods are served.
    pub fn start_servers(&self) -> Result<ServerHandle> {
        serve::start(&self.name)
    }

    /// Serve on the current thread until the lab is torn down (its state file disappears).
    pub fn serve_forever(&self) -> Result<()> {
        serve::serve_forever(&self.name)
    }

    /// Wait until a pod answers on all its ports, TCP and UDP, checked over its own loopback
    /// (which no policy touches), whoever serves it.
    pub fn wait_served(&self, pod: &PodInfo, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for &port in &pod.ports {
            for proto in [Proto::Tcp, Proto::Udp] {
                loop {
                    let r = probe::probe_from(
                        &pod.netns,
                        Ipv4Addr::LOCALHOST,
                        port,
                        proto,
                        Duration::from_millis(200),
                    );
                    if r.is_connected() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "pod {}/{} not serving {proto} {port}: {r}",
                            pod.namespace,
                            pod.name
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }

    /// Start a detached server process: `program args...` must end up calling
    /// `Lab::load(name)?.serve_forever()` (e.g. `sluice lab serve <name>`). It outlives this
    /// process, logs to <state dir>/server.log, exits by itself when the lab is torn down, and
    /// is signalled by `teardown`. Returns its pid once every current pod is served.
    pub fn spawn_server(&mut self, program: &Path, args: &[&str]) -> Result<u32> {
        if let Some(pid) = self.server_pid.filter(|&p| self.is_our_server(p)) {
            return Ok(pid);
        }
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(self.state_dir().join("server.log"))?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env(SERVER_ENV, &self.name)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; it detaches the server from our session so a
        // terminal hangup or our exit does not take it down.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn server {}", program.display()))?;
        let pid = child.id();
        // Kept (not waited for) so that a teardown in this same process can reap it; if we
        // exit first, it is re-parented and lives on as intended.
        lock_spawned().push(child);
        self.server_pid = Some(pid);
        self.save()?;
        for p in &self.pods {
            self.wait_served(p, Duration::from_secs(10))?;
        }
        Ok(pid)
    }

    /// The recorded pid is still a server of this lab (pids get reused: check its marker).
    pub(super) fn is_our_server(&self, pid: u32) -> bool {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let want = format!("{SERVER_ENV}={}", self.name);
        env.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
    }

    pub(super) fn stop_server(&self) {
        let Some(pid) = self.server_pid else { return };
        if !self.is_our_server(pid) {
            return;
        }
        // SAFETY: signalling a pid we verified to be our server.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && self.is_our_server(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Our own child: reap it rather than leave a zombie behind.
        let mut spawned = lock_spawned();
        if let Some(i) = spawned.iter().position(|c| c.id() == pid) {
            let mut c = spawned.remove(i);
            while Instant::now() < deadline {
                if !matches!(c.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Server processes spawned by this process (see `Lab::spawn_server`).
pub(super) static SPAWNED: std::sync::Mutex<Vec<std::process::Child>> =
    std::sync::Mutex::new(Vec::new());

pub(super) fn lock_spawned() -> std::sync::MutexGuard<'static, Vec<std::process::Child>> {
    SPAWNED.lock().unwrap_or_else(|e| e.into_inner())
}
