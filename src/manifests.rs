//! Reading manifest files, directories and stdin into a [`Cluster`] snapshot.
//!
//! This is the I/O edge for offline use; interpretation is in [`crate::policy::objects`].
//! Whatever cannot be read refuses the whole load (an error, exit 2 in the CLI): a file left
//! out could hold the policies that protect some pods.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::policy::objects::{refusal_message, ClusterBuilder, LoadSummary};
use crate::policy::parse::MAX_FILE_BYTES;
use crate::policy::Cluster;

/// `-` as a manifest path: standard input.
pub const STDIN: &str = "-";

/// What a walk of the manifest paths found.
#[derive(Debug, Default)]
pub struct Found {
    /// Files to read, each once, in a deterministic order.
    pub files: Vec<PathBuf>,
    /// Things skipped on purpose (FIFOs, sockets, links to nowhere), for warnings.
    pub skipped: Vec<String>,
}

/// Whether a file name has a manifest extension (`.yaml`, `.yml`, `.json`, in any case).
pub fn is_manifest_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "yaml" | "yml" | "json"))
}

/// Files under `roots`: a named path that is not a directory is read as given (a file, a
/// pipe such as `<(kubectl get ...)`); a directory is searched recursively for manifest
/// names in sorted order. Symbolic links are followed, every directory and file is visited
/// once (so a link loop ends), and non-regular files in directories are skipped.
pub fn manifest_files(roots: &[PathBuf]) -> Result<Found> {
    let mut found = Found::default();
    let mut seen_dirs = BTreeSet::new();
    let mut seen_files = BTreeSet::new();
    for root in roots {
        if root.as_os_str() == STDIN {
            found.files.push(root.clone());
            continue;
        }
        let meta = std::fs::metadata(root).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e}: check the --manifests path",
                root.display()
            )
        })?;
        if meta.is_dir() {
            walk(root, &mut seen_dirs, &mut seen_files, &mut found)?;
        } else if seen_files.insert(canonical(root)) {
            found.files.push(root.clone());
        }
    }
    Ok(found)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn walk(
    dir: &Path,
    seen_dirs: &mut BTreeSet<PathBuf>,
    seen_files: &mut BTreeSet<PathBuf>,
    found: &mut Found,
) -> Result<()> {
    if !seen_dirs.insert(canonical(dir)) {
        return Ok(()); // a link back to a directory already searched
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                if is_manifest_name(&p) {
                    found.skipped.push(format!("skipped {}: {e}", p.display()));
                }
                continue;
            }
        };
        if meta.is_dir() {
            walk(&p, seen_dirs, seen_files, found)?;
        } else if !is_manifest_name(&p) {
        } else if !meta.is_file() {
            // A FIFO would block forever, a device never ends: only regular files are read.
            found.skipped.push(format!(
                "skipped {}: not a regular file (a pipe, socket or device); name it with -m to read it",
                p.display()
            ));
        } else if seen_files.insert(canonical(&p)) {
            found.files.push(p);
        }
    }
    Ok(())
}

/// Reads one input, at most [`MAX_FILE_BYTES`].
fn read_input(path: &Path) -> Result<String> {
    let shown = display(path);
    let mut bytes = Vec::new();
    let limit = MAX_FILE_BYTES as u64 + 1;
    let read = if path.as_os_str() == STDIN {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    if let Err(e) = read {
        let hint = if e.kind() == std::io::ErrorKind::IsADirectory {
            String::new()
        } else {
            ": check the --manifests path".to_string()
        };
        bail!("cannot read {shown}: {e}{hint}");
    }
    if bytes.len() > MAX_FILE_BYTES {
        bail!(
            "{shown} is larger than {} MiB, the most sluice reads from one file (a limit against runaway input): split it",
            MAX_FILE_BYTES >> 20
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{shown} is not UTF-8 text (byte {}): manifests are YAML or JSON",
            e.utf8_error().valid_up_to()
        )
    })
}

fn display(path: &Path) -> String {
    if path.as_os_str() == STDIN {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

/// Loads every manifest under `paths` into one snapshot, or refuses with every reason.
pub fn load(paths: &[PathBuf]) -> Result<(Cluster, LoadSummary)> {
    if paths.is_empty() {
        bail!("no manifests given: pass --manifests FILE_OR_DIR (repeatable, - for stdin)");
    }
    let found = manifest_files(paths)?;
    let mut builder = ClusterBuilder::new();
    let mut refused = Vec::new();
    for w in found.skipped {
        builder.warn(w);
    }
    for file in &found.files {
        match read_input(file) {
            Ok(text) => builder.add_text(&display(file), &text),
            Err(e) => refused.push(format!("{e:#}")),
        }
    }
    let documents = builder.documents();
    let (cluster, mut summary) = builder.build();
    summary.refused.extend(refused);
    if !summary.refused.is_empty() {
        bail!("{}", refusal_message(&summary.refused));
    }
    if documents == 0 {
        let shown: Vec<String> = paths.iter().map(|p| display(p)).collect();
        bail!(
            "found no Kubernetes objects in {} ({} files read): an empty input would remove every rule, so sluice stops here",
            shown.join(", "),
            found.files.len()
        );
    }
    Ok((cluster, summary))
}
