//! Planner scenarios, each a small world: the planner decides, the "cluster" applies what
//! it asked for, time moves on.

use super::*;
use crate::reconcile::replicas::{Failure, Finished};
use deployctl_api::conditions::{READY, RECONCILING, STALLED};
use deployctl_api::{
    ComponentPhase, GatePhase, MeasurementOutcome, RestorePhase, RolloutStep, StackPhase,
};

fn t(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

fn spec(extra_policy: &str, api_gates: &str, image: &str) -> ProductionStackSpec {
    let c = format!("{{spec: {{containers: [{{name: a, image: '{image}'}}]}}}}");
    serde_yaml_ng::from_str(&format!(
        "components:
- {{name: db, template: {c}}}
- {{name: cache, template: {c}}}
- {{name: api, dependsOn: [db, cache], template: {c}, gates: {api_gates}}}
rollout: {{progressDeadline: 1m, analysis: 10s, rollbackDeadline: 30s{extra_policy}}}"
    ))
    .unwrap()
}

const GATE: &str = "[{name: http, interval: 1s, http: {path: /healthz}}]";

#[derive(Clone)]
pub(super) struct World {
    pub(super) spec: ProductionStackSpec,
    pub(super) desired: RevisionRef,
    pub(super) history: BTreeMap<i64, RevisionRef>,
    pub(super) observed: BTreeMap<String, WorkloadState>,
    pub(super) status: ProductionStackStatus,
    pub(super) measurements: BTreeMap<String, Measurement>,
    pub(super) ops: Vec<PendingOperation>,
    /// Revision number whose pods come up Available when applied.
    pub(super) healthy: Vec<i64>,
    /// The stack's snapshots and restore Jobs.
    pub(super) data: DataObserved,
    /// How the next snapshot Job ends (None: it keeps running).
    pub(super) snapshot_result: Option<SnapshotPhase>,
    /// How the next restore Job ends.
    pub(super) restore_result: JobOutcome,
    /// What the repository takes, once measured (None: never measured). Each snapshot
    /// adds `snapshot_adds`, each prune frees what its snapshots added, and each
    /// measures it again, as the agents do.
    pub(super) repo_used: Option<i64>,
    /// What each completed snapshot adds to the store.
    pub(super) snapshot_adds: i64,
    /// The time of the step in progress.
    clock: i64,
}

impl World {
    pub(super) fn new(spec: ProductionStackSpec) -> Self {
        let desired = RevisionRef::new("shop", 1, spec.components.clone()).unwrap();
        World {
            spec,
            desired,
            history: BTreeMap::new(),
            observed: BTreeMap::new(),
            status: Default::default(),
            measurements: BTreeMap::new(),
            ops: vec![],
            healthy: vec![1, 2, 3, 4],
            data: DataObserved::default(),
            snapshot_result: Some(SnapshotPhase::Completed),
            restore_result: JobOutcome::Succeeded,
            repo_used: None,
            snapshot_adds: 100,
            clock: 0,
        }
    }

    /// An agent measured the repository now (when it is measured at all).
    fn measured(&mut self, job: &str, operation: &str) {
        if let Some(used) = self.repo_used {
            self.data.repository = Some(RepositoryMeasurement {
                used_bytes: used as u64,
                objects: None,
                volume: None,
                at: t(self.clock),
                job: job.into(),
                operation: operation.into(),
            });
        }
    }

    /// The user changes the spec: a new revision.
    pub(super) fn change(&mut self, spec: ProductionStackSpec, number: i64) {
        self.history
            .insert(self.desired.number, self.desired.clone());
        self.desired = RevisionRef::new("shop", number, spec.components.clone()).unwrap();
        self.history.remove(&number);
        self.spec = spec;
    }

    /// The agent Jobs running on each component's data, as the I/O layer lists them: the
    /// ones a test put in `data.agents`, the snapshots running and the restores running.
    pub(super) fn agents_now(&self) -> BTreeMap<String, Vec<AgentRun>> {
        let mut agents = self.data.agents.clone();
        for (name, s) in &self.data.snapshots {
            if s.phase == Some(SnapshotPhase::Running) {
                agents
                    .entry(s.component.clone())
                    .or_default()
                    .push(AgentRun {
                        operation: "snapshot".into(),
                        job: name.clone(),
                    });
            }
        }
        for r in self.status.rollback.iter().flat_map(|rb| &rb.restores) {
            if let Some(job) = &r.job {
                if self.data.restore_jobs.get(job) == Some(&JobOutcome::Running) {
                    agents
                        .entry(r.component.clone())
                        .or_default()
                        .push(AgentRun {
                            operation: "restore".into(),
                            job: job.clone(),
                        });
                }
            }
        }
        agents
    }

    /// The I/O layer's pass over unfinished snapshots, decided by [`lifecycle::steps`]:
    /// Jobs that were running end as `snapshot_result` says, waiting ones start when the
    /// planner's rules let them.
    fn snapshot_lifecycle(&mut self) {
        let mut agents = self.agents_now();
        let repository_exists = self
            .data
            .snapshots
            .values()
            .any(|s| s.phase == Some(SnapshotPhase::Completed));
        let outcome = match self.snapshot_result {
            Some(SnapshotPhase::Completed) => {
                let mut r =
                    crate::agent::AgentResult::new(crate::agent::AgentOp::Snapshot, true, 1.0);
                r.digest = Some("d".into());
                Finished::Ok(Box::new(r))
            }
            Some(_) => Finished::Failed("store unreachable".into(), Failure::Store),
            None => Finished::Running,
        };
        let unfinished: Vec<lifecycle::Unfinished<'_>> = self
            .data
            .snapshots
            .iter()
            .filter(|(_, s)| !s.phase.is_some_and(SnapshotPhase::is_final))
            .map(|(name, s)| {
                let running = s.phase == Some(SnapshotPhase::Running);
                lifecycle::Unfinished {
                    name: name.clone(),
                    component: s.component.clone(),
                    status: deployctl_api::StackSnapshotStatus {
                        phase: s.phase,
                        message: s.message.clone(),
                        ..Default::default()
                    },
                    spec: self.desired.component(&s.component),
                    job: name.clone(),
                    jobs: vec![(0, running.then(|| outcome.clone()))],
                }
            })
            .collect();
        let steps = lifecycle::steps(
            unfinished,
            &mut agents,
            self.status.rollback.as_ref(),
            &self.observed,
            repository_exists,
        );
        for (name, step) in steps {
            let s = self.data.snapshots.get_mut(&name).expect("listed above");
            match step {
                lifecycle::Step::Nothing => {}
                lifecycle::Step::Wait(why) => {
                    s.phase = Some(SnapshotPhase::Pending);
                    s.message = Some(why);
                }
                lifecycle::Step::Start { .. } => {
                    s.phase = Some(SnapshotPhase::Running);
                    s.message = None;
                }
                lifecycle::Step::Complete(_) => {
                    s.phase = Some(SnapshotPhase::Completed);
                    s.digest = Some("d".into());
                    s.digests = vec![format!("digest-{name}")];
                    s.stored_bytes = Some(self.snapshot_adds);
                    s.created.get_or_insert(t(self.clock));
                    if let Some(u) = self.repo_used.as_mut() {
                        *u += self.snapshot_adds;
                    }
                    self.measured(&name, "snapshot");
                }
                lifecycle::Step::Fail { message, .. } | lifecycle::Step::Reject(message) => {
                    s.phase = Some(SnapshotPhase::Failed);
                    s.message = Some(message);
                }
            }
        }
    }

    pub(super) fn step(&mut self, now: i64) -> Plan {
        self.clock = now;
        let mut data = self.data.clone();
        data.agents = self.agents_now();
        let p = plan(PlanInput {
            spec: &self.spec,
            generation: Some(self.desired.number),
            desired: &self.desired,
            revisions: &self.history,
            observed: &self.observed,
            measurements: &self.measurements,
            operations: &self.ops,
            data: &data,
            stack: "shop",
            previous: &self.status,
            now: t(now),
        });
        for j in self.data.restore_jobs.values_mut() {
            if *j == JobOutcome::Running {
                *j = self.restore_result.clone();
            }
        }
        self.status = p.status.clone();
        self.measurements.clear();
        self.ops
            .retain(|o| !p.operations.iter().any(|r| r.name == o.name));
        // The cluster does what was asked.
        for a in &p.actions {
            match a {
                Action::Apply {
                    component,
                    revision,
                } => {
                    let r = if *revision == self.desired.number {
                        &self.desired
                    } else {
                        &self.history[revision]
                    };
                    let canary = self.observed.get(component).and_then(|w| w.canary.clone());
                    self.observed.insert(
                        component.clone(),
                        WorkloadState {
                            spec_hash: Some(r.hashes[component].clone()),
                            revision: Some(*revision),
                            replicas: r.component(component).map_or(1, |c| c.replicas()),
                            available: self.healthy.contains(revision),
                            canary,
                            ..Default::default()
                        },
                    );
                }
                Action::Canary {
                    component,
                    revision,
                    canary_replicas,
                    stable_revision,
                    stable_replicas,
                } => {
                    let r = if *revision == self.desired.number {
                        &self.desired
                    } else {
                        &self.history[revision]
                    };
                    let healthy = self.healthy.contains(revision);
                    let w = self
                        .observed
                        .get_mut(component)
                        .expect("a canary runs beside a stable Deployment");
                    assert_eq!(
                        w.revision,
                        Some(*stable_revision),
                        "the stable template is kept"
                    );
                    w.replicas = *stable_replicas;
                    w.canary = Some(Box::new(WorkloadState {
                        spec_hash: Some(r.hashes[component].clone()),
                        revision: Some(*revision),
                        replicas: *canary_replicas,
                        available: healthy,
                        ..Default::default()
                    }));
                }
                Action::EndCanary {
                    component,
                    stable_revision,
                } => {
                    let full = stable_revision
                        .and_then(|n| {
                            if n == self.desired.number {
                                Some(&self.desired)
                            } else {
                                self.history.get(&n)
                            }
                        })
                        .and_then(|r| r.component(component))
                        .map(|c| c.replicas());
                    let w = self.observed.get_mut(component).expect("ends a canary");
                    w.canary = None;
                    if let Some(full) = full {
                        w.replicas = full;
                    }
                }
                Action::Delete { component } => {
                    self.observed.remove(component);
                }
                Action::Snapshot {
                    component, name, ..
                } => {
                    // Its Job starts below, when the lifecycle's rules let it.
                    self.data.snapshots.insert(
                        name.clone(),
                        SnapshotObserved {
                            component: component.clone(),
                            phase: None,
                            message: None,
                            digest: None,
                            corrupt: false,
                            verified: false,
                            ..Default::default()
                        },
                    );
                }
                Action::Stop { component, .. } => {
                    let w = self.observed.get_mut(component).expect("stops what runs");
                    w.stopped = true;
                    w.drained = true;
                    w.available = true;
                    w.replicas = 0;
                }
                Action::Prune {
                    component,
                    job,
                    snapshots,
                    ..
                } => {
                    let protected = housekeeping::protected(
                        &p.status,
                        self.ops.iter().filter_map(|o| o.snapshot.as_deref()),
                    );
                    let newest = self
                        .data
                        .snapshots
                        .iter()
                        .filter(|(_, s)| {
                            &s.component == component && s.phase == Some(SnapshotPhase::Completed)
                        })
                        .max_by_key(|(n, s)| (s.created.as_ref().map(|t| t.0.as_second()), *n))
                        .map(|(n, _)| n.clone());
                    for name in snapshots {
                        assert!(
                            !protected.contains(name),
                            "a prune to fit forgets {name}, which a rollout, rollback or restore may need"
                        );
                        assert_ne!(
                            Some(name),
                            newest.as_ref(),
                            "a prune to fit forgets the newest snapshot of {component}"
                        );
                        let gone = self
                            .data
                            .snapshots
                            .remove(name)
                            .expect("forgets what exists");
                        if let Some(u) = self.repo_used.as_mut() {
                            *u -= gone.stored_bytes.unwrap_or(0);
                        }
                    }
                    if let Some(job) = job {
                        self.measured(job, "prune");
                    }
                }
                Action::Restore { job, .. } => {
                    assert!(
                        !self.data.restore_jobs.contains_key(job),
                        "a restore Job is started once"
                    );
                    self.data
                        .restore_jobs
                        .insert(job.clone(), JobOutcome::Running);
                }
            }
        }
        self.snapshot_lifecycle();
        p
    }

    pub(super) fn measure(
        &mut self,
        component: &str,
        gate: &str,
        outcome: MeasurementOutcome,
        at: i64,
    ) {
        self.measurements.insert(
            gate_key(Some(component), gate),
            Measurement {
                at: t(at),
                outcome,
                value: None,
                message: Some(format!("{outcome:?}")),
            },
        );
    }

    pub(super) fn op(&mut self, name: &str, action: OperationAction, to: Option<i64>) {
        self.ops.push(PendingOperation {
            name: name.into(),
            action,
            to_revision: to,
            reason: Some("test".into()),
            requested_by: Some("alice".into()),
            snapshot: None,
        });
    }

    /// A failed measurement of the gate of the component under analysis, if one is.
    pub(super) fn fail_analysis(&mut self, at: i64) {
        if let Some(c) = self.status.rollout.as_ref().and_then(|r| {
            (r.step == Some(RolloutStep::Analysing))
                .then(|| r.component.clone())
                .flatten()
        }) {
            self.measure(&c, "http", MeasurementOutcome::Failure, at);
        }
    }

    pub(super) fn phase(&self) -> StackPhase {
        self.status.phase.unwrap()
    }

    pub(super) fn running(&self, c: &str) -> Option<i64> {
        self.observed.get(c).and_then(|w| w.revision)
    }

    /// Steps until no action is planned, passing gates of the component under analysis.
    pub(super) fn settle(&mut self, mut now: i64, pass: bool) -> i64 {
        for _ in 0..50 {
            let analysing = self.status.rollout.as_ref().and_then(|r| {
                (r.step == Some(RolloutStep::Analysing))
                    .then(|| r.component.clone())
                    .flatten()
            });
            if let Some(c) = analysing {
                let outcome = if pass {
                    MeasurementOutcome::Success
                } else {
                    MeasurementOutcome::Failure
                };
                self.measure(&c, "http", outcome, now);
            }
            let p = self.step(now);
            now += 11;
            if p.actions.is_empty()
                && self.status.rollout.is_none()
                && self.status.rollback.is_none()
            {
                return now;
            }
        }
        panic!("did not settle: {:#?}", self.status);
    }
}

fn cond<'a>(s: &'a ProductionStackStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.condition(t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn creates_components_one_at_a_time_in_dependency_order() {
    let mut w = World::new(spec("", "[]", "x:1"));
    w.healthy.clear();
    let p = w.step(0);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "db".into(),
            revision: 1
        }]
    );
    assert_eq!(p.events[0].reason, "RolloutStarted");
    assert_eq!(cond(&w.status, RECONCILING), ("True", "RollingOut"));
    assert_eq!(
        w.status.components[2].phase,
        ComponentPhase::WaitingForDependencies
    );
    let p = w.step(1);
    assert!(
        p.actions.is_empty(),
        "db is not Available yet: nothing else starts"
    );
    assert_eq!(w.status.components[1].phase, ComponentPhase::Pending);
    w.healthy = vec![1];
    w.observed.get_mut("db").unwrap().available = true;
    let p = w.step(2);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "cache".into(),
            revision: 1
        }]
    );
    let p = w.step(3);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "api".into(),
            revision: 1
        }]
    );
    let p = w.step(4);
    assert!(p.actions.is_empty());
    assert!(p.promoted);
    assert_eq!(w.phase(), StackPhase::Healthy);
    assert_eq!(
        (w.status.stable_revision, w.status.rollout.clone()),
        (Some(1), None)
    );
    assert_eq!(w.status.ready_components.as_deref(), Some("3/3"));
    assert_eq!(cond(&w.status, READY), ("True", "Available"));
    assert!(p.events.iter().any(|e| e.reason == "RolloutComplete"));
    let before = w.status.clone();
    let p = w.step(100);
    assert!(p.actions.is_empty() && p.events.is_empty());
    assert_eq!(w.status, before, "steady state writes nothing");
}

#[test]
fn gates_hold_the_next_component_until_they_pass() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    // Revision 2 changes db and api; api has a gate, and a new db is analysed by none.
    let mut s2 = spec("", GATE, "x:2");
    s2.components[1] = w.spec.components[1].clone(); // cache unchanged
    w.change(s2, 2);
    let p = w.step(now);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "db".into(),
            revision: 2
        }]
    );
    let p = w.step(now + 1);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "api".into(),
            revision: 2
        }],
        "cache did not change"
    );
    let p = w.step(now + 2);
    assert!(p.actions.is_empty());
    let r = w.status.rollout.clone().unwrap();
    assert_eq!(
        (r.component.as_deref(), r.step),
        (Some("api"), Some(RolloutStep::Analysing))
    );
    assert!(p.events.iter().any(|e| e.reason == "AnalysisStarted"));
    w.measure("api", "http", MeasurementOutcome::Success, now + 3);
    w.step(now + 3);
    assert_eq!(
        w.phase(),
        StackPhase::Progressing,
        "the 10s window is still open"
    );
    assert_eq!(w.status.components[2].gates[0].successes, 1);
    w.measure("api", "http", MeasurementOutcome::Success, now + 13);
    let p = w.step(now + 13);
    assert_eq!(w.phase(), StackPhase::Healthy);
    assert_eq!(w.status.stable_revision, Some(2));
    assert!(p.events.iter().any(|e| e.reason == "AnalysisPassed"));
}

#[test]
fn a_failed_gate_rolls_back_in_reverse_order_and_holds() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", GATE, "x:2"), 2);
    for i in 0..3 {
        w.step(now + i);
    }
    assert_eq!(w.running("api"), Some(2));
    w.measure("api", "http", MeasurementOutcome::Failure, now + 4);
    let p = w.step(now + 4);
    assert_eq!(w.phase(), StackPhase::RollingBack);
    let rb = w.status.rollback.clone().unwrap();
    assert_eq!((rb.from_revision, rb.to_revision), (2, 1));
    assert_eq!(rb.trigger, deployctl_api::RollbackTrigger::Gate);
    assert!(rb.reason.contains("gate http failed"), "{}", rb.reason);
    // Dependents first: api, then (cache, db in reverse order of revision 2).
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "api".into(),
            revision: 1
        }]
    );
    assert!(p.outcomes.contains(&Outcome::Rollout("rolled_back")));
    let p = w.step(now + 5);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "cache".into(),
            revision: 1
        }]
    );
    let p = w.step(now + 6);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "db".into(),
            revision: 1
        }]
    );
    let p = w.step(now + 7);
    assert!(p.actions.is_empty());
    assert_eq!(w.phase(), StackPhase::RolledBack);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(
        (last.from_revision, last.to_revision, last.within_deadline),
        (2, 1, true)
    );
    assert_eq!(last.duration_seconds, 3.0);
    assert_eq!(w.status.hold.as_ref().unwrap().held_back, 2);
    assert_eq!(cond(&w.status, STALLED), ("True", "RolledBack"));
    assert!(matches!(
        p.outcomes[0],
        Outcome::Rollback {
            trigger: "gate",
            outcome: "completed",
            ..
        }
    ));
    // It stays there: the same spec is not retried.
    let p = w.step(now + 100);
    assert!(p.actions.is_empty());
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!(w.running("api"), Some(1));
}

#[test]
fn bad_to_good_and_bad_to_bad() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", GATE, "x:2"), 2);
    let now = w.settle(now, false);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    // Bad to bad: another failing revision rolls back to 1 again.
    w.change(spec("", GATE, "x:3"), 3);
    let now = w.settle(now, false);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!(
        w.status
            .last_rollback
            .as_ref()
            .map(|r| (r.from_revision, r.to_revision)),
        Some((3, 1))
    );
    // Bad to good.
    w.change(spec("", GATE, "x:4"), 4);
    w.settle(now, true);
    assert_eq!(w.phase(), StackPhase::Healthy);
    assert_eq!(w.status.stable_revision, Some(4));
    assert!(w.status.hold.is_none());
}

#[test]
fn a_missed_progress_deadline_rolls_back_and_an_overlong_rollback_is_reported() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    w.healthy = vec![1];
    w.change(spec("", "[]", "x:2"), 2);
    w.step(now);
    assert_eq!(w.running("db"), Some(2));
    w.step(now + 30);
    assert_eq!(w.phase(), StackPhase::Progressing);
    let p = w.step(now + 61);
    assert_eq!(w.phase(), StackPhase::RollingBack);
    assert_eq!(
        w.status.rollback.as_ref().unwrap().trigger,
        deployctl_api::RollbackTrigger::ProgressDeadline
    );
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "db".into(),
            revision: 1
        }]
    );
    // The old revision takes long to come back: past the 30s rollback deadline.
    w.observed.get_mut("db").unwrap().available = false;
    let p = w.step(now + 95);
    assert_eq!(w.phase(), StackPhase::RollingBack);
    assert_eq!(cond(&w.status, READY).1, "RollbackDeadlineExceeded");
    assert!(p
        .events
        .iter()
        .any(|e| e.reason == "RollbackDeadlineExceeded" && e.warning));
    let p = w.step(now + 96);
    assert!(
        !p.events
            .iter()
            .any(|e| e.reason == "RollbackDeadlineExceeded"),
        "reported once"
    );
    w.observed.get_mut("db").unwrap().available = true;
    let p = w.step(now + 100);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert!(!w.status.last_rollback.as_ref().unwrap().within_deadline);
    assert!(matches!(
        p.outcomes[0],
        Outcome::Rollback {
            outcome: "over_deadline",
            ..
        }
    ));
}

#[test]
fn without_auto_rollback_a_failure_stalls_the_rollout() {
    let mut w = World::new(spec(", autoRollback: false", GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec(", autoRollback: false", GATE, "x:2"), 2);
    for i in 0..3 {
        w.step(now + i);
    }
    w.measure("api", "http", MeasurementOutcome::Failure, now + 4);
    let p = w.step(now + 4);
    assert!(p.actions.is_empty());
    assert_eq!(w.phase(), StackPhase::Degraded);
    assert_eq!(cond(&w.status, STALLED), ("True", "GateFailed"));
    assert!(w.status.rollback.is_none());
}

#[test]
fn the_first_rollout_has_nothing_to_roll_back_to() {
    let mut w = World::new(spec("", GATE, "x:1"));
    for i in 0..3 {
        w.step(i);
    }
    w.measure("api", "http", MeasurementOutcome::Failure, 4);
    let p = w.step(4);
    assert_eq!(w.phase(), StackPhase::Degraded);
    assert!(p
        .events
        .iter()
        .any(|e| e.note.contains("no stable revision")));
}

#[test]
fn a_new_spec_after_a_rollback_releases_the_hold() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", GATE, "x:2"), 2);
    let now = w.settle(now, false);
    assert!(w.status.hold.is_some());
    w.change(spec("", GATE, "x:3"), 3);
    let p = w.step(now);
    assert!(w.status.hold.is_none());
    assert!(p.events.iter().any(|e| e.reason == "HoldReleased"));
    assert_eq!(w.status.rollout.as_ref().unwrap().revision, 3);
}

#[test]
fn a_new_spec_mid_rollout_takes_over() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    w.healthy = vec![1, 3];
    w.change(spec("", "[]", "x:2"), 2);
    w.step(now);
    w.change(spec("", "[]", "x:3"), 3);
    let p = w.step(now + 1);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "db".into(),
            revision: 3
        }]
    );
    let r = w.status.rollout.clone().unwrap();
    assert_eq!((r.revision, r.from_revision), (3, Some(1)));
    w.settle(now + 2, true);
    assert_eq!(w.status.stable_revision, Some(3));
}

#[test]
fn pause_and_resume_operations() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    w.op("p1", OperationAction::Pause, None);
    w.change(spec("", "[]", "x:2"), 2);
    let p = w.step(now);
    assert!(p.actions.is_empty());
    assert_eq!(w.phase(), StackPhase::Paused);
    assert_eq!(p.operations[0].phase, OperationPhase::Succeeded);
    assert!(w
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("paused by alice"));
    assert_eq!(w.status.processed_operations, vec!["p1"]);
    w.op("r1", OperationAction::Resume, None);
    let p = w.step(now + 1);
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "db".into(),
            revision: 2
        }]
    );
    // An operation already acted on is never acted on twice.
    w.op("p1", OperationAction::Pause, None);
    let p = w.step(now + 2);
    assert!(p.operations.is_empty());
    assert!(w.status.manual_pause.is_none());
}

#[test]
fn abort_then_retry_then_promote() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", GATE, "x:2"), 2);
    for i in 0..3 {
        w.step(now + i);
    }
    w.op("a1", OperationAction::Abort, None);
    let p = w.step(now + 3);
    assert_eq!(p.operations[0].target_revision, Some(1));
    assert_eq!(
        w.status.rollback.as_ref().unwrap().operation.as_deref(),
        Some("a1")
    );
    assert!(p.outcomes.contains(&Outcome::Rollout("aborted")));
    let now = w.settle(now + 4, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    w.op("t1", OperationAction::Retry, None);
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Succeeded);
    assert_eq!(w.status.rollout.as_ref().unwrap().revision, 2);
    for i in 1..4 {
        w.step(now + i);
    }
    assert_eq!(
        w.status.rollout.as_ref().unwrap().step,
        Some(RolloutStep::Analysing)
    );
    w.op("pr", OperationAction::Promote, None);
    let p = w.step(now + 4);
    assert_eq!(p.operations[0].phase, OperationPhase::Succeeded);
    assert_eq!(
        w.phase(),
        StackPhase::Healthy,
        "promotion skips the remaining analysis"
    );
    assert_eq!(w.status.stable_revision, Some(2));
    // Nothing to promote or retry now.
    w.op("pr2", OperationAction::Promote, None);
    w.op("t2", OperationAction::Retry, None);
    let p = w.step(now + 5);
    assert!(
        p.operations
            .iter()
            .all(|o| o.phase == OperationPhase::Failed),
        "{:?}",
        p.operations
    );
    assert!(p.events.iter().any(|e| e.reason == "OperationRefused"));
}

#[test]
fn rollback_to_a_named_revision_and_refusals() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let mut now = w.settle(0, true);
    for n in 2..=3 {
        w.change(spec("", "[]", &format!("x:{n}")), n);
        now = w.settle(now, true);
    }
    assert_eq!(w.status.stable_revision, Some(3));
    w.op("bad", OperationAction::Rollback, Some(9));
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Failed);
    assert!(
        p.operations[0].message.contains("kept: 1, 2, 3"),
        "{}",
        p.operations[0].message
    );
    w.op("rb", OperationAction::Rollback, Some(1));
    let p = w.step(now + 1);
    assert_eq!(p.operations[0].target_revision, Some(1));
    assert_eq!(
        p.actions,
        vec![Action::Apply {
            component: "api".into(),
            revision: 1
        }]
    );
    let now = w.settle(now + 2, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!(
        w.status
            .last_rollback
            .as_ref()
            .unwrap()
            .operation
            .as_deref(),
        Some("rb")
    );
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    // Without a revision: the one before what runs.
    w.op("rb2", OperationAction::Retry, None);
    let now = w.settle(now, true);
    assert_eq!(w.status.stable_revision, Some(3));
    w.op("rb3", OperationAction::Rollback, None);
    let p = w.step(now);
    assert_eq!(p.operations[0].target_revision, Some(2));
}

#[test]
fn an_inconclusive_gate_pauses_for_a_person() {
    let gate = "[{name: http, interval: 1s, errorLimit: 1, http: {}}]";
    let mut w = World::new(spec("", gate, "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", gate, "x:2"), 2);
    for i in 0..3 {
        w.step(now + i);
    }
    w.measure("api", "http", MeasurementOutcome::Error, now + 3);
    w.step(now + 3);
    assert_eq!(
        w.phase(),
        StackPhase::Progressing,
        "one error is within the limit"
    );
    w.measure("api", "http", MeasurementOutcome::Error, now + 4);
    let p = w.step(now + 4);
    assert_eq!(w.phase(), StackPhase::Paused);
    assert_eq!(cond(&w.status, READY).1, "Inconclusive");
    assert_eq!(
        w.status.components[2].gates[0].phase,
        GatePhase::Inconclusive
    );
    assert!(p.events.iter().any(|e| e.reason == "Inconclusive"));
    assert!(
        w.status.rollback.is_none(),
        "an inconclusive gate never rolls back by itself"
    );
    // Resume measures again, and the gate passes.
    w.op("r", OperationAction::Resume, None);
    w.step(now + 5);
    assert_eq!(w.status.components[2].gates[0].phase, GatePhase::Running);
    w.measure("api", "http", MeasurementOutcome::Success, now + 16);
    w.step(now + 16);
    assert_eq!(w.phase(), StackPhase::Healthy);
}

#[test]
fn after_promotion_a_failing_gate_degrades_then_recovers() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.measure("api", "http", MeasurementOutcome::Failure, now);
    let p = w.step(now);
    assert_eq!(w.phase(), StackPhase::Degraded);
    assert_eq!(cond(&w.status, READY), ("False", "GateFailed"));
    assert!(p.events.iter().any(|e| e.reason == "GateFailed"));
    assert!(
        w.status.rollback.is_none(),
        "no rollback after promotion unless asked"
    );
    w.measure("api", "http", MeasurementOutcome::Success, now + 30);
    w.step(now + 30);
    assert_eq!(w.phase(), StackPhase::Healthy);
}

#[test]
fn after_promotion_rollback_when_the_policy_asks() {
    let policy = ", rollbackAfterPromotion: true";
    let mut w = World::new(spec(policy, GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec(policy, GATE, "x:2"), 2);
    let now = w.settle(now, true);
    assert_eq!(w.status.stable_revision, Some(2));
    w.measure("api", "http", MeasurementOutcome::Failure, now);
    w.step(now);
    assert_eq!(w.phase(), StackPhase::RollingBack);
    assert_eq!(w.status.rollback.as_ref().unwrap().to_revision, 1);
}

#[test]
fn restart_after_apply_before_status_write_resumes_without_reapplying() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    w.healthy = vec![1];
    w.change(spec("", "[]", "x:2"), 2);
    let saved = w.status.clone();
    w.step(now);
    w.status = saved; // the status write was lost
    let p = w.step(now + 2);
    assert!(
        p.actions.is_empty(),
        "db already carries revision 2: {:?}",
        p.actions
    );
    assert_eq!(w.status.components[0].phase, ComponentPhase::Progressing);
}

#[test]
fn a_component_removed_by_the_failed_revision_comes_back_and_an_added_one_goes() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    // Revision 2 drops cache and adds search (which fails its gate).
    let mut s2 = spec("", "[]", "x:2");
    s2.components.retain(|c| c.name != "cache");
    for c in &mut s2.components {
        c.depends_on.retain(|d| d != "cache");
    }
    let mut search = s2.components[0].clone();
    search.name = "search".into();
    search.gates = serde_yaml_ng::from_str(GATE).unwrap();
    s2.components.push(search);
    w.change(s2, 2);
    for i in 0..4 {
        w.step(now + i);
    }
    assert_eq!(w.running("search"), Some(2));
    w.measure("search", "http", MeasurementOutcome::Failure, now + 5);
    let p = w.step(now + 5);
    assert!(
        p.actions.contains(&Action::Delete {
            component: "search".into()
        }),
        "{:?}",
        p.actions
    );
    w.settle(now + 6, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert!(w.observed.contains_key("cache"));
    assert!(!w.observed.contains_key("search"));
}

#[test]
fn invalid_spec_is_stalled_and_reported_once() {
    let prev = ProductionStackStatus {
        stable_revision: Some(4),
        ..Default::default()
    };
    let (s, e) = invalid(&prev, Some(7), "spec.components: dependency cycle", &t(0));
    assert_eq!(s.phase, Some(StackPhase::Invalid));
    assert_eq!(s.stable_revision, Some(4));
    assert_eq!(cond(&s, STALLED), ("True", "InvalidSpec"));
    assert!(e.is_some());
    let (_, e) = invalid(&s, Some(7), "spec.components: dependency cycle", &t(5));
    assert!(e.is_none());
}

#[test]
fn gates_due_follow_the_step() {
    let mut w = World::new(spec("", GATE, "x:1"));
    for i in 0..4 {
        w.step(i);
    }
    assert_eq!(
        w.status.rollout.as_ref().unwrap().step,
        Some(RolloutStep::Analysing)
    );
    let due = gates_due(&w.spec, &w.desired, &w.status, &t(4));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].0, Some("api"));
    w.settle(3, true);
    let due = gates_due(&w.spec, &w.desired, &w.status, &t(1000));
    assert_eq!(due.len(), 1, "monitoring after promotion");
}

#[test]
fn a_spec_pushed_during_a_rollback_rolls_out_after_it() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", GATE, "x:2"), 2);
    for i in 0..3 {
        w.step(now + i);
    }
    w.healthy = vec![1, 3];
    w.measure("api", "http", MeasurementOutcome::Failure, now + 4);
    w.step(now + 4);
    assert_eq!(w.phase(), StackPhase::RollingBack);
    // The fix arrives while the rollback of 2 runs.
    w.change(spec("", GATE, "x:3"), 3);
    let now = w.settle(now + 5, true);
    // The rollback ends holding back revision 2 only; the next reconcile rolls 3 out.
    assert_eq!(w.status.hold.as_ref().map(|h| h.held_back), Some(2));
    let now = w.settle(now, true);
    assert_eq!(
        w.status
            .last_rollback
            .as_ref()
            .map(|r| (r.from_revision, r.to_revision)),
        Some((2, 1))
    );
    assert!(
        w.status.hold.is_none(),
        "revision 3 was never tried, so it is not held back"
    );
    assert_eq!(w.phase(), StackPhase::Healthy);
    assert_eq!(w.status.stable_revision, Some(3));
    assert_eq!(w.status.previous_stable_revision, Some(1));
    let _ = now;
}

#[test]
fn monitoring_fails_a_gate_after_failure_limit_plus_one_failures_in_a_row() {
    let gate = "[{name: http, interval: 1s, failureLimit: 6, http: {}}]";
    let mut w = World::new(spec("", gate, "x:1"));
    let now = w.settle(0, true);
    for i in 0..6 {
        w.measure("api", "http", MeasurementOutcome::Failure, now + 30 * i);
        w.step(now + 30 * i);
        assert_eq!(
            w.phase(),
            StackPhase::Healthy,
            "{} failures are within the limit",
            i + 1
        );
    }
    w.measure("api", "http", MeasurementOutcome::Failure, now + 200);
    w.step(now + 200);
    assert_eq!(w.phase(), StackPhase::Degraded);
}

/// db keeps its data in SQLite on a claim; api fails or passes its gate.
pub(super) fn data_spec(db_image: &str, api_image: &str, data: &str) -> ProductionStackSpec {
    let c = |image: &str| {
        format!("{{spec: {{containers: [{{name: a, image: '{image}', volumeMounts: [{{name: data, mountPath: /data}}]}}]}}}}")
    };
    let api = format!("{{spec: {{containers: [{{name: a, image: '{api_image}'}}]}}}}");
    serde_yaml_ng::from_str(&format!(
        "components:
- {{name: db, template: {db}, volumeClaims: [{{name: data, size: 1Gi}}], data: {data}}}
- {{name: api, dependsOn: [db], template: {api}, gates: {GATE}}}
rollout: {{progressDeadline: 1m, analysis: 10s, rollbackDeadline: 30s}}",
        db = c(db_image),
    ))
    .unwrap()
}

pub(super) const SQLITE: &str = "{volume: data, method: Sqlite, database: app.db}";
pub(super) const FILES: &str = "{volume: data}";
pub(super) const EXEC: &str =
    "{volume: data, method: Exec, exec: {dump: [demo-app, dump], restore: [demo-app, load]}}";

fn applied(p: &Plan) -> Vec<(String, i64)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Apply {
                component,
                revision,
            } => Some((component.clone(), *revision)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_first_install_takes_no_snapshot() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    w.settle(0, true);
    assert!(w.data.snapshots.is_empty(), "no data exists yet");
    assert_eq!(w.status.stable_revision, Some(1));
}

#[test]
fn a_rollout_snapshots_the_data_before_it_applies_anything() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.snapshot_result = None; // the Job keeps running
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    let p = w.step(now);
    let name = format!("shop-db-r1-{}", 1_700_000_000 + now);
    assert_eq!(
        p.actions,
        vec![Action::Snapshot {
            component: "db".into(),
            name: name.clone(),
            revision: 1
        }]
    );
    let r = w.status.rollout.clone().unwrap();
    assert_eq!(r.step, Some(RolloutStep::Snapshotting));
    assert_eq!(r.snapshots[0].snapshot, name);
    assert!(p.events.iter().any(|e| e.reason == "SnapshotsStarted"));
    let p = w.step(now + 1);
    assert!(
        p.actions.is_empty(),
        "nothing moves while the snapshot runs"
    );
    assert_eq!(w.status.components[0].phase, ComponentPhase::Pending);
    assert_eq!(
        w.status.components[0].message.as_deref(),
        Some("waiting for the pre-rollout snapshots")
    );
    assert_eq!(w.running("db"), Some(1));
    w.data.snapshots.get_mut(&name).unwrap().phase = Some(SnapshotPhase::Completed);
    let p = w.step(now + 2);
    assert_eq!(applied(&p), vec![("db".into(), 2)]);
    assert!(p.events.iter().any(|e| e.reason == "SnapshotsTaken"));
    w.settle(now + 3, true);
    assert_eq!(w.status.stable_revision, Some(2));
    assert_eq!(w.data.snapshots.len(), 1, "one snapshot per rollout");
}

#[test]
fn a_pre_rollout_snapshot_never_adopts_a_name_someone_else_took() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    let name = format!("shop-db-r1-{}", 1_700_000_000 + now);
    // Another stack's StackSnapshot (or a person's) already has the name the rollout
    // would choose, and so does the "-2" one: neither is adopted.
    w.data.foreign.insert(name.clone());
    w.data.foreign.insert(format!("{name}-2"));
    w.snapshot_result = None;
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    let p = w.step(now);
    let taken = format!("{name}-3");
    assert_eq!(
        p.actions,
        vec![Action::Snapshot {
            component: "db".into(),
            name: taken.clone(),
            revision: 1
        }]
    );
    assert!(p
        .events
        .iter()
        .any(|e| e.reason == "SnapshotNameTaken" && e.warning));
    assert_eq!(
        w.status.rollout.clone().unwrap().snapshots[0].snapshot,
        taken
    );
    // The next pass keeps the name it chose, and the rollback restores that one.
    w.snapshot_result = Some(SnapshotPhase::Completed);
    w.step(now + 1);
    let now = w.settle(now + 2, false);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(last.restores[0].snapshot, taken);
    let _ = now;
}

#[test]
fn a_failed_snapshot_stops_the_rollout_before_anything_changes() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.snapshot_result = Some(SnapshotPhase::Failed);
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    w.step(now); // asks for the snapshot
    w.step(now + 1); // its Job runs, then fails
    let p = w.step(now + 2);
    assert!(applied(&p).is_empty());
    assert_eq!(w.phase(), StackPhase::Degraded);
    assert_eq!(cond(&w.status, STALLED), ("True", "SnapshotFailed"));
    assert!(w
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("store unreachable"));
    assert!(p.events.iter().any(|e| e.reason == "SnapshotFailed"));
    let p = w.step(now + 3);
    assert!(p.actions.is_empty() && p.events.is_empty(), "reported once");
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    // A retry takes a new snapshot.
    w.snapshot_result = Some(SnapshotPhase::Completed);
    w.op("retry", OperationAction::Retry, None);
    w.settle(now + 20, true);
    assert_eq!(w.status.stable_revision, Some(2));
}

#[test]
fn a_failed_gate_rolls_back_the_workloads_and_restores_the_data() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    // db migrates its data on revision 2; api then fails its gate.
    let now = w.settle(now, false);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(last.restores.len(), 1);
    assert_eq!(last.restores[0].component, "db");
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    assert_eq!(w.data.restore_jobs.len(), 1);
    assert!(!w.observed["db"].stopped, "db runs again");
    let _ = now;
}

/// Settles `w`, changes it to `next`, fails every gate of the rollout, and returns the
/// actions the rollback took, in order, as "apply c@n", "stop c", "restore c"; and the
/// time the world is at.
fn fail_and_log_rollback(w: &mut World, next: ProductionStackSpec) -> (Vec<String>, i64) {
    let mut now = w.settle(0, true);
    w.change(next, 2);
    let mut log: Vec<String> = vec![];
    for _ in 0..40 {
        w.fail_analysis(now);
        let p = w.step(now);
        now += 11;
        if w.status.rollback.is_some() || w.status.last_rollback.is_some() {
            for a in &p.actions {
                log.push(match a {
                    Action::Apply {
                        component,
                        revision,
                    } => format!("apply {component}@{revision}"),
                    Action::Stop { component, .. } => format!("stop {component}"),
                    Action::Restore { component, .. } => format!("restore {component}"),
                    other => format!("{other:?}"),
                });
            }
        }
        if w.status.last_rollback.is_some() {
            break;
        }
    }
    (log, now)
}

#[test]
fn dependents_stop_before_the_restore_and_start_after_it_in_dependency_order() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let (log, _) = fail_and_log_rollback(&mut w, data_spec("db:2", "api:2", SQLITE));
    assert_eq!(
        log,
        vec!["stop api", "stop db", "restore db", "apply db@1", "apply api@1"],
        "api (the dependent) stops first, db stops, its data comes back, then db starts and api after it"
    );
}

#[test]
fn a_release_that_changes_only_a_dependent_still_restores_the_data_it_may_have_migrated() {
    // api@2 migrates db's schema through db's API at start-up; db's own spec is unchanged.
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let (log, _) = fail_and_log_rollback(&mut w, data_spec("db:1", "api:2", SQLITE));
    assert_eq!(
        log,
        vec![
            "stop api",
            "stop db",
            "restore db",
            "apply db@1",
            "apply api@1"
        ],
        "db's data comes back although db never ran revision 2"
    );
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(
        (last.restores[0].component.as_str(), last.restores[0].phase),
        ("db", RestorePhase::Restored)
    );
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    assert!(!w.observed["db"].stopped && !w.observed["api"].stopped);
}

#[test]
fn data_that_opts_out_of_restore_on_rollback_stays_and_nothing_is_stopped() {
    const FORWARD_ONLY: &str =
        "{volume: data, method: Sqlite, database: app.db, restoreOnRollback: Never}";
    let mut w = World::new(data_spec("db:1", "api:1", FORWARD_ONLY));
    let (log, _) = fail_and_log_rollback(&mut w, data_spec("db:2", "api:2", FORWARD_ONLY));
    assert_eq!(
        log,
        vec!["apply api@1", "apply db@1"],
        "a rollback of the workloads only"
    );
    assert!(w.status.last_rollback.unwrap().restores.is_empty());
    assert!(w.data.restore_jobs.is_empty());
    assert_eq!(
        w.data.snapshots.len(),
        1,
        "the snapshot is still taken before the rollout"
    );
}

/// db (data), cache (no data), api on both; web on api; batch on nothing.
fn four_tier(release: &str) -> ProductionStackSpec {
    let c = |image: &str| format!("{{spec: {{containers: [{{name: a, image: '{image}'}}]}}}}");
    let db = "{spec: {containers: [{name: a, image: 'db:1', volumeMounts: [{name: data, mountPath: /data}]}]}}";
    serde_yaml_ng::from_str(&format!(
        "components:
- {{name: db, template: {db}, volumeClaims: [{{name: data, size: 1Gi}}], data: {SQLITE}}}
- {{name: cache, template: {cache}}}
- {{name: batch, template: {batch}}}
- {{name: api, dependsOn: [db, cache], template: {api}}}
- {{name: web, dependsOn: [api], template: {web}, gates: {GATE}}}
rollout: {{progressDeadline: 1m, analysis: 10s, rollbackDeadline: 30s}}",
        cache = c(&format!("cache:{release}")),
        batch = c(&format!("batch:{release}")),
        api = c(&format!("api:{release}")),
        web = c(&format!("web:{release}")),
    ))
    .unwrap()
}

#[test]
fn only_what_depends_on_restored_data_waits_for_it_and_nothing_runs_on_it_meanwhile() {
    let mut w = World::new(four_tier("1"));
    let (log, _) = fail_and_log_rollback(&mut w, four_tier("2"));
    let pos = |a: &str| {
        log.iter()
            .position(|l| l == a)
            .unwrap_or_else(|| panic!("{a} not in {log:?}"))
    };
    // Stopped dependents first, down to db; then the restore; then up in dependency order.
    assert!(pos("stop web") < pos("stop api") && pos("stop api") < pos("stop db"));
    assert!(pos("stop db") < pos("restore db"));
    assert!(pos("restore db") < pos("apply db@1"));
    assert!(pos("apply db@1") < pos("apply api@1") && pos("apply api@1") < pos("apply web@1"));
    // cache and batch use no restored data: rolled back as without data, never stopped.
    assert!(
        !log.iter().any(|l| l == "stop cache" || l == "stop batch"),
        "{log:?}"
    );
    assert!(
        pos("apply cache@1") < pos("apply api@1"),
        "api starts against cache@1: {log:?}"
    );
    for c in ["db", "cache", "batch", "api", "web"] {
        assert_eq!(w.running(c), Some(1), "{c}");
        assert!(!w.observed[c].stopped, "{c} runs again");
    }
}

#[test]
fn a_controller_restarted_during_the_data_step_resumes_it_from_status() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let mut now = w.settle(0, true);
    w.restore_result = JobOutcome::Running; // the restore Job keeps running
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    for _ in 0..40 {
        w.fail_analysis(now);
        w.step(now);
        now += 11;
        if !w.data.restore_jobs.is_empty() {
            break;
        }
    }
    assert_eq!(w.data.restore_jobs.len(), 1, "the restore runs");
    assert!(w.observed["api"].stopped && w.observed["db"].stopped);
    // A restart keeps only what status holds: the next reconciles start nothing twice
    // and start nothing while the data is not back.
    let p = w.step(now);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    w.restore_result = JobOutcome::Succeeded;
    w.settle(now + 11, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
}

#[test]
fn a_failed_restore_leaves_the_component_stopped_and_says_why() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.restore_result = JobOutcome::Failed(
        "snapshot shop-db-r1: file app.db chunk 3f2a does not match its digest; the live data was left as it was".into(),
    );
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    let mut t = now;
    for _ in 0..30 {
        w.fail_analysis(t);
        w.step(t);
        t += 11;
    }
    assert_eq!(cond(&w.status, STALLED), ("True", "RestoreFailed"));
    assert!(w.status.message.as_deref().unwrap().contains("chunk 3f2a"));
    assert!(
        w.observed["db"].stopped,
        "not started on data that may be wrong"
    );
    let rb = w.status.rollback.clone().unwrap();
    assert_eq!(rb.restores[0].phase, RestorePhase::Failed);
}

#[test]
fn a_restore_waits_for_another_agent_on_the_same_data_and_starts_when_it_ends() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let mut now = w.settle(0, true);
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    // Once the pre-rollout snapshot is taken, a scheduled snapshot of db starts while the
    // rollout runs, and is still running when the rollback wants to restore db.
    for _ in 0..10 {
        if w.data
            .snapshots
            .values()
            .any(|s| s.phase == Some(SnapshotPhase::Completed))
        {
            break;
        }
        w.step(now);
        now += 1;
    }
    assert!(w.status.rollout.is_some() && w.status.rollback.is_none());
    w.data.agents.insert(
        "db".into(),
        vec![AgentRun {
            operation: "snapshot".into(),
            job: "shop-db-snapshot-1234".into(),
        }],
    );
    let mut restores_started = 0;
    for _ in 0..40 {
        w.fail_analysis(now);
        let p = w.step(now);
        now += 11;
        restores_started += p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Restore { .. }))
            .count();
    }
    assert_eq!(
        restores_started, 0,
        "no restore while another agent works on db's data"
    );
    let rb = w.status.rollback.clone().expect("the rollback waits");
    assert_eq!(rb.restores[0].phase, RestorePhase::Stopping);
    let why = rb.restores[0].message.clone().unwrap();
    assert!(why.contains("shop-db-snapshot-1234"), "{why}");
    assert!(
        w.observed["db"].stopped && w.observed["api"].stopped,
        "stopped meanwhile"
    );

    w.data.agents.clear(); // the snapshot Job ended
    w.settle(now, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!(w.data.restore_jobs.len(), 1);
}

#[test]
fn one_agent_at_a_time_per_components_data() {
    use super::snapshots::agent_busy;
    let mut agents = BTreeMap::new();
    assert_eq!(agent_busy(&agents, None, "db", true), None);
    agents.insert(
        "db".to_string(),
        vec![AgentRun {
            operation: "restore".into(),
            job: "shop-db-restore-1".into(),
        }],
    );
    let why = agent_busy(&agents, None, "db", true).unwrap();
    assert!(why.contains("restore Job shop-db-restore-1"), "{why}");
    assert_eq!(
        agent_busy(&agents, None, "cache", true),
        None,
        "other components are free"
    );
    // A rollback's restore that has not started its Job yet reserves the data too.
    let rb = deployctl_api::RollbackState {
        from_revision: 2,
        to_revision: 1,
        reason: "gate".into(),
        started_at: t(0),
        component: None,
        operation: None,
        trigger: Default::default(),
        restores: vec![deployctl_api::DataRestore {
            component: "cache".into(),
            snapshot: "s1".into(),
            phase: RestorePhase::Stopping,
            job: None,
            message: None,
        }],
    };
    assert!(agent_busy(&agents, Some(&rb), "cache", true).is_some());
    // Once restored (or given up), it does not.
    let mut done = rb.clone();
    done.restores[0].phase = RestorePhase::Restored;
    assert_eq!(agent_busy(&agents, Some(&done), "cache", true), None);
    // Before the stack's repository exists, any agent Job holds every component back.
    let why = agent_busy(&agents, None, "cache", false).unwrap();
    assert!(
        why.contains("create the stack's snapshot repository"),
        "{why}"
    );
}

/// A rollback of revision 2 whose restore of db failed (a corrupt chunk): db and api
/// stopped, the rollback waiting for a person. Returns the world and its time.
fn stuck_after_a_failed_restore() -> (World, i64) {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.restore_result = JobOutcome::Failed("chunk 3f2a does not match its digest".into());
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    let mut t = now;
    for _ in 0..30 {
        w.fail_analysis(t);
        w.step(t);
        t += 11;
    }
    assert_eq!(cond(&w.status, STALLED), ("True", "RestoreFailed"));
    assert!(w.observed["db"].stopped && w.observed["api"].stopped);
    (w, t)
}

fn op_result(p: &Plan) -> (OperationPhase, String) {
    (p.operations[0].phase, p.operations[0].message.clone())
}

#[test]
fn a_failed_restore_names_every_way_out_and_abort_points_at_them() {
    let (mut w, t) = stuck_after_a_failed_restore();
    let msg = w.status.message.clone().unwrap();
    for way in [
        "deployctl retry shop",
        "deployctl snapshot restore",
        "deployctl accept-live-data shop",
        "deployctl rollback shop --to-revision",
    ] {
        assert!(msg.contains(way), "{way} missing from: {msg}");
    }
    w.op("abort", OperationAction::Abort, None);
    let (phase, message) = op_result(&w.step(t));
    assert_eq!(phase, OperationPhase::Failed);
    assert!(message.contains("AcceptLiveData"), "{message}");
}

#[test]
fn a_retry_runs_the_failed_restore_again_in_a_new_job() {
    let (mut w, t) = stuck_after_a_failed_restore();
    let failed_job = w.status.rollback.clone().unwrap().restores[0]
        .job
        .clone()
        .unwrap();
    w.restore_result = JobOutcome::Succeeded; // the cause was fixed
    w.op("retry", OperationAction::Retry, None);
    let (phase, message) = op_result(&w.step(t));
    assert_eq!(phase, OperationPhase::Succeeded, "{message}");
    w.settle(t + 11, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    assert_ne!(
        last.restores[0].job.as_deref(),
        Some(failed_job.as_str()),
        "a Job of its own"
    );
    assert_eq!(w.data.restore_jobs.len(), 2);
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
}

#[test]
fn another_snapshot_of_the_component_replaces_the_failed_one() {
    let (mut w, t) = stuck_after_a_failed_restore();
    w.data.snapshots.insert(
        "nightly".into(),
        SnapshotObserved {
            component: "db".into(),
            phase: Some(SnapshotPhase::Completed),
            message: None,
            digest: Some("d2".into()),
            corrupt: false,
            verified: true,
            ..Default::default()
        },
    );
    w.restore_result = JobOutcome::Succeeded;
    w.op("restore-nightly", OperationAction::Restore, None);
    w.ops[0].snapshot = Some("nightly".into());
    let (phase, message) = op_result(&w.step(t));
    assert_eq!(phase, OperationPhase::Succeeded, "{message}");
    w.settle(t + 11, true);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(
        (last.restores[0].snapshot.as_str(), last.restores[0].phase),
        ("nightly", RestorePhase::Restored)
    );
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    assert!(!w.observed["db"].stopped && !w.observed["api"].stopped);
}

#[test]
fn accepting_the_live_data_starts_the_components_and_records_who_decided() {
    let (mut w, t) = stuck_after_a_failed_restore();
    w.op("accept", OperationAction::AcceptLiveData, None);
    let (phase, message) = op_result(&w.step(t));
    assert_eq!(phase, OperationPhase::Succeeded, "{message}");
    w.settle(t + 11, true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Accepted);
    let why = last.restores[0].message.clone().unwrap();
    assert!(why.contains("alice") && why.contains("chunk 3f2a"), "{why}");
    assert_eq!(w.data.restore_jobs.len(), 1, "no restore runs again");
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    assert!(!w.observed["db"].stopped && !w.observed["api"].stopped);
    // Nothing left to accept afterwards.
    w.op("accept-2", OperationAction::AcceptLiveData, None);
    assert_eq!(op_result(&w.step(t + 500)).0, OperationPhase::Failed);
}

#[test]
fn a_rollback_to_a_revision_goes_there_on_the_data_as_it_is() {
    let (mut w, t) = stuck_after_a_failed_restore();
    w.op("rb", OperationAction::Rollback, Some(2));
    let (phase, message) = op_result(&w.step(t));
    assert_eq!(phase, OperationPhase::Succeeded, "{message}");
    assert!(message.contains("stays as it is now"), "{message}");
    w.settle(t + 11, true);
    assert_eq!((w.running("db"), w.running("api")), (Some(2), Some(2)));
    assert!(!w.observed["db"].stopped && !w.observed["api"].stopped);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!((last.from_revision, last.to_revision), (2, 2));
}

#[test]
fn an_exec_component_is_snapshotted_live() {
    let mut w = World::new(data_spec("db:1", "api:1", EXEC));
    let now = w.settle(0, true);
    w.snapshot_result = None;
    w.change(data_spec("db:1", "api:2", EXEC), 2);
    let p = w.step(now);
    assert!(matches!(p.actions[..], [Action::Snapshot { .. }]));
    let name = w.status.rollout.clone().unwrap().snapshots[0]
        .snapshot
        .clone();
    assert_eq!(w.data.snapshots[&name].phase, Some(SnapshotPhase::Running));
    for t in 1..4 {
        let p = w.step(now + t);
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::Stop { .. })),
            "an Exec dump runs against the running component: {:?}",
            p.actions
        );
    }
    assert!(!w.observed["db"].stopped);
    w.data.snapshots.get_mut(&name).unwrap().phase = Some(SnapshotPhase::Completed);
    w.settle(now + 5, true);
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(2)));
}

#[test]
fn an_exec_restore_keeps_the_component_running() {
    let mut w = World::new(data_spec("db:1", "api:1", EXEC));
    let (log, now) = fail_and_log_rollback(&mut w, data_spec("db:2", "api:2", EXEC));
    assert_eq!(
        log,
        vec!["stop api", "restore db", "apply db@1", "apply api@1"],
        "api (the dependent) stopped, then db restored in place (never stopped) and rolled back, then api"
    );
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert!(!w.observed["db"].stopped);
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);

    // A restore operation on the stable stack: no Stop either, and it says so.
    w.data.snapshots.insert(
        "nightly".into(),
        SnapshotObserved {
            component: "db".into(),
            phase: Some(SnapshotPhase::Completed),
            message: None,
            digest: Some("d".into()),
            corrupt: false,
            verified: false,
            ..Default::default()
        },
    );
    w.restore_result = JobOutcome::Failed("the restore command exited with code 1".into());
    w.op("restore-1", OperationAction::Restore, None);
    w.ops[0].snapshot = Some("nightly".into());
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Succeeded);
    assert!(
        p.operations[0].message.contains("while it runs"),
        "{}",
        p.operations[0].message
    );
    assert_eq!(
        p.actions,
        vec![Action::Stop {
            component: "api".into(),
            revision: 1
        }],
        "only what depends on db stops"
    );
    let p = w.step(now);
    assert!(
        matches!(p.actions[..], [Action::Restore { .. }]),
        "{:?}",
        p.actions
    );
    for t in 1..4 {
        w.step(now + t);
    }
    assert!(!w.observed["db"].stopped);
    assert_eq!(cond(&w.status, STALLED), ("True", "RestoreFailed"));
    assert!(
        w.status
            .message
            .as_deref()
            .unwrap()
            .contains("was not stopped"),
        "{:?}",
        w.status.message
    );
}

#[test]
fn a_quiesced_component_is_stopped_for_its_snapshot_and_started_again() {
    let mut w = World::new(data_spec("db:1", "api:1", FILES));
    let now = w.settle(0, true);
    w.snapshot_result = None;
    // Only api changes: db is stopped for the snapshot and comes back on revision 1.
    w.change(data_spec("db:1", "api:2", FILES), 2);
    let p = w.step(now);
    assert!(matches!(p.actions[..], [Action::Snapshot { .. }]));
    let p = w.step(now + 1);
    assert_eq!(
        p.actions,
        vec![Action::Stop {
            component: "db".into(),
            revision: 1
        }]
    );
    assert_eq!(w.status.components[0].phase, ComponentPhase::Pending);
    let name = w.status.rollout.clone().unwrap().snapshots[0]
        .snapshot
        .clone();
    w.data.snapshots.get_mut(&name).unwrap().phase = Some(SnapshotPhase::Completed);
    let p = w.step(now + 2);
    assert_eq!(applied(&p), vec![("db".into(), 1)], "started again at once");
    w.settle(now + 3, true);
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(2)));
}

#[test]
fn a_restore_operation_restores_a_snapshot_on_a_stable_stack() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.data.snapshots.insert(
        "nightly".into(),
        SnapshotObserved {
            component: "db".into(),
            phase: Some(SnapshotPhase::Completed),
            message: None,
            digest: Some("d".into()),
            corrupt: false,
            verified: true,
            ..Default::default()
        },
    );
    w.ops.push(PendingOperation {
        name: "restore-1".into(),
        action: OperationAction::Restore,
        to_revision: None,
        reason: Some("bad import".into()),
        requested_by: Some("alice".into()),
        snapshot: Some("nightly".into()),
    });
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Succeeded);
    assert_eq!(
        p.actions,
        vec![Action::Stop {
            component: "api".into(),
            revision: 1
        }],
        "what depends on db stops first"
    );
    let p = w.step(now);
    assert_eq!(
        p.actions,
        vec![Action::Stop {
            component: "db".into(),
            revision: 1
        }]
    );
    w.settle(now + 1, true);
    assert_eq!(w.phase(), StackPhase::Healthy);
    assert!(w.status.hold.is_none(), "nothing is held back");
    let last = w.status.last_rollback.clone().unwrap();
    assert_eq!((last.from_revision, last.to_revision), (1, 1));
    assert_eq!(last.restores[0].snapshot, "nightly");
    assert_eq!(
        cond(&w.status, deployctl_api::conditions::SNAPSHOTS_VERIFIED),
        ("True", "Verified")
    );
    // A damaged snapshot is refused.
    w.data.snapshots.get_mut("nightly").unwrap().corrupt = true;
    w.ops.push(PendingOperation {
        name: "restore-2".into(),
        action: OperationAction::Restore,
        to_revision: None,
        reason: None,
        requested_by: None,
        snapshot: Some("nightly".into()),
    });
    let p = w.step(now + 500);
    assert_eq!(p.operations[0].phase, OperationPhase::Failed);
    assert!(p.actions.is_empty());
    assert_eq!(
        cond(&w.status, deployctl_api::conditions::SNAPSHOTS_VERIFIED),
        ("False", "SnapshotCorrupt")
    );
}

#[test]
fn drift_on_a_stable_stack_is_repaired_without_a_new_rollout() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.observed.remove("cache");
    let p = w.step(now);
    assert_eq!(applied(&p), vec![("cache".into(), 1)]);
    assert!(
        !p.events.iter().any(|e| e.reason == "RolloutStarted"),
        "{:?}",
        p.events
    );
    assert!(w.status.rollout.is_none());
    let p = w.step(now + 1);
    assert!(p.actions.is_empty());
    assert_eq!(w.phase(), StackPhase::Healthy);
}

#[test]
fn a_component_deleted_while_the_rollout_is_paused_comes_back_as_it_was() {
    let mut w = World::new(spec("", "[]", "x:1"));
    let now = w.settle(0, true);
    w.change(spec("", "[]", "x:2"), 2);
    w.step(now); // db at revision 2
    w.op("pause", OperationAction::Pause, None);
    w.step(now + 1); // cache is applied (the current step finishes), then nothing
    w.step(now + 2);
    assert_eq!(w.phase(), StackPhase::Paused);
    let api_before = w.running("api");
    assert_eq!(api_before, Some(1));
    w.observed.remove("api");
    let p = w.step(now + 3);
    assert_eq!(
        applied(&p),
        vec![("api".into(), 1)],
        "back on revision 1, not rolled on"
    );
    assert_eq!(w.phase(), StackPhase::Paused);
    w.step(now + 4);
    assert_eq!(w.running("api"), Some(1));
}

#[test]
fn a_restore_on_a_rolled_back_stack_keeps_the_failed_revision_held_back() {
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.change(data_spec("db:2", "api:2", SQLITE), 2);
    let now = w.settle(now, false);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    let snapshot = w.status.last_rollback.clone().unwrap().restores[0]
        .snapshot
        .clone();
    w.ops.push(PendingOperation {
        name: "restore-again".into(),
        action: OperationAction::Restore,
        to_revision: None,
        reason: None,
        requested_by: None,
        snapshot: Some(snapshot),
    });
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Succeeded);
    let now = w.settle(now + 1, true);
    assert_eq!(
        w.phase(),
        StackPhase::RolledBack,
        "still holding revision 1"
    );
    assert_eq!(w.status.hold.as_ref().map(|h| h.held_back), Some(2));
    assert_eq!((w.running("db"), w.running("api")), (Some(1), Some(1)));
    let _ = now;
}

#[test]
fn a_refused_operation_is_remembered_as_refused_for_a_restart() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.op("promote-nothing", OperationAction::Promote, None);
    w.op("pause", OperationAction::Pause, None);
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Failed);
    assert_eq!(p.operations[1].phase, OperationPhase::Succeeded);
    // A controller stopped before it wrote the operations' results finds in the stack's
    // status which of them it refused.
    assert_eq!(
        w.status.processed_operations,
        vec!["promote-nothing", "pause"]
    );
    assert_eq!(w.status.refused_operations, vec!["promote-nothing"]);
}

#[test]
fn an_operation_with_a_field_its_action_does_not_use_is_refused_naming_the_field() {
    let mut w = World::new(spec("", GATE, "x:1"));
    let now = w.settle(0, true);
    w.ops.push(PendingOperation {
        name: "pause-1".into(),
        action: OperationAction::Pause,
        to_revision: Some(1),
        reason: None,
        requested_by: None,
        snapshot: None,
    });
    let p = w.step(now);
    assert_eq!(p.operations[0].phase, OperationPhase::Failed);
    assert!(
        p.operations[0]
            .message
            .contains("spec.toRevision: only used with action Rollback"),
        "{}",
        p.operations[0].message
    );
    assert!(w.status.manual_pause.is_none(), "nothing was acted on");
    assert_eq!(w.phase(), StackPhase::Healthy);
}

/// `data_spec` with a snapshot policy.
fn with_policy(mut spec: ProductionStackSpec, policy: &str) -> ProductionStackSpec {
    spec.snapshots = Some(serde_yaml_ng::from_str(policy).unwrap());
    spec
}

/// A stack whose store has a quota: three rollouts after the install, each snapshot
/// adding 100 bytes; returns the world and the time.
fn filling(policy: &str) -> (World, i64) {
    let mut w = World::new(with_policy(data_spec("db:1", "api:1", SQLITE), policy));
    w.repo_used = Some(0);
    let mut now = w.settle(0, true);
    for n in 2..=3 {
        w.change(
            with_policy(data_spec(&format!("db:{n}"), "api:1", SQLITE), policy),
            n,
        );
        now = w.settle(now, true);
        assert_eq!(w.status.stable_revision, Some(n));
    }
    (w, now)
}

#[test]
fn a_rollout_whose_snapshots_do_not_fit_stalls_with_nothing_changed_until_the_quota_is_raised() {
    let policy = "{store: {filesystem: {quota: '250'}}}";
    let (mut w, now) = filling(policy);
    let repo = w.status.snapshot_repository.clone().unwrap();
    assert_eq!(
        (repo.used_bytes, repo.quota_bytes, repo.available_bytes),
        (200, Some(250), Some(50))
    );
    assert_eq!(repo.next_rollout_bytes, Some(100), "db's snapshots add 100");
    assert_eq!(repo.operation.as_deref(), Some("snapshot"));

    w.change(with_policy(data_spec("db:4", "api:1", SQLITE), policy), 4);
    let p = w.step(now);
    assert!(
        p.actions.is_empty(),
        "no snapshot, no apply: {:?}",
        p.actions
    );
    assert_eq!(w.phase(), StackPhase::Degraded);
    let (status, why) = cond(&w.status, STALLED);
    assert_eq!((status, why), ("True", "SnapshotStoreFull"));
    let msg = w.status.message.clone().unwrap();
    for part in [
        "need about 100 B (db 100 B)",
        "has 50 B left (quota 250 B with 200 B used)",
        "nothing was changed",
        "raise spec.snapshots.store.filesystem.quota",
        "retention.pruneToFit",
    ] {
        assert!(msg.contains(part), "{part:?} missing from {msg}");
    }
    assert!(p
        .events
        .iter()
        .any(|e| e.reason == "SnapshotStoreFull" && e.warning));
    let p = w.step(now + 1);
    assert!(p.actions.is_empty() && p.events.is_empty(), "reported once");
    assert_eq!(w.running("db"), Some(3));
    assert!(w.data.snapshots.len() == 2, "no snapshot object was made");

    // Raising the quota is enough: no new measurement, no retry.
    w.spec = with_policy(
        data_spec("db:4", "api:1", SQLITE),
        "{store: {filesystem: {quota: 1Ki}}}",
    );
    let p = w.step(now + 2);
    assert!(
        matches!(&p.actions[..], [Action::Snapshot { .. }]),
        "{:?}",
        p.actions
    );
    assert_eq!(cond(&w.status, STALLED).0, "False");
    w.settle(now + 3, true);
    assert_eq!(w.status.stable_revision, Some(4));
    assert_eq!(w.status.snapshot_repository.unwrap().used_bytes, 300);
}

#[test]
fn prune_to_fit_forgets_the_oldest_snapshot_then_the_rollout_goes_on() {
    let policy = "{store: {filesystem: {quota: '250'}}, retention: {pruneToFit: true}}";
    let (mut w, now) = filling(policy);
    let mut names: Vec<String> = w.data.snapshots.keys().cloned().collect();
    names.sort();
    let (oldest, newest) = (names[0].clone(), names[1].clone());
    w.change(with_policy(data_spec("db:4", "api:1", SQLITE), policy), 4);
    let p = w.step(now);
    assert_eq!(
        p.actions,
        vec![Action::Prune {
            component: "db".into(),
            job: Some(snapshots::job_name(
                "shop-db",
                "prune",
                &format!("digest-{oldest}")
            )),
            forget: vec![format!("digest-{oldest}")],
            snapshots: vec![oldest.clone()],
        }]
    );
    assert!(p.events.iter().any(|e| e.reason == "PruningToFit"));
    assert_eq!(
        cond(&w.status, STALLED).0,
        "False",
        "making room is progress"
    );
    let pruned = w.status.rollout.clone().unwrap().pruned_to_fit.unwrap();
    assert_eq!(
        (pruned.shortfall_bytes, pruned.snapshots),
        (50, vec![oldest.clone()])
    );
    assert!(w.status.message.clone().unwrap().contains("pruneToFit"));
    // The prune's measurement shows room: the snapshot is asked for.
    let p = w.step(now + 1);
    assert!(
        matches!(&p.actions[..], [Action::Snapshot { .. }]),
        "{:?}",
        p.actions
    );
    w.settle(now + 2, true);
    assert_eq!(w.status.stable_revision, Some(4));
    assert!(!w.data.snapshots.contains_key(&oldest));
    assert!(w.data.snapshots.contains_key(&newest), "the newest stays");
}

#[test]
fn prune_to_fit_forgets_nothing_when_it_cannot_make_enough_room() {
    // One snapshot (the newest, kept) and no room for the next.
    let policy = "{store: {filesystem: {quota: '150'}}, retention: {pruneToFit: true}}";
    let mut w = World::new(with_policy(data_spec("db:1", "api:1", SQLITE), policy));
    w.repo_used = Some(0);
    let now = w.settle(0, true);
    w.change(with_policy(data_spec("db:2", "api:1", SQLITE), policy), 2);
    let now = w.settle(now, true);
    w.change(with_policy(data_spec("db:3", "api:1", SQLITE), policy), 3);
    let p = w.step(now);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(cond(&w.status, STALLED), ("True", "SnapshotStoreFull"));
    assert!(w
        .status
        .message
        .clone()
        .unwrap()
        .contains("found too little to forget"));
}

#[test]
fn unknown_room_never_holds_a_rollout() {
    // Measured, but S3 without a quota: no free space to compare with.
    let policy = "{store: {s3: {endpoint: 'http://s3', bucket: bkt, credentialsSecret: c}}}";
    let (mut w, now) = filling(policy);
    let repo = w.status.snapshot_repository.clone().unwrap();
    assert_eq!((repo.available_bytes, repo.capacity_bytes), (None, None));
    assert_eq!(repo.next_rollout_bytes, Some(100));
    w.change(with_policy(data_spec("db:4", "api:1", SQLITE), policy), 4);
    w.settle(now, true);
    assert_eq!(w.status.stable_revision, Some(4));
    // Never measured at all: no repository status, and rollouts go on.
    let mut w = World::new(data_spec("db:1", "api:1", SQLITE));
    let now = w.settle(0, true);
    w.change(data_spec("db:2", "api:1", SQLITE), 2);
    w.settle(now, true);
    assert_eq!(w.status.stable_revision, Some(2));
    assert!(w.status.snapshot_repository.is_none());
}

// Canary steps (`canary.steps`) of a Deployment component.

/// db, cache and a 4-replica api with `GATE` and these canary steps; `image` is api's.
fn canary_spec(steps: &str, image: &str) -> ProductionStackSpec {
    let mut s = spec("", GATE, "x:1");
    let api: Component = serde_yaml_ng::from_str(&format!(
        "{{name: api, dependsOn: [db, cache], replicas: 4, template: {{spec: {{containers: [{{name: a, image: '{image}'}}]}}}}, gates: {GATE}, canary: {{steps: {steps}}}}}"
    ))
    .unwrap();
    s.components[2] = api;
    s
}

const STEPS: &str = "[{setWeight: 25}, {analysis: {}}, {setWeight: 50}, {analysis: {}}]";

/// Steps the world from `now` until no rollout is left, measuring the gate of the
/// component under analysis as `pass` says; returns every plan and the time after.
fn drive(w: &mut World, mut now: i64, pass: impl Fn(&World) -> bool) -> (Vec<Plan>, i64) {
    let mut plans = vec![];
    for _ in 0..60 {
        if w.status.rollout.as_ref().and_then(|r| r.step) == Some(RolloutStep::Analysing) {
            let c = w
                .status
                .rollout
                .as_ref()
                .unwrap()
                .component
                .clone()
                .unwrap();
            let outcome = if pass(w) {
                MeasurementOutcome::Success
            } else {
                MeasurementOutcome::Failure
            };
            w.measure(&c, "http", outcome, now);
        }
        let p = w.step(now);
        now += 6;
        let idle =
            p.actions.is_empty() && w.status.rollout.is_none() && w.status.rollback.is_none();
        plans.push(p);
        if idle {
            return (plans, now);
        }
    }
    panic!("did not settle: {:#?}", w.status);
}

fn canary_actions(plans: &[Plan]) -> Vec<(i32, i32)> {
    plans
        .iter()
        .flat_map(|p| &p.actions)
        .filter_map(|a| match a {
            Action::Canary {
                canary_replicas,
                stable_replicas,
                ..
            } => Some((*canary_replicas, *stable_replicas)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_canary_goes_through_its_weights_then_replaces_the_stable_pods() {
    let mut w = World::new(canary_spec(STEPS, "x:1"));
    // The first rollout creates the component as a whole: nothing to compare with.
    let (plans, now) = drive(&mut w, 0, |_| true);
    assert!(canary_actions(&plans).is_empty());
    assert_eq!(w.observed["api"].replicas, 4);

    w.change(canary_spec(STEPS, "x:2"), 2);
    let (plans, _) = drive(&mut w, now, |_| true);
    // New pods come before stable ones go: 1 canary beside 4, then 3; 2 beside 3, then 2.
    assert_eq!(canary_actions(&plans), vec![(1, 4), (1, 3), (2, 3), (2, 2)]);
    let actions: Vec<&Action> = plans.iter().flat_map(|p| &p.actions).collect();
    let applied = actions
        .iter()
        .position(|a| matches!(a, Action::Apply { component, revision: 2 } if component == "api"))
        .expect("the stable Deployment takes revision 2 after the last step");
    let ended = actions
        .iter()
        .position(|a| {
            matches!(a, Action::EndCanary { component, stable_revision: Some(2) } if component == "api")
        })
        .expect("the canary is removed");
    assert!(applied < ended, "{actions:?}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Apply { component, .. } if component != "api")),
        "db and cache did not change: {actions:?}"
    );
    let events: Vec<&str> = plans
        .iter()
        .flat_map(|p| &p.events)
        .filter(|e| e.reason == "CanaryStep")
        .map(|e| e.note.as_str())
        .collect();
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events[2].contains("step 3/4: setWeight 50%"), "{events:?}");
    // The status showed each step while it ran.
    let shown: Vec<(i32, i32, i32)> = plans
        .iter()
        .filter_map(|p| {
            p.status
                .components
                .iter()
                .find(|c| c.name == "api")?
                .canary
                .clone()
        })
        .map(|c| (c.step, c.weight, c.canary_replicas))
        .collect();
    assert!(
        shown.contains(&(2, 25, 1)) && shown.contains(&(4, 50, 2)),
        "{shown:?}"
    );
    assert_eq!(w.phase(), StackPhase::Healthy);
    assert_eq!(w.status.stable_revision, Some(2));
    assert!(w.observed["api"].canary.is_none());
    assert_eq!(w.observed["api"].replicas, 4);
    assert!(w.status.components.iter().all(|c| c.canary.is_none()));
}

#[test]
fn a_gate_failing_at_25_percent_removes_the_canary_at_once_and_rolls_back() {
    let mut w = World::new(canary_spec(STEPS, "x:1"));
    let (_, now) = drive(&mut w, 0, |_| true);
    w.change(canary_spec(STEPS, "x:2"), 2);
    let (plans, _) = drive(&mut w, now, |_| false);
    assert_eq!(canary_actions(&plans), vec![(1, 4), (1, 3)]);
    let failed = plans
        .iter()
        .find(|p| p.status.rollback.is_some())
        .expect("the failure starts a rollback");
    assert!(
        failed.actions.contains(&Action::EndCanary {
            component: "api".into(),
            stable_revision: Some(1)
        }),
        "the canary goes in the same reconcile: {:?}",
        failed.actions
    );
    assert!(failed.events.iter().any(|e| e.reason == "CanaryAborted"));
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!(w.running("api"), Some(1));
    assert_eq!(w.observed["api"].replicas, 4);
    assert!(w.observed["api"].canary.is_none());
}

#[test]
fn a_canary_pause_waits_its_duration_and_an_open_pause_waits_for_promote() {
    let mut w = World::new(canary_spec(
        "[{setWeight: 50}, {pause: {duration: 30s}}]",
        "x:1",
    ));
    let (_, now) = drive(&mut w, 0, |_| true);
    w.change(
        canary_spec("[{setWeight: 50}, {pause: {duration: 30s}}]", "x:2"),
        2,
    );
    w.step(now);
    w.step(now + 1);
    let p = w.step(now + 2);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    let p = w.step(now + 12);
    assert!(p.actions.is_empty());
    // Woken for the gate's next measurement, at the latest when the pause ends.
    assert!(
        p.requeue_after
            .is_some_and(|d| d <= std::time::Duration::from_secs(20)),
        "{:?}",
        p.requeue_after
    );
    let p = w.step(now + 33);
    assert!(p.actions.contains(&Action::Apply {
        component: "api".into(),
        revision: 2
    }));

    let open = "[{setWeight: 25}, {pause: {}}]";
    let (_, now) = drive(&mut w, now + 40, |_| true);
    w.change(canary_spec(open, "x:3"), 3);
    let now = (0..5).fold(now, |t, _| {
        w.step(t);
        t + 20
    });
    assert_eq!(
        w.observed["api"].canary.as_ref().map(|c| c.replicas),
        Some(1)
    );
    assert_eq!(w.status.stable_revision, Some(2), "revision 3 is paused");
    let api = w
        .status
        .components
        .iter()
        .find(|c| c.name == "api")
        .unwrap();
    assert!(
        api.message
            .as_deref()
            .unwrap_or("")
            .contains("deployctl promote"),
        "{api:?}"
    );
    w.op("promote-1", OperationAction::Promote, None);
    let (plans, _) = drive(&mut w, now, |_| true);
    assert!(plans.iter().flat_map(|p| &p.actions).any(|a| *a
        == Action::Apply {
            component: "api".into(),
            revision: 3
        }));
    assert_eq!(w.status.stable_revision, Some(3));
    assert!(w.observed["api"].canary.is_none());
}

#[test]
fn changing_only_the_canary_steps_rolls_no_pod() {
    let mut w = World::new(canary_spec(STEPS, "x:1"));
    let (_, now) = drive(&mut w, 0, |_| true);
    w.change(canary_spec("[{setWeight: 10}, {analysis: {}}]", "x:1"), 2);
    let (plans, _) = drive(&mut w, now, |_| true);
    assert!(
        plans.iter().all(|p| p.actions.is_empty()),
        "{:?}",
        plans.iter().map(|p| &p.actions).collect::<Vec<_>>()
    );
    assert_eq!(w.status.stable_revision, Some(2));
    assert_eq!(w.running("api"), Some(1));
}

#[test]
fn a_stable_update_missing_its_deadline_after_the_steps_rolls_back_without_reapplying_it() {
    let steps = "[{setWeight: 50}]";
    let mut w = World::new(canary_spec(steps, "x:1"));
    let (_, mut now) = drive(&mut w, 0, |_| true);
    w.change(canary_spec(steps, "x:2"), 2);
    // The canary step passes; then the stable Deployment's new pods never come up.
    loop {
        let p = w.step(now);
        now += 5;
        if p.actions.contains(&Action::Apply {
            component: "api".into(),
            revision: 2,
        }) {
            break;
        }
        assert!(now < 1000, "the steps never ended: {:#?}", w.status);
    }
    w.observed.get_mut("api").unwrap().available = false;
    assert!(w.observed["api"].canary.is_some());
    let p = w.step(now + 61);
    assert!(w.status.rollback.is_some(), "{:#?}", w.status);
    assert_eq!(
        p.actions,
        vec![
            Action::Apply {
                component: "api".into(),
                revision: 1
            },
            Action::EndCanary {
                component: "api".into(),
                stable_revision: None
            }
        ]
    );
    drive(&mut w, now + 62, |_| true);
    assert_eq!(w.phase(), StackPhase::RolledBack);
    assert_eq!((w.running("api"), w.observed["api"].replicas), (Some(1), 4));
    assert!(w.observed["api"].canary.is_none());
}

#[test]
fn a_gate_failing_during_a_canary_pause_ends_it() {
    let steps = "[{setWeight: 50}, {pause: {duration: 5m}}]";
    let mut w = World::new(canary_spec(steps, "x:1"));
    let (_, now) = drive(&mut w, 0, |_| true);
    w.change(canary_spec(steps, "x:2"), 2);
    for i in 0..3 {
        w.step(now + i);
    }
    assert_eq!(
        w.status
            .rollout
            .as_ref()
            .unwrap()
            .canary
            .as_ref()
            .unwrap()
            .step,
        1
    );
    let due = gates_due(&w.spec, &w.desired, &w.status, &t(now + 4));
    assert_eq!(due.len(), 1, "the gate is measured during the pause");
    w.measure("api", "http", MeasurementOutcome::Success, now + 4);
    let p = w.step(now + 4);
    assert!(p.actions.is_empty() && w.status.rollback.is_none());
    w.measure("api", "http", MeasurementOutcome::Failure, now + 5);
    let p = w.step(now + 5);
    assert!(w.status.rollback.is_some(), "{:#?}", w.status);
    assert!(p.actions.contains(&Action::EndCanary {
        component: "api".into(),
        stable_revision: Some(1)
    }));
}

#[test]
fn an_hpa_found_on_a_canary_component_rolls_it_out_without_steps_and_says_so() {
    let mut w = World::new(canary_spec(STEPS, "x:1"));
    let (_, now) = drive(&mut w, 0, |_| true);
    // An HPA created without `autoscaling.hpa` (that flag with canary is refused).
    w.observed.get_mut("api").unwrap().autoscaled_by = Some("api-hpa".into());
    w.change(canary_spec(STEPS, "x:2"), 2);
    let (plans, _) = drive(&mut w, now, |_| true);
    assert!(
        canary_actions(&plans).is_empty(),
        "no step scales the replicas the HPA owns"
    );
    assert!(plans
        .iter()
        .flat_map(|p| &p.actions)
        .any(|a| matches!(a, Action::Apply { component, revision: 2 } if component == "api")));
    let skipped: Vec<&str> = plans
        .iter()
        .flat_map(|p| &p.events)
        .filter(|e| e.reason == "CanarySkipped")
        .map(|e| e.note.as_str())
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("api-hpa"), "{skipped:?}");
    assert_eq!(w.status.stable_revision, Some(2));
}
