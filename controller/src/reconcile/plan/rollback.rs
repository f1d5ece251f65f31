//! Rolling back: components that run the failed revision go back, in reverse dependency
//! order, to the target revision's spec; components the target does not have are
//! removed. The rollback is done when the target revision is Available everywhere; the
//! stack then holds it (status.hold) until the spec changes or a person asks for a retry.

use super::{Action, Outcome, Planner, RevisionRef};
use crate::gates::analysis::elapsed;
use deployctl_api::conditions::reason;
use deployctl_api::duration::human;
use deployctl_api::{
    ComponentPhase, ComponentStatus, DataRestore, RevisionHold, RollbackRecord, RollbackState,
    RollbackTrigger,
};
use std::collections::BTreeSet;

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
    let restores = super::snapshots::restores_for(p);
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
    // A rollback redirected while the previous one waited after a failed restore goes
    // on from where that one came.
    let from = p
        .status
        .rollback
        .as_ref()
        .map(|rb| rb.from_revision)
        .or(p.status.rollout.as_ref().map(|r| r.revision))
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
///
/// With data to restore, the order is: stop every component whose data comes back and
/// every component that depends on one of them (dependents before what they depend on),
/// restore the data (all restores at once, each verified before it replaces anything),
/// then start the components again on the target revision in dependency order. So the
/// target revision's code never runs on the data the failed revision migrated, and no
/// component has to become Available against data it cannot read before that data is
/// restored. Components that touch no restored data roll back first, in reverse
/// dependency order, as a rollback without data does.
pub(super) fn run(p: &mut Planner<'_>) {
    p.rollback_ran = true;
    let rb = p.status.rollback.clone().expect("rollback in progress");
    let Some(target) = p.revision(rb.to_revision) else {
        missing_revision(p, rb.to_revision);
        return;
    };
    let from = p.revision(rb.from_revision).unwrap_or(p.input.desired);

    // The components that must not run while data is restored: those restored and,
    // transitively, whatever depends on them in either revision.
    let restored: Vec<&str> = rb.restores.iter().map(|r| r.component.as_str()).collect();
    let held = dependents_of(&restored, &[from, target]);
    let data_pending = rb.restores.iter().any(|r| !r.phase.is_settled());

    let mut focus: Option<String> = None;
    if data_pending {
        focus = restore_data(p, target, from, &held);
    }

    // Then the components: first those that use no restored data, dependents first (the
    // reverse of the failed revision's order, then what only the target has); then the
    // held ones, in the target's dependency order, each Available before the next starts.
    let mut sequence: Vec<String> = from
        .order
        .iter()
        .rev()
        .chain(target.order.iter())
        .filter(|c| !held.contains(c.as_str()))
        .cloned()
        .collect();
    dedup_in_order(&mut sequence);
    sequence.extend(
        target
            .order
            .iter()
            .filter(|c| held.contains(c.as_str()))
            .cloned(),
    );
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
        } else if !p.available(c) || p.observed(c).is_some_and(|w| w.canary.is_some()) {
            // A canary still running is removed by `canary::sweep` in this pass; the
            // component is back once its stable pods alone are Available.
            focus = Some(c.clone());
        }
    }

    // restore_step updated the restores: carry on from the status, not the copy above.
    let rb = p.status.rollback.clone().expect("rollback in progress");
    let restoring = |c: &str| {
        rb.restores
            .iter()
            .find(|r| r.component == c && !r.phase.is_settled())
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
                autoscaled_by: w.and_then(|w| w.autoscaled_by.clone()),
                message: if let Some(m) = restoring(c) {
                    Some(m)
                } else if up && !p.available(c) {
                    w.and_then(|w| w.message.clone())
                } else if !up {
                    Some(format!("rolling back to revision {}", target.number))
                } else {
                    None
                },
                canary: None,
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

/// The data step of a rollback: stops the `held` components, dependents first, then runs
/// every restore once all of them are stopped. Returns the component it waits for, or
/// None once every restore is done.
fn restore_data(
    p: &mut Planner<'_>,
    target: &RevisionRef,
    from: &RevisionRef,
    held: &BTreeSet<String>,
) -> Option<String> {
    // Dependents first: a component is stopped once everything held that depends on it
    // has stopped (and drained its connections).
    let mut order: Vec<String> = from.order.iter().rev().cloned().collect();
    order.extend(target.order.iter().rev().cloned());
    dedup_in_order(&mut order);
    let mut waiting: Option<String> = None;
    for c in order.iter().filter(|c| held.contains(c.as_str())) {
        let Some(w) = p.observed(c) else { continue };
        if !super::snapshots::stops_for_restore(p, target, c) || w.stopped && w.drained {
            continue;
        }
        waiting.get_or_insert_with(|| c.clone());
        let dependents_stopped = held.iter().filter(|d| *d != c).all(|d| {
            !depends_on(d, c, &[from, target])
                || p.observed(d).is_none_or(|w| w.stopped && w.drained)
                || !super::snapshots::stops_for_restore(p, target, d)
        });
        if dependents_stopped && !w.stopped {
            p.actions.push(Action::Stop {
                component: c.clone(),
                revision: target.number,
            });
            p.event(
                false,
                "ComponentStopped",
                format!("Stopping component {c} while the data it uses is restored"),
            );
        }
    }
    if waiting.is_some() {
        return waiting;
    }
    // Everything is stopped: every restore runs, at once.
    let components: Vec<String> = p
        .status
        .rollback
        .as_ref()
        .map(|rb| rb.restores.iter().map(|r| r.component.clone()).collect())
        .unwrap_or_default();
    let mut waiting = None;
    for c in components {
        if !super::snapshots::restore_step(p, target, &c) {
            waiting.get_or_insert(c);
        }
    }
    waiting
}

/// `roots` and every component that depends on one of them, directly or not, in any of
/// `revisions`.
fn dependents_of(roots: &[&str], revisions: &[&RevisionRef]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = roots.iter().map(|r| r.to_string()).collect();
    loop {
        let before = out.len();
        for rev in revisions {
            for c in &rev.components {
                if c.depends_on.iter().any(|d| out.contains(d)) {
                    out.insert(c.name.clone());
                }
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Whether `a` depends on `b`, directly or not, in any of `revisions`.
fn depends_on(a: &str, b: &str, revisions: &[&RevisionRef]) -> bool {
    a != b && dependents_of(&[b], revisions).contains(a)
}

/// Removes repeated names, keeping the first of each.
fn dedup_in_order(names: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
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
