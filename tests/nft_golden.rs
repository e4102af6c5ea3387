//! Golden nft output for a fixture covering every feature, and `nft -c` on it.
//! Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.

mod common;

use std::collections::BTreeMap;

use sluice::compile::{compile, Attach, Attachment, CompileInput};
use sluice::nft::{json, text, Nft};
use sluice::policy::model::ObjectName;

fn attachments() -> BTreeMap<ObjectName, Attachment> {
    let mut m = BTreeMap::new();
    for (pod, iface, mac) in [
        ("x/a", "veth-xa", "02:00:00:00:00:0a"),
        ("x/b", "veth-xb", "02:00:00:00:00:0b"),
        ("y/dual", "veth-ydual", "02:00:00:00:00:0c"),
    ] {
        m.insert(
            ObjectName::parse(pod),
            Attachment {
                iface: Some(iface.into()),
                mac: Some(mac.into()),
            },
        );
    }
    m
}

fn check(attach: Attach, golden: &str) {
    let cluster = common::fixture("dataplane/cluster.yaml");
    let att = attachments();
    let input = CompileInput {
        cluster: &cluster,
        node: "node-0",
        attach,
        attachments: &att,
    };
    let rs = compile(&input);
    let out = text::render(&rs);
    // Deterministic: compiling again gives byte-identical output.
    assert_eq!(out, text::render(&compile(&input)));
    let path = format!("{}/tests/golden/{golden}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, &out).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (run with UPDATE_GOLDEN=1)");
    assert_eq!(out, want, "output differs from {path}");
    // The kernel's parser agrees with both renderings.
    let ns = common::Netns::new("golden");
    let nft = Nft::in_netns(&ns.name);
    nft.check_text(&out)
        .expect("nft -c accepts the text rendering");
    nft.check_json(&json::full_replace(&rs, &[]))
        .expect("nft -c accepts the JSON rendering");
}

#[test]
fn routed_golden() {
    check(Attach::Routed, "routed.nft");
}

#[test]
fn bridged_golden() {
    check(Attach::Bridged, "bridged.nft");
}
