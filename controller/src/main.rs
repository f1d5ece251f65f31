//! `deployctl-controller`: see the library crate for the wiring.

use clap::Parser;
use deployctl_controller::args::{Args, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Crdgen) => {
            print!("{}", deployctl_controller::crdgen::crds_yaml());
            std::process::ExitCode::SUCCESS
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
