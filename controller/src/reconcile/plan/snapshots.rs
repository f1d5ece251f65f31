//! The data half of rollouts and rollbacks: pre-rollout snapshots (the `Snapshotting`
//! step), components stopped while a snapshot that needs quiet is taken, and data restored
//! during a rollback: stop the component, restore its pre-rollout snapshot (the Job
//! verifies every chunk before it swaps the data in), start it on the target revision.

use super::{rollback, Action, AgentRun, JobOutcome, PendingOperation, Planner, RevisionRef};
use deployctl_api::conditions::{self, reason};
use deployctl_api::{
    DataRestore, DataSnapshotRef, OperationPhase, RestorePhase, RollbackTrigger, RolloutStep,
    SnapshotPhase,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Name of a data Job: `<stack>-<component>` (shortened) `-<kind>-<hash of key>`, within
/// the 63 characters a Job name may have (its pods carry it as a label value).
pub fn job_name(child: &str, kind: &str, key: &str) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    let mut base: String = child.chars().take(44).collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}-{kind}-{}", &digest[..8])
}

/// Why no new agent Job may start on `component`'s data now, if one may not: another
/// agent Job works on it (a snapshot's start-up recovery would undo a restore's swap
/// mid-way; a prune could forget chunks a snapshot is writing), or `rollback` has a
/// restore of it pending (its Job starts next). The one rule for every agent Job: one at
/// a time per component.
///
/// Until the stack's repository exists (`repository_exists`: a snapshot of the stack has
/// completed), one agent Job at a time runs for the whole stack: the first one creates
/// the repository, and not every S3 server refuses a second creation (Garage ignores
/// `If-None-Match`), which would leave two configs and one of them unreadable.
pub fn agent_busy(
    agents: &BTreeMap<String, Vec<AgentRun>>,
    rollback: Option<&deployctl_api::RollbackState>,
    component: &str,
    repository_exists: bool,
) -> Option<String> {
    if let Some(run) = agents.get(component).and_then(|runs| runs.first()) {
        return Some(format!(
            "waiting for the {} Job {} of component {component} to end (one agent at a time per component's data)",
            run.operation, run.job
        ));
    }
    if !repository_exists {
        if let Some((other, run)) = agents
            .iter()
            .find_map(|(c, runs)| runs.first().map(|r| (c, r)))
        {
            return Some(format!(
                "waiting for the {} Job {} of component {other} to create the stack's snapshot repository",
                run.operation, run.job
            ));
        }
    }
    rollback
        .into_iter()
        .flat_map(|rb| &rb.restores)
        .find(|r| {
            r.component == component && !r.phase.is_settled() && r.phase != RestorePhase::Failed
        })
        .map(|r| {
            format!(
                "waiting for the restore of component {component} from snapshot {} to end",
                r.snapshot
            )
        })
}

/// Components with a pending snapshot that needs them stopped, with that snapshot.
pub(super) fn quiescing(p: &Planner<'_>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, s) in &p.input.data.snapshots {
        if s.phase.is_some_and(SnapshotPhase::is_final) {
            continue;
        }
        let quiesces = p
            .input
            .desired
            .component(&s.component)
            .and_then(|c| c.data.as_ref())
            .is_some_and(|d| d.quiesces());
        if quiesces && p.observed(&s.component).is_some() {
            out.entry(s.component.clone())
                .or_insert_with(|| name.clone());
        }
    }
    out
}

/// The snapshots a new rollout takes first: every existing component of the stack that
/// declares data (a migration in any component may change any data), named after the
/// rollout so a controller restarted mid-step finds the same ones.
pub(super) fn pre_rollout_snapshots(
    p: &Planner<'_>,
    target: &RevisionRef,
    started: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Vec<DataSnapshotRef> {
    let policy = p.input.spec.snapshots.clone().unwrap_or_default();
    let Some(stable) = p.status.stable_revision else {
        // A first install has no data worth protecting yet.
        return vec![];
    };
    if !policy.before_rollout() {
        return vec![];
    }
    let stamp = started.0.as_second();
    target
        .order
        .iter()
        .filter(|c| target.component(c).is_some_and(|c| c.data.is_some()))
        .filter(|c| p.observed(c).is_some())
        .map(|c| DataSnapshotRef {
            component: c.clone(),
            snapshot: format!("{}-{c}-r{stable}-{stamp}", p.input.stack),
        })
        .collect()
}

/// The `Snapshotting` step of the rollout in progress: creates what is missing, waits
/// for every snapshot to complete, and fails the rollout (nothing applied yet) when one
/// cannot be taken. Returns true while the step holds the rollout.
pub(super) fn snapshotting(p: &mut Planner<'_>) -> bool {
    let Some(mut r) = p.status.rollout.clone() else {
        return false;
    };
    if r.snapshots.is_empty() {
        return r.step == Some(RolloutStep::Snapshotting);
    }
    // Before the first snapshot is asked for, nothing has changed: the check that they
    // fit in the store runs here, on every pass, so the rollout starts as soon as there
    // is room (a raised quota, a new measurement after a prune) without a retry.
    let none_requested = r
        .snapshots
        .iter()
        .all(|s| !p.input.data.snapshots.contains_key(&s.snapshot));
    if r.step == Some(RolloutStep::Snapshotting)
        && r.component.is_none()
        && r.analysed.is_empty()
        && none_requested
    {
        match super::capacity::check(p, &mut r) {
            // Only the capacity check fails a rollout before any snapshot exists.
            super::capacity::Room::Fits => r.failure = None,
            super::capacity::Room::Making(note) => {
                r.failure = None;
                p.status.rollout = Some(r);
                p.capacity_wait = Some(note);
                p.requeue_in(std::time::Duration::from_secs(2));
                return true;
            }
            super::capacity::Room::Full(msg) => {
                let reported = p
                    .input
                    .previous
                    .condition(conditions::STALLED)
                    .is_some_and(|c| c.status == "True" && c.reason == reason::SNAPSHOT_STORE_FULL);
                if !reported {
                    p.event(true, reason::SNAPSHOT_STORE_FULL, msg.clone());
                }
                r.failure = Some(msg);
                p.status.rollout = Some(r);
                p.failure_reason = Some(reason::SNAPSHOT_STORE_FULL);
                // A new measurement or a spec change wakes the stack; this is the backstop.
                p.requeue_in(std::time::Duration::from_secs(60));
                return true;
            }
        }
    }
    if r.failure.is_some() && r.step == Some(RolloutStep::Snapshotting) {
        return true;
    }
    // Only before the first component moves: later, the snapshots are history (and may
    // have been pruned), not something to wait for.
    if r.step.is_some() && r.step != Some(RolloutStep::Snapshotting)
        || r.component.is_some()
        || !r.analysed.is_empty()
    {
        return false;
    }
    let mut waiting = Vec::new();
    let mut requested = Vec::new();
    for i in 0..r.snapshots.len() {
        // A name someone else took first (another stack's object, a person's, one of
        // another component) is never adopted: the snapshot takes the next free name.
        let theirs = |name: &str, component: &str| {
            p.input.data.foreign.contains(name)
                || p.input
                    .data
                    .snapshots
                    .get(name)
                    .is_some_and(|o| o.component != component)
        };
        if theirs(&r.snapshots[i].snapshot, &r.snapshots[i].component) {
            let base = r.snapshots[i].snapshot.clone();
            let free = (2..)
                .map(|n| format!("{base}-{n}"))
                .find(|n| {
                    !theirs(n, &r.snapshots[i].component) && !p.input.data.snapshots.contains_key(n)
                })
                .expect("an unbounded range has a free name");
            p.event(
                true,
                "SnapshotNameTaken",
                format!(
                    "StackSnapshot {base} exists and is not this rollout's snapshot of component {}; taking {free} instead",
                    r.snapshots[i].component
                ),
            );
            r.snapshots[i].snapshot = free;
        }
        let s = &r.snapshots[i];
        match p.input.data.snapshots.get(&s.snapshot) {
            None => {
                requested.push(s.component.clone());
                p.actions.push(Action::Snapshot {
                    component: s.component.clone(),
                    name: s.snapshot.clone(),
                    revision: r.from_revision.unwrap_or(r.revision),
                });
                waiting.push(s.component.clone());
            }
            Some(o) if o.phase == Some(SnapshotPhase::Completed) => {}
            Some(o) if o.phase == Some(SnapshotPhase::Failed) => {
                let msg = format!(
                    "the pre-rollout snapshot {} of component {} failed: {}; revision {} was not rolled out (retry once the cause is fixed)",
                    s.snapshot,
                    s.component,
                    o.message.clone().unwrap_or_default(),
                    r.revision
                );
                p.event(true, reason::SNAPSHOT_FAILED, msg.clone());
                r.failure = Some(msg);
                r.step = Some(RolloutStep::Snapshotting);
                p.status.rollout = Some(r);
                p.failure_reason = Some(reason::SNAPSHOT_FAILED);
                return true;
            }
            Some(_) => waiting.push(s.component.clone()),
        }
    }
    if waiting.is_empty() {
        if r.step == Some(RolloutStep::Snapshotting) {
            p.event(
                false,
                "SnapshotsTaken",
                format!(
                    "Pre-rollout snapshots complete: {}",
                    r.snapshots
                        .iter()
                        .map(|s| s.snapshot.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        r.step = None;
        p.status.rollout = Some(r);
        return false;
    }
    if !requested.is_empty() {
        p.event(
            false,
            "SnapshotsStarted",
            format!(
                "Taking pre-rollout snapshots of {} before rolling out revision {}",
                requested.join(", "),
                r.revision
            ),
        );
    }
    r.step = Some(RolloutStep::Snapshotting);
    p.status.rollout = Some(r);
    p.requeue_in(std::time::Duration::from_secs(2));
    true
}

/// The restores a rollback of the rollout in progress needs: every component with a
/// complete pre-rollout snapshot, whether or not its own spec changed (another
/// component's new version may have migrated its data through its API), unless its data
/// says `restoreOnRollback: Never`.
pub(super) fn restores_for(p: &Planner<'_>) -> Vec<DataRestore> {
    let Some(r) = &p.status.rollout else {
        return vec![];
    };
    r.snapshots
        .iter()
        .filter(|s| {
            p.input
                .data
                .snapshots
                .get(&s.snapshot)
                .is_some_and(|o| o.phase == Some(SnapshotPhase::Completed))
        })
        .filter(|s| p.observed(&s.component).is_some())
        .filter(|s| {
            p.input
                .desired
                .component(&s.component)
                .and_then(|c| c.data.as_ref())
                .is_none_or(|d| d.restores_on_rollback())
        })
        .map(|s| DataRestore {
            component: s.component.clone(),
            snapshot: s.snapshot.clone(),
            phase: RestorePhase::Stopping,
            job: None,
            message: None,
        })
        .collect()
}

/// One step of a component's data restore within a rollback to `target`. Returns true
/// when the data is back (the component may start on the target revision).
pub(super) fn restore_step(p: &mut Planner<'_>, target: &RevisionRef, component: &str) -> bool {
    let Some(mut rb) = p.status.rollback.clone() else {
        return true;
    };
    let Some(i) = rb.restores.iter().position(|r| r.component == component) else {
        return true;
    };
    let mut r = rb.restores[i].clone();
    if r.phase == RestorePhase::Accepted {
        return true;
    }
    let w = p.observed(component);
    // An Exec restore command talks to the running component (pg_restore needs the
    // database up): it is restored in place, never stopped.
    let stops = restore_stops(p, target, component);
    if r.phase == RestorePhase::Stopping {
        let busy = agent_busy(&p.input.data.agents, None, component, true);
        if let Some(why) = busy {
            // Stays Stopping: the restore starts once the other agent Job has ended.
            r.message = Some(why);
        } else if !stops || w.is_some_and(|w| w.stopped && w.drained) || w.is_none() {
            r.phase = RestorePhase::Restoring;
            r.message = None;
            // A restore run again (a Retry, or another snapshot instead) gets a Job of its
            // own: the failed one stays for its logs.
            let key = match &r.job {
                Some(previous) => format!("{previous}+{}", r.snapshot),
                None => format!("{}@{}", r.snapshot, rb.started_at.0.as_second()),
            };
            r.job = Some(job_name(
                &deployctl_api::child_name(p.input.stack, component),
                "restore",
                &key,
            ));
            p.event(
                false,
                "RestoreStarted",
                format!(
                    "Restoring the data of component {component} from snapshot {}",
                    r.snapshot
                ),
            );
        } else if !w.is_some_and(|w| w.stopped) {
            p.actions.push(Action::Stop {
                component: component.to_string(),
                revision: target.number,
            });
        }
    }
    if r.phase == RestorePhase::Restoring {
        let job = r.job.clone().expect("a restoring component has a Job");
        match p.input.data.restore_jobs.get(&job) {
            None | Some(JobOutcome::Running) => {
                if !p.input.data.restore_jobs.contains_key(&job) {
                    p.actions.push(Action::Restore {
                        component: component.to_string(),
                        snapshot: r.snapshot.clone(),
                        job,
                    });
                }
            }
            Some(JobOutcome::Succeeded) => {
                r.phase = RestorePhase::Restored;
                r.message = None;
                p.event(
                    false,
                    "DataRestored",
                    format!(
                        "The data of component {component} is back from snapshot {}, verified",
                        r.snapshot
                    ),
                );
            }
            Some(JobOutcome::Failed(msg)) => {
                r.phase = RestorePhase::Failed;
                r.message = Some(msg.clone());
                p.event(
                    true,
                    reason::RESTORE_FAILED,
                    format!(
                        "Restoring component {component} from snapshot {} failed: {msg}",
                        r.snapshot
                    ),
                );
            }
        }
    }
    if r.phase == RestorePhase::Failed {
        let state = if stops {
            "the component stays stopped with its data as it was"
        } else {
            "the component was not stopped; what the restore command changed before it failed stays"
        };
        let stack = p.input.stack;
        p.rollback_failure = Some(format!(
            "restoring the data of component {component} from snapshot {} failed: {}; {state}. \
             Ways out: `deployctl retry {stack}` runs the restore again (once the cause is fixed); \
             `deployctl snapshot restore SNAPSHOT` restores another snapshot of {component} instead; \
             `deployctl accept-live-data {stack}` starts it on revision {} with the data as it is now; \
             `deployctl rollback {stack} --to-revision N` goes to revision N with the data as it is now",
            r.snapshot,
            r.message.clone().unwrap_or_default(),
            target.number
        ));
        p.rollback_failure_reason = Some(reason::RESTORE_FAILED);
    }
    let done = r.phase == RestorePhase::Restored;
    rb.restores[i] = r;
    p.status.rollback = Some(rb);
    if !done {
        p.requeue_in(std::time::Duration::from_secs(1));
    }
    done
}

/// Whether `component` is stopped while a rollback restores data: a component restored
/// by an `Exec` command keeps running (its restore command talks to it); every other
/// restored component, and every component that depends on restored data, is stopped.
pub(super) fn stops_for_restore(p: &Planner<'_>, target: &RevisionRef, component: &str) -> bool {
    let restored = p
        .status
        .rollback
        .as_ref()
        .is_some_and(|rb| rb.restores.iter().any(|r| r.component == component));
    !restored || restore_stops(p, target, component)
}

/// Whether restoring `component` stops it first: not for the `Exec` method. The data
/// declaration is the target revision's, else the desired one's (as the restore Job's).
fn restore_stops(p: &Planner<'_>, target: &RevisionRef, component: &str) -> bool {
    target
        .component(component)
        .and_then(|c| c.data.as_ref())
        .or_else(|| {
            p.input
                .desired
                .component(component)
                .and_then(|c| c.data.as_ref())
        })
        .is_none_or(|d| d.restore_stops())
}

/// A `Restore` operation: on a stack with no rollout or rollback in progress, restore the
/// named snapshot into its component (stopped meanwhile), on the stable revision.
pub(super) fn request_restore(
    p: &mut Planner<'_>,
    op: &PendingOperation,
) -> (OperationPhase, String, Option<i64>) {
    use OperationPhase::Failed;
    let Some(name) = op.snapshot.clone() else {
        return (
            Failed,
            "spec.snapshot is required for Restore: the StackSnapshot to restore".into(),
            None,
        );
    };
    let Some(snap) = p.input.data.snapshots.get(&name).cloned() else {
        return (
            Failed,
            format!(
                "StackSnapshot {name} does not exist for stack {}",
                p.input.stack
            ),
            None,
        );
    };
    if snap.phase != Some(SnapshotPhase::Completed) {
        return (
            Failed,
            format!(
                "StackSnapshot {name} is not complete; only a complete snapshot can be restored"
            ),
            None,
        );
    }
    if snap.corrupt {
        return (
            Failed,
            format!("StackSnapshot {name} failed its last verification; it will not be restored"),
            None,
        );
    }
    if let Some(rb) = p.status.rollback.as_mut() {
        // A rollback waiting after a failed restore of this component: this snapshot
        // replaces the one that failed.
        let failed = rb
            .restores
            .iter_mut()
            .find(|r| r.component == snap.component && r.phase == RestorePhase::Failed);
        let Some(r) = failed else {
            return (
                Failed,
                format!(
                    "a rollback is in progress and no restore of component {} failed in it; restore once the stack is stable",
                    snap.component
                ),
                None,
            );
        };
        let replaced = std::mem::replace(&mut r.snapshot, name.clone());
        r.phase = RestorePhase::Stopping;
        r.message = None;
        let to = rb.to_revision;
        return (
            OperationPhase::Succeeded,
            format!(
                "snapshot {name} is restored into component {} instead of {replaced}, whose restore failed; the rollback to revision {to} goes on",
                snap.component
            ),
            Some(to),
        );
    }
    if p.status.rollout.is_some() {
        return (
            Failed,
            "a rollout is in progress; restore once the stack is stable (or abort first)".into(),
            None,
        );
    }
    let Some(stable) = p.status.stable_revision else {
        return (Failed, "the stack has no stable revision yet".into(), None);
    };
    if p.input
        .desired
        .component(&snap.component)
        .and_then(|c| c.data.as_ref())
        .is_none()
    {
        return (
            Failed,
            format!(
                "component {} no longer declares data; nothing to restore into",
                snap.component
            ),
            None,
        );
    }
    let why = format!(
        "restore of snapshot {name} into component {} requested{}{}",
        snap.component,
        op.requested_by
            .as_ref()
            .map(|w| format!(" by {w}"))
            .unwrap_or_default(),
        op.reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    rollback::start_with(
        p,
        stable,
        why,
        Some(op.name.clone()),
        RollbackTrigger::Operation,
        vec![DataRestore {
            component: snap.component.clone(),
            snapshot: name.clone(),
            phase: RestorePhase::Stopping,
            job: None,
            message: None,
        }],
    );
    let exec = p
        .input
        .desired
        .component(&snap.component)
        .and_then(|c| c.data.as_ref())
        .is_some_and(|d| !d.restore_stops());
    let message = if exec {
        format!(
            "the data of component {} is restored from {name} by its restore command (verified first), while it runs on revision {stable}; the components that depend on it are stopped meanwhile",
            snap.component
        )
    } else {
        format!(
            "component {} and the components that depend on it are stopped, its data restored from {name} (verified first), and they start again on revision {stable}",
            snap.component
        )
    };
    (OperationPhase::Succeeded, message, Some(stable))
}

/// The restores of the rollback in progress that failed and wait for a person.
pub(super) fn failed_restores(p: &Planner<'_>) -> Vec<String> {
    p.status
        .rollback
        .as_ref()
        .map(|rb| {
            rb.restores
                .iter()
                .filter(|r| r.phase == RestorePhase::Failed)
                .map(|r| format!("component {} from snapshot {}", r.component, r.snapshot))
                .collect()
        })
        .unwrap_or_default()
}

/// A `Retry` while a rollback waits after failed restores: each runs again, in a new Job.
pub(super) fn retry_failed_restores(p: &mut Planner<'_>) -> String {
    let what = failed_restores(p);
    if let Some(rb) = p.status.rollback.as_mut() {
        for r in rb
            .restores
            .iter_mut()
            .filter(|r| r.phase == RestorePhase::Failed)
        {
            r.phase = RestorePhase::Stopping;
            r.message = None;
        }
    }
    format!("the restore of {} runs again", what.join(", "))
}

/// An `AcceptLiveData`: the failed restores of the rollback in progress are settled as
/// accepted, recording who decided and why; the rollback goes on with the data as it is.
pub(super) fn accept_live_data(
    p: &mut Planner<'_>,
    op: &PendingOperation,
) -> (OperationPhase, String, Option<i64>) {
    let what = failed_restores(p);
    let Some(rb) = p.status.rollback.as_mut().filter(|_| !what.is_empty()) else {
        return (
            OperationPhase::Failed,
            "nothing to accept: no rollback is waiting after a failed data restore".into(),
            None,
        );
    };
    let who = op.requested_by.as_deref().unwrap_or("an unknown user");
    for r in rb
        .restores
        .iter_mut()
        .filter(|r| r.phase == RestorePhase::Failed)
    {
        r.message = Some(format!(
            "live data accepted by {who} via {}{} instead of snapshot {}, whose restore failed: {}",
            op.name,
            op.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            r.snapshot,
            r.message.clone().unwrap_or_default()
        ));
        r.phase = RestorePhase::Accepted;
    }
    let to = rb.to_revision;
    (
        OperationPhase::Succeeded,
        format!(
            "the data of {} is kept as it is now; the rollback to revision {to} goes on",
            what.join(", ")
        ),
        Some(to),
    )
}

/// The `SnapshotsVerified` condition, from the latest complete snapshot of each
/// component: False when one failed its last verification, True once all checked are
/// sound, unchanged while none was checked.
pub(super) fn verification_condition(p: &mut Planner<'_>) {
    let corrupt: Vec<&String> = p
        .input
        .data
        .snapshots
        .iter()
        .filter(|(_, s)| s.corrupt)
        .map(|(n, _)| n)
        .collect();
    let verified = p.input.data.snapshots.values().any(|s| s.verified);
    let now = p.now();
    let generation = p.input.generation;
    let (status, why, msg) = if !corrupt.is_empty() {
        let names: Vec<&str> = corrupt.iter().map(|s| s.as_str()).collect();
        (
            false,
            reason::SNAPSHOT_CORRUPT,
            format!(
                "snapshot(s) {} failed verification and will not be restored; take a new snapshot",
                names.join(", ")
            ),
        )
    } else if verified {
        (
            true,
            reason::VERIFIED,
            "every snapshot checked matched its digests".to_string(),
        )
    } else {
        return;
    };
    conditions::set(
        &mut p.status.conditions,
        conditions::SNAPSHOTS_VERIFIED,
        status,
        why,
        msg,
        generation,
        &now,
    );
}
