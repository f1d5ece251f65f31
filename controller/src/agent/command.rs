//! `deployctl-controller agent <snapshot|restore|verify|prune>`: runs one snapshot-engine
//! operation inside the agent's Job and reports an [`AgentResult`].
//!
//! Progress goes to stderr as plain lines; the result is the last line of stdout and the
//! content of the termination log, which is how the controller reads it (the pod has no
//! API token). Exit status: 0 on success, 1 on failure, 2 when the arguments do not parse.
//! Nothing secret is printed: the key is read from a file and never echoed, S3
//! credentials stay in the environment, and messages pass through [`redact`] (store
//! errors can quote presigned URLs).

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use deployctl_snapshot::store::{ACCESS_KEY_ENV, SECRET_KEY_ENV};
use deployctl_snapshot::{
    plan_retention, recover_interrupted_restore, DataDirLock, Error as EngineError, GcOptions,
    MasterKey, Method, Phase, ProgressUpdate, RepoUsage, Repository, RestoreOptions,
    RetentionPolicy, SnapshotId, SnapshotOptions, Source, StoreSpec, TryLock,
};

use super::job::{AgentOp, TERMINATION_LOG};
use super::result::AgentResult;

/// Options of `deployctl-controller agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// What to do: `snapshot` the live data, `restore` a snapshot into it, `verify` a
    /// snapshot, or `prune` snapshots by retention and garbage-collect the repository.
    #[arg(value_enum)]
    pub op: AgentOp,

    /// The repository, as JSON: `{"type":"filesystem","path":"/store"}` or
    /// `{"type":"s3","endpoint":"…","bucket":"…","region":"…","prefix":"…"}`. S3
    /// credentials are read from DEPLOYCTL_S3_ACCESS_KEY_ID and
    /// DEPLOYCTL_S3_SECRET_ACCESS_KEY.
    #[arg(long, value_parser = parse_store)]
    pub store: StoreSpec,

    /// File holding the repository's 32-byte master key, raw or as 64 hex digits. Required
    /// for an encrypted repository; a snapshot into a new repository encrypts it.
    #[arg(long)]
    pub key_file: Option<PathBuf>,

    /// The live data directory (snapshot, restore with `files` and `sqlite`).
    #[arg(long)]
    pub data: Option<PathBuf>,

    /// For `--method exec`: the dump's output, written by the dump command in another
    /// container (snapshot), or where the verified stream is put for the restore command
    /// (restore; it appears only once every chunk has been verified).
    #[arg(long)]
    pub stream: Option<PathBuf>,

    /// How the data is copied (snapshot, restore).
    #[arg(long, value_enum, default_value_t = DataMethodArg::Files)]
    pub method: DataMethodArg,

    /// For `--method sqlite`: the database file, relative to `--data`.
    #[arg(long)]
    pub database: Option<PathBuf>,

    /// The stack: recorded in a snapshot; restore and verify refuse a snapshot of another
    /// stack; prune considers only this stack's snapshots.
    #[arg(long)]
    pub stack: Option<String>,

    /// The component, used like `--stack`.
    #[arg(long)]
    pub component: Option<String>,

    /// The stack revision the data belongs to, recorded in the snapshot (snapshot).
    #[arg(long)]
    pub revision: Option<i64>,

    /// The snapshot's digest, 64 hex digits (restore, verify).
    #[arg(long)]
    pub snapshot: Option<String>,

    /// Keep the newest N snapshots of the component (prune).
    #[arg(long)]
    pub keep_last: Option<u32>,

    /// Also keep the newest snapshot of each of the last D days (prune).
    #[arg(long)]
    pub keep_daily: Option<u32>,

    /// Forget exactly these snapshots of the component (digests; repeatable) and nothing
    /// else (prune). The controller names the digests of the StackSnapshot objects it
    /// deletes, so a snapshot taken or referenced meanwhile is never lost; a digest
    /// already gone is skipped.
    #[arg(long = "forget")]
    pub forget: Vec<String>,

    /// Where to write the result for the kubelet; skipped when its directory does not
    /// exist.
    #[arg(long, default_value = TERMINATION_LOG)]
    pub termination_log: PathBuf,
}

/// How the data is copied, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataMethodArg {
    /// The directory tree.
    Files,
    /// One SQLite database, copied live with the online backup API.
    Sqlite,
    /// A dump command's output, given to a restore command on stdin; both run in other
    /// containers of the pod, exchanging the stream through `--stream`.
    Exec,
}

fn parse_store(s: &str) -> Result<StoreSpec, String> {
    serde_json::from_str(s).map_err(|e| format!("not a store spec: {e}"))
}

/// Why a run failed: a bounded category and a message for people.
#[derive(Debug)]
struct Failure {
    category: &'static str,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            category: "usage",
            message: message.into(),
        }
    }

    fn engine(context: impl std::fmt::Display, e: &EngineError) -> Self {
        Failure {
            category: e.category(),
            message: format!("{context}: {e}"),
        }
    }

    /// A failure concerning snapshot `id`, named once: most engine errors already start
    /// with it, store and I/O errors do not.
    fn of_snapshot(what: &str, id: SnapshotId, e: &EngineError) -> Self {
        let text = e.to_string();
        let message = if text.contains(&id.to_hex()) {
            format!("{what}: {text}")
        } else {
            format!("{what} of snapshot {id}: {text}")
        };
        Failure {
            category: e.category(),
            message,
        }
    }
}

/// Figures of a successful run.
#[derive(Debug, Default)]
struct Outcome {
    digest: Option<String>,
    size_bytes: Option<u64>,
    files: Option<u64>,
    chunks: Option<u64>,
    new_bytes: Option<u64>,
    stored_bytes: Option<u64>,
    message: Option<String>,
    /// The repository measured after the work, when it could be.
    usage: Option<RepoUsage>,
}

/// Runs the agent: does the work, prints the result, writes the termination log.
pub fn main(args: AgentArgs) -> ExitCode {
    init_logging();
    let result = run(&args);
    let line = result.to_json_line();
    if let Some(m) = &result.message {
        eprintln!("agent {}: {m}", args.op);
    }
    println!("{line}");
    write_termination_log(&args.termination_log, &line);
    if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Does the work and describes the outcome; never panics on bad input.
pub fn run(args: &AgentArgs) -> AgentResult {
    let started = Instant::now();
    let outcome = match args.op {
        AgentOp::Snapshot => snapshot(args),
        AgentOp::Restore => restore(args),
        AgentOp::Verify => verify(args),
        AgentOp::Prune => prune(args),
    };
    let mut r = AgentResult::new(args.op, outcome.is_ok(), started.elapsed().as_secs_f64());
    match outcome {
        Ok(o) => {
            r.digest = o.digest;
            r.size_bytes = o.size_bytes;
            r.files = o.files;
            r.chunks = o.chunks;
            r.new_bytes = o.new_bytes;
            r.stored_bytes = o.stored_bytes;
            r.message = o.message;
            if let Some(u) = o.usage {
                r.repository_bytes = Some(u.stored_bytes);
                r.repository_objects = Some(u.objects);
                r.total_bytes = u.space.map(|s| s.total_bytes);
                r.available_bytes = u.space.map(|s| s.available_bytes);
            }
        }
        Err(f) => {
            r.category = Some(f.category.into());
            r.message = Some(f.message);
        }
    }
    r.message = r.message.map(|m| redact(&m));
    r
}

/// Removes what must not reach a log or a status: the S3 credentials' values, and the
/// query of any URL (store transport errors quote the presigned request URL, whose
/// signature would grant access to the object for minutes).
pub fn redact(message: &str) -> String {
    // URLs first: the credentials' replacement text would end a URL early.
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        let url_len = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .unwrap_or(rest.len() - at);
        let url = &rest[at..at + url_len];
        out.push_str(&rest[..at]);
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?<query redacted>");
            }
            None => out.push_str(url),
        }
        rest = &rest[at + url_len..];
    }
    out.push_str(rest);
    for var in [ACCESS_KEY_ENV, SECRET_KEY_ENV] {
        if let Ok(v) = std::env::var(var) {
            // A very short value would redact unrelated text, and guards nothing.
            if v.len() >= 4 {
                out = out.replace(&v, "<redacted>");
            }
        }
    }
    out
}

/// Engine warnings (a rolled-back swap, a lock left behind) as plain stderr lines.
fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // try_init: a test harness or a second call may have set one already.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Best effort: outside a pod there is no termination log, and a failure to write it must
/// not turn a good result into a failed run (stdout still has it).
fn write_termination_log(path: &Path, line: &str) {
    let dir_exists = path
        .parent()
        .map(|d| d.as_os_str().is_empty() || d.is_dir())
        .unwrap_or(false);
    if dir_exists {
        if let Err(e) = std::fs::write(path, line) {
            eprintln!("agent: cannot write {}: {e}", path.display());
        }
    }
}

/// Progress as a line per report: `snapshot: 48.0 of 120.0 MiB (40%)`.
fn progress(u: ProgressUpdate) {
    let phase = match u.phase {
        Phase::Snapshot => "snapshot",
        Phase::Restore => "restore",
        Phase::Verify => "verify",
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let pct = (u.done_bytes * 100)
        .checked_div(u.total_bytes)
        .unwrap_or(100);
    eprintln!(
        "{phase}: {:.1} of {:.1} MiB ({pct}%)",
        mib(u.done_bytes),
        mib(u.total_bytes)
    );
}

/// Reads the master key; the error never includes the file's content.
fn read_key(args: &AgentArgs) -> Result<Option<MasterKey>, Failure> {
    let Some(path) = &args.key_file else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| Failure {
        category: "key",
        message: format!("cannot read the key file {}: {e}", path.display()),
    })?;
    MasterKey::from_secret_bytes(&bytes)
        .map(Some)
        .ok_or_else(|| Failure {
            category: "key",
            message: format!(
                "the key file {} holds neither 32 bytes nor 64 hex digits ({} bytes)",
                path.display(),
                bytes.len()
            ),
        })
}

/// Opens the repository; only a snapshot may create it.
fn open_repo(args: &AgentArgs) -> Result<Repository, Failure> {
    let key = read_key(args)?;
    let store = args.store.open().map_err(|e| Failure {
        category: "store",
        message: format!("opening the store: {e}"),
    })?;
    let opened = if args.op == AgentOp::Snapshot {
        Repository::open_or_init(store, key.as_ref())
    } else {
        Repository::open(store, key.as_ref())
    };
    opened.map_err(|e| Failure::engine("opening the repository", &e))
}

fn required<'a, T: ?Sized>(
    value: Option<&'a T>,
    op: AgentOp,
    flag: &str,
) -> Result<&'a T, Failure> {
    value.ok_or_else(|| Failure::usage(format!("agent {op} needs --{flag}")))
}

/// The engine's method for `--data`, `--method`, `--database` and `--stream`.
fn method(args: &AgentArgs) -> Result<Method, Failure> {
    if args.method == DataMethodArg::Exec {
        let file = required(args.stream.as_deref(), args.op, "stream")?;
        return Ok(Method::ExecFile { file: file.into() });
    }
    let data = required(args.data.as_deref(), args.op, "data")?;
    Ok(match args.method {
        DataMethodArg::Files => Method::Files { root: data.into() },
        DataMethodArg::Sqlite => {
            let db = required(args.database.as_deref(), args.op, "database")?;
            // The database must stay inside the data directory.
            let inside = db.components().all(|c| matches!(c, Component::Normal(_)));
            if !inside || db.as_os_str().is_empty() {
                return Err(Failure::usage(format!(
                    "--database {} must be a relative path inside --data, without ..",
                    db.display()
                )));
            }
            Method::Sqlite {
                path: data.join(db),
            }
        }
        DataMethodArg::Exec => unreachable!("handled above"),
    })
}

/// The directory a restore swaps names in, and the one left over by an interrupted one;
/// none for an exec stream (the restore command, not the agent, changes the live data).
fn swap_dir(method: &Method) -> Option<PathBuf> {
    match method {
        Method::Files { root } => Some(root.clone()),
        Method::Sqlite { path } => Some(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        ),
        Method::Exec { .. } | Method::ExecFile { .. } => None,
    }
}

/// Takes the data directory's lock for the whole operation (a second guard behind the
/// controller's one agent per component): another agent on the same volume finishes
/// first. Says so when it has to wait. None for `Exec`, which has no directory.
fn lock_data(method: &Method) -> Result<Option<DataDirLock>, Failure> {
    let Some(dir) = swap_dir(method).filter(|d| d.is_dir()) else {
        return Ok(None);
    };
    let locking = |e: EngineError| Failure::engine(format_args!("locking {}", dir.display()), &e);
    match DataDirLock::try_lock(&dir).map_err(locking)? {
        TryLock::Locked(l) => Ok(Some(l)),
        TryLock::Busy => {
            eprintln!(
                "another agent works on {}; waiting for it to finish",
                dir.display()
            );
            DataDirLock::lock(&dir).map(Some).map_err(locking)
        }
    }
}

/// Rolls back a restore that was killed mid-swap, so the data is whole before it is
/// read or replaced. Only under the data directory's lock: a journal found then belongs
/// to an agent that is gone (a live one would hold the lock).
fn recover(method: &Method) -> Result<(), Failure> {
    let Some(dir) = swap_dir(method).filter(|d| d.is_dir()) else {
        return Ok(());
    };
    match recover_interrupted_restore(&dir) {
        Ok(true) => {
            eprintln!(
                "rolled back an interrupted restore in {}: the data is as it was before it",
                dir.display()
            );
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(Failure::engine(
            format_args!("rolling back an interrupted restore in {}", dir.display()),
            &e,
        )),
    }
}

fn snapshot_id(args: &AgentArgs) -> Result<SnapshotId, Failure> {
    let text = required(args.snapshot.as_deref(), args.op, "snapshot")?;
    text.parse()
        .map_err(|e| Failure::usage(format!("--snapshot: {e}")))
}

/// Loads the manifest (checking its digest) and refuses a snapshot of another
/// stack or component than the one named on the command line.
fn check_source(
    repo: &Repository,
    id: SnapshotId,
    args: &AgentArgs,
    what: &str,
) -> Result<deployctl_snapshot::Manifest, Failure> {
    let m = repo
        .load_manifest(id)
        .map_err(|e| Failure::of_snapshot(&format!("{what} refused"), id, &e))?;
    let s = &m.meta.source;
    let stack_ok = args.stack.as_ref().is_none_or(|x| *x == s.stack);
    let component_ok = args.component.as_ref().is_none_or(|x| *x == s.component);
    if !(stack_ok && component_ok) {
        return Err(Failure {
            category: "source_mismatch",
            message: format!(
                "{what} of snapshot {id} refused: it holds the data of {}/{}, not {}/{}",
                s.stack,
                s.component,
                args.stack.as_deref().unwrap_or(&s.stack),
                args.component.as_deref().unwrap_or(&s.component),
            ),
        });
    }
    Ok(m)
}

fn snapshot(args: &AgentArgs) -> Result<Outcome, Failure> {
    let method = method(args)?;
    let stack = required(args.stack.as_deref(), args.op, "stack")?;
    let component = required(args.component.as_deref(), args.op, "component")?;
    let _lock = lock_data(&method)?;
    recover(&method)?;
    let repo = open_repo(args)?;
    let revision = args.revision.map(|r| r.to_string()).unwrap_or_default();
    let source = Source::new(stack, component, revision);
    let report = repo
        .snapshot(&source, &method, &SnapshotOptions::default(), &progress)
        .map_err(|e| Failure::engine(format_args!("snapshot of {stack}/{component}"), &e))?;
    Ok(Outcome {
        digest: Some(report.info.id.to_hex()),
        size_bytes: Some(report.info.meta.total_size),
        files: Some(report.info.meta.file_count),
        chunks: Some(report.info.meta.chunk_count),
        new_bytes: Some(report.new_bytes),
        stored_bytes: Some(report.stored_bytes),
        message: None,
        usage: measure(&repo),
    })
}

/// What the repository takes and the room left under it, after a run that may have
/// changed it, for the controller's capacity check. A listing of every object (one
/// request per 1,000 on S3): cheap next to the run itself. A failure is only logged:
/// the run succeeded, and the controller keeps its previous measurement.
fn measure(repo: &Repository) -> Option<RepoUsage> {
    match repo.usage() {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("measuring the repository failed (the run itself succeeded): {e}");
            None
        }
    }
}

/// What became of the live data after a failed restore. Every refusal before the swap
/// leaves it untouched; a swap that failed half-way is rolled back here from its journal,
/// so the component never starts on a mix of two snapshots.
fn live_data_after_failure(method: &Method, e: &EngineError) -> String {
    let Some(dir) = swap_dir(method) else {
        return untouched_note(method);
    };
    let shown = dir.display();
    match (dir.is_dir(), recover_interrupted_restore(&dir)) {
        (false, _) => format!("the live data in {shown} was left as it was (it did not exist)"),
        (true, Ok(true)) => format!(
            "the swap into {shown} was interrupted and rolled back: the live data is as it was"
        ),
        // The only failure after the swap commits: syncing the directory once the
        // journal is gone (see the engine's swap).
        (true, Ok(false)) if matches!(e, EngineError::Io { op: "sync", path, .. } if *path == dir) =>
        {
            format!("the snapshot was swapped into {shown} but syncing the directory failed")
        }
        (true, Ok(false)) => format!("the live data in {shown} was left as it was"),
        (true, Err(re)) => format!(
            "the live data in {shown} may be partly restored: rolling back the interrupted \
             swap failed ({re}); the next restore or snapshot rolls it back"
        ),
    }
}

/// What a refused restore left alone.
fn untouched_note(method: &Method) -> String {
    match swap_dir(method) {
        Some(dir) => format!("the live data in {} was left as it was", dir.display()),
        None => "the restore command was not run: the live data was left as it was".into(),
    }
}

fn restore(args: &AgentArgs) -> Result<Outcome, Failure> {
    let method = method(args)?;
    let id = snapshot_id(args)?;
    let untouched = untouched_note(&method);
    let with_data_note = |mut f: Failure| {
        f.message = format!("{}; {untouched}", f.message);
        f
    };
    let _lock = lock_data(&method).map_err(with_data_note)?;
    recover(&method).map_err(with_data_note)?;
    let repo = open_repo(args).map_err(with_data_note)?;
    check_source(&repo, id, args, "restore").map_err(with_data_note)?;
    let report = repo
        .restore(id, &method, &RestoreOptions::default(), &progress)
        .map_err(|e| {
            let mut f = Failure::of_snapshot("restore refused", id, &e);
            f.message = format!("{}; {}", f.message, live_data_after_failure(&method, &e));
            f
        })?;
    Ok(Outcome {
        digest: Some(report.snapshot.to_hex()),
        size_bytes: Some(report.bytes),
        files: Some(report.files),
        chunks: Some(report.chunks),
        ..Outcome::default()
    })
}

fn verify(args: &AgentArgs) -> Result<Outcome, Failure> {
    let id = snapshot_id(args)?;
    // A verify reads only the repository; saying so spares the reader a doubt.
    let untouched = |mut f: Failure| {
        f.message = format!("{}; no live data was touched", f.message);
        f
    };
    let repo = open_repo(args).map_err(untouched)?;
    let m = check_source(&repo, id, args, "verify").map_err(untouched)?;
    let report = repo
        .verify(id, &progress)
        .map_err(|e| untouched(Failure::of_snapshot("verification failed", id, &e)))?;
    Ok(Outcome {
        digest: Some(id.to_hex()),
        size_bytes: Some(m.meta.total_size),
        files: Some(report.files),
        chunks: Some(report.unique_chunks),
        usage: measure(&repo),
        ..Outcome::default()
    })
}

fn prune(args: &AgentArgs) -> Result<Outcome, Failure> {
    let stack = required(args.stack.as_deref(), args.op, "stack")?;
    let component = required(args.component.as_deref(), args.op, "component")?;
    let policy = RetentionPolicy {
        keep_last: args.keep_last.unwrap_or(0) as usize,
        keep_daily: args.keep_daily.unwrap_or(0),
    };
    // A policy that keeps nothing is a mistake, never an intent: refuse it.
    if policy.keep_last == 0 && policy.keep_daily == 0 && args.forget.is_empty() {
        return Err(Failure::usage(
            "prune needs --forget, or --keep-last or --keep-daily of at least 1 (it would forget every snapshot)",
        ));
    }
    let repo = open_repo(args)?;
    let failed = |e: EngineError| Failure::engine(format_args!("prune of {stack}/{component}"), &e);
    let listing = repo.list_snapshots_detailed().map_err(failed)?;
    // Planning on a partial view could forget a snapshot that an unreadable newer one
    // would have made redundant, or the reverse; gc would refuse anyway.
    if let Some((name, e)) = listing.unreadable.first() {
        return Err(Failure {
            category: e.category(),
            message: format!(
                "prune of {stack}/{component} refused: {} snapshot(s) cannot be read, the first \
                 ({name}): {e}",
                listing.unreadable.len()
            ),
        });
    }
    // The repository holds every component of the stack: plan over this one's only.
    let mine: Vec<_> = listing
        .snapshots
        .into_iter()
        .filter(|s| s.meta.source.stack == stack && s.meta.source.component == component)
        .collect();
    let plan = if args.forget.is_empty() {
        plan_retention(&mine, policy, chrono::Utc::now(), &[])
    } else {
        let named = |s: &&deployctl_snapshot::SnapshotInfo| {
            args.forget
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&s.id.to_hex()))
        };
        let (forget, keep): (Vec<_>, Vec<_>) = mine.iter().partition(named);
        deployctl_snapshot::RetentionPlan {
            keep: keep.iter().map(|s| s.id).collect(),
            forget: forget.iter().map(|s| s.id).collect(),
        }
    };
    for id in &plan.forget {
        repo.forget(*id).map_err(failed)?;
        eprintln!("forgot snapshot {id}");
    }
    let gc = repo.gc(&GcOptions::default()).map_err(failed)?;
    Ok(Outcome {
        message: Some(format!(
            "kept {} and forgot {} snapshots of {stack}/{component}; deleted {} unreferenced \
             chunk objects ({} bytes), kept {} younger than the grace period",
            plan.keep.len(),
            plan.forget.len(),
            gc.deleted_chunks,
            gc.deleted_bytes,
            gc.kept_young,
        )),
        usage: measure(&repo),
        ..Outcome::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_url_queries() {
        let m = "store: GET config: error sending request for url \
                 (http://s3:9/b/config?X-Amz-Credential=AKID%2Fx&X-Amz-Signature=abc); the live data";
        let r = redact(m);
        assert_eq!(
            r,
            "store: GET config: error sending request for url \
             (http://s3:9/b/config?<query redacted>); the live data"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("see https://x/y."), "see https://x/y.");
    }
}
