//! `ProductionStack` status: what the controller observed and where the rollout is.
//!
//! The rollout state machine lives here (not in controller memory), so a controller that
//! restarts at any point resumes from the status alone.

use crate::gates::GateStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a `ProductionStack`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductionStackStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the stack is in its life cycle. See the conditions for details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StackPhase>,

    /// Revision number of the components the spec asks for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<i64>,

    /// Digest of the components of `currentRevision` (names its ControllerRevision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision_hash: Option<String>,

    /// Digest of the components of `stableRevision` (names its ControllerRevision, so the
    /// controller can fetch the one revision a rollback would need).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision_hash: Option<String>,

    /// The stable revision before the current one (what a rollback after promotion goes
    /// back to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stable_revision: Option<i64>,

    /// Last revision that was rolled out completely, to every component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<i64>,

    /// Available components out of all, e.g. `2/3` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_components: Option<String>,

    /// One line a person can read: what the stack is doing or what is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The rollout in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,

    /// State of each component, in rollout order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,

    /// Analysis of the stack-wide gates (during the final analysis and after promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateStatus>,

    /// The rollback in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackState>,

    /// The last rollback that finished: why, from what, to what, how long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<RollbackRecord>,

    /// Set after a rollback: the stack holds `revision` and does not roll the spec's
    /// revision (`heldBack`) out again until the spec changes or a `Retry` operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<RevisionHold>,

    /// Set by a `Pause` operation, cleared by `Resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_pause: Option<OperationRecord>,

    /// Names of the last StackOperations acted on, newest last, so that an operation is
    /// acted on exactly once even if the controller restarts in between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processed_operations: Vec<String>,

    /// Those of `processedOperations` that were refused, so that an operation whose
    /// result was not yet written when the controller stopped is recorded as refused, not
    /// as done, after the restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_operations: Vec<String>,

    /// What the stack's snapshot repository takes and the room left for new snapshots,
    /// as last measured by an agent Job (every snapshot, verify and prune measures it).
    /// Unset until the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_repository: Option<SnapshotRepositoryStatus>,

    /// `Ready`, `Reconciling` and `Stalled`, in the kstatus convention that Argo CD and
    /// Flux read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The snapshot repository's use and room, from its last measurement and the spec's
/// quota. Sizes are bytes as stored (after compression and encryption).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRepositoryStatus {
    /// Bytes the repository takes in its store: every chunk, manifest, lock and its
    /// config, as stored.
    pub used_bytes: i64,

    /// Objects (files, or S3 objects) the repository holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<i64>,

    /// For a filesystem store: the size of the volume under the claim (`statvfs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_bytes: Option<i64>,

    /// For a filesystem store: bytes still free on the volume for an unprivileged writer
    /// (`statvfs` `f_bavail`), shared with anything else on the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_available_bytes: Option<i64>,

    /// The store's `quota` in bytes, when the spec sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<i64>,

    /// The most the repository can grow to: the quota, or the volume's size, whichever
    /// is smaller. Unset when neither is known (S3 without a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<i64>,

    /// Room left for new snapshots: the volume's free space, or the quota less
    /// `usedBytes`, whichever is smaller (never below 0). Unset when unknown (S3 without
    /// a quota): the controller then never holds a rollout for room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<i64>,

    /// What the next rollout's pre-rollout snapshots are estimated to add: per component
    /// with data, the most any of its last 5 complete snapshots added (`storedBytes`, or
    /// `newBytes` for older ones). Components never snapshotted have no estimate and add
    /// nothing to it (named in `unestimated`). Unset when no component has an estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rollout_bytes: Option<i64>,

    /// Components with data whose next snapshot has no estimate (never snapshotted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unestimated: Vec<String>,

    /// When the agent measured the repository.
    pub measured_at: Time,

    /// The agent Job that measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_by: Option<String>,

    /// What that Job did: `snapshot`, `verify` or `prune`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Life-cycle phase of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StackPhase {
    /// A revision is being rolled out.
    Progressing,
    /// Every component runs the current revision and is Available.
    Healthy,
    /// `spec.rollout.paused` holds the rollout.
    Paused,
    /// Something is wrong with components that were Available (a workload lost
    /// availability, or the rollout missed its progress deadline).
    Degraded,
    /// The spec cannot be rolled out as written; nothing was changed. See the `Stalled`
    /// condition for the field and the problem.
    Invalid,
    /// The stack is being deleted.
    Terminating,
    /// A rollback is in progress.
    RollingBack,
    /// The stack was rolled back and holds the older revision; the spec's revision is not
    /// retried until the spec changes or a `Retry` operation.
    RolledBack,
}

impl StackPhase {
    /// Every phase, for metrics that report a count per phase.
    pub const ALL: [StackPhase; 8] = [
        StackPhase::Progressing,
        StackPhase::Healthy,
        StackPhase::Paused,
        StackPhase::Degraded,
        StackPhase::Invalid,
        StackPhase::Terminating,
        StackPhase::RollingBack,
        StackPhase::RolledBack,
    ];

    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            StackPhase::Progressing => "Progressing",
            StackPhase::Healthy => "Healthy",
            StackPhase::Paused => "Paused",
            StackPhase::Degraded => "Degraded",
            StackPhase::Invalid => "Invalid",
            StackPhase::Terminating => "Terminating",
            StackPhase::RollingBack => "RollingBack",
            StackPhase::RolledBack => "RolledBack",
        }
    }
}

impl std::fmt::Display for StackPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rollout of one revision, step by step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// Revision being rolled out.
    pub revision: i64,

    /// Revision the stack ran before (the stable revision when the rollout started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_revision: Option<i64>,

    /// Component being rolled now, in dependency order; unset when between components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,

    /// When the current component was applied (its progress deadline counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_started_at: Option<Time>,

    /// When the rollout started.
    pub started_at: Time,

    /// Set when the rollout cannot go on by itself (e.g. a missed progress deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,

    /// What the rollout is doing for the current component (or the stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<RolloutStep>,

    /// When the analysis of the current component (or the stack) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_started_at: Option<Time>,

    /// Set by a `Promote` operation: remaining analysis is skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted: bool,

    /// Components that passed their analysis in this rollout, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysed: Vec<String>,

    /// Whether the stack-wide gates passed in this rollout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stack_analysed: bool,

    /// The snapshots taken before this rollout (one per component with data), which a
    /// rollback restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<DataSnapshotRef>,

    /// Set when `retention.pruneToFit` forgot older snapshots to make room for this
    /// rollout's: at most once per rollout (a `Retry` starts a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_to_fit: Option<PruneToFit>,

    /// Where the canary of the current component is, when it has `canary` steps: the
    /// controller resumes at this step after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryState>,
}

/// The canary of the component being rolled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryState {
    /// The component.
    pub component: String,

    /// Index of the current step in `canary.steps`; equal to the number of steps once
    /// every step is done and the stable Deployment is being updated.
    pub step: i32,

    /// Percentage of the replicas the canary runs now (the last `setWeight` reached).
    #[serde(default)]
    pub weight: i32,

    /// When the current step started (pauses and analyses count from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
}

/// Snapshots forgotten to make room for a rollout's pre-rollout snapshots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneToFit {
    /// When the prune was decided; the rollout waits for a measurement taken after it.
    pub at: Time,
    /// The prune Jobs (one per component whose snapshots were forgotten).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// The StackSnapshots forgotten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// Bytes the room was short by when it was decided.
    pub shortfall_bytes: i64,
}

/// A component's snapshot, by the name of its `StackSnapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSnapshotRef {
    /// Component name.
    pub component: String,
    /// Name of the StackSnapshot.
    pub snapshot: String,
}

/// Restoring one component's data during a rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataRestore {
    /// Component name.
    pub component: String,
    /// Name of the StackSnapshot restored.
    pub snapshot: String,
    /// Where it is: `Stopping` the component, `Restoring`, `Restored`, or `Failed`.
    pub phase: RestorePhase,
    /// The Job doing the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// What went wrong (which snapshot, file and chunk failed verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Steps of a data restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RestorePhase {
    /// The component is being scaled to zero so nothing writes during the restore.
    Stopping,
    /// The restore Job is writing and verifying the data in a staging directory.
    Restoring,
    /// The data is back, verified; the component starts on the target revision.
    Restored,
    /// The restore failed; the live data was left as it was. The rollback waits for a
    /// person: `Retry` runs the restore again, `Restore` of another snapshot of the same
    /// component replaces it, `AcceptLiveData` starts the component on the data as it is,
    /// `Rollback` goes to another revision on the data as it is.
    Failed,
    /// A person accepted the live data instead (an `AcceptLiveData` operation, recorded in
    /// the message); the component starts on it.
    Accepted,
}

impl RestorePhase {
    /// Whether the rollback may go on past this restore: the data is back, or a person
    /// accepted the data as it is.
    pub fn is_settled(self) -> bool {
        matches!(self, RestorePhase::Restored | RestorePhase::Accepted)
    }
}

/// Steps of a rollout, in order, for each component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RolloutStep {
    /// Taking the pre-rollout snapshots of the stack's data.
    Snapshotting,
    /// Applied; waiting for the component to be Available.
    Progressing,
    /// Available; its gates are being analysed.
    Analysing,
    /// Every component passed; the stack-wide gates are being analysed.
    StackAnalysis,
}

impl std::fmt::Display for RolloutStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutStep::Snapshotting => "Snapshotting",
            RolloutStep::Progressing => "Progressing",
            RolloutStep::Analysing => "Analysing",
            RolloutStep::StackAnalysis => "StackAnalysis",
        })
    }
}

/// A rollback in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackState {
    /// Revision being rolled back from.
    pub from_revision: i64,
    /// Revision being rolled back to.
    pub to_revision: i64,
    /// Why (the failing gate's message, a missed deadline, or the operation's reason).
    pub reason: String,
    /// When it was decided.
    pub started_at: Time,
    /// Component being rolled back now (reverse dependency order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// The StackOperation that asked for it; unset when automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,

    /// What started it.
    #[serde(default)]
    pub trigger: RollbackTrigger,

    /// Data brought back with the workloads: each component whose data the failed
    /// revision may have changed is stopped, restored from its pre-rollout snapshot
    /// (verified) and started on the target revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restores: Vec<DataRestore>,
}

/// What started a rollback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RollbackTrigger {
    /// A health gate failed.
    #[default]
    Gate,
    /// A component missed the progress deadline.
    ProgressDeadline,
    /// A StackOperation (Rollback or Abort).
    Operation,
}

impl RollbackTrigger {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            RollbackTrigger::Gate => "gate",
            RollbackTrigger::ProgressDeadline => "deadline",
            RollbackTrigger::Operation => "manual",
        }
    }
}

/// A finished rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    /// Revision rolled back from.
    pub from_revision: i64,
    /// Revision rolled back to.
    pub to_revision: i64,
    /// Why.
    pub reason: String,
    /// When it was decided.
    pub started_at: Time,
    /// When the target revision was Available again.
    pub completed_at: Time,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
    /// Whether it finished within `spec.rollout.rollbackDeadline`.
    pub within_deadline: bool,
    /// The StackOperation that asked for it; unset when automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// What started it.
    #[serde(default)]
    pub trigger: RollbackTrigger,
    /// The data restored, by component and snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restores: Vec<DataRestore>,
}

/// A revision the stack holds after a rollback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionHold {
    /// The revision the stack runs.
    pub revision: i64,
    /// The spec's revision that is not rolled out again until the spec changes or a retry.
    pub held_back: i64,
    /// Why.
    pub reason: String,
}

/// Who did what, through which StackOperation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationRecord {
    /// The StackOperation's name.
    pub operation: String,
    /// When it was acted on.
    pub at: Time,
    /// Who asked, as recorded in the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Why, as recorded in the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Observed state of one component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Component name.
    pub name: String,

    /// Revision whose spec of this component the workload carries; unset before it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,

    /// Where the component is.
    pub phase: ComponentPhase,

    /// Desired pods.
    #[serde(default)]
    pub replicas: i32,

    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Pods that run the latest pod template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// Why the component is in this phase, when it is not Available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Analysis of the component's gates in the current rollout (or after promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateStatus>,

    /// The canary of a new revision, while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,

    /// Name of the HorizontalPodAutoscaler that manages the component's replicas, when
    /// one targets its workload: deployctl leaves the count to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaled_by: Option<String>,
}

/// A component's canary as `deployctl status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Current step, counted from 1; `steps + 1` while the stable Deployment takes the
    /// new template after the last step.
    pub step: i32,

    /// Number of steps.
    pub steps: i32,

    /// Percentage of the replicas on the new revision.
    pub weight: i32,

    /// Revision the canary pods run.
    pub revision: i64,

    /// Desired pods of the canary Deployment.
    pub canary_replicas: i32,

    /// Desired pods of the stable Deployment.
    pub stable_replicas: i32,
}

/// Life-cycle phase of a component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ComponentPhase {
    /// Not created yet.
    #[default]
    Pending,
    /// Waiting for the components it depends on to become Available.
    WaitingForDependencies,
    /// Applied; pods are rolling.
    Progressing,
    /// Every pod runs the applied template and is available.
    Available,
    /// Did not become Available in time, or lost availability.
    Unavailable,
}

impl ComponentPhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentPhase::Pending => "Pending",
            ComponentPhase::WaitingForDependencies => "WaitingForDependencies",
            ComponentPhase::Progressing => "Progressing",
            ComponentPhase::Available => "Available",
            ComponentPhase::Unavailable => "Unavailable",
        }
    }
}

impl std::fmt::Display for ComponentPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProductionStackStatus {
    /// The condition of this type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of this type has status `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}
