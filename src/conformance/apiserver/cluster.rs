//! [`ApiCluster`]: the API server, the lab's nodes and one agent per node, with the lab
//! playing the kubelet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use super::converge::{agrees, attached_as_lab, explain_disagreement};
use super::external::ExternalAgent;
use super::{api_err, is_status};
use crate::agent::{Agent, AgentConfig, AttachChoice};
use crate::conformance::backend::AttachMode;
use crate::k8s::export;
use crate::k8s::testenv::TestEnv;
use crate::lab::enforce::{node_name, EnforcedLab};
use crate::lab::ProbeResult;
use crate::policy::model::{Namespace, Pod};
use crate::policy::{Cluster, ObjectName, Protocol};

/// The annotation through which a test asks the "kubelet" for a pod IP (the API has no field
/// for it; the runner's IP-reuse cases need it).
pub const REQUESTED_IP: &str = "sluice.dev/requested-ip";
const IMAGE: &str = "sluice-lab-serve";
const MANAGER: &str = "sluice-conformance";
/// How long the agents get to enforce a change before the sync counts as failed.
pub const CONVERGE: Duration = Duration::from_secs(60);

static LABS: AtomicUsize = AtomicUsize::new(0);

/// Who enforces a node.
pub enum AgentSlot {
    /// An in-process agent (tokio tasks + a thread), observable directly.
    InProcess(Agent),
    /// A `sluice agent` process in the host namespace enforcing the node's namespace.
    External(ExternalAgent),
    /// Nobody (a test wants to start one later).
    None,
}

/// How a node's agent is run when the cluster comes up.
#[derive(Debug, Clone)]
pub enum AgentMode {
    InProcess,
    /// The `sluice` binary to run as `sluice agent ...`.
    External(PathBuf),
    None,
}

#[derive(Debug, Clone)]
pub struct ApiClusterOptions {
    pub nodes: usize,
    pub attach: AttachMode,
    /// One per node (missing entries: in-process).
    pub agents: Vec<AgentMode>,
    pub debounce: Duration,
    pub drift_interval: Duration,
    /// What the agents enforce with.
    pub dataplane: crate::dataplane::DataplaneKind,
}

impl ApiClusterOptions {
    pub fn new(nodes: usize, attach: AttachMode) -> Self {
        ApiClusterOptions {
            nodes,
            attach,
            agents: vec![],
            debounce: Duration::from_millis(20),
            drift_interval: Duration::from_secs(5),
            dataplane: crate::dataplane::DataplaneKind::Nftables,
        }
    }
}

/// API server + lab + agents.
pub struct ApiCluster {
    pub rt: tokio::runtime::Runtime,
    /// The lab's pods and probes (its own rule syncing is never used here).
    pub lab: EnforcedLab,
    pub agents: Vec<AgentSlot>,
    pub(super) admin: Client,
    /// Dropped last: agents first lose their API server only when everything else is gone.
    pub env: TestEnv,
    /// What this side wrote: namespaces, pods (as asked: requested IP or none), policies.
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<ObjectName, Pod>,
    policies: BTreeSet<ObjectName>,
    cluster_policies: BTreeMap<String, crate::policy::cnp::ClusterPolicy>,
    pub(super) opts: ApiClusterOptions,
}

impl ApiCluster {
    pub fn up(opts: ApiClusterOptions) -> Result<ApiCluster> {
        // In-process agents log through tracing: errors by default, `RUST_LOG=sluice=debug`
        // to watch them work (a no-op when the program has a subscriber already).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let env = rt.block_on(TestEnv::start())?;
        // Before the agents start, so they find the CRD at once (cases with CNPs need it; an
        // unavailable module is an error, not a skip).
        rt.block_on(env.install_cnp_crds(crate::k8s::crds::Channel::Experimental))
            .context("installing the ClusterNetworkPolicy CRDs into the test API server")?;
        let admin = rt.block_on(env.admin_client())?;
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let name = format!("ap{}x{n}", std::process::id() % 100_000);
        let lab = EnforcedLab::up(&name, opts.nodes, opts.attach)?;
        let mut c = ApiCluster {
            rt,
            lab,
            agents: Vec::new(),
            admin,
            env,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeSet::new(),
            cluster_policies: BTreeMap::new(),
            opts,
        };
        for i in 0..c.opts.nodes {
            let mode = c
                .opts
                .agents
                .get(i)
                .cloned()
                .unwrap_or(AgentMode::InProcess);
            let slot = c.start_agent(i, &mode)?;
            c.agents.push(slot);
        }
        Ok(c)
    }

    pub fn admin(&self) -> &Client {
        &self.admin
    }

    pub fn agent_config(&self, node: usize) -> AgentConfig {
        AgentConfig {
            netns: Some(self.lab.lab().node_netns(node).to_string()),
            // Found on the node, as in production: the check below holds it to the lab's truth.
            attach: AttachChoice::Auto,
            debounce: self.opts.debounce,
            drift_interval: self.opts.drift_interval,
            publish_snapshot: true,
            dataplane: self.opts.dataplane,
            service_cidrs: vec![crate::lab::service::service_cidr().into()],
            watch: crate::k8s::watch::WatchOptions {
                backoff_min: Duration::from_millis(200),
                backoff_max: Duration::from_secs(2),
                // The CRDs are installed before the agents start; a short interval only
                // matters to a test that installs or changes them later.
                rediscover: Duration::from_secs(2),
            },
            ..AgentConfig::new(&node_name(node))
        }
    }

    /// Starts node `node`'s agent the given way (the slot is not stored; see `agents`).
    pub fn start_agent(&self, node: usize, mode: &AgentMode) -> Result<AgentSlot> {
        match mode {
            AgentMode::None => Ok(AgentSlot::None),
            AgentMode::InProcess => {
                let cfg = self.agent_config(node);
                let agent = self.rt.block_on(async {
                    let client = self.env.agent_client().await?;
                    Agent::start(client, cfg, Some("127.0.0.1:0".parse()?)).await
                })?;
                if let Some(a) = agent.metrics_addr() {
                    eprintln!(
                        "sluice: agent {} metrics at http://{a}/metrics",
                        node_name(node)
                    );
                }
                Ok(AgentSlot::InProcess(agent))
            }
            AgentMode::External(program) => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
                let cfg = self.agent_config(node);
                let args: Vec<String> = [
                    "agent",
                    "--kubeconfig",
                    &self.env.agent_kubeconfig().display().to_string(),
                    "--node-name",
                    &cfg.node,
                    "--netns",
                    cfg.netns.as_deref().unwrap_or_default(),
                    "--metrics-addr",
                    &port.to_string(),
                    "--debounce-ms",
                    &cfg.debounce.as_millis().to_string(),
                    "--drift-interval",
                    &cfg.drift_interval.as_secs().max(1).to_string(),
                    "--watch-backoff-max",
                    "2",
                    "--log-format",
                    "json",
                    "--dataplane",
                    cfg.dataplane.name(),
                    "--service-cidr",
                    &cfg.service_cidrs
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let log = self.env.dir().join(format!("agent-{}.log", cfg.node));
                Ok(AgentSlot::External(ExternalAgent::spawn(
                    program.clone(),
                    args,
                    port,
                    log,
                )?))
            }
        }
    }

    pub(super) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Writes `desired` to the API, lets the lab's "kubelet" run the pods, fills in every
    /// pod's IP in `desired`, and waits until every agent enforces it.
    pub fn sync(&mut self, desired: &mut Cluster) -> Result<()> {
        self.write(desired)?;
        self.kubelet()?;
        for pod in desired.pods.values_mut() {
            if pod.host_network {
                continue;
            }
            let info = self
                .lab
                .pod(&pod.object_name())
                .with_context(|| format!("the kubelet did not start {}", pod.object_name()))?;
            pod.ips = vec![IpAddr::V4(info.ip)];
        }
        self.wait_converged(desired, CONVERGE)
    }

    /// API writes, in the order a user would make them: namespaces, then deletions (freeing
    /// addresses), then pods, policies and ClusterNetworkPolicies.
    fn write(&mut self, desired: &Cluster) -> Result<()> {
        let ns_api: Api<K8sNamespace> = Api::all(self.admin.clone());
        for ns in desired.namespaces.values() {
            if self.namespaces.get(&ns.name) == Some(ns) {
                continue;
            }
            let patch = export::namespace(ns);
            // Server-side apply: creates or updates, and drops labels this manager set before
            // and no longer sets.
            self.block(ns_api.patch(
                &ns.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            ))
            .map_err(api_err)
            .with_context(|| format!("writing namespace {}", ns.name))?;
            self.namespaces.insert(ns.name.clone(), ns.clone());
        }
        // Pods that are gone or cannot become the desired pod in place (node, ports and
        // addresses are immutable) are deleted; label changes are patched.
        let stale: Vec<ObjectName> = self
            .pods
            .iter()
            .filter(|(name, had)| {
                desired
                    .pods
                    .get(*name)
                    .is_none_or(|want| !self.fits(had, want))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.delete_pod(&name)?;
        }
        let policy_names: BTreeSet<ObjectName> = desired.policies.keys().cloned().collect();
        for name in self
            .policies
            .difference(&policy_names)
            .cloned()
            .collect::<Vec<_>>()
        {
            let api: Api<NetworkPolicy> = Api::namespaced(self.admin.clone(), &name.namespace);
            match self.block(api.delete(&name.name, &DeleteParams::default())) {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    return Err(api_err(e)).with_context(|| format!("deleting policy {name}"))
                }
            }
            self.policies.remove(&name);
        }
        if let Some(name) = desired.invalid_cluster_policies.keys().next() {
            bail!("ClusterNetworkPolicy {name} is invalid: the model keeps no object to write to the API server for it");
        }
        let admin = self.admin.clone();
        let mut written = std::mem::take(&mut self.cluster_policies);
        let deleted = self.block(super::cnp::delete_stale(
            &admin,
            &mut written,
            Some(&desired.cluster_policies),
        ));
        self.cluster_policies = written;
        deleted?;
        for (name, want) in &desired.pods {
            let api: Api<K8sPod> = Api::namespaced(self.admin.clone(), &name.namespace);
            match self.pods.get(name) {
                Some(had) if had.labels == want.labels => {}
                Some(_) => {
                    // Merge patch: labels removed from the desired pod are set to null.
                    let mut labels = serde_json::Map::new();
                    for k in self.pods[name].labels.keys() {
                        labels.insert(k.clone(), serde_json::Value::Null);
                    }
                    for (k, v) in &want.labels {
                        labels.insert(k.clone(), json!(v));
                    }
                    let patch = json!({"metadata": {"labels": labels}});
                    self.block(api.patch(
                        &name.name,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    ))
                    .map_err(api_err)
                    .with_context(|| format!("relabelling pod {name}"))?;
                    let entry = self.pods.get_mut(name).expect("present");
                    entry.labels = want.labels.clone();
                }
                None => {
                    let mut pod = export::pod(want, IMAGE);
                    if let Some(ip) = want.ips.first() {
                        pod.metadata.annotations =
                            Some(BTreeMap::from([(REQUESTED_IP.to_string(), ip.to_string())]));
                    }
                    self.block(api.create(&PostParams::default(), &pod))
                        .map_err(api_err)
                        .with_context(|| format!("creating pod {name}"))?;
                    self.pods.insert(name.clone(), want.clone());
                }
            }
        }
        for (name, p) in &desired.policies {
            let api: Api<NetworkPolicy> = Api::namespaced(self.admin.clone(), &name.namespace);
            let np = export::policy(p);
            self.block(api.patch(
                &name.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&np),
            ))
            .map_err(api_err)
            .with_context(|| format!("writing policy {name}"))?;
            self.policies.insert(name.clone());
        }
        let mut written = std::mem::take(&mut self.cluster_policies);
        let applied = self.block(super::cnp::apply_all(
            &admin,
            MANAGER,
            &mut written,
            &desired.cluster_policies,
        ));
        self.cluster_policies = written;
        applied
    }

    /// Whether an existing pod (as created) is still the desired one but for its labels.
    fn fits(&self, had: &Pod, want: &Pod) -> bool {
        let mut a = had.ports.clone();
        let mut b = want.ports.clone();
        a.sort();
        b.sort();
        let ip_ok = match (want.ips.first(), self.lab.pod(&want.object_name())) {
            (Some(w), Ok(info)) => *w == IpAddr::V4(info.ip),
            _ => true,
        };
        had.node == want.node && a == b && had.host_network == want.host_network && ip_ok
    }

    fn delete_pod(&mut self, name: &ObjectName) -> Result<()> {
        let api: Api<K8sPod> = Api::namespaced(self.admin.clone(), &name.namespace);
        // Grace period 0: with nothing running containers, the pod is gone at once (what the
        // kubelet confirms after a graceful stop).
        match self.block(api.delete(&name.name, &DeleteParams::default().grace_period(0))) {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(api_err(e)).with_context(|| format!("deleting pod {name}")),
        }
        self.pods.remove(name);
        if self.lab.pod(name).is_ok() {
            self.lab.guard.remove_pod(&name.namespace, &name.name)?;
        }
        Ok(())
    }

    /// Waits until every in-process agent has enforced exactly `want` (and found every local
    /// pod's interface as the lab made it), and every external agent is ready.
    pub fn wait_converged(&mut self, want: &Cluster, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let attach = self.lab.lab().attach();
        let ifaces: BTreeMap<String, String> = self
            .lab
            .lab()
            .pods()
            .iter()
            .map(|p| (format!("{}/{}", p.namespace, p.name), p.host_iface.clone()))
            .collect();
        for (i, slot) in self.agents.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match slot {
                AgentSlot::InProcess(agent) => {
                    let ok = agent.shared().wait_for(left, |s| {
                        agrees(s, want) && attached_as_lab(s, attach, &ifaces)
                    });
                    if !ok {
                        let s = agent.status();
                        bail!(
                            "{}'s agent did not enforce the desired state within {timeout:?}: {}",
                            node_name(i),
                            explain_disagreement(&s, want, attach, &ifaces)
                        );
                    }
                }
                AgentSlot::External(a) => a.wait_ready(left)?,
                AgentSlot::None => {}
            }
        }
        Ok(())
    }

    /// Deletes every pod, policy and namespace this side created (namespaces are finalized
    /// here: there is no namespace controller).
    pub fn clear(&mut self) -> Result<()> {
        for name in self.pods.keys().cloned().collect::<Vec<_>>() {
            self.delete_pod(&name)?;
        }
        for name in std::mem::take(&mut self.policies) {
            let api: Api<NetworkPolicy> = Api::namespaced(self.admin.clone(), &name.namespace);
            match self.block(api.delete(&name.name, &DeleteParams::default())) {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    return Err(api_err(e)).with_context(|| format!("deleting policy {name}"))
                }
            }
        }
        let admin = self.admin.clone();
        let mut written = std::mem::take(&mut self.cluster_policies);
        let deleted = self.block(super::cnp::delete_stale(&admin, &mut written, None));
        self.cluster_policies = written;
        deleted?;
        let ns_api: Api<K8sNamespace> = Api::all(self.admin.clone());
        for name in std::mem::take(&mut self.namespaces).into_keys() {
            if matches!(
                name.as_str(),
                "default" | "kube-system" | "kube-public" | "kube-node-lease"
            ) {
                continue; // the API server keeps these
            }
            self.block(finalize_namespace(&ns_api, &name))?;
        }
        // Leftover lab pods (a failed kubelet step) go too.
        for p in self.lab.lab().pods().to_vec() {
            self.lab.guard.remove_pod(&p.namespace, &p.name)?;
        }
        Ok(())
    }

    pub fn in_process(&self, node: usize) -> Option<&Agent> {
        match self.agents.get(node) {
            Some(AgentSlot::InProcess(a)) => Some(a),
            _ => None,
        }
    }

    pub fn external(&mut self, node: usize) -> Option<&mut ExternalAgent> {
        match self.agents.get_mut(node) {
            Some(AgentSlot::External(a)) => Some(a),
            _ => None,
        }
    }

    pub fn probe(
        &self,
        from: &ObjectName,
        to: &ObjectName,
        port: u16,
        protocol: Protocol,
        expected: bool,
    ) -> ProbeResult {
        self.lab.probe(from, to, false, port, protocol, expected)
    }
}

impl Drop for ApiCluster {
    fn drop(&mut self) {
        // Agents first (they would log a storm of watch errors once the API server is gone),
        // then the lab, then the API server.
        self.agents.clear();
        // eBPF agents pin their links and maps so that they outlive a restart: the lab's
        // nodes are going, so are their pins.
        if self.opts.dataplane != crate::dataplane::DataplaneKind::Nftables {
            for node in 0..self.opts.nodes {
                let dir = crate::ebpf::pin_dir(Some(self.lab.lab().node_netns(node)));
                if let Err(e) = crate::ebpf::EbpfDataplane::remove_pinned(&dir) {
                    eprintln!("sluice: {e:#}");
                }
            }
        }
    }
}

/// Deletes a namespace and removes its `kubernetes` finalizer (the namespace controller's
/// job, after it has emptied the namespace), then waits until it is gone.
async fn finalize_namespace(api: &Api<K8sNamespace>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) => return Ok(()),
        Err(e) => return Err(api_err(e)).with_context(|| format!("deleting namespace {name}")),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut ns = match api.get(name).await {
            Ok(ns) => ns,
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(api_err(e)),
        };
        if let Some(spec) = ns.spec.as_mut() {
            spec.finalizers = Some(vec![]);
        }
        match api
            .replace_subresource("finalize", name, &PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) if is_status(&e, 409) => {} // changed meanwhile: read it again
            Err(e) => {
                return Err(api_err(e)).with_context(|| format!("finalizing namespace {name}"))
            }
        }
        if Instant::now() > deadline {
            bail!("namespace {name} is still there 30 s after its deletion");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
