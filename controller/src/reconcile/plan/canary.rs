//! Canary steps of a Deployment component (`canary.steps`): the new revision runs in a
//! second Deployment, `<stack>-<component>-canary`, with the share of the replicas each
//! `setWeight` gives, while the stable Deployment keeps the rest on the old template; the
//! gates are analysed on the new pods at `analysis` steps. A failure removes the canary
//! at once (see [`sweep`]); after the last step the stable Deployment takes the new
//! template by the ordinary rolling update and the canary goes once that is Available.
//!
//! The step index lives in `status.rollout.canary`, so a restarted controller resumes at
//! the same step.

use super::forward::{decide, fail};
use super::{Action, Planner, RevisionRef};
use crate::gates::analysis::elapsed;
use deployctl_api::canary::canary_replicas;
use deployctl_api::conditions::reason;
use deployctl_api::{
    CanaryState, CanaryStatus, ComponentPhase, ComponentStatus, GatePhase, RollbackTrigger,
    RolloutState, RolloutStep, WorkloadKind,
};
use std::time::Duration;

/// Runs the canary of the rollout's focus component `name`. Returns the rollout state
/// back when the ordinary all-at-once path goes on (no canary, or every step done);
/// None when the canary handled this pass (the state is then in `p.status.rollout`).
pub(super) fn run(
    p: &mut Planner<'_>,
    target: &RevisionRef,
    name: &str,
    cs: &mut ComponentStatus,
    mut r: RolloutState,
) -> Option<RolloutState> {
    let spec = target.component(name)?;
    let steps = match &spec.canary {
        Some(c) if spec.kind == WorkloadKind::Deployment && !c.steps.is_empty() => &c.steps,
        _ => {
            r.canary = None;
            return Some(r);
        }
    };
    let now = p.now();
    let n = steps.len() as i32;
    let w = p.observed(name);
    // The revision the stable Deployment runs, when the history at hand has it: the
    // canary needs it to scale the stable pods without changing their template.
    let stable_rev = w
        .filter(|w| !w.stopped)
        .and_then(|w| w.revision)
        .filter(|s| *s != target.number && p.revision(*s).is_some());
    let mut state = match r.canary.clone().filter(|c| c.component == name) {
        Some(s) => s,
        // A first creation has nothing to protect; a promoted rollout skips the steps.
        None if r.promoted || stable_rev.is_none() || p.up_to_date(target, name) => {
            return Some(r);
        }
        // An HPA found targeting the workload owns its count, and the steps would fight it
        // (`autoscaling.hpa` with `canary` is refused; this is an HPA created without it):
        // the revision rolls out all at once behind the gates, and the person is told.
        None if w.is_some_and(|w| w.autoscaled_by.is_some()) => {
            let hpa = w.and_then(|w| w.autoscaled_by.clone()).unwrap_or_default();
            p.event(
                true,
                "CanarySkipped",
                format!(
                    "component {name}: HorizontalPodAutoscaler {hpa} manages its replicas, so revision {} rolls out without canary steps; remove the HPA or the steps",
                    target.number
                ),
            );
            return Some(r);
        }
        None => {
            let first = CanaryState {
                component: name.to_string(),
                step: 0,
                weight: 0,
                step_started_at: Some(now.clone()),
            };
            p.event(
                false,
                "CanaryStep",
                format!(
                    "Component {name}: canary of revision {} starts, step 1/{n}: {}",
                    target.number, steps[0]
                ),
            );
            first
        }
    };
    if r.promoted && state.step < n {
        state.step = n;
    }
    let replicas = spec.replicas();
    let done = |p: &Planner<'_>, state: &CanaryState, cs: &mut ComponentStatus| {
        let c = canary_replicas(replicas, state.weight);
        cs.canary = Some(CanaryStatus {
            step: (state.step + 1).min(n + 1),
            steps: n,
            weight: state.weight,
            revision: target.number,
            canary_replicas: p
                .observed(name)
                .and_then(|w| w.canary.as_ref())
                .map_or(c, |cw| cw.replicas),
            stable_replicas: p.observed(name).map_or(0, |w| w.replicas),
        });
    };
    if state.step >= n {
        // Every step passed: the stable Deployment takes the new template (the caller's
        // ordinary path), and the canary is removed once that is Available.
        done(p, &state, cs);
        r.canary = Some(state);
        return Some(r);
    }
    let Some(stable_rev) = stable_rev else {
        // The stable Deployment is gone or runs a revision not at hand: there is nothing
        // to weigh against; roll the new revision out as a whole.
        r.canary = None;
        return Some(r);
    };
    let w = w.expect("a stable revision comes from the observed workload");
    if r.failure.is_some() {
        // Failed with automatic rollback off: the canary is gone (see `sweep`), and the
        // rollout waits for a person.
        done(p, &state, cs);
        cs.phase = ComponentPhase::Unavailable;
        cs.message = r.failure.clone();
        r.canary = Some(state);
        p.status.rollout = Some(r);
        return None;
    }

    loop {
        let Some(step) = steps.get(state.step as usize) else {
            done(p, &state, cs);
            r.canary = Some(state);
            return Some(r);
        };
        let started = state.step_started_at.clone().unwrap_or_else(|| now.clone());
        let waited = elapsed(&started, &now);
        let advance = if let Some(weight) = step.set_weight {
            state.weight = weight;
            let c = canary_replicas(replicas, weight);
            let canary_ready = w.canary.as_ref().is_some_and(|cw| {
                cw.spec_hash.as_deref() == target.hashes.get(name).map(String::as_str)
                    && cw.replicas == c
                    && cw.available
            });
            // The stable pods go only once the canary pods that replace them are ready:
            // stable + canary never drops below the component's replicas.
            let stable = if canary_ready {
                replicas - c
            } else {
                w.replicas.max(replicas - c)
            };
            let settled = canary_ready && w.replicas == stable && w.available;
            if !settled {
                // Only pods that do not come up count against the deadline: a scale the
                // controller has yet to ask for (after a restart, say) is asked for now.
                let pods_late = !canary_ready || (w.replicas == stable && !w.available);
                if pods_late && waited >= p.progress_deadline() {
                    let msg = format!(
                        "component {name}: the canary at {weight}% did not become Available within the progress deadline ({}){}",
                        p.input.spec.rollout.progress_deadline(),
                        w.canary
                            .as_ref()
                            .and_then(|cw| cw.message.as_ref())
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    );
                    done(p, &state, cs);
                    cs.phase = ComponentPhase::Unavailable;
                    cs.message = Some(msg.clone());
                    r.canary = Some(state);
                    p.status.rollout = Some(r);
                    fail(
                        p,
                        msg,
                        reason::PROGRESS_DEADLINE_EXCEEDED,
                        RollbackTrigger::ProgressDeadline,
                    );
                    return None;
                }
                p.actions.push(Action::Canary {
                    component: name.to_string(),
                    revision: target.number,
                    canary_replicas: c,
                    stable_revision: stable_rev,
                    stable_replicas: stable,
                });
                done(p, &state, cs);
                cs.phase = ComponentPhase::Progressing;
                cs.message = Some(format!(
                    "canary at {weight}%: {c} pod(s) of revision {}, {stable} stable",
                    target.number
                ));
                r.step = Some(RolloutStep::Progressing);
                r.canary = Some(state);
                p.status.rollout = Some(r);
                p.requeue_in(p.progress_deadline().saturating_sub(waited));
                return None;
            }
            true
        } else if let Some(pause) = &step.pause {
            // The gates keep being measured on the new pods while the canary waits: a
            // failure ends the pause (and the canary) as it would end an analysis.
            if state.weight > 0 && !spec.gates.is_empty() {
                let gates = p.analyse(Some(name), &spec.gates, &cs.gates, false);
                cs.gates = gates.clone();
                if let Some(f) = gates.iter().find(|g| g.phase == GatePhase::Failed) {
                    let msg = format!(
                        "component {name}: {}",
                        f.message.clone().unwrap_or_default()
                    );
                    done(p, &state, cs);
                    cs.phase = ComponentPhase::Unavailable;
                    cs.message = f.message.clone();
                    r.canary = Some(state);
                    p.status.rollout = Some(r);
                    fail(p, msg, reason::GATE_FAILED, RollbackTrigger::Gate);
                    return None;
                }
                p.requeue_for_gates(&spec.gates, &gates, Duration::ZERO);
            }
            match pause.duration.as_ref().and_then(|d| d.parse().ok()) {
                Some(d) if waited >= d => true,
                Some(d) => {
                    done(p, &state, cs);
                    cs.phase = ComponentPhase::Progressing;
                    cs.message = Some(format!(
                        "canary at {}%: paused for {}",
                        state.weight,
                        deployctl_api::duration::human(d)
                    ));
                    p.requeue_in(d - waited);
                    r.canary = Some(state);
                    p.status.rollout = Some(r);
                    return None;
                }
                None => {
                    done(p, &state, cs);
                    cs.phase = ComponentPhase::Progressing;
                    cs.message = Some(format!(
                        "canary at {}%: paused until `deployctl promote`",
                        state.weight
                    ));
                    r.canary = Some(state);
                    p.status.rollout = Some(r);
                    return None;
                }
            }
        } else if let Some(analysis) = &step.analysis {
            if spec.gates.is_empty() {
                true
            } else {
                if r.step != Some(RolloutStep::Analysing) || r.analysis_started_at.is_none() {
                    r.step = Some(RolloutStep::Analysing);
                    r.analysis_started_at = Some(now.clone());
                    cs.gates = spec
                        .gates
                        .iter()
                        .map(crate::gates::analysis::fresh)
                        .collect();
                }
                let window = analysis
                    .duration
                    .as_ref()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| p.analysis_window());
                let a_started = r.analysis_started_at.clone().unwrap_or_else(|| now.clone());
                let window_over = elapsed(&a_started, &now) >= window;
                let gates = p.analyse(Some(name), &spec.gates, &cs.gates, window_over);
                cs.gates = gates.clone();
                if gates.iter().all(|g| g.phase == GatePhase::Passed) {
                    r.step = Some(RolloutStep::Progressing);
                    r.analysis_started_at = None;
                    true
                } else {
                    done(p, &state, cs);
                    r.canary = Some(state);
                    p.status.rollout = Some(r);
                    decide(
                        p,
                        Some(name),
                        &spec.gates,
                        gates,
                        window_over,
                        &a_started,
                        cs,
                    );
                    if cs.phase == ComponentPhase::Progressing && !window_over {
                        let left = window.saturating_sub(elapsed(&a_started, &now));
                        p.requeue_in(left);
                        cs.message = Some(format!(
                            "canary at {}%: {}",
                            cs.canary.as_ref().map_or(0, |c| c.weight),
                            cs.message.clone().unwrap_or_default()
                        ));
                    }
                    return None;
                }
            }
        } else {
            // Refused by validation; nothing to wait for.
            true
        };
        if advance {
            state.step += 1;
            state.step_started_at = Some(now.clone());
            let next = steps.get(state.step as usize);
            p.event(
                false,
                "CanaryStep",
                match next {
                    Some(s) => format!(
                        "Component {name}: canary step {}/{n}: {}",
                        state.step + 1,
                        s
                    ),
                    None => format!(
                        "Component {name}: every canary step passed; revision {} replaces the stable pods",
                        target.number
                    ),
                },
            );
        }
    }
}

/// Whether the gates of a canary's component are measured now although no analysis
/// runs: at a pause, once canary pods run.
pub(super) fn measured_while_paused(desired: &RevisionRef, k: &CanaryState) -> bool {
    desired
        .component(&k.component)
        .and_then(|c| c.canary.as_ref())
        .and_then(|c| c.steps.get(k.step.max(0) as usize))
        .is_some_and(|s| s.pause.is_some() && k.weight > 0)
}

/// Whether this reconcile keeps component `name`'s canary: a rollout of the spec's
/// revision is at its canary steps, has not failed, and the stable Deployment does not
/// run the new revision yet (Available).
fn wanted(p: &Planner<'_>, name: &str) -> bool {
    if p.status.rollback.is_some() {
        return false;
    }
    let Some(r) = &p.status.rollout else {
        return false;
    };
    let ours = r.revision == p.input.desired.number
        && r.failure.is_none()
        && r.canary.as_ref().is_some_and(|c| c.component == name);
    ours && !(p.up_to_date(p.input.desired, name) && p.available(name))
}

/// Removes every canary no rollout step wants (a failed gate, a missed deadline, a
/// rollback, the last step done, a changed spec): the stable Deployment back to its full
/// replicas first, then the canary to zero and deleted, in the same reconcile.
pub(super) fn sweep(p: &mut Planner<'_>) {
    let observed = p.input.observed;
    for (name, w) in observed {
        let Some(cw) = &w.canary else { continue };
        if wanted(p, name) {
            continue;
        }
        p.actions
            .retain(|a| !matches!(a, Action::Canary { component, .. } if component == name));
        // A rollback that applies the component in this pass restores the stable
        // Deployment itself; re-applying what it runs now would undo that.
        let reapplied = p
            .actions
            .iter()
            .any(|a| matches!(a, Action::Apply { component, .. } if component == name));
        let stable_revision = w
            .revision
            .filter(|s| !reapplied && p.revision(*s).is_some());
        let aborted = cw.revision != w.revision;
        p.actions.push(Action::EndCanary {
            component: name.clone(),
            stable_revision,
        });
        if aborted {
            p.event(
                true,
                "CanaryAborted",
                format!(
                    "Component {name}: the canary of revision {} is scaled to 0 and removed; {} stable pod(s) of revision {} take all traffic",
                    cw.revision.map_or("?".into(), |r| r.to_string()),
                    stable_revision
                        .and_then(|s| p.revision(s))
                        .and_then(|rev| rev.component(name))
                        .map_or(w.replicas, |c| c.replicas()),
                    stable_revision.map_or("?".into(), |r| r.to_string()),
                ),
            );
        }
    }
}
