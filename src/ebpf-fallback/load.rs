//! Loading the classifier object: programs through the verifier, maps opened (and pinned).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::maps::{Map, MapData};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};

use super::layout::{self, MapId};
use super::sys::RawMap;
use super::{object, EbpfDataplane, PROG_POD_EGRESS, PROG_POD_INGRESS, PROG_POST_NAT};

pub(super) struct Loaded {
    pub(super) ebpf: Ebpf,
    pub(super) maps: BTreeMap<MapId, RawMap>,
}

/// Maps kept in the pin directory, so that a restarted agent finds the policy, the flow table
/// (established connections go on) and the counters where it left them.
pub(super) const PINNED_MAPS: [&str; 11] = [
    "sluice_pods",
    "sluice_ctxs",
    "sluice_peers4",
    "sluice_peers6",
    "sluice_ports",
    "sluice_named",
    "sluice_nat",
    "sluice_flows",
    "sluice_frags",
    "sluice_pending",
    "sluice_stats",
];

impl EbpfDataplane {
    pub(super) fn loaded(&mut self) -> Result<&mut Loaded> {
        if self.loaded.is_none() {
            let loaded = match &self.pin {
                None => load(None)?,
                Some(dir) => match load(Some(dir)) {
                    Ok(l) => l,
                    Err(e) => {
                        // Maps pinned by another version (other sizes): start from fresh maps.
                        // The old links keep their maps and enforce until ours replace them.
                        eprintln!(
                            "sluice: ebpf: the pinned maps in {} cannot be reused ({e:#}); starting with fresh maps",
                            dir.display()
                        );
                        for m in PINNED_MAPS {
                            let _ = std::fs::remove_file(dir.join(m));
                        }
                        load(Some(dir))?
                    }
                },
            };
            self.loaded = Some(loaded);
        }
        Ok(self.loaded.as_mut().expect("just loaded"))
    }
}

pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))
}

pub(super) fn map_data(m: &Map) -> &MapData {
    match m {
        Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::Array(d)
        | Map::PerCpuHashMap(d)
        | Map::Unsupported(d) => d,
        other => panic!("unexpected map kind {other:?}"),
    }
}

/// Loads the object, verifies the programs, and opens the maps we write; with `pin`, the maps
/// pinned there are reused (and created and pinned there when missing).
pub(super) fn load(pin: Option<&Path>) -> Result<Loaded> {
    let btf = aya::Btf::from_sys_fs().ok();
    let mut loader = EbpfLoader::new();
    loader.btf(btf.as_ref());
    if let Some(dir) = pin {
        for m in PINNED_MAPS {
            loader.map_pin_path(m, dir.join(m));
        }
    }
    let mut ebpf = loader.load(object()?).context("loading the eBPF object")?;
    for name in [PROG_POD_EGRESS, PROG_POD_INGRESS, PROG_POST_NAT] {
        program(&mut ebpf, name)?
            .load()
            .with_context(|| format!("the verifier rejected {name}"))?;
    }
    let mut maps = BTreeMap::new();
    for m in MapId::ALL {
        let data = map_data(
            ebpf.map(m.name())
                .with_context(|| format!("map {} missing from the object", m.name()))?,
        );
        let info = data.info()?;
        if info.key_size() as usize != m.key_size() || info.value_size() as usize != m.value_size()
        {
            bail!(
                "map {}: the object has {}+{} bytes, sluice writes {}+{} (layout.rs and classifier.bpf.c disagree)",
                m.name(),
                info.key_size(),
                info.value_size(),
                m.key_size(),
                m.value_size()
            );
        }
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        maps.insert(
            m,
            RawMap {
                fd,
                key_size: m.key_size(),
                value_size: m.value_size(),
            },
        );
    }
    for (name, k, v) in [
        ("sluice_flows", layout::FLOW_KEY_SIZE, layout::FLOW_VAL_SIZE),
        ("sluice_frags", layout::FRAG_KEY_SIZE, 8),
        (
            "sluice_pending",
            layout::PENDING_KEY_SIZE,
            layout::FLOW_KEY_SIZE,
        ),
    ] {
        let info = map_data(ebpf.map(name).with_context(|| format!("map {name}"))?).info()?;
        if info.key_size() as usize != k || info.value_size() as usize != v {
            bail!("map {name}: layout.rs and classifier.bpf.c disagree");
        }
    }
    Ok(Loaded { ebpf, maps })
}
