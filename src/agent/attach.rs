//! How the node's pods are attached, found on the node itself (never from the API):
//!
//! - **routed** (flannel with the `ptp` delegate, Calico-like): every pod IP has a `/32` route
//!   whose device is the pod's host-side veth. Dispatch keys on that interface name.
//! - **bridged** (flannel's default `cni0`): pod IPs sit behind the bridge. The neighbour entry
//!   of the pod IP on `cni0` gives the pod's MAC, the bridge's forwarding database gives the
//!   port that MAC lives on. Dispatch keys on the pod IP; the port and MAC pin it (anti-spoofing).
//!
//! Everything is read inside the node's network namespace (`--netns` in the lab).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::compile::{Attach, Attachment};
use crate::policy::model::ObjectName;

/// `auto` finds the attachment from the node; the others force it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachChoice {
    #[default]
    Auto,
    Routed,
    Bridged,
}

impl std::str::FromStr for AttachChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AttachChoice::Auto),
            "routed" => Ok(AttachChoice::Routed),
            "bridged" => Ok(AttachChoice::Bridged),
            o => Err(format!(
                "unknown attachment {o:?}: use auto, routed or bridged"
            )),
        }
    }
}

/// A local pod as detection needs it.
pub struct LocalPod {
    pub name: ObjectName,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub attach: Attach,
    pub attachments: BTreeMap<ObjectName, Attachment>,
    /// Local pods with an IP whose interface was not found (yet): their CNI ADD may still be
    /// running. Routed: they cannot be dispatched until found; bridged: they are enforced by
    /// IP, only the port pinning waits.
    pub missing: Vec<ObjectName>,
}

pub struct Detector {
    netns: Option<String>,
    choice: AttachChoice,
    bridge: String,
    /// Once a local pod has shown how pods attach, auto mode keeps that answer: a node does
    /// not switch CNI under running pods, and flapping would rewrite the whole table.
    decided: Option<Attach>,
    /// Bridged attachments learned earlier (pod, its IP) -> attachment: forwarding-database
    /// entries age out when a pod is silent, the port and MAC do not change.
    learned: BTreeMap<(ObjectName, IpAddr), Attachment>,
}

impl Detector {
    pub fn new(netns: Option<String>, choice: AttachChoice, bridge: &str) -> Detector {
        Detector {
            netns,
            choice,
            bridge: bridge.to_string(),
            decided: None,
            learned: BTreeMap::new(),
        }
    }

    pub fn detect(&mut self, local: &[LocalPod]) -> Result<Detection> {
        let routes = host_routes(&self.ip_json(&["route", "show", "table", "main"])?);
        let links: BTreeSet<String> = self
            .ip_json(&["link", "show"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        let has_bridge = links.contains(&self.bridge);
        let attach = match self.choice {
            AttachChoice::Routed => Attach::Routed,
            AttachChoice::Bridged => Attach::Bridged,
            AttachChoice::Auto => {
                let routed_evidence = local.iter().flat_map(|p| &p.ips).any(|ip| {
                    routes
                        .get(ip)
                        .is_some_and(|dev| *dev != self.bridge && links.contains(dev))
                });
                let bridged_evidence =
                    has_bridge && local.iter().any(|p| !p.ips.is_empty()) && !routed_evidence;
                match self.decided {
                    Some(a) => a,
                    None if routed_evidence => *self.decided.insert(Attach::Routed),
                    None if bridged_evidence => *self.decided.insert(Attach::Bridged),
                    None if has_bridge => Attach::Bridged,
                    None => Attach::Routed,
                }
            }
        };
        let mut attachments = BTreeMap::new();
        let mut missing = Vec::new();
        match attach {
            Attach::Routed => {
                for p in local {
                    let dev = p.ips.iter().find_map(|ip| routes.get(ip));
                    match dev {
                        Some(dev) => {
                            attachments.insert(
                                p.name.clone(),
                                Attachment {
                                    iface: Some(dev.clone()),
                                    mac: None,
                                },
                            );
                        }
                        None if !p.ips.is_empty() => missing.push(p.name.clone()),
                        None => {}
                    }
                }
            }
            Attach::Bridged => {
                self.learned.retain(|(name, ip), a| {
                    local.iter().any(|p| &p.name == name && p.ips.contains(ip))
                        && a.iface.as_ref().is_some_and(|i| links.contains(i))
                });
                let unknown: Vec<&LocalPod> = local
                    .iter()
                    .filter(|p| {
                        p.ips
                            .first()
                            .is_some_and(|ip| !self.learned.contains_key(&(p.name.clone(), *ip)))
                    })
                    .collect();
                if !unknown.is_empty() && has_bridge {
                    self.learn_bridged(&unknown)?;
                }
                for p in local {
                    let Some(ip) = p.ips.first() else { continue };
                    match self.learned.get(&(p.name.clone(), *ip)) {
                        Some(a) => {
                            attachments.insert(p.name.clone(), a.clone());
                        }
                        None => missing.push(p.name.clone()),
                    }
                }
            }
        }
        Ok(Detection {
            attach,
            attachments,
            missing,
        })
    }

    /// Port and MAC of pods behind the bridge. A pod that never spoke to its node has no
    /// neighbour entry: one datagram to the discard port makes the node ARP for it (the answer
    /// also teaches the bridge which port the MAC is on).
    fn learn_bridged(&mut self, pods: &[&LocalPod]) -> Result<()> {
        for attempt in 0..2 {
            let neigh = self.neighbours()?;
            let fdb = self.fdb()?;
            let mut nudge = Vec::new();
            for p in pods {
                let ip = p.ips[0];
                if self.learned.contains_key(&(p.name.clone(), ip)) {
                    continue;
                }
                match neigh
                    .get(&ip)
                    .and_then(|mac| fdb.get(mac).map(|port| (mac, port)))
                {
                    Some((mac, port)) => {
                        self.learned.insert(
                            (p.name.clone(), ip),
                            Attachment {
                                iface: Some(port.clone()),
                                mac: Some(mac.clone()),
                            },
                        );
                    }
                    None => nudge.push(ip),
                }
            }
            if nudge.is_empty() || attempt == 1 {
                break;
            }
            self.nudge(&nudge)?;
            std::thread::sleep(Duration::from_millis(30));
        }
        Ok(())
    }

    fn neighbours(&self) -> Result<BTreeMap<IpAddr, String>> {
        let v = self.ip_json(&["neigh", "show", "dev", &self.bridge])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let ip = n["dst"].as_str()?.parse().ok()?;
                let mac = n["lladdr"].as_str()?.to_ascii_lowercase();
                Some((ip, mac))
            })
            .collect())
    }

    /// Learned (not permanent) entries of the bridge's ports: MAC -> port.
    fn fdb(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run("bridge", &["-j", "fdb", "show", "br", &self.bridge])?;
        let v: Value = if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).context("cannot read `bridge -j fdb` output")?
        };
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["master"].as_str() == Some(self.bridge.as_str())
                    && e["state"].as_str() != Some("permanent")
            })
            .filter_map(|e| {
                Some((
                    e["mac"].as_str()?.to_ascii_lowercase(),
                    e["ifname"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    fn nudge(&self, ips: &[IpAddr]) -> Result<()> {
        crate::netns::exec_in_opt(self.netns.as_deref(), || {
            for ip in ips {
                let sock = match ip {
                    IpAddr::V4(_) => UdpSocket::bind("0.0.0.0:0"),
                    IpAddr::V6(_) => UdpSocket::bind("[::]:0"),
                };
                // Best effort: an unreachable pod is reported as missing afterwards.
                if let Ok(s) = sock {
                    let _ = s.send_to(b"sluice", SocketAddr::new(*ip, 9));
                }
            }
        })
    }

    fn run(&self, prog: &str, args: &[&str]) -> Result<String> {
        let mut c = Command::new(prog);
        if let Some(ns) = &self.netns {
            c.args(["-n", ns]); // `ip` and `bridge` both take -n <netns>
        }
        let out = c
            .args(args)
            .output()
            .with_context(|| format!("cannot run {prog}: install iproute2"))?;
        if !out.status.success() {
            bail!(
                "`{prog} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ip_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = self.run("ip", &a)?;
        if out.trim().is_empty() {
            return Ok(Value::Array(vec![]));
        }
        serde_json::from_str(&out).with_context(|| format!("cannot read `ip {}`", a.join(" ")))
    }
}

/// Host routes (`/32`, `/128`) -> their device, from `ip -j route` output.
fn host_routes(v: &Value) -> BTreeMap<IpAddr, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let ip: IpAddr = match dst.split_once('/') {
                None => dst.parse().ok()?,
                Some((a, "32" | "128")) => a.parse().ok()?,
                Some(_) => return None,
            };
            // A gateway route is not an attachment: the pod is behind another hop.
            if r.get("gateway").is_some() {
                return None;
            }
            Some((ip, r["dev"].as_str()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_routes_are_pod_attachments() {
        let v = json!([
            {"dst": "default", "gateway": "192.168.100.254", "dev": "eth0"},
            {"dst": "10.244.0.0/24", "dev": "cni0", "protocol": "kernel"},
            {"dst": "10.244.0.7", "dev": "veth04e24404", "scope": "host"},
            {"dst": "10.244.0.8/32", "dev": "veth1", "scope": "host"},
            {"dst": "10.244.1.0/24", "gateway": "10.244.1.0", "dev": "flannel.1"}
        ]);
        let r = host_routes(&v);
        assert_eq!(r.len(), 2);
        assert_eq!(r[&"10.244.0.7".parse::<IpAddr>().unwrap()], "veth04e24404");
        assert_eq!(r[&"10.244.0.8".parse::<IpAddr>().unwrap()], "veth1");
    }
}
