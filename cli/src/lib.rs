//! deployctl, the command line that people on call and pipelines use to see and steer
//! ProductionStacks: `get`/`list`, `status`, `history`, `diff`, the operations
//! (`rollback`, `pause`, `resume`, `promote`, `retry`, `abort`), `wait`, the snapshots of
//! a stack's data (`snapshot list|create|verify|restore`) and `completion`.
//!
//! [`main`] is the whole program; the `deployctl` and `kubectl-deployctl` binaries call it.

pub mod args;
pub mod cluster;
pub mod commands;
pub mod describe;
pub mod error;
pub mod output;
pub mod stack_snapshots;
pub mod stacks;
pub mod watch;

use args::Cli;
use clap::{CommandFactory, FromArgMatches};
use commands::Ctx;
use error::{exit, render};
use output::Style;
use std::ffi::OsString;
use std::process::ExitCode;

/// The name `--help` shows when run as a kubectl plugin.
pub const PLUGIN_NAME: &str = "kubectl deployctl";

/// The name to show for a program invoked as `argv0`: `kubectl deployctl` for the
/// plugin binary (kubectl runs it as `kubectl-deployctl`), else `deployctl`.
pub fn display_name(argv0: Option<&OsString>) -> &'static str {
    let stem = argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("deployctl");
    if stem.starts_with("kubectl-") {
        PLUGIN_NAME
    } else {
        "deployctl"
    }
}

/// Parses the arguments, runs the command and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let name = display_name(argv.first());
    let matches = match Cli::command().bin_name(name).try_get_matches_from(&argv) {
        Ok(m) => m,
        // Help, version and usage errors: clap prints them and knows the code (0 or 2).
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    let ctx = Ctx {
        style: Style::for_stdout(cli.global.no_color),
        // Completions are for the executable's own name: `kubectl-deployctl` for the plugin.
        bin_name: if name == PLUGIN_NAME {
            "kubectl-deployctl".to_string()
        } else {
            name.to_string()
        },
        global: cli.global,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(commands::run(cli.command, &ctx)) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(e) if e.is_broken_pipe() => ExitCode::from(exit::SUCCESS),
        Err(e) => {
            eprintln!("{}", render(&e, Style::stderr_color(ctx.global.no_color)));
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_binary_shows_the_kubectl_name() {
        let n = |s: &str| display_name(Some(&OsString::from(s)));
        assert_eq!(n("/usr/local/bin/kubectl-deployctl"), "kubectl deployctl");
        assert_eq!(n("deployctl"), "deployctl");
        assert_eq!(n("./target/debug/deployctl"), "deployctl");
        assert_eq!(display_name(None), "deployctl");
    }
}
