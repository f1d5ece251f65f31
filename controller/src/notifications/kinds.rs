//! Which notifications a reconcile's decision makes: a pure mapping from the planner's
//! Events (and the change of status they came with) to notification events, so the
//! planner needs no knowledge of notifications.

use crate::reconcile::plan::PlannedEvent;
use deployctl_api::conditions::{self, reason};
use deployctl_api::{NotificationEvent, ProductionStackStatus, RollbackTrigger, SnapshotReason};

/// One thing to tell people about.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// What happened.
    pub event: NotificationEvent,
    /// The Event reason it came from (CamelCase, stable).
    pub reason: String,
    /// The Event's note, for a person.
    pub message: String,
    /// The revision the stack is on or going to.
    pub revision: Option<i64>,
    /// The last revision that rolled out completely.
    pub stable_revision: Option<i64>,
}

/// The notifications of one decision: `events` are what the planner recorded, `previous`
/// and `next` the status before and after it.
pub fn notices(
    events: &[PlannedEvent],
    previous: &ProductionStackStatus,
    next: &ProductionStackStatus,
) -> Vec<Notice> {
    let notice = |event, reason: &str, message: &str| Notice {
        event,
        reason: reason.to_string(),
        message: message.to_string(),
        revision: next.current_revision,
        stable_revision: next.stable_revision,
    };
    let mut out = Vec::new();
    for e in events {
        use NotificationEvent as N;
        let kinds: &[N] = match e.reason {
            "RolloutStarted" => &[N::RolloutStarted],
            "RolloutComplete" => &[N::RolloutPromoted],
            // A failure with no rollback (off, or nothing to go back to): stalled.
            reason::GATE_FAILED
            | reason::PROGRESS_DEADLINE_EXCEEDED
            | reason::INCONCLUSIVE
            | reason::SNAPSHOT_STORE_FULL => &[N::RolloutFailed],
            // A rollback a failure started is also the news that the rollout failed; one a
            // person asked for is not.
            "RollbackStarted" => match next.rollback.as_ref().map(|r| r.trigger) {
                Some(RollbackTrigger::Operation) => &[N::RollbackStarted],
                _ => &[N::RolloutFailed, N::RollbackStarted],
            },
            "RollbackComplete" => &[N::RollbackDone],
            // Said once while it runs, and again when it ends late: the end is "done".
            reason::ROLLBACK_DEADLINE_EXCEEDED if next.rollback.is_some() => {
                &[N::RollbackOverDeadline]
            }
            reason::ROLLBACK_DEADLINE_EXCEEDED => &[N::RollbackDone],
            reason::RESTORE_FAILED => &[N::RestoreFailed],
            reason::SNAPSHOT_FAILED => &[N::SnapshotFailed],
            _ => &[],
        };
        out.extend(kinds.iter().map(|&k| notice(k, e.reason, &e.note)));
    }
    // Corruption is a condition, not an Event: notify when it turns up.
    let corrupt = |s: &ProductionStackStatus| {
        s.condition(conditions::SNAPSHOTS_VERIFIED)
            .filter(|c| c.status == "False" && c.reason == reason::SNAPSHOT_CORRUPT)
            .map(|c| c.message.clone())
    };
    if let (None, Some(message)) = (corrupt(previous), corrupt(next)) {
        out.push(notice(
            NotificationEvent::SnapshotCorrupt,
            reason::SNAPSHOT_CORRUPT,
            &message,
        ));
    }
    out
}

/// The notification of a snapshot that failed outside a rollout (on schedule or asked
/// for): a pre-rollout snapshot's failure is the planner's `SnapshotFailed` Event already.
pub fn snapshot_failed(
    snapshot: &str,
    reason: SnapshotReason,
    message: &str,
    status: &ProductionStackStatus,
) -> Option<Notice> {
    (reason != SnapshotReason::BeforeRollout).then(|| Notice {
        event: NotificationEvent::SnapshotFailed,
        reason: reason::SNAPSHOT_FAILED.to_string(),
        message: format!("Snapshot {snapshot} failed: {message}"),
        revision: status.current_revision,
        stable_revision: status.stable_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployctl_api::{NotificationEvent as N, RollbackState};

    fn ev(reason: &'static str) -> PlannedEvent {
        PlannedEvent {
            warning: false,
            reason,
            note: format!("note of {reason}"),
        }
    }

    fn rolling_back(trigger: RollbackTrigger) -> ProductionStackStatus {
        ProductionStackStatus {
            current_revision: Some(3),
            stable_revision: Some(2),
            rollback: Some(RollbackState {
                from_revision: 3,
                to_revision: 2,
                reason: "gate errors failed".into(),
                started_at: crate::context::now(),
                component: None,
                operation: None,
                trigger,
                restores: vec![],
            }),
            ..Default::default()
        }
    }

    fn kinds(events: &[&'static str], next: &ProductionStackStatus) -> Vec<N> {
        let events: Vec<_> = events.iter().map(|r| ev(r)).collect();
        notices(&events, &Default::default(), next)
            .into_iter()
            .map(|n| n.event)
            .collect()
    }

    #[test]
    fn planner_events_map_to_notifications() {
        let idle = ProductionStackStatus::default();
        assert_eq!(
            kinds(
                &["RolloutStarted", "ComponentApplied", "RolloutComplete"],
                &idle
            ),
            [N::RolloutStarted, N::RolloutPromoted]
        );
        assert_eq!(
            kinds(&["RollbackStarted"], &rolling_back(RollbackTrigger::Gate)),
            [N::RolloutFailed, N::RollbackStarted],
            "an automatic rollback says the rollout failed"
        );
        assert_eq!(
            kinds(
                &["RollbackStarted"],
                &rolling_back(RollbackTrigger::Operation)
            ),
            [N::RollbackStarted]
        );
        assert_eq!(
            kinds(
                &[reason::ROLLBACK_DEADLINE_EXCEEDED],
                &rolling_back(RollbackTrigger::Gate)
            ),
            [N::RollbackOverDeadline]
        );
        assert_eq!(
            kinds(
                &[reason::ROLLBACK_DEADLINE_EXCEEDED, "RollbackComplete"],
                &idle
            ),
            [N::RollbackDone, N::RollbackDone]
        );
        assert_eq!(
            kinds(
                &[
                    reason::GATE_FAILED,
                    reason::PROGRESS_DEADLINE_EXCEEDED,
                    reason::RESTORE_FAILED,
                    reason::SNAPSHOT_FAILED,
                    "ComponentAvailable",
                    reason::PAUSED,
                ],
                &idle
            ),
            [
                N::RolloutFailed,
                N::RolloutFailed,
                N::RestoreFailed,
                N::SnapshotFailed
            ]
        );
        let n = &notices(
            &[ev("RolloutStarted")],
            &idle,
            &rolling_back(RollbackTrigger::Gate),
        )[0];
        assert_eq!(
            (
                n.revision,
                n.stable_revision,
                n.reason.as_str(),
                n.message.as_str()
            ),
            (Some(3), Some(2), "RolloutStarted", "note of RolloutStarted")
        );
    }

    #[test]
    fn a_snapshot_failure_outside_a_rollout_is_notified_once() {
        let st = ProductionStackStatus {
            current_revision: Some(4),
            ..Default::default()
        };
        let n = snapshot_failed(
            "db-nightly",
            SnapshotReason::Scheduled,
            "store unreachable",
            &st,
        )
        .unwrap();
        assert_eq!(n.event, N::SnapshotFailed);
        assert_eq!(n.revision, Some(4));
        assert_eq!(n.message, "Snapshot db-nightly failed: store unreachable");
        assert!(snapshot_failed("x", SnapshotReason::Manual, "m", &st).is_some());
        assert!(
            snapshot_failed("x", SnapshotReason::BeforeRollout, "m", &st).is_none(),
            "the planner's SnapshotFailed Event says it"
        );
    }

    #[test]
    fn corruption_is_notified_when_it_turns_up_only() {
        let now = crate::context::now();
        let mut corrupt = ProductionStackStatus::default();
        conditions::set(
            &mut corrupt.conditions,
            conditions::SNAPSHOTS_VERIFIED,
            false,
            reason::SNAPSHOT_CORRUPT,
            "snapshot(s) db-1 failed verification",
            None,
            &now,
        );
        let found = notices(&[], &Default::default(), &corrupt);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].event, N::SnapshotCorrupt);
        assert!(found[0].message.contains("db-1"));
        assert!(notices(&[], &corrupt, &corrupt).is_empty());
    }
}
