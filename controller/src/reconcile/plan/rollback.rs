//! Rolling back: components that run the failed revision go back, in reverse dependency
//! order, to the target revision's spec; components the target does not have are
//! removed. The rollback is done when the target revision is Available everywhere; the
//! stack then holds it (status.hold) until the spec changes or a person asks for a retry.

use super::{Action, Outcome, Planner};
use crate::gates::analysis::elapsed;
use deployctl_api::conditions::reason;
use deployctl_api::duration::human;
use deployctl_api::{
    ComponentPhase, ComponentStatus, DataRestore, RevisionHold, RollbackRecord, RollbackState,
    RollbackTrigger,
};

/// Starts a rollback to revision `to` and takes its first step in the same reconcile.
/// The data of components that ran the failed revision comes back from the rollout's
/// pre-rollout snapshots.
pub(super) fn start(
    p: &mut Planner<'_>,
    to: i64,
    reason_text: String,
    operation: Option<String>,
    trigger: RollbackTrigger,
) {
    let failed = p
        .status
        .rollout
        .as_ref()
        .map(|r| r.revision)
        .unwrap_or(p.input.desired.number);
    let restores = super::data::restores_for(p, failed);
    start_with(p, to, reason_text, operation, trigger, restores);
}

/// Starts a rollback to `to` restoring `restores`, and takes its first step.
pub(super) fn start_with(
    p: &mut Planner<'_>,
    to: i64,
    reason_text: String,
    operation: Option<String>,
    trigger: RollbackTrigger,
    restores: Vec<DataRestore>,
) {
    let from = p
        .status
        .rollout
        .as_ref()
        .map(|r| r.revision)
        .or(p.status.hold.as_ref().map(|h| h.revision))
        .or(p.status.stable_revision)
        .unwrap_or(p.input.desired.number);
    let data = if restores.is_empty() {
        String::new()
    } else {
        format!(
            " (restoring the data of {})",
            restores
                .iter()
                .map(|r| format!("{} from {}", r.component, r.snapshot))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    p.event(
        true,
        "RollbackStarted",
        format!("Rolling back from revision {from} to {to}{data}: {reason_text}"),
    );
    if p.status.rollout.is_some() {
        p.outcomes.push(Outcome::Rollout(if operation.is_some() {
            "aborted"
        } else {
            "rolled_back"
        }));
    }
    p.status.rollout = None;
    p.status.rollback = Some(RollbackState {
        from_revision: from,
        to_revision: to,
        reason: reason_text,
        started_at: p.now(),
        component: None,
        operation,
        trigger,
        restores,
    });
    run(p);
}

/// One reconcile of the rollback in progress.
pub(super) fn run(p: &mut Planner<'_>) {
    p.rollback_ran = true;
    let rb = p.status.rollback.clone().expect("rollback in progress");
    let Some(target) = p.revision(rb.to_revision) else {
        missing_revision(p, rb.to_revision);
        return;
    };
    let from = p.revision(rb.from_revision).unwrap_or(p.input.desired);

    // Dependents first: the reverse of the failed revision's order, then what only the
    // target has (a component the failed revision removed).
    let mut sequence: Vec<String> = from.order.iter().rev().cloned().collect();
    for c in &target.order {
        if !sequence.contains(c) {
            sequence.push(c.clone());
        }
    }
    let mut focus: Option<String> = None;
    for c in &sequence {
        if target.component(c).is_none() {
            if p.observed(c).is_some() {
                p.actions.push(Action::Delete {
                    component: c.clone(),
                });
            }
            continue;
        }
        if focus.is_some() {
            continue;
        }
        if !super::data::restore_step(p, target, c) {
            focus = Some(c.clone());
            continue;
        }
        if !p.up_to_date(target, c) {
            p.actions.push(Action::Apply {
                component: c.clone(),
                revision: target.number,
            });
            p.event(
                false,
                "ComponentRolledBack",
                format!("Rolling component {c} back to revision {}", target.number),
            );
            focus = Some(c.clone());
        } else if !p.available(c) {
            focus = Some(c.clone());
        }
    }

    // restore_step updated the restores: carry on from the status, not the copy above.
    let rb = p.status.rollback.clone().expect("rollback in progress");
    let restoring = |c: &str| {
        rb.restores
            .iter()
            .find(|r| r.component == c && r.phase != deployctl_api::RestorePhase::Restored)
            .map(|r| format!("data: {:?} from snapshot {}", r.phase, r.snapshot))
    };
    let components: Vec<ComponentStatus> = target
        .order
        .iter()
        .map(|c| {
            let w = p.observed(c);
            let up = p.up_to_date(target, c);
            ComponentStatus {
                name: c.clone(),
                revision: w.and_then(|w| w.revision),
                phase: if up && p.available(c) {
                    ComponentPhase::Available
                } else if up {
                    ComponentPhase::Progressing
                } else {
                    ComponentPhase::Pending
                },
                replicas: w.map(|w| w.replicas).unwrap_or_default(),
                ready_replicas: w.map(|w| w.ready_replicas).unwrap_or_default(),
                updated_replicas: w.map(|w| w.updated_replicas).unwrap_or_default(),
                message: if let Some(m) = restoring(c) {
                    Some(m)
                } else if up && !p.available(c) {
                    w.and_then(|w| w.message.clone())
                } else if !up {
                    Some(format!("rolling back to revision {}", target.number))
                } else {
                    None
                },
                gates: vec![],
            }
        })
        .collect();
    p.status.components = components;

    let now = p.now();
    let took = elapsed(&rb.started_at, &now);
    let deadline = p.rollback_deadline();
    let pending_deletes = p.actions.iter().any(|a| matches!(a, Action::Delete { .. }));
    if focus.is_none() && !pending_deletes {
        finish(p, rb, took, deadline);
        return;
    }
    let mut rb = rb;
    rb.component = focus;
    p.status.rollback = Some(rb);
    if took > deadline {
        if p.input
            .previous
            .condition(deployctl_api::conditions::READY)
            .map(|c| c.reason.as_str())
            != Some(reason::ROLLBACK_DEADLINE_EXCEEDED)
        {
            p.event(
                true,
                reason::ROLLBACK_DEADLINE_EXCEEDED,
                format!(
                    "The rollback has taken {} so far, over its deadline of {}",
                    human(took),
                    p.input.spec.rollout.rollback_deadline()
                ),
            );
        }
        p.rollback_over_deadline = true;
    } else {
        p.requeue_in(deadline - took);
    }
    p.requeue_in(std::time::Duration::from_secs(2));
}

fn finish(
    p: &mut Planner<'_>,
    rb: RollbackState,
    took: std::time::Duration,
    deadline: std::time::Duration,
) {
    let within = took <= deadline;
    let now = p.now();
    p.event(
        !within,
        if within {
            "RollbackComplete"
        } else {
            reason::ROLLBACK_DEADLINE_EXCEEDED
        },
        format!(
            "Rolled back from revision {} to {} in {} (deadline {}): {}",
            rb.from_revision,
            rb.to_revision,
            human(took),
            p.input.spec.rollout.rollback_deadline(),
            rb.reason
        ),
    );
    p.outcomes.push(Outcome::Rollback {
        trigger: rb.trigger.label(),
        outcome: if within { "completed" } else { "over_deadline" },
        seconds: took.as_secs_f64(),
        deadline_seconds: deadline.as_secs_f64(),
    });
    p.status.last_rollback = Some(RollbackRecord {
        from_revision: rb.from_revision,
        to_revision: rb.to_revision,
        reason: rb.reason.clone(),
        started_at: rb.started_at.clone(),
        completed_at: now,
        duration_seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
        within_deadline: within,
        operation: rb.operation.clone(),
        trigger: rb.trigger,
        restores: rb.restores.clone(),
    });
    p.status.rollback = None;
    p.status.stable_revision = Some(rb.to_revision);
    p.status.stable_revision_hash = p
        .revision(rb.to_revision)
        .map(|r| crate::reconcile::revisions::revision_hash(&r.components));
    // Hold back the revision that failed; a spec pushed during the rollback is a new
    // revision and the hold-release check rolls it out next. A data-only restore (from
    // and to the same revision) keeps whatever hold there was.
    if rb.to_revision != rb.from_revision {
        p.status.hold = Some(RevisionHold {
            revision: rb.to_revision,
            held_back: rb.from_revision,
            reason: rb.reason,
        });
    }
    for c in &mut p.status.components {
        c.gates.clear();
    }
    p.status.gates.clear();
}

/// The revision a rollback or hold needs is gone from the history: nothing can be done
/// safely; say so and wait for a person.
pub(super) fn missing_revision(p: &mut Planner<'_>, revision: i64) {
    let kept: Vec<String> = std::iter::once(p.input.desired.number)
        .chain(p.input.revisions.keys().copied())
        .map(|n| n.to_string())
        .collect();
    let msg = format!(
        "revision {revision} is no longer in the history (kept: {}); roll back to one of those or change the spec",
        kept.join(", ")
    );
    if p.input
        .previous
        .condition(deployctl_api::conditions::STALLED)
        .map(|c| c.reason.as_str())
        != Some(reason::ROLLBACK_FAILED)
    {
        p.event(true, reason::ROLLBACK_FAILED, msg.clone());
    }
    p.rollback_failure = Some(msg);
}
