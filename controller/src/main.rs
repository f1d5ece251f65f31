//! `deployctl-controller`: see the library crate for the wiring.

use clap::Parser;
use deployctl_controller::args::{Args, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match args.command {
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
            match deployctl_controller::run(args.run).await {
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
