//! Rolling forward: the spec's revision component by component in dependency order, each
//! applied, then Available within the progress deadline, then analysed by its gates; the
//! stack-wide gates last; promotion to stable; then monitoring at a slower pace. Also the
//! hold after a rollback, which keeps the older revision applied without analysis.

use super::{rollback, Action, Outcome, Planner, RevisionRef};
use crate::gates::analysis::elapsed;
use deployctl_api::conditions::reason;
use deployctl_api::duration::human;
use deployctl_api::{
    ComponentPhase, ComponentStatus, GatePhase, GateStatus, RollbackTrigger, RolloutState,
    RolloutStep,
};

/// Rolls the spec's revision out (or monitors it once stable).
pub(super) fn rollout(p: &mut Planner<'_>) {
    let target = p.input.desired;
    // The stable revision is never rolled out again: a deleted or edited workload (drift)
    // is re-applied as it is, without snapshots or analysis, by `converge`.
    let settled = p.status.stable_revision == Some(target.number);
    match &p.status.rollout {
        Some(r) if r.revision == target.number => {}
        _ if settled => p.status.rollout = None,
        _ => start(p, target),
    }
    if p.status.rollout.is_none() && !settled {
        start(p, target);
    }
    p.snapshotting = super::snapshots::snapshotting(p);
    converge(p, target, true);
}

/// Keeps the revision a rollback went back to, without analysis, until the spec changes
/// or a retry.
pub(super) fn hold(p: &mut Planner<'_>, target: &RevisionRef) {
    p.status.rollout = None;
    converge(p, target, false);
}

fn start(p: &mut Planner<'_>, target: &RevisionRef) {
    let from = p.status.stable_revision;
    p.event(
        false,
        "RolloutStarted",
        match from {
            Some(s) if s != target.number => {
                format!("Rolling out revision {} (stable is {s})", target.number)
            }
            _ => format!("Rolling out revision {}", target.number),
        },
    );
    let now = p.now();
    let snapshots = super::snapshots::pre_rollout_snapshots(p, target, &now);
    p.status.rollout = Some(RolloutState {
        revision: target.number,
        from_revision: from,
        component: None,
        component_started_at: None,
        started_at: p.now(),
        failure: None,
        analysis_started_at: None,
        promoted: false,
        analysed: vec![],
        stack_analysed: false,
        step: (!snapshots.is_empty()).then_some(RolloutStep::Snapshotting),
        snapshots,
        pruned_to_fit: None,
        canary: None,
    });
}

fn paused(p: &Planner<'_>) -> bool {
    p.input.spec.rollout.paused || p.status.manual_pause.is_some()
}

/// Walks the target's components in order; at most one is the rollout's focus.
fn converge(p: &mut Planner<'_>, target: &RevisionRef, rolling: bool) {
    let previous: Vec<ComponentStatus> = p.status.components.clone();
    let prev = |name: &str| previous.iter().find(|c| c.name == name).cloned();
    let mut blocker: Option<String> = None;
    let mut components = Vec::with_capacity(target.order.len());

    for name in &target.order {
        let w = p.observed(name);
        let spec = target
            .component(name)
            .expect("order names the revision's components");
        let old = prev(name);
        let mut cs = ComponentStatus {
            name: name.clone(),
            revision: w.and_then(|w| w.revision),
            replicas: w.map(|w| w.replicas).unwrap_or_default(),
            ready_replicas: w.map(|w| w.ready_replicas).unwrap_or_default(),
            updated_replicas: w.map(|w| w.updated_replicas).unwrap_or_default(),
            gates: old.as_ref().map(|o| o.gates.clone()).unwrap_or_default(),
            autoscaled_by: w.and_then(|w| w.autoscaled_by.clone()),
            ..Default::default()
        };
        if quiesce(p, target, name, w, &mut cs) {
            blocker.get_or_insert_with(|| name.clone());
            components.push(cs);
            continue;
        }
        let up = p.up_to_date(target, name);
        let avail = p.available(name);
        let rollout = p.status.rollout.clone();
        let analysed = rollout.as_ref().is_none_or(|r| {
            r.promoted || spec.gates.is_empty() || r.analysed.iter().any(|a| a == name)
        });

        let recreate = (rolling && w.is_none() && (blocker.is_some() || paused(p)))
            .then(|| recreate_revision(p, target, name))
            .flatten();
        if up && avail && (analysed || !rolling) {
            cs.phase = ComponentPhase::Available;
        } else if let Some(revision) = recreate {
            // Deleted (by hand, by accident) while the rollout waits elsewhere: bring back
            // what it ran rather than leave it down until the rollout reaches it.
            p.actions.push(Action::Apply {
                component: name.clone(),
                revision,
            });
            cs.phase = ComponentPhase::Progressing;
            cs.message = Some(format!("re-creating it at revision {revision}"));
            if paused(p) {
                p.held_by_pause = true;
            }
            blocker.get_or_insert_with(|| name.clone());
        } else if let Some(b) = &blocker {
            let waiting_on: Vec<&str> = spec
                .depends_on
                .iter()
                .filter(|d| !(p.up_to_date(target, d) && p.available(d)))
                .map(String::as_str)
                .collect();
            if up && w.is_some() && !avail {
                cs.phase = ComponentPhase::Unavailable;
                cs.message = w.and_then(|w| w.message.clone());
            } else if waiting_on.is_empty() {
                cs.phase = ComponentPhase::Pending;
                cs.message = Some(format!("queued behind {b}: components roll one at a time"));
            } else {
                cs.phase = ComponentPhase::WaitingForDependencies;
                cs.message = Some(format!(
                    "waiting for {} to be Available",
                    waiting_on.join(", ")
                ));
            }
        } else if !rolling || rollout.is_none() {
            // Nothing is being rolled: re-apply drift (a deleted workload) or report that
            // the component lost availability.
            if !up {
                p.actions.push(Action::Apply {
                    component: name.clone(),
                    revision: target.number,
                });
                cs.phase = ComponentPhase::Progressing;
                cs.message = Some(format!("re-applying revision {}", target.number));
            } else {
                cs.phase = ComponentPhase::Unavailable;
                cs.message = w
                    .and_then(|w| w.message.clone())
                    .or_else(|| Some("not all pods are available".into()));
            }
            blocker = Some(name.clone());
        } else if rolling && p.snapshotting {
            cs.phase = if up && avail {
                ComponentPhase::Available
            } else {
                ComponentPhase::Pending
            };
            cs.message = Some(
                match p.status.rollout.as_ref().and_then(|r| r.failure.clone()) {
                    Some(f) => f,
                    None => "waiting for the pre-rollout snapshots".into(),
                },
            );
            blocker = Some(name.clone());
        } else if paused(p) && !up {
            cs.phase = ComponentPhase::Pending;
            cs.message = Some(match &p.status.manual_pause {
                Some(op) => format!("rollout paused by operation {}", op.operation),
                None => "rollout paused (spec.rollout.paused)".into(),
            });
            p.held_by_pause = true;
            blocker = Some(name.clone());
        } else {
            focus(p, target, name, &mut cs, up, avail);
            if cs.phase == ComponentPhase::Available {
                // Passed its analysis just now: the next component may start at once.
                // A canary it had is over (its Deployment goes in this pass).
                cs.canary = None;
            } else {
                blocker = Some(name.clone());
            }
        }

        let old_phase = old.as_ref().map(|o| o.phase);
        if cs.phase == ComponentPhase::Available && old_phase == Some(ComponentPhase::Progressing) {
            p.event(
                false,
                "ComponentAvailable",
                format!("Component {name} is Available"),
            );
        }
        if cs.phase == ComponentPhase::Unavailable && old_phase == Some(ComponentPhase::Available) {
            p.event(
                true,
                reason::COMPONENT_UNAVAILABLE,
                format!(
                    "Component {name} is no longer Available{}",
                    cs.message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            );
        }
        components.push(cs);
        if p.status.rollback.is_some() {
            // A failure in `focus` started a rollback; it takes over from here.
            return;
        }
    }
    p.status.components = components;

    if rolling && blocker.is_none() && p.status.rollout.is_some() {
        stack_analysis_then_promote(p, target);
    } else if rolling && p.status.rollout.is_none() {
        // Also while a component is unavailable: that is when a breaking stack must be
        // seen (and rolled back when the policy asks).
        monitor(p, target);
    }
}

/// The revision to re-create a deleted component at while the rollout is held elsewhere:
/// the target's when this rollout already rolled it, else the one it ran before the
/// rollout. None for a component the rollout has yet to create.
fn recreate_revision(p: &Planner<'_>, target: &RevisionRef, name: &str) -> Option<i64> {
    let r = p.status.rollout.as_ref()?;
    if r.analysed.iter().any(|a| a == name) {
        return Some(target.number);
    }
    r.from_revision.filter(|n| *n != target.number).filter(|n| {
        p.revision(*n)
            .is_some_and(|rev| rev.component(name).is_some())
    })
}

/// A component stopped (or to stop) for a snapshot that needs quiet, or stopped for one
/// that is now complete and to be started again. Returns true when that is all this pass
/// does with it.
fn quiesce(
    p: &mut Planner<'_>,
    target: &RevisionRef,
    name: &str,
    w: Option<&super::WorkloadState>,
    cs: &mut ComponentStatus,
) -> bool {
    let Some(w) = w else { return false };
    // The revision it runs, when the history at hand has it (the reconcile loads it).
    let own = w
        .revision
        .filter(|r| p.revision(*r).is_some())
        .unwrap_or(target.number);
    match p.quiescing.get(name).cloned() {
        Some(snapshot) => {
            if !w.stopped {
                p.actions.push(Action::Stop {
                    component: name.to_string(),
                    revision: own,
                });
                p.event(
                    false,
                    "ComponentQuiesced",
                    format!("Stopping component {name} while snapshot {snapshot} is taken"),
                );
            }
            cs.phase = ComponentPhase::Pending;
            cs.message = Some(format!("stopped while snapshot {snapshot} is taken"));
            p.requeue_in(std::time::Duration::from_secs(2));
            true
        }
        None if w.stopped => {
            p.actions.push(Action::Apply {
                component: name.to_string(),
                revision: own,
            });
            cs.phase = ComponentPhase::Progressing;
            cs.message = Some(format!("starting again on revision {own}"));
            true
        }
        None => false,
    }
}

/// The rollout's focus component: apply it, wait for it, analyse it.
fn focus(
    p: &mut Planner<'_>,
    target: &RevisionRef,
    name: &str,
    cs: &mut ComponentStatus,
    up: bool,
    avail: bool,
) {
    let now = p.now();
    let spec = target.component(name).expect("component of the revision");
    let mut r = p.status.rollout.clone().expect("rolling");
    if r.component.as_deref() != Some(name) {
        r.component = Some(name.to_string());
        r.component_started_at = Some(now.clone());
        r.step = Some(RolloutStep::Progressing);
        r.analysis_started_at = None;
        r.failure = None;
        r.canary = None;
    }
    let Some(mut r) = super::canary::run(p, target, name, cs, r) else {
        return;
    };
    if !up {
        let creating = p.observed(name).is_none();
        p.actions.push(Action::Apply {
            component: name.to_string(),
            revision: target.number,
        });
        p.event(
            false,
            "ComponentApplied",
            format!(
                "Applying component {name} at revision {}{}",
                target.number,
                if creating { " (creating it)" } else { "" }
            ),
        );
        cs.phase = ComponentPhase::Progressing;
        cs.message = Some(format!("applying revision {}", target.number));
        cs.gates.clear();
        r.component_started_at = Some(now.clone());
        r.step = Some(RolloutStep::Progressing);
        r.analysis_started_at = None;
        r.failure = None;
        p.status.rollout = Some(r);
        p.requeue_in(p.progress_deadline());
        return;
    }
    if !avail && r.step == Some(RolloutStep::Analysing) {
        // It was Available and lost it during analysis: wait for it again within a fresh
        // progress deadline rather than blaming the deadline of the original apply.
        r.step = Some(RolloutStep::Progressing);
        r.component_started_at = Some(now.clone());
        r.analysis_started_at = None;
    }
    if avail {
        r.failure = None;
    }
    if !avail {
        let started = r
            .component_started_at
            .clone()
            .unwrap_or_else(|| now.clone());
        let waited = elapsed(&started, &now);
        let w = p.observed(name);
        cs.phase = if w.and_then(|w| w.revision) == Some(target.number) {
            ComponentPhase::Progressing
        } else {
            ComponentPhase::Unavailable
        };
        cs.message = w.and_then(|w| w.message.clone());
        p.status.rollout = Some(r.clone());
        if waited >= p.progress_deadline() {
            cs.phase = ComponentPhase::Unavailable;
            let failure = format!(
                "component {name} did not become Available within the progress deadline ({}){}",
                p.input.spec.rollout.progress_deadline(),
                cs.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
            fail(
                p,
                failure,
                reason::PROGRESS_DEADLINE_EXCEEDED,
                RollbackTrigger::ProgressDeadline,
            );
        } else {
            p.requeue_in(p.progress_deadline() - waited);
        }
        return;
    }

    // Available: analyse its gates (unless promoted or it has none).
    if spec.gates.is_empty() || r.promoted {
        mark_analysed(&mut r, name);
        p.status.rollout = Some(r);
        cs.phase = ComponentPhase::Available;
        return;
    }
    if r.step != Some(RolloutStep::Analysing) {
        r.step = Some(RolloutStep::Analysing);
        r.analysis_started_at = Some(now.clone());
        cs.gates = spec
            .gates
            .iter()
            .map(crate::gates::analysis::fresh)
            .collect();
        p.event(
            false,
            "AnalysisStarted",
            format!(
                "Analysing component {name}: {} gate(s) for {}",
                spec.gates.len(),
                p.input.spec.rollout.analysis()
            ),
        );
    }
    let started = r.analysis_started_at.clone().unwrap_or_else(|| now.clone());
    let window = p.analysis_window();
    let window_over = elapsed(&started, &now) >= window;
    let gates = p.analyse(Some(name), &spec.gates, &cs.gates, window_over);
    cs.gates = gates.clone();
    p.status.rollout = Some(r.clone());
    decide(p, Some(name), &spec.gates, gates, window_over, &started, cs);
}

/// Acts on the gates of one analysis (a component's, or the stack's when `component` is None).
pub(super) fn decide(
    p: &mut Planner<'_>,
    component: Option<&str>,
    gates: &[deployctl_api::Gate],
    statuses: Vec<GateStatus>,
    window_over: bool,
    started: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    cs: &mut ComponentStatus,
) {
    let what = component.map_or("the stack".to_string(), |c| format!("component {c}"));
    if let Some(f) = statuses.iter().find(|g| g.phase == GatePhase::Failed) {
        cs.phase = ComponentPhase::Unavailable;
        cs.message = f.message.clone();
        let msg = format!("{what}: {}", f.message.clone().unwrap_or_default());
        fail(p, msg, reason::GATE_FAILED, RollbackTrigger::Gate);
    } else if let Some(i) = statuses.iter().find(|g| g.phase == GatePhase::Inconclusive) {
        cs.phase = ComponentPhase::Progressing;
        cs.message = i.message.clone();
        let msg = format!("{what}: {}", i.message.clone().unwrap_or_default());
        if p.input
            .previous
            .condition(deployctl_api::conditions::READY)
            .map(|c| c.reason.as_str())
            != Some(reason::INCONCLUSIVE)
        {
            p.event(
                true,
                reason::INCONCLUSIVE,
                format!("{msg}; the rollout is paused: promote, retry (resume) or roll back"),
            );
        }
        p.inconclusive = Some(msg);
    } else if statuses.iter().all(|g| g.phase == GatePhase::Passed) {
        cs.phase = ComponentPhase::Available;
        let mut r = p.status.rollout.clone().expect("rolling");
        match component {
            Some(c) => mark_analysed(&mut r, c),
            None => r.stack_analysed = true,
        }
        r.step = None;
        r.analysis_started_at = None;
        p.status.rollout = Some(r);
        p.event(
            false,
            "AnalysisPassed",
            format!("All gates of {what} passed"),
        );
    } else {
        cs.phase = ComponentPhase::Progressing;
        cs.message = Some(format!(
            "analysing {}",
            statuses
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        p.requeue_for_gates(gates, &statuses, std::time::Duration::ZERO);
        if !window_over {
            let left = p
                .analysis_window()
                .saturating_sub(elapsed(started, &p.now()));
            p.requeue_in(left);
        }
    }
}

fn mark_analysed(r: &mut RolloutState, name: &str) {
    if !r.analysed.iter().any(|a| a == name) {
        r.analysed.push(name.to_string());
    }
}

/// A failed gate or a missed deadline: roll back when the policy says so and there is
/// something to go back to; else report and wait for a person.
pub(super) fn fail(
    p: &mut Planner<'_>,
    message: String,
    why: &'static str,
    trigger: RollbackTrigger,
) {
    let target = p
        .status
        .stable_revision
        .filter(|s| *s != p.input.desired.number);
    if p.input.spec.rollout.auto_rollback() {
        if let Some(to) = target {
            rollback::start(p, to, message, None, trigger);
            return;
        }
    }
    let mut r = p.status.rollout.clone().expect("rolling");
    if r.failure.is_none() {
        let why_not = if target.is_none() {
            " (no stable revision to roll back to)"
        } else {
            " (automatic rollback is off)"
        };
        p.event(true, why, format!("{message}{why_not}"));
    }
    r.failure = Some(message);
    p.status.rollout = Some(r);
    p.failure_reason = Some(why);
}

/// After the last component: the stack's gates, then promotion.
fn stack_analysis_then_promote(p: &mut Planner<'_>, target: &RevisionRef) {
    let now = p.now();
    let mut r = p.status.rollout.clone().expect("rolling");
    let gates = &p.input.spec.gates;
    if !gates.is_empty() && !r.promoted && !r.stack_analysed {
        if r.step != Some(RolloutStep::StackAnalysis) {
            r.step = Some(RolloutStep::StackAnalysis);
            r.component = None;
            r.analysis_started_at = Some(now.clone());
            p.status.gates = gates.iter().map(crate::gates::analysis::fresh).collect();
            p.event(
                false,
                "AnalysisStarted",
                format!("Analysing the stack: {} gate(s)", gates.len()),
            );
        }
        let started = r.analysis_started_at.clone().unwrap_or_else(|| now.clone());
        p.status.rollout = Some(r);
        let window_over = elapsed(&started, &now) >= p.analysis_window();
        let statuses = p.analyse(None, gates, &p.status.gates.clone(), window_over);
        p.status.gates = statuses.clone();
        let mut scratch = ComponentStatus::default();
        decide(
            p,
            None,
            gates,
            statuses,
            window_over,
            &started,
            &mut scratch,
        );
        let done = p.status.rollout.as_ref().is_some_and(|r| r.stack_analysed);
        if !done {
            return;
        }
    }
    // Promotion.
    let r = p.status.rollout.take().expect("rolling");
    if p.status.stable_revision != Some(target.number) {
        p.status.previous_stable_revision = p.status.stable_revision;
    }
    p.status.stable_revision = Some(target.number);
    p.status.stable_revision_hash = Some(crate::reconcile::revisions::revision_hash(
        &target.components,
    ));
    p.promoted = true;
    p.outcomes.push(Outcome::Rollout("promoted"));
    p.event(
        false,
        "RolloutComplete",
        format!(
            "Revision {} is Healthy and stable (rollout took {}{})",
            target.number,
            human(elapsed(&r.started_at, &now)),
            if r.promoted {
                ", analysis skipped by a Promote operation"
            } else {
                ""
            }
        ),
    );
    // Monitoring starts from clean counts.
    for c in &mut p.status.components {
        for g in &mut c.gates {
            *g = GateStatus {
                name: g.name.clone(),
                ..Default::default()
            };
        }
    }
    for g in &mut p.status.gates {
        *g = GateStatus {
            name: g.name.clone(),
            ..Default::default()
        };
    }
}

/// After promotion, gates keep being measured at the monitoring pace; a failure degrades
/// the stack (or rolls it back when the policy asks for it).
fn monitor(p: &mut Planner<'_>, target: &RevisionRef) {
    let every = p.monitor_interval();
    let mut failed: Option<String> = None;
    let mut comps = std::mem::take(&mut p.status.components);
    for cs in &mut comps {
        let Some(spec) = target.component(&cs.name) else {
            continue;
        };
        if spec.gates.is_empty() {
            continue;
        }
        let statuses = p.monitor_gates(Some(&cs.name), &spec.gates, &cs.gates);
        if failed.is_none() {
            failed = statuses
                .iter()
                .find(|g| g.phase == GatePhase::Failed)
                .map(|g| {
                    format!(
                        "component {}: {}",
                        cs.name,
                        g.message.clone().unwrap_or_default()
                    )
                });
        }
        p.requeue_for_gates(&spec.gates, &statuses, every);
        cs.gates = statuses;
    }
    p.status.components = comps;
    if !p.input.spec.gates.is_empty() {
        let gates = p.input.spec.gates.clone();
        let statuses = p.monitor_gates(None, &gates, &p.status.gates.clone());
        if failed.is_none() {
            failed = statuses
                .iter()
                .find(|g| g.phase == GatePhase::Failed)
                .map(|g| format!("the stack: {}", g.message.clone().unwrap_or_default()));
        }
        p.requeue_for_gates(&gates, &statuses, every);
        p.status.gates = statuses;
    }
    let Some(message) = failed else { return };
    let before = target.number;
    let back_to = p
        .status
        .previous_stable_revision
        .filter(|n| *n != before && p.input.revisions.contains_key(n));
    if p.input.spec.rollout.rollback_after_promotion {
        if let Some(to) = back_to {
            rollback::start(
                p,
                to,
                format!("after promotion, {message}"),
                None,
                RollbackTrigger::Gate,
            );
            return;
        }
    }
    if p.input
        .previous
        .condition(deployctl_api::conditions::READY)
        .map(|c| c.reason.as_str())
        != Some(reason::GATE_FAILED)
    {
        p.event(
            true,
            reason::GATE_FAILED,
            format!("After promotion, {message}"),
        );
    }
    p.monitor_failure = Some(message);
}
