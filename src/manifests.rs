//! Reading manifest files and directories into a [`Cluster`] snapshot.
//!
//! This is the I/O edge for offline use; interpretation is in [`crate::policy::objects`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::policy::objects::{ClusterBuilder, LoadSummary};
use crate::policy::Cluster;

/// Files under `path`: the file itself, or every `.yaml`, `.yml` and `.json` file below a
/// directory, recursively, in sorted order so loading is deterministic.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}: check the --manifests path", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(manifest_files(&p)?);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Loads every manifest under `paths` into one snapshot.
pub fn load(paths: &[PathBuf]) -> Result<(Cluster, LoadSummary)> {
    if paths.is_empty() {
        bail!("no manifests given: pass --manifests FILE_OR_DIR (repeatable)");
    }
    let mut builder = ClusterBuilder::new();
    for root in paths {
        for file in manifest_files(root)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            builder.add_text(&file.display().to_string(), &text);
        }
    }
    Ok(builder.build())
}
