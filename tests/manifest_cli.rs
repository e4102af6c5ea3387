//! The sluice binary on bad, odd and large manifests (issue 17): nothing fails open, realistic
//! sizes load, process-level faults end cleanly, and messages say what is wrong.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run sluice")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory under target/, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/manifest-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str, body: &str) -> String {
        let p = self.0.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {nodeName: node-0, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.244.0.2}\n";
const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";

fn shop_pods() -> String {
    format!("{}/examples/shop-pods", env!("CARGO_MANIFEST_DIR"))
}

/// Class 1: a file that cannot be read as a whole refuses every command (exit 2, nothing on
/// stdout), whichever way it fails.
#[test]
fn unreadable_files_refuse_every_command() {
    let dir = TempDir::new("refuse");
    let bad = [
        ("syntax.yaml", format!("{POD_A}---\n{DENY}  ingress: [\n")),
        (
            "typo.yaml",
            format!(
                "{POD_A}---\n{}",
                DENY.replace("NetworkPolicy", "Networkpolicy")
            ),
        ),
        (
            "nokind.yaml",
            format!("{POD_A}---\n{}", DENY.replace("kind: NetworkPolicy\n", "")),
        ),
    ];
    for (name, body) in &bad {
        let f = dir.file(name, body);
        for args in [
            vec!["compile", "-m", &f, "--node", "node-0"],
            vec!["matrix", "-m", &f, "--ports", "80"],
            vec![
                "explain", "-m", &f, "--from", "x/a", "--to", "x/a", "--port", "80",
            ],
            vec!["lab", "run", "-m", &f, "--ports", "80"],
            vec!["lab", "up", "-m", &f, "--name", "hardenrefuse"],
        ] {
            let out = sluice(&args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name} {args:?}: {}",
                text(&out.stderr)
            );
            assert!(out.stdout.is_empty(), "{name} {args:?}");
            assert!(
                text(&out.stderr).contains("refusing the manifests"),
                "{name}: {}",
                text(&out.stderr)
            );
        }
    }
}

/// Class 1 on a real kernel: `apply` of an unreadable file keeps the previous ruleset, and
/// `status` refuses too.
#[test]
fn apply_of_an_unreadable_file_keeps_the_previous_ruleset() {
    let dir = TempDir::new("apply");
    let good = dir.file("good/all.yaml", &format!("{POD_A}---\n{DENY}"));
    let ns = common::Netns::new("hrdnapply");
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, BIN])
            .args(args)
            .output()
            .unwrap()
    };
    let list = || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "nft", "list", "table", "inet", "sluice",
            ])
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let out = run(&["apply", "-m", &good, "--node", "node-0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = list();
    assert!(before.contains("pod_x_a_ingress"), "{before}");
    let bad = dir.file(
        "bad/all.yaml",
        &format!(
            "{POD_A}---\n{}",
            DENY.replace("NetworkPolicy", "Networkpolicy")
        ),
    );
    for cmd in ["apply", "status"] {
        let out = run(&[cmd, "-m", &bad, "--node", "node-0"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out.stderr));
    }
    assert_eq!(list(), before, "the previous ruleset is kept");
    let empty = dir.file("empty.yaml", "");
    let out = run(&["apply", "-m", &empty, "--node", "node-0"]);
    assert_eq!(out.status.code(), Some(2), "an empty input removes no rule");
    assert_eq!(list(), before);
}

/// Class 2: realistic sizes load and give a non-empty answer.
#[test]
fn realistic_sizes_load() {
    let dir = TempDir::new("sizes");
    // ~2,800 small policies in one List.
    let items: Vec<String> = (0..2800)
        .map(|i| format!("{{\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"NetworkPolicy\",\"metadata\":{{\"name\":\"p{i}\",\"namespace\":\"x\"}},\"spec\":{{\"podSelector\":{{\"matchLabels\":{{\"app\":\"a{i}\"}}}},\"ingress\":[{{\"from\":[{{\"podSelector\":{{}}}}],\"ports\":[{{\"port\":80}}]}}]}}}}"))
        .collect();
    let policies = dir.file(
        "policies.json",
        &format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[{}]}}",
            items.join(",")
        ),
    );
    // ~700 pods as `kubectl get pods -o json` prints them (metadata, spec, status in full).
    let pods: Vec<String> = (0..700)
        .map(|i| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-{i}","namespace":"x","uid":"0f6c1f5e-{i:04}","resourceVersion":"{i}","creationTimestamp":"2026-01-01T00:00:00Z","labels":{{"app":"a{i}","pod-template-hash":"7d4b9c"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c","uid":"1","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"nodeName":"node-{n}","containers":[{{"name":"web","image":"nginx:1.27","ports":[{{"name":"http","containerPort":80,"protocol":"TCP"}}],"resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}}}},"volumeMounts":[{{"name":"kube-api-access","mountPath":"/var/run/secrets/kubernetes.io/serviceaccount","readOnly":true}}],"terminationMessagePath":"/dev/termination-log","imagePullPolicy":"IfNotPresent"}}],"restartPolicy":"Always","dnsPolicy":"ClusterFirst","serviceAccountName":"default","volumes":[{{"name":"kube-api-access","projected":{{"sources":[{{"serviceAccountToken":{{"expirationSeconds":3607,"path":"token"}}}}]}}}}],"tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}]}},"status":{{"phase":"Running","podIP":"10.244.{n}.{h}","podIPs":[{{"ip":"10.244.{n}.{h}"}}],"hostIP":"192.168.0.{n}","conditions":[{{"type":"Ready","status":"True"}}],"containerStatuses":[{{"name":"web","ready":true,"restartCount":0,"image":"nginx:1.27","imageID":"sha256:1","started":true,"state":{{"running":{{"startedAt":"2026-01-01T00:00:01Z"}}}}}}]}}}}"#,
                n = i / 200,
                h = i % 200 + 2
            )
        })
        .collect();
    let pods = dir.file(
        "pods.json",
        &format!("{{\"apiVersion\":\"v1\",\"kind\":\"List\",\"metadata\":{{\"resourceVersion\":\"\"}},\"items\":[{}]}}", pods.join(",")),
    );
    let out = sluice(&[
        "compile", "-m", &pods, "-m", &policies, "--node", "node-0", "--output", "ir",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("700 pods") && err.contains("2800 network policies"),
        "{err}"
    );
    assert!(
        !err.contains("unknown field"),
        "a kubectl export has no unknown fields: {err}"
    );
    let ir: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        ir["pods"].as_array().map(Vec::len),
        Some(200),
        "node-0's pods"
    );
    // 1,025 documents in one file.
    let docs: String = (0..1025)
        .map(|i| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: a}}}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n"))
        .collect();
    let many = dir.file("many.yaml", &docs);
    let out = sluice(&["matrix", "-m", &many]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1025 pods"),
        "{}",
        text(&out.stderr)
    );
    // The column header, the row of pod names, a row per pod, a blank line.
    assert_eq!(text(&out.stdout).lines().count(), 1 + 1 + 1025 + 1);
}

/// Class 2: limits stop bombs only, as exit 2 with a plain message.
#[test]
fn bombs_are_stopped_with_a_plain_message() {
    let dir = TempDir::new("bombs");
    let mut laughs = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!("  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    for (name, body) in [
        ("laughs.yaml", laughs),
        ("deep.json", deep.clone()),
        ("deep.yaml", deep),
    ] {
        let f = dir.file(name, &body);
        let begin = Instant::now();
        let out = sluice(&["matrix", "-m", &f, "--ports", "80"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("limit"), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(begin.elapsed() < Duration::from_secs(10), "{name}");
    }
}

/// Class 3: unknown fields warn with their path, and fail under --strict.
#[test]
fn unknown_fields_warn_and_fail_under_strict() {
    let dir = TempDir::new("unknown");
    let f = dir.file(
        "p.yaml",
        &format!(
            "{POD_A}---\n{}",
            DENY.replace(
                "spec: {podSelector: {}}",
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, excpet: [10.1.0.0/16]}}]}]}"
            )
        ),
    );
    let out = sluice(&["matrix", "-m", &f, "--ports", "80"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains(
        "warning: NetworkPolicy x/deny: spec.ingress[0].from[0].ipBlock.excpet: unknown field"
    ));
    let out = sluice(&["matrix", "-m", &f, "--ports", "80", "--strict"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(
        "error: NetworkPolicy x/deny: spec.ingress[0].from[0].ipBlock.excpet: unknown field"
    ));
}

/// Class 7: a closed output pipe ends every printing command quietly.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let dir = TempDir::new("pipe");
    let big: String = (0..300)
        .map(|i| format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x}}\nspec: {{nodeName: node-0, containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{podIP: 10.244.0.{}}}\n", i % 250 + 2))
        .collect();
    let f = dir.file("big.yaml", &format!("{big}---\n{DENY}"));
    for args in [
        vec!["matrix", "-m", &f],
        vec!["compile", "-m", &f, "--node", "node-0"],
        vec!["compile", "-m", &f, "--node", "node-0", "--output", "json"],
        vec![
            "explain", "-m", &f, "--from", "x/p1", "--to", "x/p2", "--port", "80",
        ],
        vec!["conformance", "run", "--oracle-only"],
        vec!["--help"],
    ] {
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // And with stderr in the same pipe (`2>&1 | head -c1`): no panic there either.
        let both = Command::new("bash")
            .arg("-c")
            .arg("\"$0\" \"$@\" 2>&1 | head -c1 >/dev/null; echo ${PIPESTATUS[0]}")
            .arg(BIN)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let code = text(&both.stdout).trim().to_string();
        assert!(
            ["0", "1", "141"].contains(&code.as_str()),
            "{args:?} 2>&1 | head: exit {code}"
        );
        // Read one byte (or nothing) and close: what `| head -c1` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut one = [0u8; 1];
        let _ = stdout.read(&mut one);
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        let code = out.status.code();
        assert!(
            matches!(code, Some(0 | 1 | 141)),
            "{args:?}: exit {code:?}: {err}"
        );
    }
}

/// Class 7: FIFOs in directories, stdin, upper-case extensions, link loops.
#[test]
fn files_pipes_stdin_extensions_and_link_loops() {
    let dir = TempDir::new("files");
    dir.file("a/pods.YAML", POD_A);
    dir.file("a/b/policy.Yml", DENY);
    dir.file(
        "a/b/ns.JSON",
        "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"x\"}}",
    );
    let fifo = dir.0.join("a/b/pipe.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::os::unix::fs::symlink("..", dir.0.join("a/b/loop")).unwrap();
    std::os::unix::fs::symlink("b", dir.0.join("a/again")).unwrap();
    let mut child = Command::new(BIN)
        .args(["matrix", "-m", &dir.path(), "--ports", "80"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let begin = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if begin.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("sluice hangs on a FIFO in a manifest directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("read 1 namespaces, 1 pods, 0 workloads, 1 network policies"),
        "{err}"
    );
    assert!(err.contains("pipe.yaml: not a regular file"), "{err}");
    assert!(
        !err.contains("declared twice"),
        "every file read once: {err}"
    );
    // stdin
    let mut child = Command::new(BIN)
        .args(["matrix", "-m", "-", "--ports", "80"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{POD_A}---\n{DENY}").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("x/a\t"), "{}", text(&out.stdout));
}

/// Class 10: messages say what is wrong, once.
#[test]
fn messages_name_the_problem() {
    let dir = TempDir::new("messages");
    let f = dir.file("p.yaml", &format!("{POD_A}---\n{DENY}"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "explain",
                "-m",
                &f,
                "--from",
                "x/a",
                "--to",
                "x/a",
                "--port",
                "99999999999999999999",
            ],
            "--port: port 99999999999999999999 is out of range: use 1 to 65535",
        ),
        (
            vec![
                "explain",
                "-m",
                &f,
                "--from",
                "300.1.1.1",
                "--to",
                "x/a",
                "--port",
                "80",
            ],
            "--from \"300.1.1.1\" is not a valid IP address, nor a pod",
        ),
        (
            vec![
                "explain",
                "-m",
                "/dev/null",
                "--from",
                "x/a",
                "--to",
                "x/a",
                "--port",
                "80",
            ],
            "found no Kubernetes objects in /dev/null",
        ),
        (
            vec!["matrix", "-m", &f, "--ports", "99999999999999999999"],
            "port 99999999999999999999 is out of range",
        ),
        (
            vec!["matrix", "-m", &f, "--protocols", "icmp"],
            "unsupported protocol \"icmp\": use TCP, UDP or SCTP",
        ),
    ];
    for (args, want) in cases {
        let out = sluice(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        for line in err.lines() {
            let parts: Vec<&str> = line.split(": ").collect();
            for w in parts.windows(2) {
                assert_ne!(w[0], w[1], "a message repeats itself: {line}");
            }
        }
    }
    // Command-line protocols are accepted in any case, everywhere.
    for p in ["tcp", "Tcp", "TCP"] {
        let out = sluice(&[
            "explain",
            "-m",
            &f,
            "--from",
            "x/a",
            "--to",
            "x/a",
            "--port",
            "80",
            "--protocol",
            p,
        ]);
        assert_eq!(out.status.code(), Some(0), "{p}: {}", text(&out.stderr));
        let out = sluice(&["matrix", "-m", &f, "--ports", "80", "--protocols", p]);
        assert!(out.status.success(), "{p}");
    }
    // Every exit code is in the help.
    let help = text(&sluice(&["--help"]).stdout);
    for code in [
        "0 success",
        "1 a negative answer",
        "2 bad input",
        "3 the work itself failed",
        "141",
    ] {
        assert!(help.contains(code), "{code}: {help}");
    }
}

/// Class 11: the README's dataplane example gives a real ruleset, and a pod with a node
/// but no IP is a warning.
#[test]
fn the_dataplane_example_compiles_to_real_rules() {
    let out = sluice(&["compile", "-m", &shop_pods(), "--node", "node-0"]);
    let nft = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        "jump pod_shop_frontend-7d4b9c-x2kfp_ingress",
        "jump pod_shop_db-0_egress",
        "10.244.1.10 . tcp . 8000",
    ] {
        assert!(nft.contains(want), "{want} not in\n{nft}");
    }
    let dir = TempDir::new("noip");
    let f = dir.file(
        "p.yaml",
        &format!(
            "{}---\n{DENY}",
            POD_A.replace("status: {podIP: 10.244.0.2}\n", "")
        ),
    );
    let out = sluice(&["compile", "-m", &f, "--node", "node-0"]);
    assert!(
        text(&out.stderr).contains("pod x/a is on node node-0 but has no IP"),
        "{}",
        text(&out.stderr)
    );
    let out = sluice(&[
        "explain", "-m", &f, "--from", "x/a", "--to", "x/a", "--port", "80",
    ]);
    assert!(
        text(&out.stdout).contains("has no IP in the manifests"),
        "{}",
        text(&out.stdout)
    );
}

/// Class 13: without a built API server, --via-apiserver stops once and says what to run.
#[test]
fn via_apiserver_without_a_built_api_server_stops_once() {
    let dir = TempDir::new("noapi");
    let out = Command::new(BIN)
        .args(["conformance", "run", "--via-apiserver"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SLUICE_CACHE", dir.path())
        .env_remove("SLUICE_KUBE_APISERVER")
        .env_remove("SLUICE_ETCD")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("scripts/build-apiserver").count(), 1, "{err}");
    assert!(out.stdout.is_empty(), "no case ran: {}", text(&out.stdout));
}

const POD_B: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\nspec: {nodeName: node-0, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.244.0.3}\n";
const POD_C_ELSEWHERE: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {app: c}}\nspec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.244.1.2}\n";

/// Class 8 of issue 17: `--iface`/`--mac` values the kernel would refuse, or that name no pod
/// of the node, or give one interface to two pods, are bad input (exit 2) naming the flag and
/// value, for compile, apply and status alike; valid ones still compile.
#[test]
fn iface_and_mac_flags_are_validated() {
    let dir = TempDir::new("iface");
    let f = dir.file(
        "all.yaml",
        &format!("{POD_A}---\n{POD_B}---\n{POD_C_ELSEWHERE}---\n{DENY}"),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--iface", "x/a=veth0", "--iface", "x/b=veth0"],
            "--iface \"x/b=veth0\": veth0 is already given to pod x/a",
        ),
        (
            vec!["--iface", "x/a=veth0", "--iface", "x/a=veth1"],
            "--iface \"x/a=veth1\": pod x/a is already given veth0",
        ),
        (
            vec!["--mac", "x/a=zz:11:22:33:44:55"],
            "--mac \"x/a=zz:11:22:33:44:55\": a MAC address is six pairs of hex digits",
        ),
        (
            vec!["--mac", "x/a=11:22:33:44:55"],
            "--mac \"x/a=11:22:33:44:55\"",
        ),
        (
            vec!["--iface", "x/a=my veth"],
            "--iface \"x/a=my veth\": interface names cannot contain ' '",
        ),
        (
            vec!["--iface", "x/a=a/b"],
            "--iface \"x/a=a/b\": interface names cannot contain '/'",
        ),
        (
            vec!["--iface", "x/a=abcdefghijklmnop"],
            "--iface \"x/a=abcdefghijklmnop\": interface names are 1 to 15 bytes",
        ),
        (
            vec!["--iface", "x/a=ééééééééé"],
            "interface names are 1 to 15 bytes (Linux IFNAMSIZ), this one is 18",
        ),
        (vec!["--iface", "x/a="], "interface names are 1 to 15 bytes"),
        (
            vec!["--iface", "x/nope=veth0"],
            "--iface \"x/nope=veth0\": the manifests have no pod x/nope",
        ),
        (
            vec!["--mac", "x/c=aa:bb:cc:dd:ee:ff"],
            "--mac \"x/c=aa:bb:cc:dd:ee:ff\": pod x/c is not on node node-0",
        ),
        (
            vec!["--iface", "veth0"],
            "--iface \"veth0\": write namespace/pod=IFNAME",
        ),
    ];
    // apply and status run in a throwaway namespace, should one get past the checks.
    let ns = common::Netns::new("ifflags");
    for (flags, want) in &cases {
        for cmd in ["compile", "apply", "status"] {
            let mut args = vec!["netns", "exec", &ns.name, BIN, cmd];
            args.extend(["-m", &f, "--node", "node-0", "--attach", "bridged"]);
            args.extend(flags.iter().copied());
            let out = Command::new("ip").args(&args).output().unwrap();
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {flags:?}: {err}");
            assert!(err.contains(want), "{cmd} {flags:?}: {want:?} not in {err}");
            assert!(out.stdout.is_empty(), "{cmd} {flags:?}");
        }
    }
    let out = sluice(&[
        "compile",
        "-m",
        &f,
        "--node",
        "node-0",
        "--attach",
        "bridged",
        "--iface",
        "x/a=veth0",
        "--iface",
        "x/b=veth1",
        "--mac",
        "x/a=AA:bb:cc:dd:ee:0f",
    ]);
    let nft = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in ["\"veth0\"", "\"veth1\"", "aa:bb:cc:dd:ee:0f"] {
        assert!(nft.contains(want), "{want} not in {nft}");
    }
}

/// Class 8: apply and status warn when an interface the ruleset keys on does not exist in
/// the target namespace (default names on a node whose veths are named otherwise), and stay
/// quiet when `--iface` names the real ones.
#[test]
fn apply_warns_about_interfaces_that_do_not_exist() {
    let dir = TempDir::new("ifwarn");
    let f = dir.file("all.yaml", &format!("{POD_A}---\n{POD_B}---\n{DENY}"));
    let ns = common::Netns::new("ifwarn");
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "ip", "link", "add", "vpa", "type", "veth", "peer", "name", "vpb",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for cmd in ["apply", "status"] {
        let out = run(&[BIN, cmd, "-m", &f, "--node", "node-0"]);
        let err = text(&out.stderr);
        assert_ne!(out.status.code(), Some(2), "{cmd}: {err}");
        for want in [
            "2 of 2 interfaces the ruleset keys on do not exist in this network namespace",
            "(pod x/a)",
            "(pod x/b)",
            "--iface namespace/pod=IFNAME",
        ] {
            assert!(err.contains(want), "{cmd}: {want:?} not in {err}");
        }
        let out = run(&[
            BIN, cmd, "-m", &f, "--node", "node-0", "--iface", "x/a=vpa", "--iface", "x/b=vpb",
        ]);
        let err = text(&out.stderr);
        assert!(!err.contains("do not exist"), "{cmd}: {err}");
        let out = run(&[BIN, cmd, "-m", &f, "--node", "node-0", "--iface", "x/a=vpa"]);
        let err = text(&out.stderr);
        assert!(
            err.contains("1 of 2 interfaces") && err.contains("(pod x/b)") && !err.contains("vpa"),
            "{cmd}: {err}"
        );
    }
}

/// Class 9 of issue 17: a pod an invalid policy may select fails closed in the dataplane,
/// so explain and matrix deny its flows and say why (the kernel side is in nft_kernel).
#[test]
fn explain_and_matrix_deny_pods_of_an_invalid_policy() {
    let dir = TempDir::new("invalid");
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n";
    let f = dir.file("all.yaml", &format!("{POD_A}---\n{POD_B}---\n{bad}"));
    let explain = |from: &str, to: &str| {
        sluice(&[
            "explain", "-m", &f, "--from", from, "--to", to, "--port", "80",
        ])
    };
    for (from, to, side) in [
        ("x/b", "x/a", "ingress (x/a)"),
        ("x/a", "x/b", "egress  (x/a)"),
    ] {
        let out = explain(from, to);
        let v = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{from} -> {to}: {v}");
        assert!(v.starts_with("DENIED"), "{v}");
        let line = v
            .lines()
            .find(|l| l.contains(side))
            .unwrap_or_else(|| panic!("{v}"));
        for want in [
            "x/a fails closed: policy x/bad is invalid (field spec.ingress[0].from[0].ipBlock.cidr",
            "so pods it may select fail closed",
        ] {
            assert!(line.contains(want), "{want:?} not in {line:?}");
        }
    }
    // Loopback is never filtered, and x/b alone is not selected by anything.
    assert_eq!(explain("x/a", "x/a").status.code(), Some(0));
    // No policy edit can open a pod that fails closed: --fix says what to correct instead.
    let out = sluice(&[
        "explain", "-m", &f, "--from", "x/b", "--to", "x/a", "--port", "80", "--fix",
    ]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("no policy edit can allow it: x/a fails closed: policy x/bad is invalid")
            && all.contains("correct the field named first"),
        "{all}"
    );
    let out = sluice(&["matrix", "-m", &f, "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cells: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cell = |from: &str, to: &str| {
        cells
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .unwrap()["allowed"]
            .as_bool()
            .unwrap()
    };
    assert!(!cell("x/b", "x/a") && !cell("x/a", "x/b"));
    assert!(cell("x/a", "x/a") && cell("x/b", "x/b"));
    assert!(
        text(&out.stderr)
            .contains("x/a is denied everything (X) except itself: policy x/bad is invalid"),
        "{}",
        text(&out.stderr)
    );
}

const CNP_WORLD: &str = r#"
{kind: Namespace, apiVersion: v1, metadata: {name: x}}
---
{kind: Namespace, apiVersion: v1, metadata: {name: y, labels: {tenant: "1"}}}
---
{kind: Pod, apiVersion: v1, metadata: {name: a, namespace: x}, spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}, status: {podIP: 10.0.0.1}}
---
{kind: Pod, apiVersion: v1, metadata: {name: b, namespace: x}, spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}, status: {podIP: 10.0.0.2}}
---
{kind: Pod, apiVersion: v1, metadata: {name: a, namespace: y}, spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}, status: {podIP: 10.0.1.1}}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {tenant: "1"}}}
  ingress:
  - {name: pass-y, action: Pass, from: [{namespaces: {matchLabels: {tenant: "1"}}}]}
  - {name: no-x, action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}]}
"#;

/// explain and matrix take ClusterNetworkPolicies with no new flag: the JSON names the
/// deciding tier, policy, rule and action; the kernel enforces CNPs, so no fail-closed marks.
#[test]
fn explain_and_matrix_report_cnp_tiers_and_the_kernel_verdict() {
    let dir = TempDir::new("cnp");
    let f = dir.file("w.yaml", CNP_WORLD);
    let out = sluice(&[
        "explain", "-m", &f, "--from", "x/a", "--to", "y/a", "--port", "80", "--output", "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ing = &v["ingress"];
    assert_eq!(v["allowed"], false);
    assert_eq!(ing["tier"], "Admin");
    assert_eq!(ing["decision"]["policy"], "cnp/guard");
    assert_eq!(ing["decision"]["rule"], 1);
    assert_eq!(ing["decision"]["ruleName"], "no-x");
    assert_eq!(ing["decision"]["action"], "Deny");
    assert!(ing.get("apiAllowed").is_none());
    assert!(ing.get("failedClosedBy").is_none());
    assert_eq!(v["egress"]["allowed"], true);
    assert!(v["egress"].get("failedClosedBy").is_none());

    let out = sluice(&[
        "explain", "-m", &f, "--from", "x/a", "--to", "y/a", "--port", "80",
    ]);
    let t = text(&out.stdout);
    assert!(
        t.contains("Admin: cnp/guard rule 1 'no-x' (Deny) matched"),
        "{t}"
    );
    assert!(!t.contains("fails closed"), "{t}");

    // Without CNPs in the way, the output keeps its NetworkPolicy-only shape.
    let out = sluice(&[
        "explain", "-m", &f, "--from", "x/a", "--to", "x/b", "--port", "80", "--output", "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ingress"]["tier"], "Default");
    assert!(v["ingress"].get("apiAllowed").is_none());

    let out = sluice(&["matrix", "-m", &f, "--ports", "80", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("denied everything"),
        "{}",
        text(&out.stderr)
    );
    let cells: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cell = |from: &str, to: &str| {
        cells
            .iter()
            .find(|c| c["from"] == from && c["to"] == to)
            .unwrap()
            .clone()
    };
    let xy = cell("x/a", "y/a");
    assert_eq!(xy["allowed"], false);
    assert!(xy.get("apiAllowed").is_none() && xy.get("failedClosedBy").is_none());
    // y/a's egress has no CNP rules: allowed, as the kernel does.
    let ya = cell("y/a", "x/a");
    assert_eq!(ya["allowed"], true);
    assert!(ya.get("apiAllowed").is_none());
    let xx = cell("x/a", "x/b");
    assert_eq!(xx["allowed"], true);
    assert!(xx.get("apiAllowed").is_none());

    // An Admin Deny decided it: no NetworkPolicy edit can help, and --fix says so.
    let out = sluice(&[
        "explain", "-m", &f, "--from", "x/a", "--to", "y/a", "--port", "80", "--fix",
    ]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        all.contains("cannot propose a fix: cnp/guard rule 1 'no-x' (Deny) of the Admin tier decides y/a's side"),
        "{all}"
    );
}

/// CNP validation errors name the kind, the cluster-scoped name and the field, and --strict
/// refuses them like any invalid object.
#[test]
fn cnp_errors_name_the_field_and_strict_refuses() {
    let dir = TempDir::new("cnpbad");
    let f = dir.file(
        "w.yaml",
        &CNP_WORLD.replace("priority: 10", "priority: 1001"),
    );
    let out = sluice(&["matrix", "-m", &f, "--ports", "80"]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr)
            .contains("ClusterNetworkPolicy guard: spec.priority: 1001 is out of range"),
        "{}",
        text(&out.stderr)
    );
    let out = sluice(&["matrix", "-m", &f, "--ports", "80", "--strict"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The worked example of docs/policy.md: the API's verdicts, written by hand from the
/// guardrails' comments; the kernel enforces them (no fail-closed pods).
#[test]
fn the_cnp_example_explains_as_documented() {
    let dir = format!("{}/examples/cnp", env!("CARGO_MANIFEST_DIR"));
    let side = |from: &str, to: &str, port: &str, dir_: &str| -> serde_json::Value {
        let out = sluice(&[
            "explain", "-m", &dir, "--from", from, "--to", to, "--port", port, "--output", "json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
        v[dir_].clone()
    };
    // (from, to, port, direction, API verdict, deciding tier, deciding policy)
    for (from, to, port, d, api, tier, policy) in [
        (
            "monitoring/prometheus",
            "tenant-a/web",
            "9090",
            "ingress",
            true,
            "Admin",
            Some("cnp/allow-monitoring"),
        ),
        (
            "monitoring/prometheus",
            "tenant-a/web",
            "8080",
            "ingress",
            false,
            "Baseline",
            Some("cnp/tenant-default-deny"),
        ),
        (
            "tenant-a/web",
            "tenant-a/db",
            "5432",
            "ingress",
            true,
            "NetworkPolicy",
            None,
        ),
        (
            "tenant-b/web",
            "tenant-a/web",
            "8080",
            "ingress",
            false,
            "Admin",
            Some("cnp/isolate-tenant-a"),
        ),
        (
            "tenant-a/web",
            "169.254.169.254",
            "80",
            "egress",
            false,
            "Admin",
            Some("cnp/tenant-guardrails"),
        ),
        (
            "tenant-a/web",
            "kube-system/coredns",
            "53",
            "egress",
            true,
            "Default",
            None,
        ),
    ] {
        let s = side(from, to, port, d);
        let what = format!("{from} -> {to}:{port} {d}: {s:#}");
        assert_eq!(s["allowed"], api, "{what}");
        assert!(s.get("apiAllowed").is_none(), "{what}");
        assert_eq!(s["tier"], tier, "{what}");
        match policy {
            Some(p) => assert_eq!(s["decision"]["policy"], p, "{what}"),
            None => assert!(s.get("decision").is_none(), "{what}"),
        }
    }
    // compile: the tenant pods of node-0 jump to their tier chains, named after the CNPs;
    // CoreDNS, on the same node and selected by none, does not.
    let out = sluice(&["compile", "-m", &dir, "--node", "node-0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let nft = text(&out.stdout);
    assert!(!nft.contains("fail closed"), "{nft}");
    assert!(nft.contains("chain cnp_admin_"), "{nft}");
    assert!(nft.contains("cnp/isolate-tenant-a rule"), "{nft}");
    assert!(
        !text(&out.stderr).contains("fails closed"),
        "{}",
        text(&out.stderr)
    );
    // CoreDNS is no subject: its ingress is decided as before.
    let s = side("tenant-a/web", "kube-system/coredns", "53", "ingress");
    assert_eq!(s["allowed"], true);
    assert!(s.get("failedClosedBy").is_none());
}
