//! `rollback`, `pause`, `resume`, `promote`, `retry`, `abort` and `accept-live-data`: each creates a
//! `StackOperation` (who asked, why), waits until the controller has acted on it
//! (`status.phase`), reports what it did, and with `--wait` follows the stack until it
//! gets where the operation sends it. `snapshot restore` creates its `Restore` operation
//! through the same path.

use super::wait::{rolled_back_error, wait_stack};
use super::{print, Ctx};
use crate::args::Timeout;
use crate::cluster::Cluster;
use crate::describe;
use crate::error::{one_line, Call, CliError};
use crate::output::progress::Progress;
use crate::stacks::{self, OPERATIONS};
use crate::watch::{self, Ended, Step};
pub use deployctl_api::OperationAction as Action;
use deployctl_api::{
    OperationPhase, ProductionStack, StackOperation, StackOperationSpec, StackPhase,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use tokio::time::Instant;

/// Arguments of `rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// The revision to go back to [default: the stable revision, or the one before it
    /// when the stack is stable]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub to_revision: Option<i64>,

    /// Why, in your words; recorded in the operation, Events and the history
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Then wait until the stack has rolled back (exit 3 on timeout)
    #[arg(long)]
    pub wait: bool,

    /// How long to wait for the controller, and with --wait for the rollback
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// Arguments of `pause`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// Why, in your words; recorded in the operation, Events and the stack's status
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// How long to wait for the controller to act on the request
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// Arguments of `resume`, `promote`, `retry`, `abort` and `accept-live-data`.
#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    /// The stack
    #[arg(value_name = "STACK")]
    pub stack: String,

    /// Why, in your words; recorded in the operation and Events
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Then wait until the stack gets there: Healthy after resume, promote and retry;
    /// rolled back after abort, accept-live-data and a retry of a failed restore (exit 4
    /// if a retried or promoted rollout rolls back)
    #[arg(long)]
    pub wait: bool,

    /// How long to wait for the controller, and with --wait for the stack
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub timeout: Timeout,
}

/// A request, as the commands give it.
#[derive(Debug)]
pub(super) struct Request<'a> {
    pub action: Action,
    pub stack: &'a str,
    pub to_revision: Option<i64>,
    /// For `Restore`: the StackSnapshot.
    pub snapshot: Option<String>,
    pub reason: Option<String>,
    pub timeout: &'a Timeout,
}

/// Runs `rollback`.
pub async fn run_rollback(args: RollbackArgs, ctx: &Ctx) -> Result<(), CliError> {
    let deadline = Instant::now() + args.timeout.duration;
    let cluster = ctx.cluster().await?;
    let req = Request {
        action: Action::Rollback,
        stack: &args.stack,
        to_revision: args.to_revision,
        snapshot: None,
        reason: args.reason.clone(),
        timeout: &args.timeout,
    };
    let (stack, op) = submit(&cluster, &req, deadline).await?;
    if args.wait {
        let target = target_revision(&op, args.to_revision, &stack);
        follow_rollback(&cluster, stack, &op, target, &args.timeout, deadline).await?;
    }
    Ok(())
}

/// Runs `pause`.
pub async fn run_pause(args: PauseArgs, ctx: &Ctx) -> Result<(), CliError> {
    let deadline = Instant::now() + args.timeout.duration;
    let cluster = ctx.cluster().await?;
    let req = Request {
        action: Action::Pause,
        stack: &args.stack,
        to_revision: None,
        snapshot: None,
        reason: args.reason.clone(),
        timeout: &args.timeout,
    };
    submit(&cluster, &req, deadline).await?;
    Ok(())
}

/// Runs `resume`, `promote`, `retry`, `abort` or `accept-live-data`.
pub async fn run_action(action: Action, args: ActionArgs, ctx: &Ctx) -> Result<(), CliError> {
    let deadline = Instant::now() + args.timeout.duration;
    let cluster = ctx.cluster().await?;
    let req = Request {
        action,
        stack: &args.stack,
        to_revision: None,
        snapshot: None,
        reason: args.reason.clone(),
        timeout: &args.timeout,
    };
    let (stack, op) = submit(&cluster, &req, deadline).await?;
    if !args.wait {
        return Ok(());
    }
    // These end in a rollback: an abort starts one; accepting the live data, or retrying
    // a failed restore, lets the waiting one finish (the controller then names its revision).
    let rolls_back = action == Action::Abort
        || action == Action::AcceptLiveData
        || action == Action::Retry && op.status.as_ref().and_then(|s| s.target_revision).is_some();
    if rolls_back {
        let target = target_revision(&op, None, &stack);
        return follow_rollback(&cluster, stack, &op, target, &args.timeout, deadline).await;
    }
    let requested_at = op.metadata.creation_timestamp.clone();
    let done = wait_stack(&cluster, stack, &args.timeout, "healthy", deadline, |s| {
        healthy_after(s, action, requested_at.as_ref())
    })
    .await?;
    print(&format!(
        "stack \"{}\" is Healthy on revision {}\n",
        args.stack,
        describe::opt_num(done.status.and_then(|s| s.current_revision))
    ))
}

/// `<stack>-<action>-`, the operation's `generateName`; the stack name is shortened so
/// the generated name stays within the 253 characters of an object name.
pub fn generate_name(stack: &str, action: Action) -> String {
    let action = action.as_str().to_ascii_lowercase();
    let room = 253 - 5 - action.len() - 2;
    let stack: String = stack.chars().take(room).collect();
    format!("{stack}-{action}-")
}

/// The operation object the CLI creates.
pub fn build(
    namespace: &str,
    stack: &str,
    action: Action,
    to_revision: Option<i64>,
    reason: Option<String>,
    requested_by: Option<String>,
) -> StackOperation {
    StackOperation {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(stack, action)),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        spec: StackOperationSpec {
            stack: stack.to_string(),
            action,
            to_revision,
            snapshot: None,
            reason: reason.filter(|r| !r.trim().is_empty()),
            requested_by,
        },
        status: None,
    }
}

/// Creates the operation and waits until the controller has acted on it; prints what it
/// did. Returns the stack as it was before and the processed operation.
pub(super) async fn submit(
    cluster: &Cluster,
    req: &Request<'_>,
    deadline: Instant,
) -> Result<(ProductionStack, StackOperation), CliError> {
    let stack = stacks::get(cluster, req.stack).await?;
    if let Some(n) = req.to_revision {
        // Checked here so a typo fails at once instead of after a round trip through the
        // controller; skipped if we may not list revisions (the controller checks too).
        if let Ok(revisions) = stacks::revisions(cluster, &stack).await {
            if !revisions.iter().any(|r| r.number == n) {
                return Err(CliError::RevisionNotFound {
                    stack: req.stack.to_string(),
                    revision: n,
                    available: revisions.iter().map(|r| r.number).collect(),
                });
            }
        }
    }
    let requested_by = cluster.identity().await;
    let mut op = build(
        &cluster.namespace,
        req.stack,
        req.action,
        req.to_revision,
        req.reason.clone(),
        requested_by,
    );
    op.spec.snapshot = req.snapshot.clone();
    let api: Api<StackOperation> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let verb = req.action.as_str().to_ascii_lowercase();
    let created = api.create(&PostParams::default(), &op).await.map_err(|e| {
        cluster.error(
            e,
            &Call {
                verb: "create",
                resource: OPERATIONS,
                namespace: Some(&cluster.namespace),
                action: format!("requesting a {verb} of stack \"{}\"", req.stack),
            },
        )
    })?;
    let op_name = created.name_any();
    let progress = Progress::start(format!(
        "waiting for the controller to act on operation {op_name}"
    ));
    let result = watch::until(
        cluster,
        api,
        OPERATIONS,
        &op_name,
        Some(created),
        deadline,
        |o: &StackOperation| match o.status.as_ref().and_then(|s| s.phase) {
            Some(_) => Step::Done(o.clone()),
            None => Step::Continue,
        },
        |problem| progress.set(format!("watch interrupted, retrying: {problem}")),
    )
    .await;
    progress.finish();
    let processed = match result? {
        Ok(op) => op,
        Err(Ended::TimedOut(_)) => {
            return Err(CliError::TimedOut {
                message: format!(
                    "timed out after {} waiting for the controller to act on operation \
                     {op_name} ({verb} of stack \"{}\"); is the deployctl controller running \
                     for namespace \"{}\"?\n  the operation stays pending; if it is no longer \
                     wanted: kubectl delete stackoperation {op_name} -n {}",
                    req.timeout, req.stack, cluster.namespace, cluster.namespace
                ),
            })
        }
        Err(Ended::Deleted(_)) => {
            return Err(CliError::Hopeless {
                message: format!(
                    "operation {op_name} was deleted before the controller acted on it"
                ),
            })
        }
    };
    let status = processed.status.clone().unwrap_or_default();
    let message = status
        .message
        .as_deref()
        .map(one_line)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "no message".to_string());
    let action = req.action.as_str();
    match status.phase {
        Some(OperationPhase::Failed) => Err(CliError::OperationFailed {
            message: format!(
                "{action} of stack \"{}\" failed (operation {op_name}): {message}",
                req.stack
            ),
        }),
        _ => {
            print(&format!(
                "{action} of stack \"{}\" succeeded (operation {op_name}): {message}\n",
                req.stack
            ))?;
            Ok((stack, processed))
        }
    }
}

/// The revision a rollback or abort goes to: what the controller said, else what was
/// asked, else (abort) the stable revision.
fn target_revision(
    op: &StackOperation,
    asked: Option<i64>,
    stack: &ProductionStack,
) -> Option<i64> {
    op.status
        .as_ref()
        .and_then(|s| s.target_revision)
        .or(asked)
        .or_else(|| {
            (op.spec.action == Action::Abort)
                .then(|| stack.status.as_ref().and_then(|s| s.stable_revision))
                .flatten()
        })
}

async fn follow_rollback(
    cluster: &Cluster,
    stack: ProductionStack,
    op: &StackOperation,
    target: Option<i64>,
    timeout: &Timeout,
    deadline: Instant,
) -> Result<(), CliError> {
    let name = stack.name_any();
    let op_name = op.name_any();
    let what = match target {
        Some(t) => format!("rolled back to revision {t}"),
        None => "rolled back".to_string(),
    };
    let done = wait_stack(cluster, stack, timeout, &what, deadline, |s| {
        rollback_done(s, &op_name, target)
    })
    .await?;
    let status = done.status.clone().unwrap_or_default();
    let line = match (&status.last_rollback, status.phase) {
        (Some(r), Some(StackPhase::RolledBack)) => format!(
            "stack \"{name}\" rolled back from revision {} to {} in {}{}\n",
            r.from_revision,
            r.to_revision,
            deployctl_api::duration::human(std::time::Duration::from_secs_f64(
                r.duration_seconds.max(0.0)
            )),
            if r.within_deadline {
                ""
            } else {
                " (missed the rollback deadline)"
            }
        ),
        _ => format!(
            "stack \"{name}\" is {} on revision {}\n",
            describe::phase(&done),
            describe::opt_num(status.current_revision)
        ),
    };
    print(&line)
}

/// Whether the rollback asked for by operation `op` (to `target`) has finished.
pub fn rollback_done(stack: &ProductionStack, op: &str, target: Option<i64>) -> Step<()> {
    if !describe::is_current(stack) {
        return Step::Continue;
    }
    let status = stack.status.clone().unwrap_or_default();
    if status.rollback.is_some() {
        return Step::Continue;
    }
    match status.phase {
        Some(StackPhase::RolledBack) => {
            let Some(r) = &status.last_rollback else {
                return Step::Continue;
            };
            let ours = r.operation.as_deref() == Some(op);
            let on_target = target.is_some_and(|t| r.to_revision == t);
            if ours || on_target {
                Step::Done(())
            } else {
                Step::Continue
            }
        }
        Some(StackPhase::Healthy)
            if target.is_some() && status.current_revision == target && status.hold.is_none() =>
        {
            Step::Done(())
        }
        Some(StackPhase::Invalid) | Some(StackPhase::Terminating) => {
            Step::Fail(CliError::Hopeless {
                message: format!(
                    "stack \"{}\" is {} and will not finish the rollback: {}",
                    stack.name_any(),
                    describe::phase(stack),
                    status.message.as_deref().map(one_line).unwrap_or_default()
                ),
            })
        }
        _ => Step::Continue,
    }
}

/// Whether the stack is Healthy after a resume, promote or retry; a rollback that started
/// after the request ends the wait with exit 4.
pub fn healthy_after(
    stack: &ProductionStack,
    action: Action,
    requested_at: Option<&Time>,
) -> Step<()> {
    if !describe::is_current(stack) {
        return Step::Continue;
    }
    let status = stack.status.clone().unwrap_or_default();
    match status.phase {
        Some(StackPhase::Healthy)
            if status.hold.is_none()
                && (action != Action::Resume || status.manual_pause.is_none()) =>
        {
            Step::Done(())
        }
        Some(StackPhase::RolledBack) => {
            // The hold from before a retry is still there until the controller acts;
            // only a rollback decided after the request is news.
            let new = match (&status.last_rollback, requested_at) {
                (Some(r), Some(t)) => r.started_at.0 >= t.0,
                _ => false,
            };
            if new {
                Step::Fail(rolled_back_error(stack))
            } else {
                Step::Continue
            }
        }
        Some(StackPhase::Invalid) | Some(StackPhase::Terminating) => {
            Step::Fail(CliError::Hopeless {
                message: format!(
                    "stack \"{}\" is {} and will not become healthy: {}",
                    stack.name_any(),
                    describe::phase(stack),
                    status.message.as_deref().map(one_line).unwrap_or_default()
                ),
            })
        }
        _ => Step::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::describe::fixtures::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn operations_carry_who_why_and_what() {
        let op = build(
            "prod",
            "shop",
            Action::Rollback,
            Some(3),
            Some("bad deploy".into()),
            Some("alice".into()),
        );
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "deployctl.dev/v1alpha1",
                "kind": "StackOperation",
                "metadata": {"generateName": "shop-rollback-", "namespace": "prod"},
                "spec": {"stack": "shop", "action": "Rollback", "toRevision": 3,
                         "reason": "bad deploy", "requestedBy": "alice"}
            })
        );
        let blank = build("prod", "shop", Action::Pause, None, Some("  ".into()), None);
        assert_eq!(blank.spec.reason, None);
    }

    #[test]
    fn generated_names_stay_within_object_name_limits() {
        assert_eq!(generate_name("shop", Action::Abort), "shop-abort-");
        let long = "s".repeat(253);
        assert!(generate_name(&long, Action::Rollback).len() + 5 <= 253);
    }

    #[test]
    fn a_rollback_is_done_when_the_stack_holds_the_target() {
        let s = rolled_back();
        assert!(matches!(
            rollback_done(&s, "shop-rollback-x7k2q", None),
            Step::Done(())
        ));
        assert!(matches!(
            rollback_done(&s, "other", Some(3)),
            Step::Done(())
        ));
        assert!(matches!(
            rollback_done(&s, "other", Some(2)),
            Step::Continue
        ));
        let mut in_progress = progressing();
        assert!(matches!(
            rollback_done(&in_progress, "x", Some(3)),
            Step::Continue
        ));
        in_progress.status.as_mut().unwrap().phase = Some(StackPhase::Invalid);
        assert!(matches!(
            rollback_done(&in_progress, "x", Some(3)),
            Step::Fail(_)
        ));
    }

    #[test]
    fn healthy_after_a_retry_ignores_the_old_rollback_but_not_a_new_one() {
        let s = rolled_back();
        // The rollback started at 11:50; a retry requested at 11:58 sees the old hold.
        let asked = t("2024-05-01T11:58:00Z");
        assert!(matches!(
            healthy_after(&s, Action::Retry, Some(&asked)),
            Step::Continue
        ));
        let earlier = t("2024-05-01T11:40:00Z");
        match healthy_after(&s, Action::Retry, Some(&earlier)) {
            Step::Fail(e) => assert_eq!(e.exit_code(), 4),
            other => panic!("expected exit 4, got {other:?}"),
        }
        assert!(matches!(
            healthy_after(&healthy(), Action::Promote, None),
            Step::Done(())
        ));
    }

    #[test]
    fn resume_waits_for_the_manual_pause_to_clear() {
        let mut s = healthy();
        s.status.as_mut().unwrap().manual_pause = Some(deployctl_api::OperationRecord {
            operation: "shop-pause-abcde".into(),
            at: t("2024-05-01T11:00:00Z"),
            requested_by: None,
            reason: None,
        });
        assert!(matches!(
            healthy_after(&s, Action::Resume, None),
            Step::Continue
        ));
        assert!(matches!(
            healthy_after(&s, Action::Promote, None),
            Step::Done(())
        ));
    }

    #[test]
    fn the_abort_target_defaults_to_the_stable_revision() {
        let stack = progressing();
        let op = build("prod", "shop", Action::Abort, None, None, None);
        assert_eq!(target_revision(&op, None, &stack), Some(3));
        let op = build("prod", "shop", Action::Rollback, None, None, None);
        assert_eq!(target_revision(&op, None, &stack), None);
        assert_eq!(target_revision(&op, Some(2), &stack), Some(2));
    }
}
