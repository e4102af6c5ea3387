//! The review tools on a live cluster: a real kube-apiserver (scripts/build-apiserver) holding
//! the same objects as a manifest directory. `kubectl-sluice` (the krew plugin binary) and
//! `sluice ... -m cluster:` must answer exactly what the files answer, and a diff between the
//! cluster and a changed directory must be the oracle's cell-by-cell difference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::PostParams;
use kube::Api;
use serde_json::{json, Value};
use sluice::k8s::testenv::TestEnv;
use sluice::policy::{evaluate, Cluster, Endpoint, Flow, PortRef, Protocol};

fn run(bin: &str, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut c = Command::new(bin);
    c.args(args).env_remove("KUBECONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-sluice");

fn ns(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
           "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.1",
                    "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 81, "protocol": "UDP"}]}]}})
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Namespaces x, y (team labels), pods a, b in each, and three policies.
fn objects() -> Vec<Value> {
    let mut v = vec![
        ns("x", json!({"team": "one"})),
        ns("y", json!({"team": "two"})),
    ];
    for n in ["x", "y"] {
        for p in ["a", "b"] {
            v.push(pod(n, p));
        }
    }
    v.push(policy("x", "deny-ingress", json!({"podSelector": {}})));
    v.push(policy(
        "x",
        "a-from-team-two",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "two"}}}],
                            "ports": [{"port": "http"}]}]}),
    ));
    v.push(policy(
        "y",
        "b-egress-to-x",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "one"}}}]}]}),
    ));
    v
}

fn write_dir(dir: &Path, objects: &[Value]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = objects
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string(o).unwrap()))
        .collect();
    std::fs::write(dir.join("all.yaml"), text).unwrap();
}

async fn create_all(env: &TestEnv, objects: &[Value]) {
    let client = env.admin_client().await.unwrap();
    let pp = PostParams::default();
    for o in objects {
        let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
        match o["kind"].as_str().unwrap() {
            "Namespace" => {
                let n: Namespace = serde_json::from_value(o.clone()).unwrap();
                Api::<Namespace>::all(client.clone())
                    .create(&pp, &n)
                    .await
                    .unwrap();
            }
            "Pod" => {
                let p: Pod = serde_json::from_value(o.clone()).unwrap();
                Api::<Pod>::namespaced(client.clone(), ns)
                    .create(&pp, &p)
                    .await
                    .unwrap();
            }
            "NetworkPolicy" => {
                let p: NetworkPolicy = serde_json::from_value(o.clone()).unwrap();
                Api::<NetworkPolicy>::namespaced(client.clone(), ns)
                    .create(&pp, &p)
                    .await
                    .unwrap();
            }
            k => panic!("unexpected kind {k}"),
        }
    }
}

fn load(dir: &Path) -> Cluster {
    let (c, _) = sluice::manifests::load(&[dir.to_path_buf()]).unwrap();
    assert!(c.errors.is_empty());
    c
}

fn allowed(c: &Cluster, f: &str, t: &str, port: u16, proto: Protocol) -> bool {
    f == t
        || evaluate(
            c,
            &Flow {
                from: Endpoint::parse(f),
                to: Endpoint::parse(t),
                port: PortRef::Number(port),
                protocol: proto,
            },
        )
        .unwrap()
        .allowed
}

#[test]
fn the_plugin_and_cluster_sources_answer_what_the_files_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = rt.block_on(TestEnv::start()).expect(
        "kube-apiserver and etcd: run scripts/build-apiserver (scripts/test does) or set SLUICE_KUBE_APISERVER and SLUICE_ETCD",
    );
    let objs = objects();
    rt.block_on(create_all(&env, &objs));
    let base: PathBuf = env.dir().join("review-files");
    write_dir(&base, &objs);
    let kc = env.admin_kubeconfig();
    let kcs = kc.to_str().unwrap();
    let files = base.to_str().unwrap();

    // matrix: the plugin reads the cluster when no -m is given.
    let (code, live, err) = run(
        PLUGIN,
        &["matrix", "--kubeconfig", kcs, "--output", "json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (_, from_files, _) = run(SLUICE, &["matrix", "-m", files, "--output", "json"], &[]);
    assert_eq!(live, from_files);
    assert!(live.contains("\"from\": \"x/a\""), "{live}");

    // explain, by the plugin with $KUBECONFIG and its current context, and by sluice -m cluster:.
    for (from, to, port) in [
        ("y/a", "x/a", "80"),
        ("x/b", "x/a", "80"),
        ("y/b", "y/a", "80"),
        ("y/b", "x/b", "81"),
    ] {
        let args = [
            "explain", "--from", from, "--to", to, "--port", port, "--output", "json",
        ];
        let (c1, o1, e1) = run(PLUGIN, &args, &[("KUBECONFIG", &kc)]);
        let mut with_m = args.to_vec();
        with_m.extend(["-m", "cluster:", "--kubeconfig", kcs]);
        let (c2, o2, _) = run(SLUICE, &with_m, &[]);
        let mut with_files = args.to_vec();
        with_files.extend(["-m", files]);
        let (c3, o3, _) = run(SLUICE, &with_files, &[]);
        assert_eq!((c1, &o1), (c3, &o3), "{from} -> {to}: {e1}");
        assert_eq!((c2, &o2), (c3, &o3));
    }

    // lint.
    let (c1, o1, _) = run(
        PLUGIN,
        &["lint", "--kubeconfig", kcs, "--output", "json"],
        &[],
    );
    let (c2, o2, _) = run(SLUICE, &["lint", "-m", files, "--output", "json"], &[]);
    assert_eq!((c1, o1), (c2, o2));

    // diff: the cluster against the same files is empty; against a changed copy it is the
    // oracle's difference between the two directories (the cluster is the first).
    let (code, out, err) = run(
        SLUICE,
        &[
            "diff",
            "-a",
            "cluster:",
            "-b",
            files,
            "--kubeconfig",
            kcs,
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!((code, out.trim()), (0, "[]"), "{err}");
    let mut changed = objs.clone();
    changed.retain(|o| o["metadata"]["name"] != "deny-ingress");
    let changed_dir = env.dir().join("review-changed");
    write_dir(&changed_dir, &changed);
    let (code, out, err) = run(
        PLUGIN,
        &[
            "diff",
            "-a",
            "cluster:",
            "-b",
            changed_dir.to_str().unwrap(),
            "--kubeconfig",
            kcs,
            "--ports",
            "80,81",
            "--protocols",
            "TCP,UDP",
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    let got: BTreeSet<(String, String, u64, String, bool, bool)> =
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["from"].as_str().unwrap().into(),
                    c["to"].as_str().unwrap().into(),
                    c["port"].as_u64().unwrap(),
                    c["protocol"].as_str().unwrap().into(),
                    c["before"].as_bool().unwrap(),
                    c["after"].as_bool().unwrap(),
                )
            })
            .collect();
    let (old, new) = (load(&base), load(&changed_dir));
    let pods: Vec<String> = old.pods.keys().map(|p| p.to_string()).collect();
    let mut want = BTreeSet::new();
    for (port, proto) in [
        (80, Protocol::Tcp),
        (80, Protocol::Udp),
        (81, Protocol::Tcp),
        (81, Protocol::Udp),
    ] {
        for f in &pods {
            for t in &pods {
                let (b, a) = (
                    allowed(&old, f, t, port, proto),
                    allowed(&new, f, t, port, proto),
                );
                if b != a {
                    want.insert((f.clone(), t.clone(), port as u64, proto.to_string(), b, a));
                }
            }
        }
    }
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // The cluster with a file applied on top: the same loader, later objects replace.
    let (_, on_top, _) = run(
        SLUICE,
        &[
            "explain",
            "-m",
            "cluster:",
            "-m",
            changed_dir.to_str().unwrap(),
            "--kubeconfig",
            kcs,
            "--from",
            "x/b",
            "--to",
            "x/a",
            "--port",
            "81",
            "--protocol",
            "UDP",
            "--output",
            "json",
        ],
        &[],
    );
    let (_, files_only, _) = run(
        SLUICE,
        &[
            "explain",
            "-m",
            files,
            "-m",
            changed_dir.to_str().unwrap(),
            "--from",
            "x/b",
            "--to",
            "x/a",
            "--port",
            "81",
            "--protocol",
            "UDP",
            "--output",
            "json",
        ],
        &[],
    );
    // The same verdict; the warnings name the source files, which differ.
    let verdict = |s: &str| {
        let mut v: Value = serde_json::from_str(s).unwrap();
        v.as_object_mut().unwrap().remove("warnings");
        v
    };
    assert_eq!(verdict(&on_top), verdict(&files_only));

    // A context that does not exist is bad input, named.
    let (code, _, err) = run(
        PLUGIN,
        &["lint", "--kubeconfig", kcs, "--context", "nowhere"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("nowhere"), "{err}");
    // Help names the plugin the way kubectl runs it.
    let (_, help, _) = run(PLUGIN, &["--help"], &[]);
    assert!(help.contains("kubectl sluice"), "{help}");
    drop(env);
}
