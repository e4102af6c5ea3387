//! The CLI about itself: shell completions and man pages generated from the clap definition,
//! and the `kubectl sluice` plugin entry point.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches};
use clap_complete::Shell;

use super::{source, Cli};

/// Whether this process was started as `kubectl-sluice` (krew installs a symlink or a copy
/// under that name; `kubectl sluice` then runs it).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().starts_with("kubectl-sluice"))
        })
        .unwrap_or(false)
}

fn plugin_command() -> clap::Command {
    Cli::command()
        .name("kubectl-sluice")
        .bin_name("kubectl sluice")
        .display_name("kubectl sluice")
}

/// Parses the command line of `kubectl sluice ...`.
pub fn parse_plugin() -> Cli {
    let matches = plugin_command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[derive(Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    shell: Shell,
}

pub fn completions(a: CompletionsArgs) -> anyhow::Result<i32> {
    let (mut cmd, name) = if source::plugin_mode() {
        (plugin_command(), "kubectl-sluice")
    } else {
        (Cli::command(), "sluice")
    };
    clap_complete::generate(a.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(0)
}

#[derive(Args)]
pub struct ManArgs {
    /// Write sluice.1 and one sluice-COMMAND.1 per command here; without it, print sluice(1).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn man(a: ManArgs) -> anyhow::Result<i32> {
    let cmd = Cli::command();
    match a.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            out.flush()?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            eprintln!("sluice: man pages written to {}", dir.display());
        }
    }
    Ok(0)
}
