//! Building a lab (underlay, nodes, overlay, pods, services) and tearing it down.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;

use super::state::{exists, ipam_dir, remove_remains, state_dir, state_path, validate_name};
use super::{cni, netns, overlay, plan, Lab, LabSpec, NodeInfo, NETNS_PREFIX};

impl Lab {
    /// Build the lab: underlay, nodes, overlay, pods (via CNI), services; write the state file.
    /// On error everything created so far is removed.
    pub fn up(spec: &LabSpec) -> Result<Lab> {
        let plan: Vec<plan::NodePlan> = (0..spec.nodes).map(plan::default_node).collect();
        Lab::up_planned(spec, &plan)
    }

    /// Like [`Lab::up`] with the nodes' names and pod subnets given (see [`plan::plan_nodes`]);
    /// `spec.nodes` is ignored.
    pub fn up_planned(spec: &LabSpec, plan: &[plan::NodePlan]) -> Result<Lab> {
        validate_name(&spec.name)?;
        if plan.is_empty() || plan.len() > overlay::MAX_NODES {
            bail!("nodes must be 1..={}", overlay::MAX_NODES);
        }
        if exists(&spec.name) {
            bail!(
                "lab {} already exists (remove it with down_by_name / `lab down`)",
                spec.name
            );
        }
        let nodes = plan
            .iter()
            .enumerate()
            .map(|(i, n)| NodeInfo {
                index: i,
                name: n.name.clone(),
                netns: format!("{NETNS_PREFIX}{}-n{i}", spec.name),
                cidr: n.cidr,
                gateway: Ipv4Addr::from(u32::from(n.cidr.network()) + 1),
                underlay_ip: overlay::node_underlay_ip(i),
                vxlan_ip: n.cidr.network(),
                vxlan_mac: overlay::node_vxlan_mac(i),
            })
            .collect();
        let mut lab = Lab {
            name: spec.name.clone(),
            attach: spec.attach,
            hub_netns: format!("{NETNS_PREFIX}{}-ul", spec.name),
            nodes,
            pods: Vec::new(),
            server_pid: None,
        };
        match lab.build(spec) {
            Ok(()) => Ok(lab),
            Err(e) => {
                if let Err(c) = lab.teardown() {
                    eprintln!("sluice lab: cleanup after failed up: {c:#}");
                }
                Err(e.context(format!("lab {} up", spec.name)))
            }
        }
    }

    pub(super) fn build(&mut self, spec: &LabSpec) -> Result<()> {
        std::fs::create_dir_all(ipam_dir(&self.name))?;
        // State first, so a crash from here on is found by down_by_name/down_all.
        self.save()?;
        overlay::create_hub(&self.hub_netns)?;
        for n in &self.nodes {
            overlay::create_node(&self.hub_netns, n)?;
        }
        for n in &self.nodes {
            overlay::program_peers(n, &self.nodes)?;
        }
        for p in &spec.pods {
            self.attach_pod(p)?;
            self.save()?;
        }
        self.apply_services()?;
        self.save()
    }

    /// Attach to an existing lab (from its state file).
    pub fn load(name: &str) -> Result<Lab> {
        validate_name(name)?;
        let path = state_path(name);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Write the state file atomically (rename), so readers never see half a file.
    pub fn save(&self) -> Result<()> {
        let dir = state_dir(&self.name);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, state_path(&self.name))?;
        Ok(())
    }

    /// Remove everything and consume the handle.
    pub fn down(self) -> Result<()> {
        self.teardown()
    }

    /// Remove everything this lab made: server process, pods (CNI DEL), all `sl<name>-*`
    /// namespaces, the state directory. Idempotent; reports anything it could not remove.
    pub fn teardown(&self) -> Result<()> {
        self.stop_server();
        for p in &self.pods {
            if let Some(n) = self.nodes.get(p.node) {
                if netns::exists(&n.netns) {
                    // Best effort: deleting the namespaces below removes the veths anyway; DEL
                    // keeps the plugins' view (IPAM) consistent as a runtime would.
                    let _ = cni::del(
                        &n.netns,
                        self.attach,
                        &p.container_id,
                        &p.netns,
                        &self.cni_config(p.node, None),
                    );
                }
            }
        }
        remove_remains(&self.name)
    }
}
