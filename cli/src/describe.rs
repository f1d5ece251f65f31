//! Short descriptions of a stack's state shared by the commands: its phase, whether its
//! status is current, one line saying where it is (for spinners and timeout messages),
//! and the compact forms of the last rollback and of the data it restored.

use crate::output::{time, Color};
use deployctl_api::{DataRestore, ProductionStack, RestorePhase, RollbackRecord, RollbackTrigger};
use k8s_openapi::jiff::Timestamp;

/// The phase as text, `Unknown` before the controller has written one.
pub fn phase(stack: &ProductionStack) -> String {
    stack
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "Unknown".to_string())
}

/// Whether the status describes the current spec (`status.observedGeneration ==
/// metadata.generation`), so that a stale status never satisfies a wait.
pub fn is_current(stack: &ProductionStack) -> bool {
    match (&stack.status, stack.metadata.generation) {
        (Some(s), Some(g)) => s.observed_generation == Some(g),
        // A server that does not count generations: trust what there is.
        (Some(s), None) => s.phase.is_some(),
        (None, _) => false,
    }
}

/// One line saying where the stack is: `Progressing: rolling out revision 4: component
/// api`, or why its status cannot be trusted yet.
pub fn state(stack: &ProductionStack) -> String {
    let Some(status) = &stack.status else {
        return "without status: the controller has not reported on it yet (is it running?)"
            .to_string();
    };
    let mut line = phase(stack);
    if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
        line.push_str(": ");
        line.push_str(&crate::error::one_line(m));
    }
    if !is_current(stack) {
        if let Some(g) = stack.metadata.generation {
            line.push_str(&format!(
                " (as of generation {}; the controller has not yet acted on generation {g})",
                status
                    .observed_generation
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "none".into()),
            ));
        }
    }
    line
}

/// `3→2 4m ago`; `3 data 4m ago` for a restore that stayed on revision 3.
pub fn rollback_short(r: &RollbackRecord, now: Timestamp) -> String {
    let span = if r.from_revision == r.to_revision {
        format!("{} data", r.to_revision)
    } else {
        format!("{}→{}", r.from_revision, r.to_revision)
    };
    format!("{span} {}", time::ago(&r.completed_at, now))
}

/// `4 → 3`; or `revision 3 (data only)` for a rollback that stays on its revision and
/// only restores data (a `Restore` operation).
pub fn rollback_span(from: i64, to: i64) -> String {
    if from == to {
        format!("revision {to} (data only)")
    } else {
        format!("{from} → {to}")
    }
}

/// Who or what started a rollback: `operation shop-rollback-x7k2q`, `a failed gate`.
pub fn rollback_cause(operation: Option<&str>, trigger: RollbackTrigger) -> String {
    match (operation, trigger) {
        (Some(op), _) => format!("operation {op}"),
        (None, RollbackTrigger::Gate) => "automatic: a gate failed".to_string(),
        (None, RollbackTrigger::ProgressDeadline) => {
            "automatic: progress deadline missed".to_string()
        }
        (None, RollbackTrigger::Operation) => "by an operation".to_string(),
    }
}

/// `snapshot X into db` with the phase when it is not Restored: the data part of a
/// rollback, for `status` and `history`.
pub fn restore_summary(r: &DataRestore) -> String {
    let mut s = format!("snapshot {} into {}", r.snapshot, r.component);
    if r.phase != RestorePhase::Restored {
        s.push_str(&format!(": {:?}", r.phase));
        if let Some(job) = &r.job {
            s.push_str(&format!(" (Job {job})"));
        }
        if let Some(m) = r.message.as_deref().filter(|m| !m.is_empty()) {
            s.push_str(&format!(": {}", crate::error::one_line(m)));
        }
    }
    s
}

/// The colour of a restore's phase.
pub fn restore_color(r: &DataRestore) -> Color {
    match r.phase {
        RestorePhase::Failed => Color::Red,
        RestorePhase::Restored => Color::Green,
        RestorePhase::Stopping | RestorePhase::Restoring | RestorePhase::Accepted => Color::Yellow,
    }
}

/// `-` for a missing number.
pub fn opt_num(n: Option<i64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Stacks as the controller would report them, for the rendering tests.

    use deployctl_api::ProductionStack;
    use k8s_openapi::jiff::Timestamp;

    /// The fixed "now" of the rendering tests: 2024-05-01T12:00:00Z.
    pub fn now() -> Timestamp {
        "2024-05-01T12:00:00Z".parse().unwrap()
    }

    /// A stack from YAML.
    pub fn stack(yaml: &str) -> ProductionStack {
        serde_yaml_ng::from_str(yaml).expect("fixture parses")
    }

    /// `shop`, mid-rollout of revision 4 from 3, with gates and a past rollback.
    pub fn progressing() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, generation: 7, creationTimestamp: "2024-04-30T12:00:00Z"}
spec:
  rollout: {rollbackDeadline: 5m}
  components:
  - {name: db, kind: StatefulSet, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
  - {name: api, replicas: 2, dependsOn: [db], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v4'}]}}}
status:
  observedGeneration: 7
  phase: Progressing
  currentRevision: 4
  stableRevision: 3
  readyComponents: 1/2
  message: "rolling out revision 4: component api"
  conditions:
  - {type: Ready, status: "False", reason: RollingOut, message: rolling out, lastTransitionTime: "2024-05-01T11:57:00Z"}
  - {type: Reconciling, status: "True", reason: RollingOut, message: rolling out, lastTransitionTime: "2024-05-01T11:57:00Z"}
  - {type: Stalled, status: "False", reason: Idle, message: Idle, lastTransitionTime: "2024-04-30T12:00:00Z"}
  rollout:
    revision: 4
    fromRevision: 3
    component: api
    step: Analysing
    startedAt: "2024-05-01T11:57:00Z"
    componentStartedAt: "2024-05-01T11:59:00Z"
    analysisStartedAt: "2024-05-01T11:59:30Z"
  components:
  - {name: db, revision: 4, phase: Available, replicas: 1, readyReplicas: 1, updatedReplicas: 1}
  - name: api
    revision: 4
    phase: Progressing
    replicas: 2
    readyReplicas: 1
    updatedReplicas: 2
    message: "1 of 2 pods ready"
    autoscaledBy: api
    gates:
    - name: http-ok
      phase: Running
      successes: 3
      failures: 1
      errors: 0
      consecutiveSuccesses: 2
      message: "2 consecutive successes of 3 needed"
      measurements:
      - {at: "2024-05-01T11:59:45Z", outcome: Failure, message: "GET / returned 500"}
      - {at: "2024-05-01T11:59:50Z", outcome: Success, value: 0.012}
      - {at: "2024-05-01T11:59:55Z", outcome: Success, value: 0.011, message: "200 in 11ms"}
  gates:
  - {name: error-rate, phase: Running, successes: 0, failures: 0, errors: 0}
  lastRollback:
    fromRevision: 3
    toRevision: 2
    reason: "gate http-ok of api failed: GET / returned 500"
    startedAt: "2024-05-01T10:00:00Z"
    completedAt: "2024-05-01T10:01:03Z"
    durationSeconds: 63.2
    withinDeadline: true
    trigger: Gate
"#,
        )
    }

    /// `shop`, healthy on revision 2, nothing in progress.
    pub fn healthy() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, generation: 2, creationTimestamp: "2024-05-01T11:00:00Z"}
spec:
  components:
  - {name: db, replicas: 0, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}
status:
  observedGeneration: 2
  phase: Healthy
  currentRevision: 2
  stableRevision: 2
  readyComponents: 1/1
  message: every component is Available on revision 2
  components:
  - {name: db, revision: 2, phase: Available, replicas: 0, readyReplicas: 0, updatedReplicas: 0}
"#,
        )
    }

    /// `shop`, rolled back from 4 to 3 by an operation, holding 3.
    pub fn rolled_back() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, generation: 7, creationTimestamp: "2024-04-30T12:00:00Z"}
spec:
  components:
  - {name: api, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v4'}]}}}
status:
  observedGeneration: 7
  phase: RolledBack
  currentRevision: 4
  stableRevision: 3
  readyComponents: 1/1
  message: "rolled back to revision 3: gate http-ok failed"
  hold: {revision: 3, heldBack: 4, reason: "gate http-ok failed"}
  lastRollback:
    fromRevision: 4
    toRevision: 3
    reason: "gate http-ok failed"
    startedAt: "2024-05-01T11:50:00Z"
    completedAt: "2024-05-01T11:56:00Z"
    durationSeconds: 360
    withinDeadline: false
    operation: shop-rollback-x7k2q
    trigger: Operation
"#,
        )
    }
}

#[cfg(test)]
pub(crate) mod data_fixtures {
    //! A stack with data, for the renderings of snapshots and restores.

    use super::fixtures::stack;
    use deployctl_api::ProductionStack;

    /// `shop`, rolling back from 5 to 4 (restoring db), after a rollback 4 → 3 that
    /// restored db, with a corrupt snapshot flagged.
    pub fn rolling_back_with_data() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, generation: 9, creationTimestamp: "2024-04-30T12:00:00Z"}
spec:
  rollout: {rollbackDeadline: 5m}
  components:
  - {name: db, kind: StatefulSet, data: {volume: data, method: Sqlite, database: app.db}, volumeClaims: [{name: data, size: 1Gi}], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v5'}]}}}
status:
  observedGeneration: 9
  phase: RollingBack
  currentRevision: 5
  stableRevision: 4
  readyComponents: 0/1
  message: "rolling back from revision 5 to 4 (component db): gate http failed"
  conditions:
  - {type: Ready, status: "False", reason: RollingBack, message: rolling back, lastTransitionTime: "2024-05-01T11:59:00Z"}
  - {type: SnapshotsVerified, status: "False", reason: SnapshotCorrupt, message: "snapshot(s) shop-db-r2-1714550000 failed verification and will not be restored; take a new snapshot", lastTransitionTime: "2024-05-01T11:00:00Z"}
  rollback:
    fromRevision: 5
    toRevision: 4
    reason: gate http failed
    startedAt: "2024-05-01T11:59:00Z"
    component: db
    trigger: Gate
    restores:
    - {component: db, snapshot: shop-db-r4-1714564000, phase: Restoring, job: shop-db-restore-5e6f7a8b}
  lastRollback:
    fromRevision: 4
    toRevision: 3
    reason: "gate http of db failed"
    startedAt: "2024-05-01T10:00:00Z"
    completedAt: "2024-05-01T10:00:40Z"
    durationSeconds: 40.5
    withinDeadline: true
    trigger: Gate
    restores:
    - {component: db, snapshot: shop-db-r3-1714557000, phase: Restored}
  components:
  - {name: db, revision: 5, phase: Pending, replicas: 0, readyReplicas: 0, updatedReplicas: 0, message: "data: Restoring from snapshot shop-db-r4-1714564000"}
"#,
        )
    }

    /// `shop`, taking its pre-rollout snapshots before rolling out revision 5.
    pub fn snapshotting() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, generation: 9, creationTimestamp: "2024-04-30T12:00:00Z"}
spec:
  components:
  - {name: db, kind: StatefulSet, data: {volume: data}, volumeClaims: [{name: data, size: 1Gi}], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v5'}]}}}
status:
  observedGeneration: 9
  phase: Progressing
  currentRevision: 5
  stableRevision: 4
  message: "rolling out revision 5 (Snapshotting)"
  rollout:
    revision: 5
    fromRevision: 4
    step: Snapshotting
    startedAt: "2024-05-01T11:59:50Z"
    snapshots:
    - {component: db, snapshot: shop-db-r4-1714564790}
"#,
        )
    }

    /// A rollout held because its snapshot does not fit in the store's quota.
    pub fn stalled_for_room() -> ProductionStack {
        stack(
            r#"
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod, generation: 9, creationTimestamp: "2024-04-30T12:00:00Z"}
spec:
  components:
  - {name: db, kind: StatefulSet, data: {volume: data}, volumeClaims: [{name: data, size: 1Gi}], template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v5'}]}}}
  - {name: search, kind: StatefulSet, data: {volume: data}, volumeClaims: [{name: data, size: 1Gi}], template: {spec: {containers: [{name: app, image: 'deployctl.dev/search:v2'}]}}}
  snapshots: {store: {filesystem: {quota: 5Gi}}}
status:
  observedGeneration: 9
  phase: Degraded
  currentRevision: 5
  stableRevision: 4
  message: "the pre-rollout snapshots of revision 5 need about 600 MiB (db 600 MiB) but the snapshot store has 512 MiB left (quota 5.0 GiB with 4.5 GiB used, 7.0 GiB free on the claim); revision 5 was not rolled out and nothing was changed."
  snapshotRepository:
    usedBytes: 4831838208
    objects: 1203
    volumeBytes: 10737418240
    volumeAvailableBytes: 7516192768
    quotaBytes: 5368709120
    capacityBytes: 5368709120
    availableBytes: 536870912
    nextRolloutBytes: 629145600
    unestimated: [search]
    measuredAt: "2024-05-01T11:57:00Z"
    measuredBy: shop-db-snap-1a2b3c4d-0
    operation: snapshot
  conditions:
  - {type: Stalled, status: "True", reason: SnapshotStoreFull, message: "see message", lastTransitionTime: "2024-05-01T11:59:50Z"}
  rollout:
    revision: 5
    fromRevision: 4
    step: Snapshotting
    startedAt: "2024-05-01T11:59:50Z"
    failure: "the pre-rollout snapshots of revision 5 need about 600 MiB (db 600 MiB) but the snapshot store has 512 MiB left"
    snapshots:
    - {component: db, snapshot: shop-db-r4-1714564790}
    - {component: search, snapshot: shop-search-r4-1714564790}
"#,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn state_is_phase_and_message() {
        assert_eq!(
            state(&progressing()),
            "Progressing: rolling out revision 4: component api"
        );
    }

    #[test]
    fn a_stale_status_says_so() {
        let mut s = healthy();
        s.metadata.generation = Some(3);
        assert!(!is_current(&s));
        assert_eq!(
            state(&s),
            "Healthy: every component is Available on revision 2 (as of generation 2; the \
             controller has not yet acted on generation 3)"
        );
        s.status = None;
        assert!(state(&s).contains("has not reported on it yet"));
        assert_eq!(phase(&s), "Unknown");
    }

    #[test]
    fn a_data_only_rollback_says_so() {
        assert_eq!(rollback_span(4, 3), "4 → 3");
        assert_eq!(rollback_span(3, 3), "revision 3 (data only)");
    }

    #[test]
    fn last_rollback_is_compact() {
        let s = progressing();
        let r = s.status.unwrap().last_rollback.unwrap();
        assert_eq!(rollback_short(&r, now()), "3→2 118m ago");
        let mut restore = r.clone();
        restore.from_revision = 2;
        assert_eq!(rollback_short(&restore, now()), "2 data 118m ago");
    }
}
