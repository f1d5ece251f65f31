//! Condition types and reasons, in the kstatus convention (`Ready` has positive
//! polarity; `Reconciling` and `Stalled` are abnormal-true), so Argo CD, Flux and
//! `kubectl wait` read a stack's health without custom code.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The stack runs its current revision and every component is Available.
pub const READY: &str = "Ready";
/// The controller is working towards the spec (a rollout is in progress).
pub const RECONCILING: &str = "Reconciling";
/// The controller cannot make progress without a change from a person.
pub const STALLED: &str = "Stalled";
/// The latest snapshot of every component with data passed its last scheduled
/// verification (re-read and re-hashed); `False` names the damaged snapshot.
pub const SNAPSHOTS_VERIFIED: &str = "SnapshotsVerified";

/// Reasons, CamelCase, stable: tools and alerts match on them.
pub mod reason {
    /// Every snapshot checked by the last verification matched its digests.
    pub const VERIFIED: &str = "Verified";
    /// A snapshot failed verification.
    pub const SNAPSHOT_CORRUPT: &str = "SnapshotCorrupt";
    /// A pre-rollout snapshot could not be taken; the rollout does not start.
    pub const SNAPSHOT_FAILED: &str = "SnapshotFailed";
    /// A rollout's pre-rollout snapshots do not fit in the snapshot store (its quota or
    /// the claim's free space); the rollout does not start until they do.
    pub const SNAPSHOT_STORE_FULL: &str = "SnapshotStoreFull";
    /// A data restore failed; the live data was left as it was.
    pub const RESTORE_FAILED: &str = "RestoreFailed";
    /// The spec has a problem the schema could not catch; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Every component is Available on the current revision.
    pub const AVAILABLE: &str = "Available";
    /// A revision is being rolled out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// `spec.rollout.paused` is set.
    pub const PAUSED: &str = "Paused";
    /// A component did not become Available within the progress deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// A component that was Available is not any more.
    pub const COMPONENT_UNAVAILABLE: &str = "ComponentUnavailable";
    /// Nothing to do.
    pub const IDLE: &str = "Idle";
    /// The stack is being deleted.
    pub const TERMINATING: &str = "Terminating";
    /// A health gate failed (during analysis, or after promotion).
    pub const GATE_FAILED: &str = "GateFailed";
    /// A gate could not be measured often enough to decide; a person must.
    pub const INCONCLUSIVE: &str = "Inconclusive";
    /// A rollback is in progress.
    pub const ROLLING_BACK: &str = "RollingBack";
    /// The stack was rolled back and holds the older revision.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// A rollback took longer than `spec.rollout.rollbackDeadline`.
    pub const ROLLBACK_DEADLINE_EXCEEDED: &str = "RollbackDeadlineExceeded";
    /// A rollback cannot proceed (its target revision is gone).
    pub const ROLLBACK_FAILED: &str = "RollbackFailed";
}

/// Sets a condition in `conditions`, keeping `lastTransitionTime` when the status did not
/// change (so a steady condition does not look like it flapped).
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    // The API server refuses an empty message (it arrives as null), and a reader wants a
    // sentence anyway: fall back to the reason.
    let message = Some(message.into())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| reason.to_string());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cs = vec![];
        set(&mut cs, READY, false, "RollingOut", "a", Some(1), &t(10));
        set(&mut cs, READY, false, "RollingOut", "b", Some(2), &t(20));
        assert_eq!(cs[0].last_transition_time, t(10));
        assert_eq!(cs[0].message, "b");
        assert_eq!(cs[0].observed_generation, Some(2));
        set(&mut cs, READY, true, "Available", "c", Some(2), &t(30));
        assert_eq!(cs[0].last_transition_time, t(30));
        assert_eq!(cs.len(), 1);
    }
}
