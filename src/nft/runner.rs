//! Our own `nft` runner: JSON in on stdin, stderr captured and turned into an error that
//! says what failed (the `nftables` crate's helper drops stderr: its issue #209).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Runs `nft`, in the current network namespace or in a named one (`ip netns exec`).
#[derive(Debug, Clone, Default)]
pub struct Nft {
    pub netns: Option<String>,
}

impl Nft {
    pub fn here() -> Nft {
        Nft { netns: None }
    }

    pub fn in_netns(name: &str) -> Nft {
        Nft {
            netns: Some(name.to_string()),
        }
    }

    fn command(&self, args: &[&str]) -> Result<Command> {
        let mut c = Command::new("nft");
        c.args(args);
        if let Some(ns) = &self.netns {
            crate::netns::enter_before_exec(&mut c, ns)?;
        }
        Ok(c)
    }

    fn run(&self, args: &[&str], stdin: &str) -> Result<String> {
        let mut child = self
            .command(args)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nft: install the nftables package (apt-get install nftables)")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.as_bytes())
            .context("writing the ruleset to nft")?;
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first: Vec<&str> = err
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect();
            let hint = if err.contains("Operation not permitted") {
                " (nft needs root or CAP_NET_ADMIN)"
            } else {
                ""
            };
            // Keep what nft refused, so the failure can be reproduced with `nft -c -f FILE`.
            let saved = (!stdin.is_empty())
                .then(|| {
                    let path = std::env::temp_dir()
                        .join(format!("sluice-nft-rejected-{}.txt", std::process::id()));
                    std::fs::write(&path, stdin).ok().map(|_| path)
                })
                .flatten()
                .map(|p| format!("\n(the rejected input is saved in {})", p.display()))
                .unwrap_or_default();
            bail!(
                "nft {} failed{hint}; nothing was changed (the batch is atomic):\n{}{saved}",
                args.join(" "),
                first.join("\n")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Applies a JSON batch in one transaction.
    pub fn apply_json(&self, batch: &Value) -> Result<()> {
        self.run(&["-j", "-f", "-"], &batch.to_string()).map(|_| ())
    }

    /// Checks a JSON batch without applying it (`nft -c`).
    pub fn check_json(&self, batch: &Value) -> Result<()> {
        self.run(&["-c", "-j", "-f", "-"], &batch.to_string())
            .map(|_| ())
    }

    /// Checks an nft text script without applying it.
    pub fn check_text(&self, script: &str) -> Result<()> {
        self.run(&["-c", "-f", "-"], script).map(|_| ())
    }

    /// Applies an nft text script in one transaction.
    pub fn apply_text(&self, script: &str) -> Result<()> {
        self.run(&["-f", "-"], script).map(|_| ())
    }

    /// Reads one table back as JSON; None when it does not exist.
    pub fn list_table(&self, family: &str, name: &str) -> Result<Option<Value>> {
        match self.run(&["-j", "list", "table", family, name], "") {
            Ok(out) => Ok(Some(
                serde_json::from_str(&out).context("nft printed JSON we cannot read")?,
            )),
            Err(e) if format!("{e:#}").contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads one table back as nft text; None when it does not exist.
    pub fn list_table_text(&self, family: &str, name: &str) -> Result<Option<String>> {
        match self.run(&["list", "table", family, name], "") {
            Ok(out) => Ok(Some(out)),
            Err(e) if format!("{e:#}").contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
}
