//! Logging: tracing to stderr, `RUST_LOG` filter (default `info`), colours only on a tty.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Pods and tests read these lines; escape codes would only get in the way.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
