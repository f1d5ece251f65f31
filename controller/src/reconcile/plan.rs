//! The rollout planner: from the spec, the desired revision, what the cluster runs and
//! the previous status, decides which component to apply next and what the status says.
//!
//! Pure and deterministic, so every branch is unit-tested without a cluster, and a
//! controller restarted at any point recomputes the same decision from the status and
//! the workloads' annotations.

use deployctl_api::conditions::{self, reason};
use deployctl_api::duration::human;
use deployctl_api::{
    ComponentPhase, ComponentStatus, ProductionStackSpec, ProductionStackStatus, RolloutState,
    StackPhase, WorkloadKind,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Why it is not available (pod waiting reasons, workload conditions).
    pub message: Option<String>,
}

/// Everything the planner needs.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// The stack spec.
    pub spec: &'a ProductionStackSpec,
    /// The stack's `metadata.generation`.
    pub generation: Option<i64>,
    /// Components in rollout order (validated).
    pub order: &'a [String],
    /// Revision number the spec maps to.
    pub revision: i64,
    /// Its digest.
    pub revision_hash: &'a str,
    /// Desired spec digest per component.
    pub hashes: &'a BTreeMap<String, String>,
    /// Observed workloads per component (absent: not created).
    pub observed: &'a BTreeMap<String, WorkloadState>,
    /// The status before this reconcile.
    pub previous: &'a ProductionStackStatus,
    /// The time of this reconcile.
    pub now: Time,
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

/// The decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Component to apply now (at most one: components roll one at a time).
    pub apply: Option<String>,
    /// The new status.
    pub status: ProductionStackStatus,
    /// Events to record.
    pub events: Vec<PlannedEvent>,
    /// When to look again even if nothing changes (a progress deadline to check).
    pub requeue_after: Option<Duration>,
}

fn elapsed(since: &Time, now: &Time) -> Duration {
    let d = now.0.duration_since(since.0);
    Duration::try_from(d).unwrap_or_default()
}

/// Plans one reconcile.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let PlanInput {
        spec,
        generation,
        order,
        revision,
        revision_hash,
        hashes,
        observed,
        previous,
        now,
    } = input;
    let deadline = spec
        .rollout
        .progress_deadline()
        .parse()
        .unwrap_or(Duration::from_secs(600));
    let paused = spec.rollout.paused;
    let mut events = Vec::new();

    let up_to_date = |c: &str| {
        observed
            .get(c)
            .is_some_and(|w| w.spec_hash.as_deref() == hashes.get(c).map(String::as_str))
    };
    let done = |c: &str| up_to_date(c) && observed.get(c).is_some_and(|w| w.available);
    let all_done = order.iter().all(|c| done(c));
    let all_up_to_date = order.iter().all(|c| up_to_date(c));

    // A rollout is active while some component does not carry the revision's spec, or
    // while the revision has not yet been promoted to stable.
    let settled = all_up_to_date && previous.stable_revision == Some(revision);
    let mut rollout = if all_done || settled {
        None
    } else {
        match &previous.rollout {
            Some(r) if r.revision == revision => Some(r.clone()),
            _ => {
                events.push(PlannedEvent {
                    warning: false,
                    reason: "RolloutStarted",
                    note: match previous.stable_revision {
                        Some(s) if s != revision => {
                            format!("Rolling out revision {revision} (stable is {s})")
                        }
                        _ => format!("Rolling out revision {revision}"),
                    },
                });
                Some(RolloutState {
                    revision,
                    from_revision: previous.stable_revision,
                    component: None,
                    component_started_at: None,
                    started_at: now.clone(),
                    failure: None,
                    step: None,
                    analysis_started_at: None,
                    promoted: false,
                })
            }
        }
    };

    let previous_phase: BTreeMap<&str, ComponentPhase> = previous
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.phase))
        .collect();

    let mut apply = None;
    let mut focus: Option<(String, Option<String>)> = None; // (component, failure)
    let mut blocker: Option<&str> = None;
    let mut held_by_pause = false;
    let mut components = Vec::with_capacity(order.len());
    let mut requeue_after = None;

    for name in order {
        let w = observed.get(name);
        let mut cs = ComponentStatus {
            name: name.clone(),
            revision: w.and_then(|w| w.revision),
            replicas: w.map(|w| w.replicas).unwrap_or_default(),
            ready_replicas: w.map(|w| w.ready_replicas).unwrap_or_default(),
            updated_replicas: w.map(|w| w.updated_replicas).unwrap_or_default(),
            ..Default::default()
        };
        let deps = spec
            .component(name)
            .map(|c| c.depends_on.clone())
            .unwrap_or_default();
        let waiting_on: Vec<&String> = deps.iter().filter(|d| !done(d)).collect();

        if done(name) {
            cs.phase = ComponentPhase::Available;
        } else if let Some(b) = blocker {
            cs.phase = if waiting_on.is_empty() {
                ComponentPhase::Pending
            } else {
                ComponentPhase::WaitingForDependencies
            };
            cs.message = Some(if waiting_on.is_empty() {
                format!("queued behind {b}: components roll one at a time")
            } else {
                format!(
                    "waiting for {} to be Available",
                    waiting_on
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            if w.is_some() && up_to_date(name) {
                // Runs the right spec but is not available, behind another one.
                cs.phase = ComponentPhase::Unavailable;
                cs.message = w.and_then(|w| w.message.clone());
            }
        } else if rollout.is_none() {
            // Nothing to roll, yet not available: it lost availability.
            cs.phase = ComponentPhase::Unavailable;
            cs.message = w
                .and_then(|w| w.message.clone())
                .or_else(|| Some("not all pods are available".into()));
            blocker = Some(name);
        } else if paused && !up_to_date(name) {
            cs.phase = ComponentPhase::Pending;
            cs.message = Some("rollout paused (spec.rollout.paused)".into());
            held_by_pause = true;
            blocker = Some(name);
        } else {
            // The rollout's focus: apply it if it does not carry the revision's spec yet,
            // else wait for it within the progress deadline.
            let r = rollout.as_mut().expect("rollout is active here");
            let needs_apply = !up_to_date(name);
            let refocus = r.component.as_deref() != Some(name.as_str()) || needs_apply;
            if refocus {
                r.component = Some(name.clone());
                r.component_started_at = Some(now.clone());
                r.failure = None;
            }
            if needs_apply {
                apply = Some(name.clone());
                cs.phase = ComponentPhase::Progressing;
                cs.message = Some(format!("applying revision {revision}"));
                if w.is_none() || w.and_then(|w| w.spec_hash.as_ref()).is_some() {
                    events.push(PlannedEvent {
                        warning: false,
                        reason: "ComponentApplied",
                        note: format!(
                            "Applying component {name} at revision {revision}{}",
                            if w.is_none() { " (creating it)" } else { "" }
                        ),
                    });
                }
                requeue_after = Some(deadline);
            } else {
                let started = r
                    .component_started_at
                    .clone()
                    .unwrap_or_else(|| now.clone());
                let waited = elapsed(&started, &now);
                let rolled_here = w.and_then(|w| w.revision) == Some(revision);
                cs.phase = if rolled_here {
                    ComponentPhase::Progressing
                } else {
                    ComponentPhase::Unavailable
                };
                cs.message = w.and_then(|w| w.message.clone());
                if waited >= deadline {
                    cs.phase = ComponentPhase::Unavailable;
                    let failure = format!(
                        "component {name} did not become Available within the progress deadline ({}){}",
                        spec.rollout.progress_deadline(),
                        cs.message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    );
                    if r.failure.is_none() {
                        events.push(PlannedEvent {
                            warning: true,
                            reason: reason::PROGRESS_DEADLINE_EXCEEDED,
                            note: failure.clone(),
                        });
                    }
                    r.failure = Some(failure.clone());
                    focus = Some((name.clone(), Some(failure)));
                } else {
                    r.failure = None;
                    requeue_after = Some(deadline - waited);
                }
            }
            if focus.is_none() {
                focus = Some((name.clone(), None));
            }
            blocker = Some(name);
        }

        if cs.phase == ComponentPhase::Available
            && previous_phase.get(name.as_str()) == Some(&ComponentPhase::Progressing)
        {
            events.push(PlannedEvent {
                warning: false,
                reason: "ComponentAvailable",
                note: format!("Component {name} is Available"),
            });
        }
        if cs.phase == ComponentPhase::Unavailable
            && previous_phase.get(name.as_str()) == Some(&ComponentPhase::Available)
        {
            events.push(PlannedEvent {
                warning: true,
                reason: reason::COMPONENT_UNAVAILABLE,
                note: format!(
                    "Component {name} is no longer Available{}",
                    cs.message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            });
        }
        components.push(cs);
    }

    let available = components
        .iter()
        .filter(|c| c.phase == ComponentPhase::Available)
        .count();
    let total = components.len();
    let mut status = ProductionStackStatus {
        observed_generation: generation,
        current_revision: Some(revision),
        current_revision_hash: Some(revision_hash.to_string()),
        stable_revision: previous.stable_revision,
        ready_components: Some(format!("{available}/{total}")),
        components,
        conditions: previous.conditions.clone(),
        ..Default::default()
    };

    let failure = focus.as_ref().and_then(|(_, f)| f.clone());
    let (phase, message) = if all_done {
        if let Some(r) = &previous.rollout {
            events.push(PlannedEvent {
                warning: false,
                reason: "RolloutComplete",
                note: format!(
                    "Revision {revision} is Healthy (rollout took {})",
                    human(elapsed(&r.started_at, &now))
                ),
            });
        }
        status.stable_revision = Some(revision);
        rollout = None;
        (
            StackPhase::Healthy,
            format!("revision {revision} is Healthy"),
        )
    } else if let Some(f) = failure {
        (StackPhase::Degraded, f)
    } else if held_by_pause {
        if previous.phase != Some(StackPhase::Paused) {
            events.push(PlannedEvent {
                warning: false,
                reason: reason::PAUSED,
                note: format!("Rollout of revision {revision} paused"),
            });
        }
        (
            StackPhase::Paused,
            format!("rollout of revision {revision} is paused; set spec.rollout.paused to false to go on"),
        )
    } else if rollout.is_some() {
        let what = focus
            .as_ref()
            .map(|(c, _)| format!(": component {c}"))
            .unwrap_or_default();
        (
            StackPhase::Progressing,
            format!("rolling out revision {revision}{what}"),
        )
    } else {
        let bad: Vec<&str> = status
            .components
            .iter()
            .filter(|c| c.phase != ComponentPhase::Available)
            .map(|c| c.name.as_str())
            .collect();
        (
            StackPhase::Degraded,
            format!("not Available: {}", bad.join(", ")),
        )
    };
    status.phase = Some(phase);
    status.message = Some(message.clone());
    status.rollout = rollout;

    let set = |cs: &mut Vec<_>, t: &str, v: bool, r: &str, m: &str| {
        conditions::set(cs, t, v, r, m, generation, &now)
    };
    let conds = &mut status.conditions;
    match phase {
        StackPhase::Healthy => {
            set(conds, conditions::READY, true, reason::AVAILABLE, &message);
            set(
                conds,
                conditions::RECONCILING,
                false,
                reason::IDLE,
                "no rollout in progress",
            );
            set(
                conds,
                conditions::STALLED,
                false,
                reason::IDLE,
                "making progress",
            );
        }
        StackPhase::Progressing => {
            set(
                conds,
                conditions::READY,
                false,
                reason::ROLLING_OUT,
                &message,
            );
            set(
                conds,
                conditions::RECONCILING,
                true,
                reason::ROLLING_OUT,
                &message,
            );
            set(
                conds,
                conditions::STALLED,
                false,
                reason::ROLLING_OUT,
                "making progress",
            );
        }
        StackPhase::Paused => {
            set(conds, conditions::READY, false, reason::PAUSED, &message);
            set(
                conds,
                conditions::RECONCILING,
                false,
                reason::PAUSED,
                &message,
            );
            set(
                conds,
                conditions::STALLED,
                false,
                reason::PAUSED,
                "paused by the spec, not stuck",
            );
        }
        _ if status.rollout.as_ref().is_some_and(|r| r.failure.is_some()) => {
            let r = reason::PROGRESS_DEADLINE_EXCEEDED;
            set(conds, conditions::READY, false, r, &message);
            set(
                conds,
                conditions::RECONCILING,
                false,
                r,
                "the rollout waits for a fix",
            );
            set(conds, conditions::STALLED, true, r, &message);
        }
        _ => {
            let r = reason::COMPONENT_UNAVAILABLE;
            set(conds, conditions::READY, false, r, &message);
            set(
                conds,
                conditions::RECONCILING,
                false,
                r,
                "no rollout in progress",
            );
            set(
                conds,
                conditions::STALLED,
                false,
                r,
                "waiting for the component to recover",
            );
        }
    }

    Plan {
        apply,
        status,
        events,
        requeue_after,
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
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.phase = Some(StackPhase::Invalid);
    status.message = Some(format!("invalid spec: {message}"));
    let conds = &mut status.conditions;
    let r = reason::INVALID_SPEC;
    conditions::set(
        conds,
        conditions::STALLED,
        true,
        r,
        message,
        generation,
        now,
    );
    conditions::set(conds, conditions::READY, false, r, message, generation, now);
    conditions::set(
        conds,
        conditions::RECONCILING,
        false,
        r,
        "nothing is applied until the spec is fixed",
        generation,
        now,
    );
    let changed = previous
        .condition(conditions::STALLED)
        .map(|c| c.message.as_str())
        != Some(message)
        || !previous.is_true(conditions::STALLED);
    let event = changed.then(|| PlannedEvent {
        warning: true,
        reason: reason::INVALID_SPEC,
        note: format!("Spec refused, nothing was changed: {message}"),
    });
    (status, event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployctl_api::conditions::{READY, RECONCILING, STALLED};

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap())
    }

    fn spec(paused: bool, deadline: &str) -> ProductionStackSpec {
        let c = "{spec: {containers: [{name: a, image: x}]}}";
        serde_yaml_ng::from_str(&format!(
            "components:
- {{name: db, template: {c}}}
- {{name: cache, template: {c}}}
- {{name: api, dependsOn: [db, cache], template: {c}}}
rollout: {{paused: {paused}, progressDeadline: {deadline}}}"
        ))
        .unwrap()
    }

    struct World {
        spec: ProductionStackSpec,
        order: Vec<String>,
        hashes: BTreeMap<String, String>,
        observed: BTreeMap<String, WorkloadState>,
        status: ProductionStackStatus,
        revision: i64,
    }

    impl World {
        fn new(spec: ProductionStackSpec) -> Self {
            let order = vec!["db".into(), "cache".into(), "api".into()];
            let hashes = order
                .iter()
                .map(|c: &String| (c.clone(), format!("{c}-h1")))
                .collect();
            World {
                spec,
                order,
                hashes,
                observed: BTreeMap::new(),
                status: Default::default(),
                revision: 1,
            }
        }

        fn step(&mut self, now: i64) -> Plan {
            let p = plan(PlanInput {
                spec: &self.spec,
                generation: Some(self.revision),
                order: &self.order,
                revision: self.revision,
                revision_hash: "rh",
                hashes: &self.hashes,
                observed: &self.observed,
                previous: &self.status,
                now: t(now),
            });
            self.status = p.status.clone();
            p
        }

        /// The workload controller applies what the planner asked for.
        fn run_applied(&mut self, p: &Plan, available: bool) {
            if let Some(c) = &p.apply {
                self.observed.insert(
                    c.clone(),
                    WorkloadState {
                        spec_hash: Some(self.hashes[c].clone()),
                        revision: Some(self.revision),
                        replicas: 1,
                        available,
                        ..Default::default()
                    },
                );
            }
        }

        fn set_available(&mut self, c: &str, available: bool) {
            self.observed.get_mut(c).unwrap().available = available;
        }
    }

    fn cond<'a>(s: &'a ProductionStackStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.condition(t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn creates_components_one_at_a_time_in_dependency_order() {
        let mut w = World::new(spec(false, "10m"));
        let p = w.step(0);
        assert_eq!(p.apply.as_deref(), Some("db"));
        assert_eq!(p.events[0].reason, "RolloutStarted");
        assert_eq!(w.status.phase, Some(StackPhase::Progressing));
        assert_eq!(cond(&w.status, RECONCILING), ("True", "RollingOut"));
        assert_eq!(
            w.status.components[2].phase,
            ComponentPhase::WaitingForDependencies
        );
        w.run_applied(&p, false);

        // db applied but not available: nothing else is applied.
        let p = w.step(1);
        assert_eq!(p.apply, None);
        assert_eq!(w.status.components[0].phase, ComponentPhase::Progressing);
        assert_eq!(w.status.components[1].phase, ComponentPhase::Pending);
        w.set_available("db", true);

        let p = w.step(2);
        assert_eq!(p.apply.as_deref(), Some("cache"));
        assert!(p.events.iter().any(|e| e.reason == "ComponentAvailable"));
        w.run_applied(&p, true);
        let p = w.step(3);
        assert_eq!(p.apply.as_deref(), Some("api"));
        w.run_applied(&p, true);

        let p = w.step(4);
        assert_eq!(p.apply, None);
        assert_eq!(w.status.phase, Some(StackPhase::Healthy));
        assert_eq!(w.status.stable_revision, Some(1));
        assert_eq!(w.status.rollout, None);
        assert_eq!(w.status.ready_components.as_deref(), Some("3/3"));
        assert_eq!(cond(&w.status, READY), ("True", "Available"));
        assert_eq!(cond(&w.status, STALLED).0, "False");
        assert!(p.events.iter().any(|e| e.reason == "RolloutComplete"));

        // Steady state: same status, no events, nothing applied.
        let before = w.status.clone();
        let p = w.step(100);
        assert_eq!((p.apply, p.events.len()), (None, 0));
        assert_eq!(w.status, before);
    }

    fn healthy_world(paused: bool) -> World {
        let mut w = World::new(spec(false, "1m"));
        for i in 0..4 {
            let p = w.step(i);
            w.run_applied(&p, true);
        }
        assert_eq!(w.status.phase, Some(StackPhase::Healthy));
        w.spec.rollout.paused = paused;
        w
    }

    #[test]
    fn a_new_revision_rolls_only_the_changed_component() {
        let mut w = healthy_world(false);
        w.revision = 2;
        w.hashes.insert("cache".into(), "cache-h2".into());
        let p = w.step(10);
        assert_eq!(p.apply.as_deref(), Some("cache"));
        let r = w.status.rollout.clone().unwrap();
        assert_eq!((r.revision, r.from_revision), (2, Some(1)));
        w.run_applied(&p, true);
        let p = w.step(11);
        assert_eq!(p.apply, None, "db and api did not change");
        assert_eq!(w.status.phase, Some(StackPhase::Healthy));
        assert_eq!(w.status.stable_revision, Some(2));
        assert_eq!(
            w.status.components[0].revision,
            Some(1),
            "db still carries revision 1"
        );
    }

    #[test]
    fn progress_deadline_marks_the_stack_degraded_and_stalled_once() {
        let mut w = healthy_world(false);
        w.revision = 2;
        w.hashes.insert("db".into(), "db-h2".into());
        let p = w.step(10);
        w.run_applied(&p, false);
        let p = w.step(40);
        assert_eq!(p.requeue_after, Some(Duration::from_secs(30)));
        assert_eq!(w.status.phase, Some(StackPhase::Progressing));
        let p = w.step(71);
        assert_eq!(w.status.phase, Some(StackPhase::Degraded));
        assert_eq!(
            cond(&w.status, STALLED),
            ("True", "ProgressDeadlineExceeded")
        );
        assert!(w
            .status
            .message
            .as_ref()
            .unwrap()
            .contains("component db did not become Available"));
        assert_eq!(p.events.iter().filter(|e| e.warning).count(), 1);
        assert_eq!(w.status.stable_revision, Some(1));
        let p = w.step(80);
        assert!(
            p.events.is_empty(),
            "the deadline is reported once: {:?}",
            p.events
        );
        // It recovers by itself when the component becomes available.
        w.set_available("db", true);
        let p = w.step(90);
        assert_eq!(p.apply, None);
        assert_eq!(w.status.phase, Some(StackPhase::Healthy));
        assert_eq!(cond(&w.status, STALLED).0, "False");
    }

    #[test]
    fn paused_rolls_nothing_new() {
        let mut w = healthy_world(true);
        w.revision = 2;
        w.hashes.insert("db".into(), "db-h2".into());
        let p = w.step(10);
        assert_eq!(p.apply, None);
        assert_eq!(w.status.phase, Some(StackPhase::Paused));
        assert_eq!(cond(&w.status, READY), ("False", "Paused"));
        assert!(p.events.iter().any(|e| e.reason == "Paused"));
        w.spec.rollout.paused = false;
        let p = w.step(11);
        assert_eq!(p.apply.as_deref(), Some("db"));
    }

    #[test]
    fn a_component_that_loses_availability_degrades_the_stack() {
        let mut w = healthy_world(false);
        w.set_available("cache", false);
        let p = w.step(10);
        assert_eq!(p.apply, None);
        assert_eq!(w.status.phase, Some(StackPhase::Degraded));
        assert_eq!(cond(&w.status, READY), ("False", "ComponentUnavailable"));
        assert_eq!(w.status.components[1].phase, ComponentPhase::Unavailable);
        assert!(p
            .events
            .iter()
            .any(|e| e.reason == "ComponentUnavailable" && e.warning));
    }

    #[test]
    fn a_new_spec_mid_rollout_takes_over() {
        let mut w = healthy_world(false);
        w.revision = 2;
        w.hashes.insert("db".into(), "db-h2".into());
        let p = w.step(10);
        w.run_applied(&p, false);
        w.revision = 3;
        w.hashes.insert("db".into(), "db-h3".into());
        let p = w.step(11);
        assert_eq!(p.apply.as_deref(), Some("db"));
        assert_eq!(w.status.rollout.as_ref().unwrap().revision, 3);
        assert_eq!(w.status.rollout.as_ref().unwrap().from_revision, Some(1));
    }

    #[test]
    fn restart_after_apply_before_status_write_resumes_without_reapplying() {
        let mut w = healthy_world(false);
        w.revision = 2;
        w.hashes.insert("db".into(), "db-h2".into());
        let saved = w.status.clone();
        let p = w.step(10);
        w.run_applied(&p, false);
        // The status write was lost: plan again from the old status.
        w.status = saved;
        let p = w.step(12);
        assert_eq!(p.apply, None, "db already carries revision 2");
        assert_eq!(w.status.components[0].phase, ComponentPhase::Progressing);
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
}
