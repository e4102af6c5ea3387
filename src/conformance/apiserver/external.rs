//! A `sluice agent` process for a lab node, as a DaemonSet would run it, and the little HTTP
//! client that reads its endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A `sluice agent --netns <node>` child process.
pub struct ExternalAgent {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl ExternalAgent {
    pub fn spawn(
        program: PathBuf,
        args: Vec<String>,
        metrics_addr: SocketAddr,
        log: PathBuf,
    ) -> Result<Self> {
        let mut a = ExternalAgent {
            program,
            args,
            metrics_addr,
            log,
            child: None,
        };
        a.start()?;
        Ok(a)
    }

    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to clean anything up (it would not anyway).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// GET a path of its HTTP endpoint: (status code, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.metrics_addr, path)
    }

    /// Waits until `/readyz` answers 200 (the first complete snapshot is enforced).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = self.get("/readyz") {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!("sluice agent exited ({st}); see {}", self.log.display());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "sluice agent not ready after {timeout:?}; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ExternalAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET (tests and tools read /metrics without curl).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response from {addr}"))?;
    Ok((code, body.to_string()))
}
