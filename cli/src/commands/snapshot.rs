//! `deployctl snapshot list|create|verify|restore`: the snapshots of a stack's data
//! (`StackSnapshot`s). `list` shows them with digests and sizes; `create` asks the
//! controller for one now (a StackSnapshot with only a spec) and can wait for it;
//! `verify` asks for a re-read and re-hash (the `deployctl.dev/verify-requested-at`
//! annotation) and can wait for the verdict; `restore` creates a `Restore` StackOperation,
//! after a confirmation, and can follow the stack until the data is back and it is Ready.

use super::get::TableOptions;
use super::operation::{self, Action, Request};
use super::wait::wait_stack;
use super::{print, Ctx};
use crate::args::Timeout;
use crate::cluster::Cluster;
use crate::describe;
use crate::error::{one_line, Call, CliError};
use crate::output::progress::Progress;
use crate::output::style::phase_color;
use crate::output::table::Cell;
use crate::output::{time, Color, Style, Table};
use crate::stack_snapshots::{self as snaps, SNAPSHOTS};
use crate::stacks;
use crate::watch::{self, Ended, Step};
use clap::Subcommand;
use deployctl_api::{
    conditions, labels, ProductionStack, RestorePhase, SnapshotPhase, SnapshotReason, StackPhase,
    StackSnapshot, StackSnapshotSpec, VerificationResult,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use tokio::time::Instant;

/// Arguments of `snapshot`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  deployctl snapshot list shop
  deployctl snapshot create shop --component db --wait
  deployctl snapshot verify shop-db-m1714564800 --wait
  deployctl snapshot restore shop-db-m1714564800 --reason \"bad import\" --wait")]
pub struct SnapshotArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// The `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots with their revision, phase, size, what each added to the store,
    /// digest and verification, newest first; then each stack's snapshot store: used,
    /// room left, quota and what the next rollout's snapshots are estimated to add
    List(ListArgs),
    /// Take a snapshot of a stack's data now: one per component that declares data
    Create(CreateArgs),
    /// Re-read and re-hash a snapshot in its repository
    Verify(VerifyArgs),
    /// Restore a snapshot into its component (asks for confirmation unless --yes)
    Restore(RestoreArgs),
}

/// Arguments of `snapshot list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the snapshots of this stack
    #[arg(value_name = "STACK")]
    pub stack: Option<String>,

    /// List snapshots of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Output format: a wider table, or the API objects as JSON or YAML
    #[arg(short = 'o', long, value_name = "FORMAT")]
    pub output: Option<ListFormat>,
}

/// Output formats of `snapshot list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// The table with more columns (the whole digest, reason, files, store, message).
    Wide,
    /// The StackSnapshotList as the API server returns it (only STACK's items), as JSON.
    Json,
    /// The StackSnapshotList as the API server returns it (only STACK's items), as YAML.
    Yaml,
}

/// Arguments of `snapshot create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// Only this component; repeat for several [default: every component that declares
    /// data]
    #[arg(short = 'c', long = "component", value_name = "COMPONENT")]
    pub components: Vec<String>,

    /// Then wait until every snapshot is Completed and print its digest and size (exit 1
    /// if one fails, 3 on timeout)
    #[arg(long)]
    pub wait: bool,

    /// How long to wait with --wait
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// Arguments of `snapshot verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The snapshot (a StackSnapshot of the namespace)
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,

    /// Then wait for the verdict: exit 0 when Verified, 1 when Corrupt, 3 on timeout
    #[arg(long)]
    pub wait: bool,

    /// How long to wait with --wait
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// Arguments of `snapshot restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The snapshot (a StackSnapshot of the namespace); its component gets the data back
    #[arg(value_name = "SNAPSHOT")]
    pub snapshot: String,

    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Why, in your words; recorded in the operation, Events and the stack's last rollback
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Then wait until the data is restored and the stack is Ready again (exit 1 if the
    /// restore fails, 3 on timeout)
    #[arg(long)]
    pub wait: bool,

    /// How long to wait for the controller, and with --wait for the restore
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// Runs one `snapshot` subcommand.
pub async fn run(args: SnapshotArgs, ctx: &Ctx) -> Result<(), CliError> {
    match args.command {
        SnapshotCommand::List(a) => run_list(a, ctx).await,
        SnapshotCommand::Create(a) => run_create(a, ctx).await,
        SnapshotCommand::Verify(a) => run_verify(a, ctx).await,
        SnapshotCommand::Restore(a) => run_restore(a, ctx).await,
    }
}

// ---------------------------------------------------------------------------------------
// list

async fn run_list(args: ListArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cluster = ctx.cluster().await?;
    let mut raw = snaps::list_raw(&cluster, args.all_namespaces).await?;
    if let Some(stack) = &args.stack {
        if let Some(items) = raw.get_mut("items").and_then(|i| i.as_array_mut()) {
            items.retain(|i| i.pointer("/spec/stack").and_then(|s| s.as_str()) == Some(stack));
        }
    }
    let mut items = snaps::items(&raw);
    snaps::newest_first(&mut items);
    if items.is_empty() && !args.all_namespaces {
        if let Some(stack) = &args.stack {
            // No snapshot names it: a typo is more likely than a stack without any.
            stacks::get(&cluster, stack).await?;
        }
    }
    match args.output {
        Some(ListFormat::Json) => {
            let mut s = serde_json::to_string_pretty(&raw).expect("JSON values serialize");
            s.push('\n');
            print(&s)
        }
        Some(ListFormat::Yaml) => {
            print(&serde_yaml_ng::to_string(&raw).map_err(|e| CliError::Api {
                action: "writing YAML".into(),
                message: e.to_string(),
            })?)
        }
        wide => {
            if items.is_empty() {
                // Like kubectl: stdout stays empty for scripts, stderr says why.
                let whose = args
                    .stack
                    .as_ref()
                    .map(|s| format!(" of stack \"{s}\""))
                    .unwrap_or_default();
                if args.all_namespaces {
                    eprintln!("No snapshots{whose} found.");
                } else {
                    eprintln!(
                        "No snapshots{whose} found in namespace \"{}\".",
                        cluster.namespace
                    );
                }
                return Ok(());
            }
            let opts = TableOptions {
                wide: wide == Some(ListFormat::Wide),
                namespaces: args.all_namespaces,
            };
            let now = Timestamp::now();
            let mut out = table(&items, opts, now, &ctx.style);
            // The stores the listed snapshots are in, from their stacks' status. A stack
            // that cannot be read (gone, or not allowed) only loses its footer.
            let stacks: Vec<ProductionStack> = match &args.stack {
                Some(s) => stacks::get(&cluster, s).await.ok().into_iter().collect(),
                None => stacks::list_raw(&cluster, args.all_namespaces, None)
                    .await
                    .map(|l| stacks::items(&l))
                    .unwrap_or_default(),
            };
            out.push_str(&store_footer(&stacks, &items, now, &ctx.style));
            print(&out)
        }
    }
}

/// The snapshots table: NAME, STACK, COMPONENT, REVISION (whose data), PHASE, SIZE,
/// ADDED (what it added to the store), DIGEST (12 digits; all in wide), VERIFIED (result and age), AGE; `-A` adds NAMESPACE
/// first, wide adds REASON, FILES, STORE and MESSAGE.
pub fn table(
    snapshots: &[StackSnapshot],
    opts: TableOptions,
    now: Timestamp,
    style: &Style,
) -> String {
    let mut headers = vec![];
    if opts.namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "STACK", "COMPONENT"]);
    if opts.wide {
        headers.push("REASON");
    }
    headers.extend(["REVISION", "PHASE", "SIZE", "ADDED"]);
    if opts.wide {
        headers.push("FILES");
    }
    headers.extend(["DIGEST", "VERIFIED", "AGE"]);
    if opts.wide {
        headers.extend(["STORE", "MESSAGE"]);
    }
    let mut t = Table::new(headers).flex("MESSAGE");
    for s in snapshots {
        let st = s.status.as_ref();
        let mut row: Vec<Cell> = vec![];
        if opts.namespaces {
            row.push(s.namespace().unwrap_or_default().into());
        }
        row.push(s.name_any().into());
        row.push(s.spec.stack.as_str().into());
        row.push(s.spec.component.as_str().into());
        if opts.wide {
            row.push(reason(s.spec.reason).into());
        }
        row.push(describe::opt_num(snaps::data_revision(s)).into());
        let phase = snaps::phase(s);
        row.push(Cell::colored(phase, phase_color(phase)));
        row.push(snaps::size(st).into());
        row.push(snaps::added(st).into());
        if opts.wide {
            row.push(describe::opt_num(st.and_then(|s| s.files)).into());
            row.push(snaps::digest(st).into());
        } else {
            row.push(snaps::short_digest(st).into());
        }
        let verified = snaps::verification(st, now);
        let color = verified.split(' ').next().and_then(phase_color);
        row.push(Cell::colored(verified, color));
        row.push(time::age(s.metadata.creation_timestamp.as_ref(), now).into());
        if opts.wide {
            row.push(
                st.and_then(|s| s.store.clone())
                    .unwrap_or("-".into())
                    .into(),
            );
            row.push(
                st.and_then(|s| s.message.as_deref())
                    .map(one_line)
                    .unwrap_or_default()
                    .into(),
            );
        }
        t.row(row);
    }
    t.render(style)
}

/// One line per stack of the listed snapshots with its snapshot store's use and room
/// (from the stack's status), after a blank line; empty when none was measured.
pub fn store_footer(
    stacks: &[ProductionStack],
    listed: &[StackSnapshot],
    now: Timestamp,
    style: &Style,
) -> String {
    let mut out = String::new();
    for stack in stacks {
        let shown = listed
            .iter()
            .any(|s| s.spec.stack == stack.name_any() && s.namespace() == stack.namespace());
        let Some(repo) = stack
            .status
            .as_ref()
            .and_then(|st| st.snapshot_repository.as_ref())
            .filter(|_| shown)
        else {
            continue;
        };
        let line = format!(
            "Snapshot store of {}/{}: {}\n",
            stack.namespace().unwrap_or_default(),
            stack.name_any(),
            snaps::repository_line(repo, now)
        );
        let color = if snaps::repository_tight(repo) {
            Color::Yellow
        } else {
            Color::Dim
        };
        out.push_str(&style.paint(&line, color));
    }
    if out.is_empty() {
        out
    } else {
        format!("\n{out}")
    }
}

fn reason(r: SnapshotReason) -> &'static str {
    match r {
        SnapshotReason::BeforeRollout => "BeforeRollout",
        SnapshotReason::Scheduled => "Scheduled",
        SnapshotReason::Manual => "Manual",
    }
}

// ---------------------------------------------------------------------------------------
// create

async fn run_create(args: CreateArgs, ctx: &Ctx) -> Result<(), CliError> {
    let deadline = Instant::now() + args.timeout.duration;
    let cluster = ctx.cluster().await?;
    let stack = stacks::get(&cluster, &args.stack).await?;
    let components = choose_components(&stack, &args.components)?;
    let stamp = Timestamp::now().as_second();
    let api: Api<StackSnapshot> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut created = Vec::new();
    for component in &components {
        let snap = build_snapshot(&stack, &cluster.namespace, component, stamp);
        let name = snap.name_any();
        match api.create(&PostParams::default(), &snap).await {
            Ok(s) => created.push(s),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(CliError::Refused {
                    message: format!(
                        "snapshot \"{name}\" already exists: a snapshot of component \
                         {component} was asked for in the same second"
                    ),
                    hint: "wait a second and run the command again".into(),
                })
            }
            Err(e) => {
                return Err(cluster.error(
                    e,
                    &Call {
                        verb: "create",
                        resource: SNAPSHOTS,
                        namespace: Some(&cluster.namespace),
                        action: format!(
                            "requesting a snapshot of component {component} of stack \"{}\"",
                            args.stack
                        ),
                    },
                ))
            }
        }
        print(&format!(
            "Snapshot {name} of component {component} (stack \"{}\") requested\n",
            args.stack
        ))?;
    }
    if !args.wait {
        return Ok(());
    }
    let total = created.len();
    let mut failures = Vec::new();
    for (i, snap) in created.into_iter().enumerate() {
        let which = if total > 1 {
            format!(" ({} of {total})", i + 1)
        } else {
            String::new()
        };
        match wait_for_snapshot(&cluster, snap, &which, &args.timeout, deadline).await? {
            Ok(done) => print(&completed_line(&done))?,
            Err(failure) => failures.push(failure),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed {
            message: failures.join("; "),
        })
    }
}

/// The components to snapshot: those named (each must declare data), else every one
/// that declares data, in the spec's order.
pub fn choose_components(
    stack: &ProductionStack,
    asked: &[String],
) -> Result<Vec<String>, CliError> {
    let name = stack.name_any();
    let with_data: Vec<String> = stack
        .spec
        .components
        .iter()
        .filter(|c| c.data.is_some())
        .map(|c| c.name.clone())
        .collect();
    if with_data.is_empty() {
        return Err(CliError::Refused {
            message: format!(
                "stack \"{name}\" has no component that declares data: there is nothing to \
                 snapshot"
            ),
            hint: "say where a component keeps its state with `data` (kubectl explain \
                   productionstack.spec.components.data)"
                .into(),
        });
    }
    if asked.is_empty() {
        return Ok(with_data);
    }
    let mut out: Vec<String> = Vec::new();
    for a in asked {
        if !with_data.contains(a) {
            let why = if stack.spec.components.iter().any(|c| &c.name == a) {
                "it declares no data"
            } else {
                "the stack has no such component"
            };
            return Err(CliError::Refused {
                message: format!("cannot snapshot component \"{a}\" of stack \"{name}\": {why}"),
                hint: format!("components that declare data: {}", with_data.join(", ")),
            });
        }
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// `<stack>-<component>-m<unix time>`; the stack name is shortened if the whole would
/// exceed the 253 characters of an object name.
pub fn snapshot_name(stack: &str, component: &str, stamp: i64) -> String {
    let suffix = format!("-{component}-m{stamp}");
    let room = 253usize.saturating_sub(suffix.len());
    let mut base: String = stack.chars().take(room).collect();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// The StackSnapshot `create` asks for: spec only (reason Manual), labelled with its
/// stack and component, and owned by the stack (deleted with it, as the controller's own
/// snapshots are; the data in the repository stays).
pub fn build_snapshot(
    stack: &ProductionStack,
    namespace: &str,
    component: &str,
    stamp: i64,
) -> StackSnapshot {
    let stack_name = stack.name_any();
    let mut l = BTreeMap::from([
        (labels::STACK.to_string(), stack_name.clone()),
        (labels::COMPONENT.to_string(), component.to_string()),
    ]);
    // Label values are at most 63 characters; spec.stack is what counts anyway.
    l.retain(|_, v| v.len() <= 63);
    StackSnapshot {
        metadata: ObjectMeta {
            name: Some(snapshot_name(&stack_name, component, stamp)),
            namespace: Some(namespace.to_string()),
            labels: Some(l),
            owner_references: stack.controller_owner_ref(&()).map(|mut o| {
                // Owned, not controlled: the controller fills the status either way.
                o.controller = None;
                o.block_owner_deletion = None;
                vec![o]
            }),
            ..Default::default()
        },
        spec: StackSnapshotSpec {
            stack: stack_name,
            component: component.to_string(),
            reason: SnapshotReason::Manual,
        },
        status: None,
    }
}

/// Whether a snapshot has finished: `Ok` when Completed, `Err(why)` when Failed.
pub fn snapshot_done(s: &StackSnapshot) -> Step<Result<StackSnapshot, String>> {
    let st = s.status.clone().unwrap_or_default();
    match st.phase {
        Some(SnapshotPhase::Completed) => Step::Done(Ok(s.clone())),
        Some(SnapshotPhase::Failed) => Step::Done(Err(format!(
            "snapshot {} of component {} failed: {}",
            s.name_any(),
            s.spec.component,
            st.message
                .as_deref()
                .map(one_line)
                .unwrap_or_else(|| "no message".into())
        ))),
        _ => Step::Continue,
    }
}

/// Where a snapshot is, for the spinner and the timeout message.
pub fn snapshot_state(s: &StackSnapshot) -> String {
    let Some(st) = &s.status else {
        return "Pending, without status: the controller has not picked it up yet (is it \
                running?)"
            .into();
    };
    let mut line = snaps::phase(s).to_string();
    if let Some(job) = &st.job {
        line.push_str(&format!(" (Job {job})"));
    }
    if let Some(m) = st.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(&format!(": {}", one_line(m)));
    }
    line
}

async fn wait_for_snapshot(
    cluster: &Cluster,
    snap: StackSnapshot,
    which: &str,
    timeout: &Timeout,
    deadline: Instant,
) -> Result<Result<StackSnapshot, String>, CliError> {
    let name = snap.name_any();
    let component = snap.spec.component.clone();
    let label = format!("waiting for snapshot {name} of component {component}{which}");
    let progress = Progress::start(format!("{label}: {}", snapshot_state(&snap)));
    let api: Api<StackSnapshot> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let result = watch::until(
        cluster,
        api,
        SNAPSHOTS,
        &name,
        Some(snap),
        deadline,
        |s: &StackSnapshot| {
            progress.set(format!("{label}: {}", snapshot_state(s)));
            snapshot_done(s)
        },
        |problem| progress.set(format!("watch interrupted, retrying: {problem}")),
    )
    .await;
    progress.finish();
    match result? {
        Ok(outcome) => Ok(outcome),
        Err(Ended::TimedOut(last)) => Err(CliError::TimedOut {
            message: format!(
                "timed out after {timeout} waiting for snapshot {name} of component \
                 {component} to complete; it is {}",
                last.as_ref()
                    .map(snapshot_state)
                    .unwrap_or_else(|| "not seen".into())
            ),
        }),
        Err(Ended::Deleted(_)) => Err(CliError::Hopeless {
            message: format!("snapshot {name} was deleted while waiting for it to complete"),
        }),
    }
}

/// `Snapshot shop-db-m1714564800 of component db is Completed: 1.5 MiB (3 files) of
/// revision 2, digest <64 hex>`.
pub fn completed_line(s: &StackSnapshot) -> String {
    let st = s.status.as_ref();
    let files = match st.and_then(|s| s.files) {
        Some(1) => " (1 file)".to_string(),
        Some(n) => format!(" ({n} files)"),
        None => String::new(),
    };
    let revision = snaps::data_revision(s)
        .map(|r| format!(" of revision {r}"))
        .unwrap_or_default();
    // A StatefulSet's replicas each have their data, and their digest.
    let replicas = st.map(|s| s.replicas.as_slice()).unwrap_or_default();
    let digest = if replicas.len() > 1 {
        let each: Vec<String> = replicas
            .iter()
            .map(|r| format!("{} {}", r.ordinal, r.digest.as_deref().unwrap_or("-")))
            .collect();
        format!(
            "{} replicas, digests by replica: {}",
            replicas.len(),
            each.join(", ")
        )
    } else {
        format!("digest {}", snaps::digest(st))
    };
    format!(
        "Snapshot {} of component {} is Completed: {}{files}{revision}, {digest}\n",
        s.name_any(),
        s.spec.component,
        snaps::size(st),
    )
}

// ---------------------------------------------------------------------------------------
// verify

async fn run_verify(args: VerifyArgs, ctx: &Ctx) -> Result<(), CliError> {
    let deadline = Instant::now() + args.timeout.duration;
    let cluster = ctx.cluster().await?;
    let snap = snaps::get(&cluster, &args.snapshot).await?;
    let name = snap.name_any();
    if snap.status.as_ref().and_then(|s| s.phase) != Some(SnapshotPhase::Completed) {
        return Err(CliError::Refused {
            message: format!(
                "snapshot \"{name}\" is {}; only a Completed snapshot can be verified",
                snaps::phase(&snap)
            ),
            hint: format!(
                "see where it is with `deployctl snapshot list {} -o wide`",
                snap.spec.stack
            ),
        });
    }
    // Whole seconds: the controller compares with lastVerifiedAt, which has no fraction.
    let requested =
        Timestamp::from_second(Timestamp::now().as_second()).expect("now is a valid time");
    let api: Api<StackSnapshot> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let patch = serde_json::json!({
        "metadata": {"annotations": {labels::VERIFY_REQUESTED: requested.to_string()}}
    });
    let patched = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            cluster.error(
                e,
                &Call {
                    verb: "patch",
                    resource: SNAPSHOTS,
                    namespace: Some(&cluster.namespace),
                    action: format!("requesting a verification of snapshot \"{name}\""),
                },
            )
        })?;
    print(&format!(
        "Verification of snapshot {name} requested ({}={requested})\n",
        labels::VERIFY_REQUESTED
    ))?;
    if !args.wait {
        return Ok(());
    }
    let progress = Progress::start(format!(
        "waiting for the controller to verify snapshot {name}"
    ));
    let result = watch::until(
        &cluster,
        api,
        SNAPSHOTS,
        &name,
        Some(patched),
        deadline,
        |s: &StackSnapshot| verification_done(s, requested),
        |problem| progress.set(format!("watch interrupted, retrying: {problem}")),
    )
    .await;
    progress.finish();
    match result? {
        Ok(s) => print(&format!(
            "Snapshot {name} is Verified: its data in {} matches digest {}\n",
            s.status
                .as_ref()
                .and_then(|st| st.store.clone())
                .unwrap_or_else(|| "the repository".into()),
            snaps::digest(s.status.as_ref())
        )),
        Err(Ended::TimedOut(_)) => Err(CliError::TimedOut {
            message: format!(
                "timed out after {} waiting for the verification of snapshot {name}; is the \
                 deployctl controller running for namespace \"{}\"? (the request stays: the \
                 controller verifies it when it gets to it)",
                args.timeout, cluster.namespace
            ),
        }),
        Err(Ended::Deleted(_)) => Err(CliError::Hopeless {
            message: format!("snapshot {name} was deleted while waiting for its verification"),
        }),
    }
}

/// Whether the verification asked for at `requested` has a verdict: done when Verified,
/// failed (exit 1) when Corrupt.
pub fn verification_done(s: &StackSnapshot, requested: Timestamp) -> Step<StackSnapshot> {
    let Some(st) = &s.status else {
        return Step::Continue;
    };
    if st.last_verified_at.as_ref().is_none_or(|t| t.0 < requested) {
        return Step::Continue;
    }
    match st.verification {
        Some(VerificationResult::Verified) => Step::Done(s.clone()),
        Some(VerificationResult::Corrupt) => Step::Fail(corrupt_error(s)),
        None => Step::Continue,
    }
}

fn corrupt_error(s: &StackSnapshot) -> CliError {
    let message = s
        .status
        .as_ref()
        .and_then(|st| st.message.as_deref())
        .map(one_line)
        .unwrap_or_else(|| "no message".into());
    CliError::Failed {
        message: format!(
            "snapshot {} is Corrupt: {message}\n  it will not be restored; take a new one with \
             `deployctl snapshot create {} --component {}`",
            s.name_any(),
            s.spec.stack,
            s.spec.component
        ),
    }
}

// ---------------------------------------------------------------------------------------
// restore

async fn run_restore(args: RestoreArgs, ctx: &Ctx) -> Result<(), CliError> {
    let cluster = ctx.cluster().await?;
    let snap = snaps::get(&cluster, &args.snapshot).await?;
    check_restorable(&snap)?;
    let name = snap.name_any();
    let stack_name = snap.spec.stack.clone();
    // The stack must exist (and a typo'd one gets suggestions) before anyone is asked.
    stacks::get(&cluster, &stack_name).await?;
    if !args.yes {
        confirm(&snap, Timestamp::now())?;
    }
    // The clock starts once the person has answered.
    let deadline = Instant::now() + args.timeout.duration;
    let req = Request {
        action: Action::Restore,
        stack: &stack_name,
        to_revision: None,
        snapshot: Some(name.clone()),
        reason: args.reason.clone(),
        timeout: &args.timeout,
    };
    let (stack, op) = operation::submit(&cluster, &req, deadline).await?;
    if !args.wait {
        return Ok(());
    }
    let op_name = op.name_any();
    let what = format!("Ready with snapshot {name} restored");
    let done = wait_stack(&cluster, stack, &args.timeout, &what, deadline, |s| {
        restore_done(s, &op_name, &name)
    })
    .await?;
    let took = done
        .status
        .as_ref()
        .and_then(|s| s.last_rollback.as_ref())
        .map(|r| {
            format!(
                " in {}",
                deployctl_api::duration::human(std::time::Duration::from_secs_f64(
                    r.duration_seconds.max(0.0)
                ))
            )
        })
        .unwrap_or_default();
    print(&format!(
        "stack \"{stack_name}\" is Ready again: component {} restored from snapshot {name}{took}\n",
        snap.spec.component
    ))
}

/// Only a Completed snapshot that did not fail its last verification can be restored
/// (the controller refuses others too; this says so before anyone is asked).
pub fn check_restorable(s: &StackSnapshot) -> Result<(), CliError> {
    let name = s.name_any();
    let list = format!("deployctl snapshot list {}", s.spec.stack);
    if s.status.as_ref().and_then(|st| st.phase) != Some(SnapshotPhase::Completed) {
        return Err(CliError::Refused {
            message: format!(
                "snapshot \"{name}\" is {}; only a Completed snapshot can be restored",
                snaps::phase(s)
            ),
            hint: format!("choose a Completed one: {list}"),
        });
    }
    if snaps::is_corrupt(s) {
        return Err(CliError::Refused {
            message: format!(
                "snapshot \"{name}\" failed its last verification (Corrupt): {}; it will not \
                 be restored",
                s.status
                    .as_ref()
                    .and_then(|st| st.message.as_deref())
                    .map(one_line)
                    .unwrap_or_else(|| "no message".into())
            ),
            hint: format!("choose another one: {list}"),
        });
    }
    Ok(())
}

/// What the confirmation prompt says: what is restored where, and what is lost.
pub fn prompt(s: &StackSnapshot, now: Timestamp) -> String {
    let st = s.status.as_ref();
    let taken = st
        .and_then(|st| st.completed_at.as_ref())
        .or(s.metadata.creation_timestamp.as_ref())
        .map(|t| time::ago(t, now))
        .unwrap_or_else(|| "at an unknown time".into());
    let revision = snaps::data_revision(s)
        .map(|r| format!(" of revision {r}"))
        .unwrap_or_default();
    format!(
        "Restore snapshot {name} into component {component} of stack \"{stack}\"?\n  \
         taken {taken} ({reason}){revision}: {size}, digest {digest}\n  \
         {component} is stopped, its data replaced by the snapshot's (verified first), and \
         started again;\n  changes to its data since the snapshot are lost.\n\
         Restore? [y/N] ",
        name = s.name_any(),
        component = s.spec.component,
        stack = s.spec.stack,
        reason = reason(s.spec.reason),
        size = snaps::size(st),
        digest = snaps::short_digest(st),
    )
}

/// Whether an answer to the prompt means yes.
pub fn accepted(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn confirm(s: &StackSnapshot, now: Timestamp) -> Result<(), CliError> {
    let name = s.name_any();
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Refused {
            message: format!(
                "restoring snapshot \"{name}\" replaces the data of component {} of stack \
                 \"{}\", and stdin is not a terminal to ask for confirmation",
                s.spec.component, s.spec.stack
            ),
            hint: "pass --yes to restore without asking".into(),
        });
    }
    let mut err = std::io::stderr().lock();
    err.write_all(prompt(s, now).as_bytes())?;
    err.flush()?;
    drop(err);
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if accepted(&answer) {
        Ok(())
    } else {
        Err(CliError::Refused {
            message: format!("restore of snapshot \"{name}\" cancelled; nothing was changed"),
            hint: "answer y to restore, or pass --yes".into(),
        })
    }
}

/// Whether the restore asked for by operation `op` has finished: the stack's last
/// rollback is that operation's, with `snapshot` Restored, and the stack is Ready again.
/// A failed restore ends the wait with its message.
pub fn restore_done(stack: &ProductionStack, op: &str, snapshot: &str) -> Step<()> {
    if !describe::is_current(stack) {
        return Step::Continue;
    }
    let name = stack.name_any();
    let status = stack.status.clone().unwrap_or_default();
    let failed = |component: &str, message: Option<&str>| {
        Step::Fail(CliError::Failed {
            message: format!(
                "restoring snapshot {snapshot} into component {component} of stack \"{name}\" \
                 failed: {}\n  the live data is as it was and {component} stays stopped; ways \
                 out: `deployctl retry {name}` (once the cause is fixed), `deployctl snapshot \
                 restore SNAPSHOT` (another of `deployctl snapshot list {name}`), `deployctl \
                 accept-live-data {name}` (start on the data as it is)",
                message.map(one_line).unwrap_or_else(|| "no message".into())
            ),
        })
    };
    if let Some(rb) = &status.rollback {
        if rb.operation.as_deref() == Some(op) {
            if let Some(r) = rb
                .restores
                .iter()
                .find(|r| r.snapshot == snapshot && r.phase == RestorePhase::Failed)
            {
                return failed(&r.component, r.message.as_deref());
            }
        }
        return Step::Continue;
    }
    if matches!(
        status.phase,
        Some(StackPhase::Invalid) | Some(StackPhase::Terminating)
    ) {
        return Step::Fail(CliError::Hopeless {
            message: format!(
                "stack \"{name}\" is {} and will not finish the restore: {}",
                describe::phase(stack),
                status.message.as_deref().map(one_line).unwrap_or_default()
            ),
        });
    }
    let Some(last) = status
        .last_rollback
        .as_ref()
        .filter(|r| r.operation.as_deref() == Some(op))
    else {
        return Step::Continue;
    };
    match last.restores.iter().find(|r| r.snapshot == snapshot) {
        Some(r) if r.phase == RestorePhase::Restored => {}
        Some(r) if r.phase == RestorePhase::Failed => {
            return failed(&r.component, r.message.as_deref())
        }
        _ => return Step::Continue,
    }
    let ready = status.condition(conditions::READY).is_some_and(|c| {
        c.status == "True"
            && (c.observed_generation.is_none()
                || c.observed_generation == stack.metadata.generation)
    });
    if ready {
        Step::Done(())
    } else {
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::fixtures::{now, stack};

    fn snapshot(yaml: &str) -> StackSnapshot {
        serde_yaml_ng::from_str(yaml).expect("fixture parses")
    }

    fn digest(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// Four snapshots of `shop` in every state, newest first.
    fn fixtures() -> Vec<StackSnapshot> {
        vec![
            snapshot(&format!(
                r#"
apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {{name: shop-db-m1714564000, namespace: prod, creationTimestamp: "2024-05-01T11:46:40Z"}}
spec: {{stack: shop, component: db, reason: Manual}}
status:
  phase: Completed
  revision: 3
  method: Sqlite
  digest: "{}"
  sizeBytes: 1572864
  storedBytes: 524288
  files: 1
  store: pvc://shop-snapshots
  completedAt: "2024-05-01T11:47:00Z"
  lastVerifiedAt: "2024-05-01T11:58:00Z"
  verification: Verified
"#,
                digest('a')
            )),
            snapshot(
                r#"
apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {name: shop-search-r3-1714563000, namespace: prod, creationTimestamp: "2024-05-01T11:30:00Z"}
spec: {stack: shop, component: search, reason: BeforeRollout}
status: {phase: Running, revision: 3, job: shop-search-snapshot-1a2b3c4d}
"#,
            ),
            snapshot(&format!(
                r#"
apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {{name: shop-db-r2-1714550000, namespace: prod, creationTimestamp: "2024-05-01T07:53:20Z"}}
spec: {{stack: shop, component: db, reason: BeforeRollout}}
status:
  phase: Completed
  revision: 2
  digest: "{}"
  sizeBytes: 20480
  files: 3
  store: pvc://shop-snapshots
  lastVerifiedAt: "2024-05-01T11:00:00Z"
  verification: Corrupt
  message: "chunk 3f2a of app.db does not match its digest"
"#,
                digest('b')
            )),
            snapshot(
                r#"
apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {name: shop-db-r1-1714500000, namespace: prod, creationTimestamp: "2024-04-30T18:00:00Z"}
spec: {stack: shop, component: db, reason: BeforeRollout}
status: {phase: Failed, message: "the store shop-snapshots is full"}
"#,
            ),
        ]
    }

    #[test]
    fn the_list_shows_revision_phase_size_digest_and_verification() {
        let out = table(&fixtures(), TableOptions::default(), now(), &Style::PLAIN);
        insta::assert_snapshot!(out);
    }

    #[test]
    fn the_list_ends_with_each_listed_stacks_snapshot_store() {
        let shop = crate::describe::data_fixtures::stalled_for_room();
        let out = store_footer(
            std::slice::from_ref(&shop),
            &fixtures(),
            now(),
            &Style::PLAIN,
        );
        assert_eq!(
            out,
            "\nSnapshot store of prod/shop: 4.5 GiB used, 512 MiB left (quota 5.0 GiB; 7.0 GiB free on the claim of 10 GiB); \
             next rollout adds about 600 MiB (not counting search); measured 3m ago by snapshot Job shop-db-snap-1a2b3c4d-0\n"
        );
        // A stack none of whose snapshots is listed, or never measured, adds nothing.
        assert_eq!(store_footer(&[shop], &[], now(), &Style::PLAIN), "");
        let unmeasured = crate::describe::data_fixtures::snapshotting();
        assert_eq!(
            store_footer(&[unmeasured], &fixtures(), now(), &Style::PLAIN),
            ""
        );
    }

    #[test]
    fn the_wide_list_has_the_whole_digest_and_the_message() {
        let out = table(
            &fixtures(),
            TableOptions {
                wide: true,
                namespaces: true,
            },
            now(),
            &Style::PLAIN,
        );
        let header = out.lines().next().unwrap();
        assert!(header.starts_with("NAMESPACE   NAME"), "{header}");
        assert!(
            header.contains("REASON") && header.ends_with("STORE                  MESSAGE"),
            "{header}"
        );
        assert!(out.contains(&digest('a')), "{out}");
        assert!(out.contains("the store shop-snapshots is full"), "{out}");
        // The failed pre-rollout snapshot's revision comes from its name.
        let failed = out.lines().last().unwrap();
        assert!(
            failed.contains("   BeforeRollout   1          Failed   "),
            "{failed}"
        );
    }

    fn data_stack() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, uid: 0b6f-uid}
spec:
  components:
  - {name: db, kind: StatefulSet, volumeClaims: [{name: data, size: 1Gi}], data: {volume: data, method: Sqlite, database: app.db}, template: {spec: {containers: [{name: app, image: 'x:1'}]}}}
  - {name: api, template: {spec: {containers: [{name: app, image: 'x:1'}]}}}
  - {name: search, kind: StatefulSet, volumeClaims: [{name: index, size: 1Gi}], data: {volume: index}, template: {spec: {containers: [{name: app, image: 'x:1'}]}}}
"#,
        )
    }

    #[test]
    fn create_takes_every_component_with_data_or_the_named_ones() {
        let s = data_stack();
        assert_eq!(choose_components(&s, &[]).unwrap(), ["db", "search"]);
        let asked = vec!["search".to_string(), "search".to_string()];
        assert_eq!(choose_components(&s, &asked).unwrap(), ["search"]);
        let e = choose_components(&s, &["api".to_string()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot snapshot component \"api\" of stack \"shop\": it declares no data\n  \
             components that declare data: db, search"
        );
        let e = choose_components(&s, &["dbb".to_string()]).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"dbb\" of stack \"shop\": the stack has no such component\n"),
            "{e}"
        );
        let mut none = s.clone();
        for c in &mut none.spec.components {
            c.data = None;
        }
        let e = choose_components(&none, &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("stack \"shop\" has no component that declares data"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_created_snapshot_is_manual_labelled_and_owned_by_the_stack() {
        let snap = build_snapshot(&data_stack(), "prod", "db", 1714564800);
        let v = serde_json::to_value(&snap).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "deployctl.dev/v1alpha1",
                "kind": "StackSnapshot",
                "metadata": {
                    "name": "shop-db-m1714564800",
                    "namespace": "prod",
                    "labels": {"deployctl.dev/stack": "shop", "deployctl.dev/component": "db"},
                    "ownerReferences": [{"apiVersion": "deployctl.dev/v1alpha1",
                        "kind": "ProductionStack", "name": "shop", "uid": "0b6f-uid"}]
                },
                "spec": {"stack": "shop", "component": "db", "reason": "Manual"}
            })
        );
    }

    #[test]
    fn snapshot_names_stay_within_object_name_limits() {
        assert_eq!(snapshot_name("shop", "db", 17), "shop-db-m17");
        let long = format!("{}-{}", "s".repeat(240), "x".repeat(20));
        let name = snapshot_name(&long, "db", 1714564800);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.ends_with("s-db-m1714564800"), "{name}");
    }

    #[test]
    fn a_snapshot_is_done_when_completed_and_fails_with_its_message() {
        let all = fixtures();
        assert!(matches!(snapshot_done(&all[0]), Step::Done(Ok(_))));
        assert!(matches!(snapshot_done(&all[1]), Step::Continue));
        match snapshot_done(&all[3]) {
            Step::Done(Err(m)) => assert_eq!(
                m,
                "snapshot shop-db-r1-1714500000 of component db failed: the store \
                 shop-snapshots is full"
            ),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            completed_line(&all[0]),
            format!(
                "Snapshot shop-db-m1714564000 of component db is Completed: 1.5 MiB (1 file) \
                 of revision 3, digest {}\n",
                digest('a')
            )
        );
        assert_eq!(
            snapshot_state(&all[1]),
            "Running (Job shop-search-snapshot-1a2b3c4d)"
        );
        let mut sts = all[0].clone();
        let status = sts.status.as_mut().unwrap();
        status.replicas = (0..2)
            .map(|o| deployctl_api::ReplicaSnapshot {
                ordinal: o,
                digest: Some(digest(if o == 0 { 'a' } else { 'b' })),
                ..Default::default()
            })
            .collect();
        assert!(completed_line(&sts).ends_with(&format!(
            "of revision 3, 2 replicas, digests by replica: 0 {}, 1 {}\n",
            digest('a'),
            digest('b')
        )));
    }

    #[test]
    fn a_verification_counts_only_from_the_request_on() {
        let all = fixtures();
        let before: Timestamp = "2024-05-01T11:57:00Z".parse().unwrap();
        let after: Timestamp = "2024-05-01T11:59:00Z".parse().unwrap();
        assert!(matches!(verification_done(&all[0], before), Step::Done(_)));
        assert!(matches!(verification_done(&all[0], after), Step::Continue));
        let asked: Timestamp = "2024-05-01T11:00:00Z".parse().unwrap();
        match verification_done(&all[2], asked) {
            Step::Fail(e) => {
                assert_eq!(e.exit_code(), 1);
                assert_eq!(
                    e.to_string(),
                    "snapshot shop-db-r2-1714550000 is Corrupt: chunk 3f2a of app.db does not \
                     match its digest\n  it will not be restored; take a new one with \
                     `deployctl snapshot create shop --component db`"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn only_complete_sound_snapshots_can_be_restored() {
        let all = fixtures();
        assert!(check_restorable(&all[0]).is_ok());
        let e = check_restorable(&all[1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "snapshot \"shop-search-r3-1714563000\" is Running; only a Completed snapshot can \
             be restored\n  choose a Completed one: deployctl snapshot list shop"
        );
        let e = check_restorable(&all[2]).unwrap_err();
        assert!(
            e.to_string()
                .contains("failed its last verification (Corrupt): chunk 3f2a"),
            "{e}"
        );
    }

    #[test]
    fn the_prompt_says_what_is_restored_where_and_what_is_lost() {
        insta::assert_snapshot!(prompt(&fixtures()[0], now()));
        assert!(accepted("y\n"));
        assert!(accepted(" YES "));
        assert!(!accepted("\n"));
        assert!(!accepted("no"));
    }

    fn restoring(phase: &str, extra: &str) -> ProductionStack {
        stack(&format!(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {{name: shop, namespace: prod, generation: 4}}
spec:
  components:
  - {{name: db, template: {{spec: {{containers: [{{name: app, image: 'x:1'}}]}}}}}}
status:
  observedGeneration: 4
  phase: {phase}
  currentRevision: 3
  stableRevision: 3
{extra}
"#
        ))
    }

    const OP: &str = "shop-restore-x7k2q";
    const SNAP: &str = "shop-db-m1714564000";

    #[test]
    fn a_restore_is_done_when_the_data_is_back_and_the_stack_ready() {
        let in_progress = restoring(
            "RollingBack",
            "  rollback:
    fromRevision: 3
    toRevision: 3
    reason: restore
    startedAt: '2024-05-01T11:59:00Z'
    operation: shop-restore-x7k2q
    trigger: Operation
    restores: [{component: db, snapshot: shop-db-m1714564000, phase: Restoring, job: shop-db-restore-1}]",
        );
        assert!(matches!(
            restore_done(&in_progress, OP, SNAP),
            Step::Continue
        ));

        let failed = restoring(
            "RollingBack",
            "  rollback:
    fromRevision: 3
    toRevision: 3
    reason: restore
    startedAt: '2024-05-01T11:59:00Z'
    operation: shop-restore-x7k2q
    restores: [{component: db, snapshot: shop-db-m1714564000, phase: Failed, message: chunk 3f2a does not match}]",
        );
        match restore_done(&failed, OP, SNAP) {
            Step::Fail(e) => {
                assert_eq!(e.exit_code(), 1);
                assert!(
                    e.to_string().starts_with(
                        "restoring snapshot shop-db-m1714564000 into component db of stack \
                         \"shop\" failed: chunk 3f2a does not match\n"
                    ),
                    "{e}"
                );
            }
            other => panic!("expected a failure, got {other:?}"),
        }

        let last = "  lastRollback:
    fromRevision: 3
    toRevision: 3
    reason: restore
    startedAt: '2024-05-01T11:59:00Z'
    completedAt: '2024-05-01T11:59:20Z'
    durationSeconds: 20
    withinDeadline: true
    operation: shop-restore-x7k2q
    trigger: Operation
    restores: [{component: db, snapshot: shop-db-m1714564000, phase: Restored}]";
        let not_ready = restoring("Progressing", last);
        assert!(matches!(restore_done(&not_ready, OP, SNAP), Step::Continue));
        let ready = restoring(
            "Healthy",
            &format!(
                "{last}\n  conditions: [{{type: Ready, status: 'True', reason: Healthy, message: ok, lastTransitionTime: '2024-05-01T11:59:20Z'}}]"
            ),
        );
        assert!(matches!(restore_done(&ready, OP, SNAP), Step::Done(())));
        // Someone else's restore, or an older one, does not count.
        assert!(matches!(
            restore_done(&ready, "shop-restore-other", SNAP),
            Step::Continue
        ));
        let mut stale = ready.clone();
        stale.metadata.generation = Some(5);
        assert!(matches!(restore_done(&stale, OP, SNAP), Step::Continue));
    }
}
