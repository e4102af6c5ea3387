//! `sluice lint`: findings with a code, severity, object, field, message and fix.

use std::fmt::Write as _;

use clap::Args;

use super::{ManifestArgs, TextOrJson};
use crate::review::lint::{lint, Severity, CHECKS};

#[derive(Args)]
pub struct LintArgs {
    #[command(flatten)]
    manifests: ManifestArgs,
    #[arg(long, value_enum, default_value = "text")]
    output: TextOrJson,
    /// Codes to leave out, comma separated (e.g. namespace-not-declared).
    #[arg(long, value_delimiter = ',', value_name = "CODE")]
    ignore: Vec<String>,
}

pub fn run(a: LintArgs) -> anyhow::Result<i32> {
    if let Some(bad) = a
        .ignore
        .iter()
        .find(|c| !CHECKS.iter().any(|k| k.code == c.as_str()))
    {
        let codes: Vec<&str> = CHECKS.iter().map(|c| c.code).collect();
        return Err(super::BadInput(format!(
            "--ignore: unknown code {bad}: the codes are {}",
            codes.join(", ")
        ))
        .into());
    }
    let (cluster, _) = a.manifests.load()?;
    let findings = lint(&cluster, &a.ignore);
    match a.output {
        TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        TextOrJson::Text => {
            let mut s = String::new();
            for f in &findings {
                let field = if f.field.is_empty() {
                    String::new()
                } else {
                    format!(" {}", f.field)
                };
                let _ = writeln!(
                    s,
                    "{}[{}] {}{field}: {}\n    fix: {}",
                    f.severity.as_str(),
                    f.code,
                    f.object,
                    f.message,
                    f.fix
                );
            }
            let count = |sev| findings.iter().filter(|f| f.severity == sev).count();
            let _ = writeln!(
                s,
                "{} errors, {} warnings, {} info",
                count(Severity::Error),
                count(Severity::Warning),
                count(Severity::Info)
            );
            print!("{s}");
        }
    }
    Ok(i32::from(
        findings.iter().any(|f| f.severity == Severity::Error),
    ))
}
