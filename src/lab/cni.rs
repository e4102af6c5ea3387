//! Attaching pods with the real CNI plugins (`ptp` or `bridge`, `host-local` IPAM), invoked
//! the way a container runtime does: environment variables + network config on stdin, with the
//! node's network namespace as the plugin's current namespace.

use super::netns;
use super::Attach;
use anyhow::{anyhow, bail, Context, Result};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

/// Where Debian's containernetworking-plugins live.
pub const CNI_PATH: &str = "/usr/lib/cni";
/// CNI spec version we speak (the Debian 1.1.1 plugins support up to 1.0.0).
pub const CNI_VERSION: &str = "1.0.0";
/// Pod MTU: 1500 underlay minus 50 bytes of VXLAN encapsulation, as flannel does.
pub const POD_MTU: u32 = 1450;

/// Network configuration for one node. `ipam_dir` must be unique per lab so parallel labs
/// (which reuse the same pod CIDRs in their own namespaces) never share allocations.
pub fn net_config(
    attach: Attach,
    node: usize,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    ipam_dir: &Path,
    requested: Option<Ipv4Addr>,
) -> Value {
    let ipam = json!({
        "type": "host-local",
        "ranges": [[{ "subnet": cidr.to_string(), "gateway": gateway.to_string() }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": ipam_dir.to_string_lossy(),
    });
    let mut conf = match attach {
        // ptp: one veth per pod, host side gets the gateway address (/32) and a /32 route to
        // the pod; ipMasq off because pod IPs are routable across the lab (as with flannel).
        Attach::Routed => json!({
            "cniVersion": CNI_VERSION, "name": format!("n{node}"), "type": "ptp",
            "ipMasq": false, "mtu": POD_MTU, "ipam": ipam,
        }),
        // bridge: flannel's default shape. isGateway puts the gateway address on cni0;
        // hairpinMode lets a pod reach itself through its own service when the bridge path
        // (br_netfilter) DNATs the frame back to the port it came from, as kubelet sets it.
        Attach::Bridged => json!({
            "cniVersion": CNI_VERSION, "name": format!("n{node}"), "type": "bridge",
            "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "mtu": POD_MTU, "ipam": ipam,
        }),
    };
    if let Some(ip) = requested {
        // The `ips` capability: a runtime passes it as runtimeConfig, and host-local honours it
        // (verified with plugins 1.1.1; CNI_ARGS IP= would work too but is the legacy path).
        conf["capabilities"] = json!({ "ips": true });
        conf["runtimeConfig"] = json!({ "ips": [format!("{ip}/{}", cidr.prefix_len())] });
    }
    conf
}

/// What we keep from a CNI ADD result.
#[derive(Debug, Clone)]
pub struct AddResult {
    pub ip: Ipv4Addr,
    pub pod_mac: String,
    /// Host-side veth (in the node namespace); for ptp this is also the /32 route's device.
    pub host_iface: String,
}

/// Which plugin a mode uses.
pub fn plugin(attach: Attach) -> &'static str {
    match attach {
        Attach::Routed => "ptp",
        Attach::Bridged => "bridge",
    }
}

/// Invoke a plugin. `pod_netns` may name a namespace that no longer exists for DEL (the
/// plugins then only release the IPAM allocation), so it is passed as a path either way.
fn invoke(
    cmd: &str,
    node_netns: &str,
    attach: Attach,
    container_id: &str,
    pod_netns: &str,
    conf: &Value,
) -> Result<String> {
    let plugin_path = format!("{CNI_PATH}/{}", plugin(attach));
    let netns_path = if netns::exists(pod_netns) {
        netns::netns_path(pod_netns).to_string_lossy().into_owned()
    } else {
        String::new()
    };
    let mut child = netns::exec_cmd(node_netns, &plugin_path, &[])
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", &netns_path)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {plugin_path}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // Errors come back as {"code":..,"msg":..,"details":..} on stdout.
        let msg = serde_json::from_str::<Value>(&stdout)
            .ok()
            .map(|v| format!("{} {}", v["msg"], v["details"]))
            .unwrap_or(stdout);
        bail!(
            "CNI {cmd} ({plugin_path}) for {container_id} in {node_netns} failed: {msg} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// CNI ADD: attach `pod_netns` to `node_netns`, return the pod's address and interfaces.
pub fn add(
    node_netns: &str,
    attach: Attach,
    container_id: &str,
    pod_netns: &str,
    conf: &Value,
) -> Result<AddResult> {
    let out = invoke("ADD", node_netns, attach, container_id, pod_netns, conf)?;
    parse_result(&out).with_context(|| format!("CNI result: {out}"))
}

/// CNI DEL: release the address and remove the veth (if the pod namespace still exists).
pub fn del(
    node_netns: &str,
    attach: Attach,
    container_id: &str,
    pod_netns: &str,
    conf: &Value,
) -> Result<()> {
    invoke("DEL", node_netns, attach, container_id, pod_netns, conf).map(|_| ())
}

/// Parse a CNI 1.0 result: `ips[].interface` indexes `interfaces[]`; the entry with a
/// `sandbox` is the pod side, the other veth (not cni0) is the host side.
pub fn parse_result(out: &str) -> Result<AddResult> {
    let v: Value = serde_json::from_str(out)?;
    let ifaces = v["interfaces"]
        .as_array()
        .ok_or_else(|| anyhow!("no interfaces"))?;
    let ipcfg = v["ips"]
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| anyhow!("no ips"))?;
    let addr = ipcfg["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no address"))?;
    let net: Ipv4Net = addr.parse().with_context(|| format!("address {addr}"))?;
    let pod_idx = ipcfg["interface"].as_u64().map(|i| i as usize);
    let pod_if = pod_idx
        .and_then(|i| ifaces.get(i))
        .or_else(|| ifaces.iter().find(|i| i.get("sandbox").is_some()))
        .ok_or_else(|| anyhow!("no pod interface"))?;
    let pod_mac = pod_if["mac"].as_str().unwrap_or_default().to_string();
    let host_iface = ifaces
        .iter()
        .filter(|i| i.get("sandbox").is_none())
        .filter_map(|i| i["name"].as_str())
        .find(|n| *n != "cni0")
        .ok_or_else(|| anyhow!("no host interface"))?
        .to_string();
    Ok(AddResult {
        ip: net.addr(),
        pod_mac,
        host_iface,
    })
}

/// For ptp the brief's rule: the pod's host veth is the device of the /32 route to the pod IP
/// in the node namespace (its name is random).
pub fn host_iface_by_route(node_netns: &str, ip: Ipv4Addr) -> Result<String> {
    let v = netns::ip_json(node_netns, &["route", "show", &format!("{ip}/32")])?;
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|r| r["dev"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no /32 route to {ip} in {node_netns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptp_result() {
        let out = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"veth8324e429","mac":"8e:ba:27:a2:9c:7f"},
          {"name":"eth0","mac":"16:4a:a5:d9:18:75","sandbox":"/var/run/netns/xp0"}],
          "ips":[{"interface":1,"address":"10.244.0.7/24","gateway":"10.244.0.1"}]}"#;
        let r = parse_result(out).unwrap();
        assert_eq!(r.ip, Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(r.host_iface, "veth8324e429");
        assert_eq!(r.pod_mac, "16:4a:a5:d9:18:75");
    }

    #[test]
    fn parses_bridge_result() {
        let out = r#"{"interfaces":[{"name":"cni0","mac":"a6:f7:26:36:a6:8e"},{"name":"vetha322c8d1","mac":"a2:18:92:44:f8:e1"},
          {"name":"eth0","mac":"42:e1:67:1f:9e:db","sandbox":"/var/run/netns/xp2"}],
          "ips":[{"interface":2,"address":"10.244.1.7/24","gateway":"10.244.1.1"}]}"#;
        let r = parse_result(out).unwrap();
        assert_eq!(r.host_iface, "vetha322c8d1");
        assert_eq!(r.pod_mac, "42:e1:67:1f:9e:db");
    }
}
