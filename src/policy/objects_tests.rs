//! Tests of the manifest interpreter: what is read, what is refused, what is warned about.

use super::*;
use crate::policy::ports::Protocol;

fn load(text: &str) -> (Cluster, LoadSummary) {
    let mut b = ClusterBuilder::new();
    b.add_text("test.yaml", text);
    b.build()
}

fn refused(text: &str) -> Vec<String> {
    load(text).1.refused
}

#[test]
fn reads_lists_workloads_and_counts_ignored_kinds() {
    let text = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop, labels: {team: web}}}
- {apiVersion: v1, kind: Service, metadata: {name: api, namespace: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: report}}
        spec: {containers: [{name: r}], restartPolicy: Never}
---
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "other"}, "spec": {"containers": []}, "status": {"podIP": "10.0.0.5"}}
"#;
    let (cluster, summary) = load(text);
    assert!(cluster.errors.is_empty(), "{:?}", cluster.errors);
    assert!(summary.refused.is_empty(), "{:?}", summary.refused);
    assert!(
        summary.unknown_fields.is_empty(),
        "{:?}",
        summary.unknown_fields
    );
    assert_eq!(summary.workloads, 2);
    assert_eq!(summary.pods, 1);
    assert_eq!(summary.ignored.get("Service"), Some(&1));
    let api = cluster
        .pod(&ObjectName::new("shop", "deployment/api"))
        .unwrap();
    assert_eq!(api.resolve_named_port("http", Protocol::Tcp), Some(8080));
    assert!(cluster
        .pod(&ObjectName::new("shop", "cronjob/report"))
        .is_some());
    assert_eq!(cluster.namespaces["shop"].labels["team"], "web");
    assert_eq!(
        cluster.namespaces["other"].labels["kubernetes.io/metadata.name"],
        "other"
    );
    assert!(cluster.warnings.iter().any(|w| w.contains("other")));
}

#[test]
fn invalid_objects_are_reported_and_the_rest_kept() {
    let text = r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: bad, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: good, namespace: x}
spec: {podSelector: {}}
---
kind: Pod
apiVersion: v1
metadata: {name: p, namespace: x}
spec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}
"#;
    let (cluster, summary) = load(text);
    assert_eq!(summary.invalid, 2);
    assert_eq!(cluster.policies.len(), 1);
    let msgs: Vec<String> = cluster.errors.iter().map(|e| e.to_string()).collect();
    assert!(msgs[0].starts_with("NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.cidr:"));
    assert!(msgs[1].starts_with("Pod x/p: spec.containers[0].ports[0].containerPort:"));
}

/// Class 1: whatever cannot be read refuses the load instead of dropping its policies.
#[test]
fn unreadable_documents_refuse_the_load() {
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
    let cases = [
        // YAML syntax error after a good document.
        format!("{policy}---\nkind: Pod\nmetadata: {{name: [unclosed\n"),
        // A misspelled kind in a known group, in another case, and in a List.
        policy.replace("kind: NetworkPolicy", "kind: Networkpolicy"),
        policy.replace("kind: NetworkPolicy", "kind: networkPolicy"),
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: networking.k8s.io/v1, kind: NetPolicy, metadata: {name: a}}\n".to_string(),
        // No kind at all; a List whose items are not a list; a scalar document.
        "apiVersion: v1\nmetadata: {name: a}\nspec: {podSelector: {}}\n".to_string(),
        "apiVersion: v1\nkind: List\nitems: {a: 1}\n".to_string(),
        format!("{policy}---\njust a string\n"),
    ];
    for text in &cases {
        let r = refused(text);
        assert_eq!(r.len(), 1, "{text}: {r:?}");
        assert!(r[0].starts_with("test.yaml document "), "{}", r[0]);
        let mut b = ClusterBuilder::new();
        b.add_text("test.yaml", text);
        assert!(b.finish().is_err(), "{text}");
    }
    assert!(refused(&cases[1])[0].contains("did you mean NetworkPolicy"));
}

/// Class 2: realistic sizes load (a List of 2,800 policies, 1,025 documents).
#[test]
fn realistic_sizes_load() {
    let items: String = (0..2800)
        .map(|i| {
            format!(
                "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {{name: p{i}, namespace: x}}\n  spec:\n    podSelector: {{matchLabels: {{app: a{i}}}}}\n    ingress:\n    - from: [{{podSelector: {{matchLabels: {{app: b}}}}}}]\n      ports: [{{port: 80}}, {{port: 443}}]\n"
            )
        })
        .collect();
    let (c, s) = load(&format!("apiVersion: v1\nkind: List\nitems:\n{items}"));
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    assert_eq!(c.policies.len(), 2800);
    let docs: String = (0..1025)
        .map(|i| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}}}\n"))
        .collect();
    let (c, s) = load(&docs);
    assert!(s.refused.is_empty(), "{:?}", s.refused);
    assert_eq!(c.namespaces.len(), 1025);
}

/// Class 3: unknown fields are found in every kind read, with their path.
#[test]
fn unknown_fields_are_reported_with_their_path_for_every_kind() {
    let text = r#"
apiVersion: v1
kind: List
itemz: []
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: p, namespace: x}
  spec:
    podselector: {}
    ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, excpet: [10.1.0.0/16]}}]}]
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, lables: {a: b}}, spec: {containers: [{name: c, portz: []}]}}
- {apiVersion: v1, kind: Namespace, metadata: {name: x}, spek: {}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: d, namespace: x}
  spec:
    replica: 3
    selector: {matchLabels: {app: d}}
    template: {metadata: {labels: {app: d}}, spec: {containers: [{name: c, ports: [{containerport: 80}]}]}}
"#;
    let (_, s) = load(text);
    let found: Vec<String> = s.unknown_fields.iter().map(|p| p.to_string()).collect();
    for want in [
        "NetworkPolicy x/p: spec.podselector: unknown field",
        "NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.excpet: unknown field",
        "Pod x/a: metadata.lables: unknown field",
        "Pod x/a: spec.containers[0].portz: unknown field",
        "Namespace x: spek: unknown field",
        "Deployment x/d: spec.replica: unknown field",
        "Deployment x/d: spec.template.spec.containers[0].ports[0].containerport: unknown field",
        "List in test.yaml document 1: itemz: unknown field",
    ] {
        assert!(found.iter().any(|f| f == want), "{want} not in {found:#?}");
    }
}

/// Class 4: apiVersion, names and types are checked with kind, name and field.
#[test]
fn api_versions_names_and_types_are_validated() {
    let text = r#"
kind: NetworkPolicy
metadata: {name: noversion, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
apiVersion: v1
kind: NetworkPolicy
metadata: {name: wrongversion, namespace: x}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: deployment_web, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: 123, namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: [80]}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: Web, namespace: x}
spec: {selector: {}, template: {spec: {containers: []}}}
"#;
    let (c, _) = load(text);
    let msgs: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
    for want in [
        "NetworkPolicy x/noversion: apiVersion: is missing",
        "NetworkPolicy x/wrongversion: apiVersion: \"v1\" does not serve NetworkPolicy",
        "Pod x/deployment_web: metadata.name: ",
        "Pod x/123: metadata.name: cannot be read: invalid type: integer `123`",
        "NetworkPolicy x/p: spec.ingress[0].ports[0].port: cannot be read",
        "Deployment x/Web: metadata.name: ",
    ] {
        assert!(
            msgs.iter().any(|m| m.starts_with(want)),
            "{want} not in {msgs:#?}"
        );
    }
    // The invalid policies fail their pods closed: the one with a readable selector only
    // for those pods, the unreadable one for its namespace.
    assert!(c
        .invalid_policies
        .contains_key(&ObjectName::new("x", "noversion")));
    assert!(c.invalid_policies[&ObjectName::new("x", "p")]
        .selector
        .is_some());
    assert!(c.pods.is_empty());
}

/// Class 5: duplicates are warned about, naming both places.
#[test]
fn duplicates_name_both_places() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {a: b}}\n";
    let pod = |name: &str, ip: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x}}\nstatus: {{podIP: {ip}}}\n")
    };
    let mut b = ClusterBuilder::new();
    b.add_text("a.yaml", &format!("{ns}---\n{}", pod("p", "10.0.0.1")));
    b.add_text(
        "b.yaml",
        &format!(
            "{}---\n{}---\n{}",
            ns.replace("a: b", "a: c"),
            pod("p", "10.0.0.2"),
            pod("q", "10.0.0.2")
        ),
    );
    let (c, s) = b.build();
    let w = c.warnings.join("\n");
    assert!(
        w.contains("Namespace x is declared twice, in a.yaml document 1 and in b.yaml document 1"),
        "{w}"
    );
    assert!(
        w.contains("Pod x/p is declared twice, in a.yaml document 2 and in b.yaml document 2"),
        "{w}"
    );
    assert!(
        w.contains(
            "pods x/p (b.yaml document 2) and x/q (b.yaml document 3) both have IP 10.0.0.2"
        ),
        "{w}"
    );
    assert_eq!((s.namespaces, s.pods), (1, 2), "counted once");
    assert_eq!(c.namespaces["x"].labels["a"], "c", "the later one is used");
}
