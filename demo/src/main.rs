//! `demo-app`: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = demo_app::config::Cli::parse();
    demo_app::logging::init();
    demo_app::commands::run(cli).await
}
