//! The data half of rollouts and rollbacks: pre-rollout snapshots (the `Snapshotting`
//! step), components stopped while a snapshot that needs quiet is taken, and data restored
//! during a rollback: stop the component, restore its pre-rollout snapshot (the Job
//! verifies every chunk before it swaps the data in), start it on the target revision.

use super::{PendingOperation, Planner};
use deployctl_api::OperationPhase;

/// A `Restore` operation.
pub(super) fn request_restore(
    _p: &mut Planner<'_>,
    _op: &PendingOperation,
) -> (OperationPhase, String, Option<i64>) {
    (
        OperationPhase::Failed,
        "restore is not wired yet".into(),
        None,
    )
}
