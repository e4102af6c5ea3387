//! The nftables dataplane on a real kernel, in throwaway network namespaces: full apply,
//! read back, drift, and deltas that must leave the kernel exactly as a full apply would.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;
use sluice::compile::{compile, Attach, Attachment, CompileInput, NodeRuleset};
use sluice::dataplane::Dataplane;
use sluice::nft::{installed, Nft, NftDataplane};
use sluice::policy::model::ObjectName;
use sluice::policy::Cluster;

fn ruleset(cluster: &Cluster, attach: Attach) -> NodeRuleset {
    let att: BTreeMap<ObjectName, Attachment> = BTreeMap::new();
    compile(&CompileInput {
        cluster,
        node: "node-0",
        attach,
        attachments: &att,
    })
}

#[test]
fn full_apply_reads_back_as_wanted_and_drift_is_repaired() {
    for attach in [Attach::Routed, Attach::Bridged] {
        let ns = common::Netns::new("full");
        let mut dp = NftDataplane::new(Nft::in_netns(&ns.name));
        let rs = ruleset(&common::fixture("dataplane/cluster.yaml"), attach);
        dp.apply_full(&rs).unwrap();
        let st = dp.status(&rs).unwrap();
        assert!(st.in_sync, "{:?}", st.differences);
        // Applying again is a clean atomic replacement.
        dp.apply_full(&rs).unwrap();
        assert!(dp.status(&rs).unwrap().in_sync);
        // Someone flushes our table: status sees it, a full apply restores it.
        dp.nft.apply_text("flush table inet sluice\n").unwrap();
        let st = dp.status(&rs).unwrap();
        assert!(!st.in_sync);
        assert!(
            st.differences.iter().any(|d| d.contains("has 0 rules")),
            "{:?}",
            st.differences
        );
        dp.apply_full(&rs).unwrap();
        assert!(dp.status(&rs).unwrap().in_sync);
        // What nft lists parses again (people can save and restore it).
        let listed = dp.nft.list_table_text("inet", "sluice").unwrap().unwrap();
        dp.nft.check_text(&listed).unwrap();
        dp.remove().unwrap();
        assert!(dp.nft.list_table("inet", "sluice").unwrap().is_none());
    }
}

#[test]
fn a_bad_batch_reports_nft_errors_and_changes_nothing() {
    let ns = common::Netns::new("bad");
    let mut dp = NftDataplane::new(Nft::in_netns(&ns.name));
    let rs = ruleset(&common::fixture("dataplane/cluster.yaml"), Attach::Routed);
    dp.apply_full(&rs).unwrap();
    let bad = serde_json::json!({"nftables": [{"add": {"rule": {"family": "inet", "table": "sluice", "chain": "no-such-chain", "expr": [{"accept": null}]}}}]});
    let err = dp.nft.apply_json(&bad).unwrap_err().to_string();
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(dp.status(&rs).unwrap().in_sync);
}

/// One change to the cluster.
#[derive(Debug, Clone)]
enum Change {
    AddPod {
        ns: usize,
        name: usize,
        node: usize,
        label: usize,
        ip: u8,
    },
    RemovePod(usize),
    RelabelPod {
        pick: usize,
        label: usize,
    },
    RelabelNamespace {
        ns: usize,
        team: usize,
    },
    UpsertPolicy {
        ns: usize,
        name: usize,
        template: usize,
    },
    RemovePolicy(usize),
}

const NAMESPACES: [&str; 2] = ["x", "y"];
const LABELS: [&str; 3] = ["a", "b", "c"];
const TEMPLATES: [&str; 6] = [
    "{podSelector: {}}",
    "{podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}, {port: http}]}]}",
    "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {team: t1}}}], ports: [{port: http}, {protocol: UDP, port: 53, endPort: 60}]}]}",
    "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.0.8/30]}}, {namespaceSelector: {}, podSelector: {matchLabels: {app: c}}}]}]}",
    "{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [a]}]}, ingress: [{}], egress: [{to: [{podSelector: {}}]}]}",
    "{podSelector: {matchLabels: {app: c}}, policyTypes: [Ingress, Egress], ingress: [{ports: [{protocol: SCTP}]}]}",
];

fn pod_yaml(ns: &str, name: &str, node: usize, app: &str, ip: u8) -> String {
    format!("---\nkind: Pod\napiVersion: v1\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{nodeName: node-{node}, containers: [{{name: c, ports: [{{name: http, containerPort: 8{ip}}}]}}]}}\nstatus: {{podIP: 10.244.{node}.{ip}}}\n")
}

fn apply_change(c: &mut Cluster, ch: &Change) {
    match ch {
        Change::AddPod {
            ns,
            name,
            node,
            label,
            ip,
        } => {
            let text = pod_yaml(
                NAMESPACES[*ns],
                &format!("p{name}"),
                *node,
                LABELS[*label],
                *ip,
            );
            for p in common::cluster_from(&text).pods.into_values() {
                // Pod IPs are unique: a new pod takes over an address only once it is free.
                if !c.pods.values().any(|q| q.ips == p.ips) {
                    c.upsert_pod(p);
                }
            }
        }
        Change::RemovePod(i) => {
            if let Some(k) = c.pods.keys().nth(i % c.pods.len().max(1)).cloned() {
                c.remove_pod(&k);
            }
        }
        Change::RelabelPod { pick, label } => {
            if let Some(k) = c.pods.keys().nth(pick % c.pods.len().max(1)).cloned() {
                let mut p = c.pods[&k].clone();
                p.labels.insert("app".into(), LABELS[*label].into());
                c.upsert_pod(p);
            }
        }
        Change::RelabelNamespace { ns, team } => {
            let n = c.namespaces.get_mut(NAMESPACES[*ns]).unwrap();
            n.labels.insert("team".into(), format!("t{team}"));
        }
        Change::UpsertPolicy { ns, name, template } => {
            let text = format!(
                "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: np{name}, namespace: {}}}\nspec: {}\n",
                NAMESPACES[*ns], TEMPLATES[*template]
            );
            for p in common::cluster_from(&text).policies.into_values() {
                c.upsert_policy(p);
            }
        }
        Change::RemovePolicy(i) => {
            if let Some(k) = c.policies.keys().nth(i % c.policies.len().max(1)).cloned() {
                c.remove_policy(&ObjectName::new(k.namespace.clone(), k.name.clone()));
            }
        }
    }
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..2usize, 0..6usize, 0..2usize, 0..3usize, 2..40u8).prop_map(
            |(ns, name, node, label, ip)| Change::AddPod {
                ns,
                name,
                node,
                label,
                ip
            }
        ),
        any::<usize>().prop_map(Change::RemovePod),
        (any::<usize>(), 0..3usize).prop_map(|(pick, label)| Change::RelabelPod { pick, label }),
        (0..2usize, 0..2usize).prop_map(|(ns, team)| Change::RelabelNamespace { ns, team }),
        (0..2usize, 0..3usize, 0..6usize).prop_map(|(ns, name, template)| Change::UpsertPolicy {
            ns,
            name,
            template
        }),
        any::<usize>().prop_map(Change::RemovePolicy),
    ]
}

fn base_cluster() -> Cluster {
    let mut text = String::from("kind: Namespace\napiVersion: v1\nmetadata: {name: x, labels: {team: t0}}\n---\nkind: Namespace\napiVersion: v1\nmetadata: {name: \"y\", labels: {team: t1}}\n");
    text += &pod_yaml("x", "a", 0, "a", 2);
    text += &pod_yaml("y", "b", 0, "b", 3);
    text += &pod_yaml("y", "c", 1, "c", 4);
    common::cluster_from(&text)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// After every change, the kernel patched by deltas equals a kernel given the full ruleset.
    #[test]
    fn deltas_equal_full_apply(changes in prop::collection::vec(change(), 1..8), bridged in any::<bool>()) {
        let attach = if bridged { Attach::Bridged } else { Attach::Routed };
        let a = common::Netns::new("delta");
        let b = common::Netns::new("full");
        let mut incremental = NftDataplane::new(Nft::in_netns(&a.name));
        let mut full = NftDataplane::new(Nft::in_netns(&b.name));
        let mut cluster = base_cluster();
        let mut installed_rs = ruleset(&cluster, attach);
        incremental.apply_full(&installed_rs).unwrap();
        for ch in &changes {
            apply_change(&mut cluster, ch);
            let next = ruleset(&cluster, attach);
            incremental.apply_delta(&installed_rs, &next).unwrap();
            full.apply_full(&next).unwrap();
            let (fa, _) = installed::read(&incremental.nft).unwrap();
            let (fb, _) = installed::read(&full.nft).unwrap();
            prop_assert_eq!(fa, fb, "after {:?}", ch);
            installed_rs = next;
        }
    }
}

#[test]
fn pod_churn_is_element_churn() {
    let ns = common::Netns::new("churn");
    let mut dp = NftDataplane::new(Nft::in_netns(&ns.name));
    let mut c = base_cluster();
    apply_change(
        &mut c,
        &Change::UpsertPolicy {
            ns: 0,
            name: 0,
            template: 1,
        },
    );
    let before = ruleset(&c, Attach::Routed);
    dp.apply_full(&before).unwrap();
    // A new remote pod labelled app=b joins the peer set of x/np0: one element, no chain.
    apply_change(
        &mut c,
        &Change::AddPod {
            ns: 0,
            name: 9,
            node: 1,
            label: 1,
            ip: 9,
        },
    );
    let after = ruleset(&c, Attach::Routed);
    let report = dp.apply_delta(&before, &after).unwrap();
    let stats = report.stats.unwrap();
    assert_eq!(stats.elements_added, 1, "{stats:?}");
    assert_eq!(stats.chains_touched(), 0, "{stats:?}");
    assert!(dp.status(&after).unwrap().in_sync);
}

/// Issue 17 class 14: every packet a pod sends carries one of its own addresses. Raw TCP SYNs
/// and UDP datagrams with another pod's (or nobody's) source never arrive, the genuine ones do.
#[test]
fn nft_stops_spoofed_sources_routed() {
    common::spoof::check(
        "spn",
        Attach::Routed,
        sluice::dataplane::DataplaneKind::Nftables,
    );
}

#[test]
fn nft_stops_spoofed_sources_bridged() {
    common::spoof::check(
        "spn",
        Attach::Bridged,
        sluice::dataplane::DataplaneKind::Nftables,
    );
}

/// `sluice status` in `ns` for the fixture cluster on node-0: exit code and stdout.
fn cli_status(ns: &str) -> (i32, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_sluice"), "status"])
        .args([
            "-m",
            "tests/fixtures/dataplane/cluster.yaml",
            "--node",
            "node-0",
        ])
        .output()
        .expect("ip netns exec sluice status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// The objects of our inet table as nft lists them (with handles).
fn listed(nft: &Nft) -> Vec<serde_json::Value> {
    nft.list_table("inet", "sluice").unwrap().unwrap()["nftables"]
        .as_array()
        .cloned()
        .unwrap()
}

/// Class 6 of issue 17: `status` used to compare counts only, so an edit that keeps every
/// count (a drop turned into an accept, a dispatch entry pointed at accept, a set element
/// swapped, a base chain's policy changed) was "in sync". Each edit is made with `nft` in a
/// fresh namespace after `sluice apply`; status must exit 1 and name what differs.
#[test]
fn status_sees_edits_that_keep_every_count() {
    // Unedited: in sync, exit 0.
    {
        let ns = common::Netns::new("stedit-none");
        let mut dp = NftDataplane::new(Nft::in_netns(&ns.name));
        let rs = ruleset(&common::fixture("dataplane/cluster.yaml"), Attach::Routed);
        dp.apply_full(&rs).unwrap();
        let (code, out) = cli_status(&ns.name);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("in sync"), "{out}");
    }
    type Edit = fn(&Nft) -> (String, Vec<String>);
    let edits: [(&str, Edit); 4] = [
        ("drop replaced by accept", |nft| {
            let rule = listed(nft)
                .into_iter()
                .filter_map(|o| o.get("rule").cloned())
                .find(|r| {
                    r["chain"].as_str().unwrap().starts_with("pod_")
                        && r["expr"].as_array().unwrap().last() == Some(&json!({"drop": null}))
                })
                .expect("a pod chain ending in drop");
            let chain = rule["chain"].as_str().unwrap().to_string();
            nft.apply_text(&format!(
                "replace rule inet sluice {chain} handle {} accept\n",
                rule["handle"]
            ))
            .unwrap();
            (chain, words(&["found", "accept", "wanted", "drop"]))
        }),
        ("dispatch entry pointed at accept", |nft| {
            let map = listed(nft)
                .into_iter()
                .filter_map(|o| o.get("map").cloned())
                .find(|m| m["elem"].as_array().is_some_and(|e| !e.is_empty()))
                .expect("a dispatch map with entries");
            let name = map["name"].as_str().unwrap().to_string();
            let key = map["elem"][0][0].as_str().expect("ifname key").to_string();
            nft.apply_text(&format!(
                "delete element inet sluice {name} {{ \"{key}\" }}\nadd element inet sluice {name} {{ \"{key}\" : accept }}\n"
            ))
            .unwrap();
            (name, vec![key, "accept".into(), "jump".into()])
        }),
        ("set element swapped", |nft| {
            let set = listed(nft)
                .into_iter()
                .filter_map(|o| o.get("set").cloned())
                .find(|s| {
                    s["type"] == json!("ipv4_addr")
                        && s["elem"]
                            .as_array()
                            .is_some_and(|e| e.first().is_some_and(|x| x.is_string()))
                })
                .expect("an IPv4 set with a plain address");
            let name = set["name"].as_str().unwrap().to_string();
            let old = set["elem"][0].as_str().unwrap().to_string();
            nft.apply_text(&format!(
                "delete element inet sluice {name} {{ {old} }}\nadd element inet sluice {name} {{ 10.99.99.99 }}\n"
            ))
            .unwrap();
            (name, vec![old, "10.99.99.99".into()])
        }),
        ("base chain policy changed", |nft| {
            let chain = listed(nft)
                .into_iter()
                .filter_map(|o| o.get("chain").cloned())
                .find(|c| c["hook"].is_string() && c["policy"] == json!("accept"))
                .expect("a base chain with policy accept");
            let name = chain["name"].as_str().unwrap().to_string();
            nft.apply_text(&format!(
                "chain inet sluice {name} {{ type filter hook {} priority {}; policy drop; }}\n",
                chain["hook"].as_str().unwrap(),
                chain["prio"]
            ))
            .unwrap();
            (name, words(&["policy", "drop", "accept"]))
        }),
    ];
    for (what, edit) in edits {
        let ns = common::Netns::new("stedit");
        let mut dp = NftDataplane::new(Nft::in_netns(&ns.name));
        let rs = ruleset(&common::fixture("dataplane/cluster.yaml"), Attach::Routed);
        dp.apply_full(&rs).unwrap();
        let before = installed::read(&dp.nft).unwrap().1;
        let (object, words) = edit(&dp.nft);
        // The edit keeps every count: the old comparison could not see it.
        assert_eq!(installed::read(&dp.nft).unwrap().1, before, "{what}");
        let (code, out) = cli_status(&ns.name);
        assert_eq!(code, 1, "{what}: {out}");
        let line = out
            .lines()
            .find(|l| l.contains(&format!("inet/{object}")))
            .unwrap_or_else(|| panic!("{what}: no line names {object}: {out}"));
        for w in words {
            assert!(line.contains(&w), "{what}: {w:?} not in {line:?}\n{out}");
        }
        // The library's status agrees, and a full apply repairs it.
        assert!(!dp.status(&rs).unwrap().in_sync, "{what}");
        dp.apply_full(&rs).unwrap();
        assert!(dp.status(&rs).unwrap().in_sync, "{what}");
    }
    // A flushed table differs everywhere: the text shows the first 20 and counts the rest.
    let ns = common::Netns::new("stedit-flush");
    let mut dp = NftDataplane::new(Nft::in_netns(&ns.name));
    let rs = ruleset(&common::fixture("dataplane/cluster.yaml"), Attach::Routed);
    dp.apply_full(&rs).unwrap();
    dp.nft.apply_text("flush table inet sluice\n").unwrap();
    let all = dp.status(&rs).unwrap().differences.len();
    assert!(all > 20, "{all}");
    let (code, out) = cli_status(&ns.name);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("drift: {all} differences")),
        "{out}"
    );
    let shown = out
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("  ..."))
        .count();
    assert_eq!(shown, 20, "{out}");
    assert!(
        out.contains(&format!(
            "... and {} more (--output json lists them all)",
            all - 20
        )),
        "{out}"
    );
}

/// Class 9 of issue 17: an invalid policy that may select a pod fails that pod closed in the
/// dataplane; the oracle (explain, matrix) must say so too. Real probes in a two-node lab
/// enforced by nftables, held against `evaluate` flow by flow.
#[test]
fn explain_equals_the_kernel_when_a_policy_is_invalid() {
    use sluice::lab::enforce::EnforcedLab;
    use sluice::policy::{evaluate, Endpoint, Flow, PortRef, Protocol};
    const WORLD: &str = r#"
kind: Namespace
apiVersion: v1
metadata: {name: x}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-0, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
kind: Pod
apiVersion: v1
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {nodeName: node-0, containers: [{name: c, ports: [{containerPort: 80}]}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: bad, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]
"#;
    let name = format!("ex{}", std::process::id() % 100_000);
    let mut lab = EnforcedLab::up(&name, 2, sluice::lab::Attach::Routed).unwrap();
    let mut b = sluice::policy::objects::ClusterBuilder::new();
    b.add_text("world", WORLD);
    let (mut cluster, _) = b.build();
    assert!(
        cluster
            .invalid_policies
            .contains_key(&ObjectName::new("x", "bad")),
        "the fixture's policy must be invalid: {:?}",
        cluster.errors
    );
    lab.sync(&mut cluster).unwrap();
    let mut denied = 0;
    for (from, to) in [
        ("x/b", "x/a"),
        ("x/a", "x/b"),
        ("x/c", "x/a"),
        ("x/b", "x/c"),
        ("x/c", "x/b"),
    ] {
        let v = evaluate(
            &cluster,
            &Flow {
                from: Endpoint::parse(from),
                to: Endpoint::parse(to),
                port: PortRef::Number(80),
                protocol: Protocol::Tcp,
            },
        )
        .unwrap();
        let r = lab.probe(
            &ObjectName::parse(from),
            &ObjectName::parse(to),
            false,
            80,
            Protocol::Tcp,
            v.allowed,
        );
        assert_eq!(
            r.is_connected(),
            v.allowed,
            "{from} -> {to}: kernel {r}, explain:\n{v}"
        );
        if !v.allowed {
            denied += 1;
            assert!(v.to_string().contains("policy x/bad is invalid"), "{v}");
        }
    }
    // a's flows both ways are the fail-closed ones; the others pass (the lab works).
    assert_eq!(denied, 3);
}

/// ClusterNetworkPolicy tiers in the kernel, in the API's order (tests/common/cnp.rs), on
/// both attachments.
#[test]
fn cnp_tiers_are_enforced_in_the_api_order() {
    use sluice::dataplane::DataplaneKind;
    for attach in [Attach::Routed, Attach::Bridged] {
        let name = format!("tiers{}{}", std::process::id() % 10_000, attach as u8);
        common::cnp::check_tiers(&name, attach, DataplaneKind::Nftables);
    }
}
