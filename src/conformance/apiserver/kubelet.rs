//! The kubelet's part, played by the lab: Pods bound to a lab node get a network namespace
//! (CNI ADD) and their status; lab pods the API no longer has are removed.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod as K8sPod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::json;

use super::api_err;
use super::cluster::{ApiCluster, REQUESTED_IP};
use crate::conformance::topology;
use crate::lab::enforce::node_name;
use crate::lab::PodSpec as LabPodSpec;
use crate::policy::ObjectName;

impl ApiCluster {
    /// The kubelet's part, from what the API says: every Pod bound to a lab node gets its
    /// network namespace (CNI ADD), then `status.podIP` and `phase: Running`; lab pods the
    /// API no longer has are removed.
    pub fn kubelet(&mut self) -> Result<()> {
        let pods = self
            .block(Api::<K8sPod>::all(self.admin.clone()).list(&ListParams::default()))
            .map_err(api_err)
            .context("listing pods")?;
        let mut seen = BTreeSet::new();
        for pod in &pods.items {
            let name = ObjectName::new(
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            let spec = pod.spec.as_ref();
            if spec.and_then(|s| s.host_network).unwrap_or(false) {
                continue;
            }
            let Some(node) = spec
                .and_then(|s| s.node_name.as_deref())
                .and_then(topology::node_index)
                .filter(|i| *i < self.opts.nodes)
            else {
                continue;
            };
            seen.insert(name.clone());
            let info = match self.lab.pod(&name) {
                Ok(info) => info.clone(),
                Err(_) => {
                    let mut ports: Vec<u16> = spec
                        .into_iter()
                        .flat_map(|s| &s.containers)
                        .flat_map(|c| c.ports.iter().flatten())
                        .map(|p| p.container_port as u16)
                        .collect();
                    ports.sort();
                    ports.dedup();
                    let mut ls = LabPodSpec::new(&name.namespace, &name.name, node, &ports);
                    let requested = pod
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(REQUESTED_IP))
                        .and_then(|ip| ip.parse().ok());
                    if let Some(ip) = requested {
                        ls = ls.with_ip(ip);
                    }
                    self.lab
                        .guard
                        .add_pod(&ls)
                        .with_context(|| format!("starting pod {name} on {}", node_name(node)))?
                }
            };
            let has_ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .is_some_and(|ip| ip == info.ip.to_string());
            if !has_ip {
                let api: Api<K8sPod> = Api::namespaced(self.admin.clone(), &name.namespace);
                let host_ip = self.lab.lab().nodes()[node].underlay_ip.to_string();
                let status = json!({"status": {
                    "phase": "Running",
                    "hostIP": host_ip,
                    "hostIPs": [{"ip": host_ip}],
                    "podIP": info.ip.to_string(),
                    "podIPs": [{"ip": info.ip.to_string()}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }});
                self.block(api.patch_status(
                    &name.name,
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                ))
                .map_err(api_err)
                .with_context(|| format!("writing the status of pod {name}"))?;
            }
        }
        let orphans: Vec<ObjectName> = self
            .lab
            .lab()
            .pods()
            .iter()
            .map(|p| ObjectName::new(&p.namespace, &p.name))
            .filter(|n| !seen.contains(n))
            .collect();
        for n in orphans {
            self.lab.guard.remove_pod(&n.namespace, &n.name)?;
        }
        // Servers answer for new pods before anyone probes them.
        for info in self.lab.lab().pods().to_vec() {
            self.lab.lab().wait_served(&info, Duration::from_secs(5))?;
        }
        Ok(())
    }
}
