//! One module per command. Each has an `Args` struct (its `--help`) and a `run`; the
//! rendering each command does is a pure function of the objects and "now", unit-tested
//! beside it.

pub mod completion;
pub mod diff;
pub mod get;
pub mod history;
pub mod operation;
pub mod snapshot;
pub mod status;
pub mod wait;

use crate::args::GlobalArgs;
use crate::cluster::Cluster;
use crate::error::CliError;
use crate::output::Style;
use clap::Subcommand;
use std::io::Write;

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show one stack, or all stacks of the namespace, as a table
    Get(get::GetArgs),
    /// List the stacks of the namespace (or of all namespaces) as a table
    List(get::ListArgs),
    /// Tell the story of one stack: components, gates, rollout, rollbacks
    Status(status::StatusArgs),
    /// Show the revisions of a stack, what changed in each, and what became of them
    History(history::HistoryArgs),
    /// Show what changed in the components between two revisions
    Diff(diff::DiffArgs),
    /// Roll a stack back to its stable revision (or --to-revision), data included
    Rollback(operation::RollbackArgs),
    /// Stop rolling: the current component finishes, no further one starts
    Pause(operation::PauseArgs),
    /// Undo a pause: the rollout goes on
    Resume(operation::ActionArgs),
    /// Skip the remaining analysis of the rollout in progress
    Promote(operation::ActionArgs),
    /// Roll the spec's revision out again after a rollback
    Retry(operation::ActionArgs),
    /// Stop the rollout in progress and go back to the stable revision
    Abort(operation::ActionArgs),
    /// After a data restore failed in a rollback: start the stopped components on the
    /// data as it is now (recorded as your decision)
    AcceptLiveData(operation::ActionArgs),
    /// List, take, verify and restore snapshots of a stack's data
    Snapshot(snapshot::SnapshotArgs),
    /// Wait until a stack is healthy, rolled back, ready or in a phase (for pipelines)
    Wait(wait::WaitArgs),
    /// Print a shell completion script
    Completion(completion::CompletionArgs),
}

/// What every command gets besides its arguments.
#[derive(Debug)]
pub struct Ctx {
    /// The shared options.
    pub global: GlobalArgs,
    /// How stdout is decorated.
    pub style: Style,
    /// The name the program was invoked as, for completions and hints
    /// (`deployctl` or `kubectl deployctl`).
    pub bin_name: String,
}

impl Ctx {
    /// Connects to the cluster the options name.
    pub async fn cluster(&self) -> Result<Cluster, CliError> {
        Cluster::connect(&self.global).await
    }
}

/// Runs one command.
pub async fn run(command: Command, ctx: &Ctx) -> Result<(), CliError> {
    use operation::Action;
    match command {
        Command::Get(args) => get::run_get(args, ctx).await,
        Command::List(args) => get::run_list(args, ctx).await,
        Command::Status(args) => status::run(args, ctx).await,
        Command::History(args) => history::run(args, ctx).await,
        Command::Diff(args) => diff::run(args, ctx).await,
        Command::Rollback(args) => operation::run_rollback(args, ctx).await,
        Command::Pause(args) => operation::run_pause(args, ctx).await,
        Command::Resume(args) => operation::run_action(Action::Resume, args, ctx).await,
        Command::Promote(args) => operation::run_action(Action::Promote, args, ctx).await,
        Command::Retry(args) => operation::run_action(Action::Retry, args, ctx).await,
        Command::Abort(args) => operation::run_action(Action::Abort, args, ctx).await,
        Command::AcceptLiveData(args) => {
            operation::run_action(Action::AcceptLiveData, args, ctx).await
        }
        Command::Snapshot(args) => snapshot::run(args, ctx).await,
        Command::Wait(args) => wait::run(args, ctx).await,
        Command::Completion(args) => completion::run(args, ctx),
    }
}

/// Writes `text` to stdout in one go, so a closed pipe is an error we can recognise.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
