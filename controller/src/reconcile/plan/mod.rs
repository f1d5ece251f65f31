//! The rollout planner: from the spec's revision, the history, what the cluster runs, new
//! gate measurements, pending operations and the previous status, decides what to apply or
//! delete next and what the status says.
//!
//! Pure and deterministic, so every branch is unit-tested without a cluster, and a
//! controller restarted at any point recomputes the same decision from the status and the
//! workloads' annotations. Submodules: `forward` (rollout, hold, monitoring), `rollback`,
//! `operations`, `status` (phase and conditions).

pub mod adopt;
mod canary;
pub mod capacity;
mod forward;
pub mod housekeeping;
pub mod lifecycle;
mod operations;
mod rollback;
#[cfg(test)]
mod simulation;
pub mod snapshots;
mod summary;
#[cfg(test)]
mod tests;

use crate::gates::analysis;
use deployctl_api::validation::{self, InvalidSpec};
use deployctl_api::{
    Component, Gate, GateStatus, Measurement, OperationAction, OperationPhase, ProductionStackSpec,
    ProductionStackStatus, SnapshotPhase, WorkloadKind,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::time::Duration;

pub use operations::PendingOperation;

/// What the controller observed of one component's workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadState {
    /// Kind of the object found.
    pub kind: WorkloadKind,
    /// The spec digest annotation deployctl put on it.
    pub spec_hash: Option<String>,
    /// The revision annotation deployctl put on it.
    pub revision: Option<i64>,
    /// Desired pods.
    pub replicas: i32,
    /// Ready pods.
    pub ready_replicas: i32,
    /// Pods on the latest template.
    pub updated_replicas: i32,
    /// Fully rolled out: the workload controller saw the latest spec and every desired pod
    /// is updated and available, with no old pods left.
    pub available: bool,
    /// The workload controller has observed the latest spec.
    pub seen: bool,
    /// Why it is not available (pod waiting reasons, workload conditions).
    pub message: Option<String>,
    /// deployctl scaled it to zero (annotation `deployctl.dev/stopped`) so nothing writes
    /// its data while a snapshot or restore runs.
    pub stopped: bool,
    /// Stopped, and none of its pods is left (not even terminating).
    pub drained: bool,
    /// The canary Deployment `<stack>-<component>-canary`, when one exists.
    pub canary: Option<Box<WorkloadState>>,
    /// The HorizontalPodAutoscaler targeting it, if any.
    pub autoscaled_by: Option<String>,
    /// The count an autoscaled workload had before deployctl stopped it.
    pub replicas_before_stop: Option<i32>,
}

/// What the controller observed of the stack's snapshots and data Jobs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataObserved {
    /// The stack's StackSnapshots by name.
    pub snapshots: BTreeMap<String, SnapshotObserved>,
    /// Restore Jobs by name (absent: not created yet).
    pub restore_jobs: BTreeMap<String, JobOutcome>,
    /// Agent Jobs still running, by the component whose data they work on. One agent at
    /// a time works on a component's data: see [`snapshots::agent_busy`].
    pub agents: BTreeMap<String, Vec<AgentRun>>,
    /// Names of StackSnapshots in the namespace that are not the controller's own
    /// pre-rollout snapshots of this stack (another stack's, a person's, a schedule's): a
    /// pre-rollout snapshot never adopts one of these names.
    pub foreign: std::collections::BTreeSet<String>,
    /// The newest measurement of the repository by an agent Job that the status does not
    /// hold yet, if any.
    pub repository: Option<RepositoryMeasurement>,
}

/// What an agent Job measured of the stack's repository after its run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositoryMeasurement {
    /// Bytes of every object of the repository, as stored.
    pub used_bytes: u64,
    /// Objects it holds.
    pub objects: Option<u64>,
    /// The volume under a filesystem repository: (size, bytes available).
    pub volume: Option<(u64, u64)>,
    /// When the Job finished.
    pub at: Time,
    /// The Job.
    pub job: String,
    /// What it did (`snapshot`, `verify`, `prune`).
    pub operation: String,
}

/// A running agent Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRun {
    /// `snapshot`, `restore`, `verify` or `prune`.
    pub operation: String,
    /// The Job's name.
    pub job: String,
}

/// One StackSnapshot, as far as planning needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotObserved {
    /// Component whose data it holds.
    pub component: String,
    /// Its phase (unset: not yet picked up).
    pub phase: Option<SnapshotPhase>,
    /// Why it failed.
    pub message: Option<String>,
    /// Its digest, once complete.
    pub digest: Option<String>,
    /// Whether the last verification found it damaged.
    pub corrupt: bool,
    /// Whether a verification found it sound.
    pub verified: bool,
    /// When the object was created (orders a component's snapshots).
    pub created: Option<Time>,
    /// The digests it names in the repository (one per replica).
    pub digests: Vec<String>,
    /// What it added to the store, as stored (`storedBytes`).
    pub stored_bytes: Option<i64>,
    /// What it added in data bytes (`newBytes`), for snapshots older than `storedBytes`.
    pub new_bytes: Option<i64>,
}

/// Where a data Job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Created, not finished.
    Running,
    /// Exited 0.
    Succeeded,
    /// Failed; the agent's message.
    Failed(String),
}

/// One revision's components, validated and ordered.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRef {
    /// Revision number.
    pub number: i64,
    /// Its components.
    pub components: Vec<Component>,
    /// Component names in rollout (dependency) order.
    pub order: Vec<String>,
    /// Spec digest per component.
    pub hashes: BTreeMap<String, String>,
}

impl RevisionRef {
    /// Validates and orders `components` of revision `number` of stack `stack`.
    pub fn new(stack: &str, number: i64, components: Vec<Component>) -> Result<Self, InvalidSpec> {
        // A revision's components are resolved: a `templateFrom` is kept to say where the
        // template came from, and the template it recorded is checked like any other.
        let spec_of = |components| ProductionStackSpec {
            components,
            rollout: Default::default(),
            gates: vec![],
            revision_history_limit: None,
            volume_claim_retention: None,
            snapshots: None,
            notifications: None,
        };
        let checked = spec_of(
            components
                .iter()
                .cloned()
                .map(|mut c| {
                    c.template_from = None;
                    c
                })
                .collect(),
        );
        let order = validation::validate(stack, &checked)?.0;
        let spec = spec_of(components);
        let hashes = spec
            .components
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    crate::reconcile::revisions::component_hash(c),
                )
            })
            .collect();
        Ok(RevisionRef {
            number,
            components: spec.components,
            order,
            hashes,
        })
    }

    /// The component of this name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Key of a gate in the measurement map: `component/gate`, or `/gate` for stack gates.
pub fn gate_key(component: Option<&str>, gate: &str) -> String {
    format!("{}/{gate}", component.unwrap_or(""))
}

/// Everything the planner needs.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The stack spec (policy and stack-wide gates).
    pub spec: &'a ProductionStackSpec,
    /// The stack's `metadata.generation`.
    pub generation: Option<i64>,
    /// The revision the spec maps to.
    pub desired: &'a RevisionRef,
    /// Other revisions from the history, loaded when a rollback, hold or operation may
    /// need them.
    pub revisions: &'a BTreeMap<i64, RevisionRef>,
    /// Observed workloads per component name (absent: not created).
    pub observed: &'a BTreeMap<String, WorkloadState>,
    /// Measurements taken in this reconcile, by [`gate_key`].
    pub measurements: &'a BTreeMap<String, Measurement>,
    /// StackOperations not yet acted on, oldest first.
    pub operations: &'a [PendingOperation],
    /// The stack's snapshots and restore Jobs.
    pub data: &'a DataObserved,
    /// The stack's name (snapshot and Job names derive from it).
    pub stack: &'a str,
    /// The status before this reconcile.
    pub previous: &'a ProductionStackStatus,
    /// The time of this reconcile.
    pub now: Time,
}

/// Something to change in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply a component as it is in a revision.
    Apply {
        /// Component name.
        component: String,
        /// Revision whose spec to apply.
        revision: i64,
    },
    /// Run a component's canary: the canary Deployment at `revision` with
    /// `canary_replicas` pods, and the stable Deployment, on the template of
    /// `stable_revision`, scaled to `stable_replicas`.
    Canary {
        /// Component name.
        component: String,
        /// Revision the canary pods run.
        revision: i64,
        /// Pods of the canary Deployment.
        canary_replicas: i32,
        /// Revision the stable Deployment runs (its template is kept).
        stable_revision: i64,
        /// Pods of the stable Deployment.
        stable_replicas: i32,
    },
    /// End a component's canary: the stable Deployment back to its revision's replicas
    /// (when that revision is known), then the canary Deployment scaled to zero and
    /// deleted.
    EndCanary {
        /// Component name.
        component: String,
        /// Revision whose spec the stable Deployment runs.
        stable_revision: Option<i64>,
    },
    /// Delete a component that the target revision does not have.
    Delete {
        /// Component name.
        component: String,
    },
    /// Create a StackSnapshot of a component's data; the controller then runs its Job.
    Snapshot {
        /// Component name.
        component: String,
        /// Name of the StackSnapshot.
        name: String,
        /// Revision the data belongs to.
        revision: i64,
    },
    /// Scale a component to zero, on a revision's spec, so nothing writes its data.
    Stop {
        /// Component name.
        component: String,
        /// Revision whose spec to keep.
        revision: i64,
    },
    /// Start the Job that restores a snapshot into a stopped component's volume.
    Restore {
        /// Component name.
        component: String,
        /// Name of the StackSnapshot.
        snapshot: String,
        /// Name of the Job.
        job: String,
    },
    /// Forget snapshots of a component to make room (`retention.pruneToFit`): start the
    /// prune Job that forgets exactly `forget`, then delete the StackSnapshots.
    Prune {
        /// Component name.
        component: String,
        /// Name of the prune Job; None when every digest is also named by a snapshot
        /// that stays (only the objects go).
        job: Option<String>,
        /// Digests the repository forgets.
        forget: Vec<String>,
        /// StackSnapshots deleted with them.
        snapshots: Vec<String>,
    },
}

/// An Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, for a person.
    pub note: String,
}

/// What became of a StackOperation.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationResult {
    /// The operation's name.
    pub name: String,
    /// Succeeded or Failed.
    pub phase: OperationPhase,
    /// What was done, or why not.
    pub message: String,
    /// For rollbacks, the target revision.
    pub target_revision: Option<i64>,
}

/// Metric-worthy outcomes of this reconcile (bounded labels only).
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A rollout ended: `promoted`, `rolled_back` or `aborted`.
    Rollout(&'static str),
    /// A rollback finished: trigger (`gate`, `deadline`, `manual`), outcome
    /// (`completed`, `over_deadline`), duration and deadline in seconds.
    Rollback {
        /// What started it.
        trigger: &'static str,
        /// How it ended.
        outcome: &'static str,
        /// How long it took.
        seconds: f64,
        /// Its deadline.
        deadline_seconds: f64,
    },
}

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Changes to make, in order.
    pub actions: Vec<Action>,
    /// The new status.
    pub status: ProductionStackStatus,
    /// Events to record.
    pub events: Vec<PlannedEvent>,
    /// When to look again even if nothing changes (a deadline, a gate measurement).
    pub requeue_after: Option<Duration>,
    /// Results of the operations acted on.
    pub operations: Vec<OperationResult>,
    /// Outcomes for metrics.
    pub outcomes: Vec<Outcome>,
    /// The desired revision was promoted to stable in this reconcile: components it no
    /// longer has can be removed.
    pub promoted: bool,
}

/// Working state of one planning pass.
struct Planner<'a> {
    input: PlanInput<'a>,
    status: ProductionStackStatus,
    actions: Vec<Action>,
    events: Vec<PlannedEvent>,
    requeue: Option<Duration>,
    op_results: Vec<OperationResult>,
    outcomes: Vec<Outcome>,
    promoted: bool,
    /// Set when a pause (spec, operation) holds the rollout at a component.
    held_by_pause: bool,
    /// Set when a gate is inconclusive.
    inconclusive: Option<String>,
    /// Set when a gate failed after promotion (no rollback configured).
    monitor_failure: Option<String>,
    /// Set when the rollout failed and is not rolled back: the condition reason.
    failure_reason: Option<&'static str>,
    /// Set when the rollback in progress is over its deadline.
    rollback_over_deadline: bool,
    /// Set when a rollback or hold cannot proceed.
    rollback_failure: Option<String>,
    /// The condition reason for `rollback_failure` (default `RollbackFailed`).
    rollback_failure_reason: Option<&'static str>,
    /// The rollback already took its step in this pass (started by an operation).
    rollback_ran: bool,
    /// Components held stopped because a snapshot of theirs that needs quiet is pending.
    quiescing: BTreeMap<String, String>,
    /// Set when the pre-rollout snapshots are not all complete.
    snapshotting: bool,
    /// Set while the rollout waits for room in the snapshot store (a prune to fit).
    capacity_wait: Option<String>,
}

impl<'a> Planner<'a> {
    fn event(&mut self, warning: bool, reason: &'static str, note: impl Into<String>) {
        self.events.push(PlannedEvent {
            warning,
            reason,
            note: note.into(),
        });
    }

    fn requeue_in(&mut self, d: Duration) {
        let d = d.max(Duration::from_millis(100));
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn now(&self) -> Time {
        self.input.now.clone()
    }

    fn observed(&self, c: &str) -> Option<&'a WorkloadState> {
        self.input.observed.get(c)
    }

    /// Whether the workload carries `target`'s spec of component `c` (and runs: a
    /// component stopped for its data is not up to date).
    fn up_to_date(&self, target: &RevisionRef, c: &str) -> bool {
        self.observed(c).is_some_and(|w| {
            !w.stopped && w.spec_hash.as_deref() == target.hashes.get(c).map(String::as_str)
        })
    }

    fn available(&self, c: &str) -> bool {
        self.observed(c).is_some_and(|w| w.available)
    }

    fn revision(&self, n: i64) -> Option<&'a RevisionRef> {
        if n == self.input.desired.number {
            Some(self.input.desired)
        } else {
            self.input.revisions.get(&n)
        }
    }

    fn progress_deadline(&self) -> Duration {
        self.input
            .spec
            .rollout
            .progress_deadline()
            .parse()
            .unwrap_or(Duration::from_secs(600))
    }

    fn analysis_window(&self) -> Duration {
        self.input
            .spec
            .rollout
            .analysis()
            .parse()
            .unwrap_or(Duration::from_secs(30))
    }

    fn rollback_deadline(&self) -> Duration {
        self.input
            .spec
            .rollout
            .rollback_deadline()
            .parse()
            .unwrap_or(Duration::from_secs(300))
    }

    fn monitor_interval(&self) -> Duration {
        self.input
            .spec
            .rollout
            .monitor_interval()
            .parse()
            .unwrap_or(Duration::from_secs(30))
    }

    /// Updates gate statuses with this reconcile's measurements and evaluates them as an
    /// analysis (a gate passes only once `window_over`).
    fn analyse(
        &self,
        component: Option<&str>,
        gates: &[Gate],
        previous: &[GateStatus],
        window_over: bool,
    ) -> Vec<GateStatus> {
        self.record_and_evaluate(component, gates, previous, |st, g| {
            analysis::evaluate(st, g, window_over)
        })
    }

    /// Like [`Planner::analyse`] for monitoring after promotion: a gate is Failed while
    /// its last `failureLimit + 1` measurements failed in a row, so it can recover.
    fn monitor_gates(
        &self,
        component: Option<&str>,
        gates: &[Gate],
        previous: &[GateStatus],
    ) -> Vec<GateStatus> {
        self.record_and_evaluate(component, gates, previous, analysis::evaluate_monitoring)
    }

    fn record_and_evaluate(
        &self,
        component: Option<&str>,
        gates: &[Gate],
        previous: &[GateStatus],
        evaluate: impl Fn(&mut GateStatus, &Gate),
    ) -> Vec<GateStatus> {
        gates
            .iter()
            .map(|g| {
                let mut st = previous
                    .iter()
                    .find(|s| s.name == g.name)
                    .cloned()
                    .unwrap_or_else(|| analysis::fresh(g));
                if let Some(m) = self.input.measurements.get(&gate_key(component, &g.name)) {
                    analysis::record(&mut st, m.clone());
                }
                evaluate(&mut st, g);
                st
            })
            .collect()
    }

    /// Schedules the next reconcile for the earliest due measurement of `gates`.
    fn requeue_for_gates(&mut self, gates: &[Gate], statuses: &[GateStatus], every: Duration) {
        let now = self.now();
        let next = gates
            .iter()
            .map(|g| {
                analysis::until_due(statuses.iter().find(|s| s.name == g.name), g, every, &now)
            })
            .min();
        if let Some(d) = next {
            self.requeue_in(d);
        }
    }
}

/// Plans one reconcile.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let mut status = input.previous.clone();
    status.observed_generation = input.generation;
    status.current_revision = Some(input.desired.number);
    status.current_revision_hash = Some(crate::reconcile::revisions::revision_hash(
        &input.desired.components,
    ));
    let mut p = Planner {
        input,
        status,
        actions: vec![],
        events: vec![],
        requeue: None,
        op_results: vec![],
        outcomes: vec![],
        promoted: false,
        held_by_pause: false,
        inconclusive: None,
        monitor_failure: None,
        failure_reason: None,
        rollback_over_deadline: false,
        rollback_failure: None,
        rollback_failure_reason: None,
        rollback_ran: false,
        quiescing: BTreeMap::new(),
        snapshotting: false,
        capacity_wait: None,
    };
    p.quiescing = snapshots::quiescing(&p);
    capacity::record(&mut p);

    operations::apply(&mut p);

    // A hold lasts only while the spec still asks for the revision that was rolled back.
    if let Some(h) = p.status.hold.clone() {
        if h.held_back != p.input.desired.number && p.status.rollback.is_none() {
            p.status.hold = None;
            p.event(
                false,
                "HoldReleased",
                format!(
                    "The spec now asks for revision {} (revision {} stays held back)",
                    p.input.desired.number, h.held_back
                ),
            );
        }
    }

    if p.status.rollback.is_some() {
        if !p.rollback_ran {
            rollback::run(&mut p);
        }
    } else if let Some(h) = p.status.hold.clone() {
        match p.revision(h.revision) {
            Some(target) => forward::hold(&mut p, target),
            None => rollback::missing_revision(&mut p, h.revision),
        }
    } else {
        forward::rollout(&mut p);
    }

    canary::sweep(&mut p);
    snapshots::verification_condition(&mut p);
    summary::finish(&mut p);
    Plan {
        actions: p.actions,
        status: p.status,
        events: p.events,
        requeue_after: p.requeue,
        operations: p.op_results,
        outcomes: p.outcomes,
        promoted: p.promoted,
    }
}

/// Status for a spec the controller refuses: nothing is applied; revision numbers stay
/// what they were, so the stack keeps running its last good spec.
pub fn invalid(
    previous: &ProductionStackStatus,
    generation: Option<i64>,
    message: &str,
    now: &Time,
) -> (ProductionStackStatus, Option<PlannedEvent>) {
    summary::invalid(previous, generation, message, now)
}

/// Gates due for a measurement in this reconcile, from the previous status: the gates of
/// the component under analysis, the stack's gates during the final analysis, or every
/// gate (at the slower monitoring pace) once the stack is stable.
pub fn gates_due<'s>(
    spec: &'s ProductionStackSpec,
    desired: &'s RevisionRef,
    previous: &ProductionStackStatus,
    now: &Time,
) -> Vec<(Option<&'s str>, &'s Gate)> {
    use deployctl_api::RolloutStep;
    let statuses = |c: Option<&str>| -> Vec<GateStatus> {
        match c {
            Some(c) => previous
                .components
                .iter()
                .find(|s| s.name == c)
                .map(|s| s.gates.clone())
                .unwrap_or_default(),
            None => previous.gates.clone(),
        }
    };
    let due = |c: Option<&'s str>, gates: &'s [Gate], every: Duration| {
        let st = statuses(c);
        gates
            .iter()
            .filter(|g| analysis::is_due(st.iter().find(|s| s.name == g.name), g, every, now))
            .map(|g| (c, g))
            .collect::<Vec<_>>()
    };
    let holding = previous
        .hold
        .as_ref()
        .is_some_and(|h| h.held_back == desired.number);
    if previous.rollback.is_some() || holding {
        return vec![];
    }
    match &previous.rollout {
        Some(r) if r.promoted || r.revision != desired.number => vec![],
        Some(r) => match r.step {
            Some(RolloutStep::Analysing) => r
                .component
                .as_deref()
                .and_then(|c| desired.component(c))
                .map(|c| due(Some(c.name.as_str()), &c.gates, Duration::ZERO))
                .unwrap_or_default(),
            Some(RolloutStep::StackAnalysis) => due(None, &spec.gates, Duration::ZERO),
            _ => r
                .canary
                .as_ref()
                .filter(|k| canary::measured_while_paused(desired, k))
                .and_then(|k| desired.component(&k.component))
                .map(|c| due(Some(c.name.as_str()), &c.gates, Duration::ZERO))
                .unwrap_or_default(),
        },
        None if previous.stable_revision == Some(desired.number) => {
            let every = spec
                .rollout
                .monitor_interval()
                .parse()
                .unwrap_or(Duration::from_secs(30));
            let mut all: Vec<(Option<&'s str>, &'s Gate)> = desired
                .components
                .iter()
                .flat_map(|c| due(Some(c.name.as_str()), &c.gates, every))
                .collect();
            all.extend(due(None, &spec.gates, every));
            all
        }
        None => vec![],
    }
}

/// Whether an operation asks for this action (for the I/O layer's filters).
pub fn is_action(op: &PendingOperation, a: OperationAction) -> bool {
    op.action == a
}
