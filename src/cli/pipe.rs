//! A closed output pipe (`sluice matrix ... | head -1`) ends sluice quietly.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE: `print!` then panics and
//! `write!` returns an error. Either way the reader is gone and there is nobody to tell, so
//! sluice exits with 141 (128 + SIGPIPE, what a shell shows for `cat` in the same place) and
//! prints nothing. SIGPIPE itself stays ignored: the agent and the lab write to sockets, where
//! a peer that went away must be an error, not the end of the process.

/// The exit code for a closed output pipe.
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// Installs a panic hook that turns "failed printing to stdout (or stderr): Broken pipe" into a
/// quiet exit.
pub fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // stdout, or stderr when both go into the pipe (`2>&1 | head`).
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

/// Whether an error is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
