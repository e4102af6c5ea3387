//! The per-pod decisions for representative policies, read without any nftables shape.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::decision::*;
use super::{decide, Attach, CompileInput};
use crate::policy::objects::ClusterBuilder;
use crate::policy::Protocol;

const PODS: &str = "
kind: Namespace
apiVersion: v1
metadata: {name: x}
---
kind: Namespace
apiVersion: v1
metadata: {name: y, labels: {team: blue}}
---
kind: Pod
apiVersion: v1
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-0, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.0.2}
---
kind: Pod
apiVersion: v1
metadata: {name: b, namespace: y, labels: {app: b}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {podIP: 10.244.1.3}
";

fn decisions(policies: &str) -> NodeDecisions {
    let mut b = ClusterBuilder::new();
    b.add_text("test", &format!("{PODS}---\n{policies}"));
    let (cluster, _) = b.build();
    decide(&CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach: Attach::Routed,
        attachments: &BTreeMap::new(),
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The only local pod's direction, and its one rulebook.
fn only(d: &NodeDecisions, ingress: bool) -> (&DirDecision, &Rulebook) {
    assert_eq!(d.pods.len(), 1, "{d:?}");
    let p = &d.pods[0];
    let dd = if ingress { &p.ingress } else { &p.egress };
    assert_eq!(dd.tiers.len(), 1, "{dd:?}");
    (dd, &d.rulebooks[&dd.tiers[0]])
}

fn addrs(d: &NodeDecisions, c: &Clause) -> BTreeSet<String> {
    let PeerMatch::Set(s) = &c.peer else {
        panic!("{c:?} has no peer set")
    };
    match &d.peer_sets[s].members {
        PeerMembers::Addrs(a) => a.iter().map(|a| a.to_string()).collect(),
        PeerMembers::Prefixes(p) => p.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn no_policy_leaves_pods_open_and_guarded() {
    let d = decisions("");
    assert!(d.accept_established);
    let p = &d.pods[0];
    assert_eq!(p.pod.to_string(), "x/a");
    for (_, dd) in p.dirs() {
        assert_eq!(dd.isolation, Isolation::Open);
        assert_eq!(dd.default, Action::Accept);
        assert!(dd.tiers.is_empty());
    }
    assert_eq!(p.anti_spoof.v4, vec!["10.244.0.2/32".parse().unwrap()]);
    assert_eq!(p.anti_spoof.mac, None);
    assert_eq!(p.anti_spoof.arp, None, "routed: no ARP pinning");
}

#[test]
fn default_deny_isolates_with_an_empty_rulebook() {
    let d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
    );
    let (dd, book) = only(&d, true);
    assert_eq!(
        dd.isolation,
        Isolation::Isolated {
            policies: vec!["x/deny".into()]
        }
    );
    assert!(dd.drop_invalid);
    assert_eq!(dd.accept_peers, vec![ip("10.244.0.2")]);
    assert_eq!(dd.default, Action::Drop);
    assert!(book.clauses.is_empty());
    assert_eq!(book.label, "x/deny: no ingress rules, allows nothing");
    assert_eq!(d.pods[0].egress.isolation, Isolation::Open);
}

#[test]
fn allow_from_a_namespace_is_one_accept_clause_over_a_peer_set() {
    let d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: blue, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]\n",
    );
    let (_, book) = only(&d, true);
    assert_eq!(book.clauses.len(), 1, "{book:?}");
    let c = &book.clauses[0];
    assert_eq!((c.action, &c.port), (Action::Accept, &PortMatch::Any));
    assert_eq!(addrs(&d, c), BTreeSet::from(["10.244.1.3".to_string()]));
    assert_eq!(c.label, "x/blue ingress rule 0");
}

#[test]
fn numeric_and_named_ports_are_separate_clauses() {
    let d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 81}, {port: http}, {protocol: UDP}]}]\n",
    );
    let (_, book) = only(&d, true);
    let ports: Vec<&PortMatch> = book.clauses.iter().map(|c| &c.port).collect();
    assert_eq!(ports.len(), 3, "{book:?}");
    assert_eq!(ports[0], &PortMatch::Ranges(Protocol::Tcp, vec![(80, 81)]));
    assert_eq!(ports[1], &PortMatch::Proto(Protocol::Udp));
    let PortMatch::Named(set) = ports[2] else {
        panic!("{:?}", ports[2])
    };
    assert!(book.clauses.iter().all(|c| c.peer == PeerMatch::Any));
    // Resolved on the selected local pod.
    assert_eq!(
        d.named_ports[set].entries,
        BTreeSet::from([(ip("10.244.0.2"), Protocol::Tcp, 8080)])
    );
}

#[test]
fn egress_to_an_ipblock_cuts_out_its_exceptions() {
    let d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: out, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.128.0.0/9]}}], ports: [{protocol: UDP, port: 53}]}]\n",
    );
    assert_eq!(d.pods[0].ingress.isolation, Isolation::Open);
    let (dd, book) = only(&d, false);
    assert_eq!(dd.default, Action::Drop);
    assert_eq!(book.clauses.len(), 1);
    let c = &book.clauses[0];
    assert_eq!(c.port, PortMatch::Ranges(Protocol::Udp, vec![(53, 53)]));
    assert_eq!(addrs(&d, c), BTreeSet::from(["10.0.0.0/9".to_string()]));
    assert_eq!(book.direction, crate::policy::model::Direction::Egress);
}

#[test]
fn pods_with_the_same_policies_share_a_rulebook_and_equal_peers_a_set() {
    let mut b = ClusterBuilder::new();
    b.add_text(
        "test",
        &format!(
            "{PODS}---\nkind: Pod\napiVersion: v1\nmetadata: {{name: c, namespace: x}}\nspec: {{nodeName: node-0, containers: [{{name: c}}]}}\nstatus: {{podIP: 10.244.0.4}}\n---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{{port: 80}}]}}, {{from: [{{podSelector: {{}}}}], ports: [{{port: 90}}]}}]\n"
        ),
    );
    let (cluster, _) = b.build();
    let d = decide(&CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach: Attach::Bridged,
        attachments: &BTreeMap::new(),
    });
    assert_eq!(d.pods.len(), 2);
    assert_eq!(d.pods[0].ingress.tiers, d.pods[1].ingress.tiers);
    assert_eq!(d.rulebooks.len(), 1);
    assert_eq!(d.peer_sets.len(), 1, "{:?}", d.peer_sets);
    // Bridged: the ARP sender is pinned too.
    assert_eq!(d.pods[0].anti_spoof.arp, Some(ip("10.244.0.2")));
}

#[test]
fn an_invalid_policy_fails_its_namespace_closed() {
    let d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: bad, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]\n",
    );
    let p = &d.pods[0];
    for (_, dd) in p.dirs() {
        let Isolation::FailClosed { policies, reason } = &dd.isolation else {
            panic!("{dd:?}")
        };
        assert_eq!(policies, &vec!["x/bad".to_string()]);
        assert!(reason.starts_with("x/a fails closed: "), "{reason}");
        assert_eq!(dd.default, Action::Drop);
        assert!(dd.tiers.is_empty() && dd.accept_peers.is_empty());
    }
    assert!(d.rulebooks.is_empty());
}

#[test]
fn decisions_serialise() {
    let d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n",
    );
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["pods"][0]["ingress"]["isolation"]["state"], "isolated");
    assert_eq!(v["pods"][0]["ingress"]["default"], "Drop");
}

/// Tiers to come: a Continue clause lowers to `return` (back to the pod chain, on to its next
/// tier), a Drop clause to `drop`.
#[test]
fn continue_and_drop_clauses_lower_to_return_and_drop() {
    use super::ir::{TableFamily, Verdict};
    let mut d = decisions(
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}, {protocol: UDP}]}]\n",
    );
    let name = d.pods[0].ingress.tiers[0].clone();
    let book = d.rulebooks.get_mut(&name).unwrap();
    book.clauses[0].action = Action::Continue;
    book.clauses[1].action = Action::Drop;
    let rs = super::lower::lower(d);
    let chain = &rs.table(TableFamily::Inet).unwrap().chains[&name];
    let verdicts: Vec<&Verdict> = chain.rules.iter().map(|r| &r.verdict).collect();
    assert_eq!(verdicts, [&Verdict::Return, &Verdict::Drop]);
    assert!(crate::nft::text::render(&rs).contains("th dport 80 return"));
}
