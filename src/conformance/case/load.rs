//! Loading cases: YAML text, one file, or every case file of a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::Case;

/// Parses one case from YAML text (YAML 1.2 booleans, so a namespace `y` stays a string).
pub fn parse_case(text: &str) -> Result<Case, String> {
    let case: Case =
        serde_saphyr::from_str_with_options(text, crate::policy::objects::yaml_options())
            .map_err(|e| e.to_string())?;
    case.validate()?;
    Ok(case)
}

pub fn load_case_file(path: &Path) -> Result<Case> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_case(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The case files under `path`: the file itself, or the `.yaml`/`.yml` files directly in a
/// directory (not below it: a fuzz reproduction keeps its manifests in a subdirectory).
pub fn case_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}: check --cases", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every case under `path`, sorted by id. Ids must be unique.
pub fn load_cases(path: &Path) -> Result<Vec<Case>> {
    let files = case_files(path)?;
    if files.is_empty() {
        bail!("no case files (*.yaml) in {}", path.display());
    }
    let mut cases = Vec::with_capacity(files.len());
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in files {
        let case = load_case_file(&f)?;
        if let Some(prev) = seen.insert(case.id.clone(), f.clone()) {
            bail!(
                "case id {} appears in both {} and {}",
                case.id,
                prev.display(),
                f.display()
            );
        }
        cases.push(case);
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}
