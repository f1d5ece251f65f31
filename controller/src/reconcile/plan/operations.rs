//! Acting on StackOperations (rollback, pause, resume, promote, retry, abort): each is
//! applied to the status once, in creation order, and its result recorded, so a person
//! sees what became of the request and a restart never acts on it twice.

use super::{rollback, OperationResult, Planner};
use deployctl_api::{GatePhase, OperationAction, OperationPhase, OperationRecord, RollbackTrigger};

/// How many processed operation names the status remembers.
const REMEMBER: usize = 20;

/// A StackOperation not yet acted on.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingOperation {
    /// The operation's name.
    pub name: String,
    /// What it asks for.
    pub action: OperationAction,
    /// For rollbacks, the revision asked for.
    pub to_revision: Option<i64>,
    /// Why, in the requester's words.
    pub reason: Option<String>,
    /// Who asked.
    pub requested_by: Option<String>,
    /// For restores, the StackSnapshot.
    pub snapshot: Option<String>,
}

pub(super) fn apply(p: &mut Planner<'_>) {
    let ops: Vec<PendingOperation> = p.input.operations.to_vec();
    for op in ops {
        if p.status.processed_operations.contains(&op.name) {
            continue;
        }
        let (phase, message, target) = act(p, &op);
        p.event(
            phase == OperationPhase::Failed,
            if phase == OperationPhase::Failed {
                "OperationRefused"
            } else {
                "OperationAccepted"
            },
            format!(
                "{} requested by {} via {}{}: {message}",
                op.action.as_str(),
                op.requested_by.as_deref().unwrap_or("an unknown user"),
                op.name,
                op.reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        );
        p.status.processed_operations.push(op.name.clone());
        let excess = p.status.processed_operations.len().saturating_sub(REMEMBER);
        p.status.processed_operations.drain(..excess);
        if phase == OperationPhase::Failed {
            p.status.refused_operations.push(op.name.clone());
        }
        // Only names still remembered as processed matter.
        let processed = p.status.processed_operations.clone();
        p.status
            .refused_operations
            .retain(|n| processed.contains(n));
        p.op_results.push(OperationResult {
            name: op.name,
            phase,
            message,
            target_revision: target,
        });
    }
}

fn record(p: &Planner<'_>, op: &PendingOperation) -> OperationRecord {
    OperationRecord {
        operation: op.name.clone(),
        at: p.now(),
        requested_by: op.requested_by.clone(),
        reason: op.reason.clone(),
    }
}

fn act(p: &mut Planner<'_>, op: &PendingOperation) -> (OperationPhase, String, Option<i64>) {
    use OperationPhase::{Failed, Succeeded};
    // The CRD's CEL rules refuse these where the API server enforces them (1.25+); on
    // older clusters they get here, and a field that does not belong to the action is
    // refused by name rather than quietly ignored.
    let spec = deployctl_api::StackOperationSpec {
        stack: p.input.stack.to_string(),
        action: op.action,
        to_revision: op.to_revision,
        snapshot: op.snapshot.clone(),
        reason: None,
        requested_by: None,
    };
    if let Err(invalid) = deployctl_api::validation::validate_operation(&spec) {
        return (Failed, format!("invalid operation: {invalid}"), None);
    }
    let desired = p.input.desired.number;
    match op.action {
        OperationAction::Pause => {
            p.status.manual_pause = Some(record(p, op));
            (
                Succeeded,
                "the rollout is paused; no further component starts until resumed".into(),
                None,
            )
        }
        OperationAction::Resume => {
            let was = p.status.manual_pause.take().is_some();
            let restarted = restart_inconclusive(p);
            let msg = match (was, restarted) {
                (true, _) => "the rollout resumes".to_string(),
                (false, true) => "the inconclusive analysis starts again".to_string(),
                (false, false) => "the stack was not paused; nothing to do".to_string(),
            };
            (Succeeded, msg, None)
        }
        OperationAction::Promote => match p.status.rollout.as_mut() {
            Some(r) => {
                r.promoted = true;
                let rev = r.revision;
                (
                    Succeeded,
                    format!("the remaining analysis of revision {rev} is skipped"),
                    None,
                )
            }
            None => (Failed, "no rollout is in progress to promote".into(), None),
        },
        OperationAction::Retry => {
            if !super::snapshots::failed_restores(p).is_empty() {
                let msg = super::snapshots::retry_failed_restores(p);
                let to = p.status.rollback.as_ref().map(|rb| rb.to_revision);
                (Succeeded, msg, to)
            } else if let Some(h) = p.status.hold.take() {
                (
                    Succeeded,
                    format!("revision {} is rolled out again", h.held_back),
                    None,
                )
            } else if p
                .status
                .rollout
                .as_ref()
                .is_some_and(|r| r.failure.is_some())
            {
                p.status.rollout = None;
                (
                    Succeeded,
                    format!("the rollout of revision {desired} starts over"),
                    None,
                )
            } else {
                (
                    Failed,
                    "nothing to retry: no revision is held back and no rollout failed".into(),
                    None,
                )
            }
        }
        OperationAction::Restore => super::snapshots::request_restore(p, op),
        OperationAction::AcceptLiveData => super::snapshots::accept_live_data(p, op),
        OperationAction::Abort => {
            if p.status.rollback.is_some() {
                return (Failed, rollback_in_progress(p), None);
            }
            let Some(r) = p.status.rollout.clone() else {
                return (Failed, "no rollout is in progress to abort".into(), None);
            };
            match r.from_revision.filter(|f| *f != r.revision) {
                Some(to) => {
                    let why = format!("aborted: {}", op.reason.as_deref().unwrap_or("by request"));
                    rollback::start(
                        p,
                        to,
                        why,
                        Some(op.name.clone()),
                        RollbackTrigger::Operation,
                    );
                    (
                        Succeeded,
                        format!("rolling back to revision {to}"),
                        Some(to),
                    )
                }
                None => (
                    Failed,
                    "the rollout has no earlier revision to go back to".into(),
                    None,
                ),
            }
        }
        OperationAction::Rollback => {
            // A rollback waiting after a failed restore may be redirected: the new one
            // runs the components of its revision on the data as it is now.
            if let Some(rb) = &p.status.rollback {
                if super::snapshots::failed_restores(p).is_empty() {
                    return (Failed, rollback_in_progress(p), None);
                }
                // A restore Job still running would swap data under the started components.
                if let Some(r) = rb
                    .restores
                    .iter()
                    .find(|r| r.phase == deployctl_api::RestorePhase::Restoring)
                {
                    return (
                        Failed,
                        format!(
                            "the restore of component {} from snapshot {} is still running; roll back once it has ended",
                            r.component, r.snapshot
                        ),
                        None,
                    );
                }
            }
            let running = p
                .status
                .hold
                .as_ref()
                .map(|h| h.revision)
                .or(p.status.stable_revision);
            let default_target = if let Some(rb) = &p.status.rollback {
                // Waiting after a failed restore: its own revision, on the data as it is.
                Some(rb.to_revision)
            } else if p.status.rollout.is_some() {
                p.status.stable_revision.filter(|s| *s != desired)
            } else {
                // Stable on `running`: go to the newest revision before it.
                let before = running.unwrap_or(desired);
                std::iter::once(desired)
                    .chain(p.input.revisions.keys().copied())
                    .filter(|n| *n < before)
                    .max()
            };
            let Some(to) = op.to_revision.or(default_target) else {
                return (
                    Failed,
                    "there is no earlier revision to roll back to".into(),
                    None,
                );
            };
            if p.revision(to).is_none() {
                let mut kept: Vec<i64> = std::iter::once(desired)
                    .chain(p.input.revisions.keys().copied())
                    .collect();
                kept.sort_unstable();
                kept.dedup();
                let kept: Vec<String> = kept.iter().map(|n| n.to_string()).collect();
                return (
                    Failed,
                    format!(
                        "revision {to} is not in the history (kept: {})",
                        kept.join(", ")
                    ),
                    None,
                );
            }
            let why = op
                .reason
                .clone()
                .unwrap_or_else(|| "requested by an operator".into());
            let failed = super::snapshots::failed_restores(p);
            rollback::start(
                p,
                to,
                why,
                Some(op.name.clone()),
                RollbackTrigger::Operation,
            );
            let data = if failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; the data of {} stays as it is now (its restore failed)",
                    failed.join(", ")
                )
            };
            (
                Succeeded,
                format!("rolling back to revision {to}{data}"),
                Some(to),
            )
        }
    }
}

/// Why an operation waits for the rollback in progress, and what can be done meanwhile.
fn rollback_in_progress(p: &Planner<'_>) -> String {
    let failed = super::snapshots::failed_restores(p);
    if failed.is_empty() {
        "a rollback is already in progress; wait for it to finish".into()
    } else {
        format!(
            "a rollback is in progress, waiting after the failed restore of {}: use Retry, Restore (another snapshot), AcceptLiveData or Rollback (to a revision, on the data as it is now)",
            failed.join(", ")
        )
    }
}

/// Resets inconclusive gates of the analysis in progress so they are measured afresh.
fn restart_inconclusive(p: &mut Planner<'_>) -> bool {
    let mut restarted = false;
    let Some(r) = p.status.rollout.as_mut() else {
        return false;
    };
    let focus = r.component.clone();
    let now = p.input.now.clone();
    for c in &mut p.status.components {
        if Some(&c.name) != focus.as_ref() {
            continue;
        }
        for g in &mut c.gates {
            if g.phase == GatePhase::Inconclusive {
                *g = deployctl_api::GateStatus {
                    name: g.name.clone(),
                    ..Default::default()
                };
                restarted = true;
            }
        }
    }
    for g in &mut p.status.gates {
        if g.phase == GatePhase::Inconclusive {
            *g = deployctl_api::GateStatus {
                name: g.name.clone(),
                ..Default::default()
            };
            restarted = true;
        }
    }
    if restarted {
        r.analysis_started_at = Some(now);
    }
    restarted
}
