//! A full replacement of the ruleset is one transaction: connections opened continuously
//! while the table is replaced again and again never see a moment without rules (a blocked
//! port stays blocked) nor a moment of wrong drops (an allowed port stays open).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice::dataplane::Dataplane;
use sluice::lab::enforce::EnforcedLab;
use sluice::lab::{Attach, Proto};
use sluice::nft::{Nft, NftDataplane};

const WORLD: &str = r#"
kind: Pod
apiVersion: v1
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {nodeName: node-0, containers: [{name: c}]}
---
kind: Pod
apiVersion: v1
metadata: {name: server, namespace: x, labels: {app: server}}
spec: {nodeName: node-0, containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 81}]}]}
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
"#;

const EXTRA: &str = r#"
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: unrelated, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  ingress: [{from: [{podSelector: {}}]}]
"#;

#[test]
fn probes_see_no_wrong_verdict_while_the_table_is_replaced() {
    for attach in [Attach::Routed, Attach::Bridged] {
        let name = format!("rt{}{}", std::process::id() % 10_000, attach as u8);
        let mut lab = EnforcedLab::up(&name, 1, attach).unwrap();
        let mut cluster = common::cluster_from(WORLD);
        lab.sync(&mut cluster).unwrap();
        let mut with_extra = cluster.clone();
        for p in common::cluster_from(EXTRA).policies.into_values() {
            with_extra.upsert_policy(p);
        }
        let rulesets = [lab.ruleset(&cluster, 0), lab.ruleset(&with_extra, 0)];
        let client = lab.lab().pod("x", "client").unwrap().clone();
        let server = lab.lab().pod("x", "server").unwrap().clone();
        let done = AtomicBool::new(false);
        let (probes, wrong) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for (port, want_open) in [(80u16, true), (81u16, false)] {
                let (lab, client, server, done, probes, wrong) =
                    (&lab, &client, &server, &done, &probes, &wrong);
                s.spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        let r = lab.lab().probe(
                            client,
                            server.ip,
                            port,
                            Proto::Tcp,
                            Duration::from_millis(300),
                        );
                        probes.fetch_add(1, Ordering::SeqCst);
                        if r.is_connected() != want_open {
                            wrong.fetch_add(1, Ordering::SeqCst);
                            eprintln!("{attach} port {port}: {r:?}");
                        }
                    }
                });
            }
            let mut dp = NftDataplane::new(Nft::in_netns(lab.lab().node_netns(0)));
            for i in 0..60 {
                dp.apply_full(&rulesets[i % 2]).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
            done.store(true, Ordering::SeqCst);
        });
        let (n, bad) = (probes.load(Ordering::SeqCst), wrong.load(Ordering::SeqCst));
        lab.down().unwrap();
        assert!(n >= 20, "{attach}: only {n} probes ran");
        assert_eq!(
            bad, 0,
            "{attach}: {bad} of {n} probes saw a wrong verdict during replacement"
        );
    }
}
