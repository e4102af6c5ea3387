//! A real kube-apiserver and etcd on loopback, for tests and for the conformance suite run
//! through the API (`conformance run --via-apiserver`). No kubelet, no controller-manager, no
//! scheduler: whoever uses it plays those parts (the lab writes pod status as the kubelet).
//!
//! Binaries come from `scripts/build-apiserver` (cached under `$SLUICE_CACHE/bin`, default
//! `/var/cache/sluice/bin`), or `$SLUICE_KUBE_APISERVER` / `$SLUICE_ETCD`, or `$PATH`.
//!
//! Security is real but minimal: TLS with a throwaway CA, static tokens (`admin` in
//! `system:masters`; `agent` authenticated as the ServiceAccount `kube-system/sluice`, so the
//! ClusterRole of `deploy/rbac.yaml` is what authorizes it), RBAC authorization.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kube::api::PostParams;
use kube::{Api, Client};

use super::client::{client_from, ClientSource};

/// The RBAC objects the agent runs with (the same file `kubectl apply` takes).
pub const RBAC_YAML: &str = include_str!("../../deploy/rbac.yaml");

const ADMIN_TOKEN: &str = "sluice-test-admin-token";
const AGENT_TOKEN: &str = "sluice-test-agent-token";
/// The identity the agent token authenticates as: the DaemonSet's ServiceAccount.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:sluice";

#[derive(Debug, Clone)]
pub struct Binaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    pub fn cache_dir() -> PathBuf {
        std::env::var_os("SLUICE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/sluice"))
    }

    fn find_one(env: &str, name: &str) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(env) {
            return Some(PathBuf::from(p));
        }
        let cached = Self::cache_dir().join("bin").join(name);
        if cached.is_file() {
            return Some(cached);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    }

    pub fn find() -> Result<Binaries> {
        let missing = || {
            anyhow!(
                "kube-apiserver and etcd not found: run scripts/build-apiserver (caches them in {}/bin), or set SLUICE_KUBE_APISERVER and SLUICE_ETCD",
                Self::cache_dir().display()
            )
        };
        Ok(Binaries {
            apiserver: Self::find_one("SLUICE_KUBE_APISERVER", "kube-apiserver")
                .ok_or_else(missing)?,
            etcd: Self::find_one("SLUICE_ETCD", "etcd").ok_or_else(missing)?,
        })
    }
}

/// etcd + kube-apiserver, both stopped (and their files removed) on drop.
pub struct TestEnv {
    dir: PathBuf,
    bins: Binaries,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    etcd_port: u16,
    port: u16,
}

fn free_port() -> Result<u16> {
    // Bound and released: a tiny race with other programs picking the same port, acceptable
    // for tests (each start checks the process actually came up).
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("cannot run openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A throwaway CA, a serving certificate for 127.0.0.1 and a service-account signing key.
/// EC keys: generating them is instant, RSA takes seconds on a busy machine.
fn make_pki(dir: &Path) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=sluice-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req", "-subj", "/CN=kube-apiserver"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr)?;
    fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    )?;
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(dir, &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    fs::write(
        dir.join("tokens.csv"),
        format!(
            "{ADMIN_TOKEN},admin,admin,system:masters\n{AGENT_TOKEN},{AGENT_USER},sluice-agent,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n"
        ),
    )?;
    Ok(())
}

fn kubeconfig(server: &str, ca: &Path, user: &str, token: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: sluice-test
  cluster:
    server: {server}
    certificate-authority: {ca}
contexts:
- name: {user}
  context: {{cluster: sluice-test, user: {user}}}
current-context: {user}
users:
- name: {user}
  user: {{token: {token}}}
"#,
        ca = ca.display()
    )
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl TestEnv {
    /// Starts etcd and kube-apiserver and waits until the API server is ready (RBAC bootstrap
    /// done) and the agent's RBAC objects are installed.
    pub async fn start() -> Result<TestEnv> {
        let bins = Binaries::find()?;
        let dir = std::env::temp_dir().join(format!(
            "sluice-apiserver-{}-{}",
            std::process::id(),
            free_port()?
        ));
        fs::create_dir_all(&dir)?;
        let mut env = TestEnv {
            dir,
            bins,
            etcd: None,
            apiserver: None,
            etcd_port: free_port()?,
            port: free_port()?,
        };
        make_pki(&env.dir)?;
        let url = env.url();
        fs::write(
            env.admin_kubeconfig(),
            kubeconfig(&url, &env.dir.join("ca.crt"), "admin", ADMIN_TOKEN),
        )?;
        fs::write(
            env.agent_kubeconfig(),
            kubeconfig(&url, &env.dir.join("ca.crt"), "sluice", AGENT_TOKEN),
        )?;
        env.start_etcd()?;
        env.start_apiserver().await?;
        env.install_rbac().await?;
        Ok(env)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kubeconfig of a `system:masters` user.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Kubeconfig of the agent's identity (ServiceAccount kube-system/sluice, deploy/rbac.yaml).
    pub fn agent_kubeconfig(&self) -> PathBuf {
        self.dir.join("agent.kubeconfig")
    }

    pub async fn admin_client(&self) -> Result<Client> {
        client_from(&ClientSource::Kubeconfig(self.admin_kubeconfig())).await
    }

    pub async fn agent_client(&self) -> Result<Client> {
        client_from(&ClientSource::Kubeconfig(self.agent_kubeconfig())).await
    }

    fn start_etcd(&mut self) -> Result<()> {
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let log = fs::File::create(self.dir.join("etcd.log"))?;
        let child = Command::new(&self.bins.etcd)
            .args([
                "--name=sluice",
                &format!("--data-dir={}", self.dir.join("etcd").display()),
                &format!("--listen-client-urls={client}"),
                &format!("--advertise-client-urls={client}"),
                &format!("--listen-peer-urls={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
                &format!("--initial-cluster=sluice={peer}"),
                "--log-level=warn",
                // Test data: durability is not worth an fsync per write on a shared disk.
                "--unsafe-no-fsync",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bins.etcd.display()))?;
        self.etcd = Some(child);
        Ok(())
    }

    /// Starts (or restarts, on the same port) the API server and waits for `/readyz`.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let d = |f: &str| self.dir.join(f).display().to_string();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))?;
        let child = Command::new(&self.bins.apiserver)
            .args([
                &format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={}", self.port),
                &format!("--tls-cert-file={}", d("server.crt")),
                &format!("--tls-private-key-file={}", d("server.key")),
                &format!("--cert-dir={}", d("certs")),
                &format!("--token-auth-file={}", d("tokens.csv")),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", d("sa.pub")),
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16",
                // No controller-manager creates `default` ServiceAccounts, and the pods
                // here mount no token anyway.
                "--disable-admission-plugins=ServiceAccount",
                // One client, two cores: fairness queues only add latency.
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bins.apiserver.display()))?;
        self.apiserver = Some(child);
        self.wait_ready(Duration::from_secs(120)).await
    }

    /// Kills the API server (etcd keeps the data); `start_apiserver` brings it back.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn apiserver_running(&self) -> bool {
        self.apiserver.is_some()
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = self.admin_client().await?;
        let start = Instant::now();
        loop {
            if let Some(c) = self.apiserver.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.apiserver = None;
                    bail!(
                        "kube-apiserver exited ({status}):\n{}",
                        log_tail(&self.dir.join("apiserver.log"))
                    );
                }
            }
            if let Some(c) = self.etcd.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "etcd exited ({status}):\n{}",
                        log_tail(&self.dir.join("etcd.log"))
                    );
                }
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(text) = client.request_text(req).await {
                if text.trim() == "ok" {
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                bail!(
                    "kube-apiserver not ready after {timeout:?}:\n{}",
                    log_tail(&self.dir.join("apiserver.log"))
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates the ServiceAccount, ClusterRole and ClusterRoleBinding of deploy/rbac.yaml.
    async fn install_rbac(&self) -> Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        let client = self.admin_client().await?;
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(RBAC_YAML).map_err(|e| anyhow!("deploy/rbac.yaml: {e}"))?;
        let pp = PostParams::default();
        for doc in docs {
            match doc["kind"].as_str() {
                Some("ServiceAccount") => {
                    let sa: ServiceAccount = serde_json::from_value(doc)?;
                    let ns = sa
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or("kube-system".into());
                    ignore_exists(
                        Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                            .create(&pp, &sa)
                            .await,
                    )?;
                }
                Some("ClusterRole") => {
                    let r: ClusterRole = serde_json::from_value(doc)?;
                    ignore_exists(
                        Api::<ClusterRole>::all(client.clone())
                            .create(&pp, &r)
                            .await,
                    )?;
                }
                Some("ClusterRoleBinding") => {
                    let b: ClusterRoleBinding = serde_json::from_value(doc)?;
                    ignore_exists(
                        Api::<ClusterRoleBinding>::all(client.clone())
                            .create(&pp, &b)
                            .await,
                    )?;
                }
                other => bail!("deploy/rbac.yaml: unexpected kind {other:?}"),
            }
        }
        Ok(())
    }
}

fn ignore_exists<T>(r: kube::Result<T>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var_os("SLUICE_KEEP_TESTENV").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
