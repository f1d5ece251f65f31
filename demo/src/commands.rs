//! The subcommands: `serve` (default), `checksum`, `migrate`, `dump` and `load`, each
//! ending in an exit code.

use std::io::Write;
use std::process::ExitCode;

use crate::checksum::{checksum_data_dir, dump, open_read_only, ChecksumError};
use crate::config::{ChecksumArgs, Cli, Command, DataDirArgs, MigrateArgs, ServeArgs};
use crate::db::Store;
use crate::server::{self, RunError, ServeConfig, EXIT_FAILURE, EXIT_USAGE};

/// Runs the command the command line asked for.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve(args).await,
        Command::Checksum(args) => checksum(&args),
        Command::Migrate(args) => migrate(args).await,
        Command::Dump(args) => dump_or_load(&args, true),
        Command::Load(args) => dump_or_load(&args, false),
    }
}

fn dump_or_load(args: &DataDirArgs, dump: bool) -> ExitCode {
    let result = if dump {
        crate::dump::dump_data_dir(&args.data_dir, &mut std::io::stdout().lock())
    } else {
        crate::dump::load_data_dir(&args.data_dir, &mut std::io::stdin().lock())
    };
    match result {
        Ok(()) => {
            if !dump {
                tracing::info!(data_dir = %args.data_dir.display(), "loaded");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let what = if dump { "dump" } else { "load" };
            tracing::error!(error = %e, "{what} failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let result = match ServeConfig::from_args(args) {
        Ok(cfg) => server::run(cfg).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            tracing::error!(error = %e, exit_code = code, "demo-app exiting");
            ExitCode::from(code)
        }
    }
}

fn checksum(args: &ChecksumArgs) -> ExitCode {
    let result = if args.dump {
        open_read_only(&args.data_dir).and_then(|conn| {
            let mut out = std::io::stdout().lock();
            let mut write_err = None;
            dump(&conn, &mut |bytes| {
                if write_err.is_none() {
                    write_err = out.write_all(bytes).err();
                }
            })
            .map_err(|source| ChecksumError::Sqlite {
                path: args.data_dir.clone(),
                source,
            })?;
            if let Some(e) = write_err {
                tracing::error!(error = %e, "writing the dump failed");
            }
            Ok(())
        })
    } else {
        checksum_data_dir(&args.data_dir).map(|sum| println!("{sum}"))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "checksum failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn migrate(args: MigrateArgs) -> ExitCode {
    let (version, _) = match args.version.resolve() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let dir = args.data_dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (store, report) = Store::open(&dir, version, args.seed, false)?;
        store.close()?;
        Ok::<_, RunError>(report)
    })
    .await
    .unwrap_or_else(|e| Err(RunError::Server(format!("migration task: {e}"))));
    match result {
        Ok(report) => {
            tracing::info!(
                version,
                from = report.migration.from,
                to = report.migration.to,
                seeded = report.migration.seeded,
                items = report.items,
                data_dir = %args.data_dir.display(),
                "migrated"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let code = e.exit_code();
            tracing::error!(error = %e, exit_code = code, "migration failed");
            ExitCode::from(code)
        }
    }
}
