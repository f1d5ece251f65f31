//! `deployctl-controller`: see the library crate for the wiring.

use clap::Parser;
use deployctl_controller::args::{Args, Command};

// No `#[tokio::main]`: the agent must run outside any runtime, because the snapshot
// engine's S3 store drives its own runtime with `block_on`, which panics inside another.
fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Agent(agent)) => deployctl_controller::agent::command::main(*agent),
        Some(Command::Crdgen { out_dir: None }) => {
            print!("{}", deployctl_controller::crdgen::all_yaml());
            std::process::ExitCode::SUCCESS
        }
        Some(Command::Crdgen { out_dir: Some(dir) }) => {
            match deployctl_controller::crdgen::write_all(&dir) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing CRDs to {}: {e}", dir.display());
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Some(Command::Run) | None => {
            deployctl_controller::init_tracing(args.run.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(deployctl_controller::run(args.run)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
