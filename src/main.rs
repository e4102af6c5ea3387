fn main() {
    std::process::exit(sluice::cli::run());
}
