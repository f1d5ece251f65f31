//! The stack's phase, message, ready count and kstatus conditions, derived from what the
//! rest of the planner decided.

use super::{PlannedEvent, Planner};
use deployctl_api::conditions::{self, reason};
use deployctl_api::{ComponentPhase, ProductionStackStatus, StackPhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub(super) fn finish(p: &mut Planner<'_>) {
    let total = p.status.components.len();
    let available = p
        .status
        .components
        .iter()
        .filter(|c| c.phase == ComponentPhase::Available)
        .count();
    p.status.ready_components = Some(format!("{available}/{total}"));
    let desired = p.input.desired.number;

    // (phase, ready, reconciling, stalled, reason, message)
    let (phase, ready, reconciling, stalled, why, message): (
        StackPhase,
        bool,
        bool,
        bool,
        &str,
        String,
    ) = if let Some(msg) = p.rollback_failure.clone() {
        (
            StackPhase::Degraded,
            false,
            false,
            true,
            p.rollback_failure_reason.unwrap_or(reason::ROLLBACK_FAILED),
            msg,
        )
    } else if let Some(rb) = &p.status.rollback {
        let why = if p.rollback_over_deadline {
            reason::ROLLBACK_DEADLINE_EXCEEDED
        } else {
            reason::ROLLING_BACK
        };
        let msg = format!(
            "rolling back from revision {} to {}{}: {}",
            rb.from_revision,
            rb.to_revision,
            rb.component
                .as_ref()
                .map(|c| format!(" (component {c})"))
                .unwrap_or_default(),
            rb.reason
        );
        (StackPhase::RollingBack, false, true, false, why, msg)
    } else if let Some(h) = &p.status.hold {
        let msg = format!(
                "rolled back to revision {}; revision {} is held back until the spec changes or `deployctl retry`: {}",
                h.revision, h.held_back, h.reason
            );
        (
            StackPhase::RolledBack,
            false,
            false,
            true,
            reason::ROLLED_BACK,
            msg,
        )
    } else if let Some(f) = p.status.rollout.as_ref().and_then(|r| r.failure.clone()) {
        let why = p
            .failure_reason
            .unwrap_or(reason::PROGRESS_DEADLINE_EXCEEDED);
        (StackPhase::Degraded, false, false, true, why, f)
    } else if let Some(msg) = p.inconclusive.clone() {
        let msg = format!("{msg}; paused for a person: `deployctl promote`, `resume` (measure again) or `rollback`");
        (
            StackPhase::Paused,
            false,
            false,
            true,
            reason::INCONCLUSIVE,
            msg,
        )
    } else if p.held_by_pause {
        let msg = match &p.status.manual_pause {
                Some(op) => format!(
                    "rollout of revision {desired} paused by {} ({}); `deployctl resume` to go on",
                    op.requested_by.as_deref().unwrap_or("an operator"),
                    op.operation
                ),
                None => format!(
                    "rollout of revision {desired} is paused; set spec.rollout.paused to false to go on"
                ),
            };
        (StackPhase::Paused, false, false, false, reason::PAUSED, msg)
    } else if let Some(r) = &p.status.rollout {
        let what = match (&r.component, r.step) {
            (Some(c), Some(step)) => format!(": component {c} ({step:?})"),
            (Some(c), None) => format!(": component {c}"),
            (None, Some(step)) => format!(" ({step:?})"),
            (None, None) => String::new(),
        };
        let msg = match &p.capacity_wait {
            Some(note) => format!("rolling out revision {}: {note}", r.revision),
            None => format!("rolling out revision {}{what}", r.revision),
        };
        (
            StackPhase::Progressing,
            false,
            true,
            false,
            reason::ROLLING_OUT,
            msg,
        )
    } else if let Some(msg) = p.monitor_failure.clone() {
        (
            StackPhase::Degraded,
            false,
            false,
            false,
            reason::GATE_FAILED,
            msg,
        )
    } else if available == total {
        let msg = format!("revision {desired} is Healthy");
        (
            StackPhase::Healthy,
            true,
            false,
            false,
            reason::AVAILABLE,
            msg,
        )
    } else {
        let bad: Vec<&str> = p
            .status
            .components
            .iter()
            .filter(|c| c.phase != ComponentPhase::Available)
            .map(|c| c.name.as_str())
            .collect();
        let msg = format!("not Available: {}", bad.join(", "));
        (
            StackPhase::Degraded,
            false,
            false,
            false,
            reason::COMPONENT_UNAVAILABLE,
            msg,
        )
    };

    if phase == StackPhase::Paused
        && p.input.previous.phase != Some(StackPhase::Paused)
        && p.inconclusive.is_none()
    {
        p.event(false, reason::PAUSED, message.clone());
    }
    p.status.phase = Some(phase);
    p.status.message = Some(message.clone());
    let generation = p.input.generation;
    let now = p.now();
    let conds = &mut p.status.conditions;
    conditions::set(
        conds,
        conditions::READY,
        ready,
        why,
        &message,
        generation,
        &now,
    );
    conditions::set(
        conds,
        conditions::RECONCILING,
        reconciling,
        if reconciling { why } else { reason::IDLE },
        if reconciling {
            message.as_str()
        } else {
            "no rollout in progress"
        },
        generation,
        &now,
    );
    conditions::set(
        conds,
        conditions::STALLED,
        stalled,
        if stalled { why } else { reason::IDLE },
        if stalled {
            message.as_str()
        } else {
            "not stalled"
        },
        generation,
        &now,
    );
}

/// Status for a spec the controller refuses.
pub(super) fn invalid(
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
