//! `kubectl sluice ...`: krew's convention is a binary named kubectl-sluice on PATH.
fn main() {
    std::process::exit(sluice::cli::run_plugin());
}
