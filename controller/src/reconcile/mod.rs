//! The reconcile pipeline for one `ProductionStack`:
//! validate (pure) → revision (find or create) → observe (read the world) → plan (pure)
//! → apply (at most one component) → status and Events.
//!
//! Every step is idempotent and the rollout state lives in the status, so a reconcile
//! interrupted anywhere is simply run again.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod observe;
pub mod plan;
pub mod revisions;
pub mod status;

use crate::context::Context;
use crate::error::{Error, Result};
use deployctl_api::{labels, validation, ProductionStack};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entry point called by the kube-runtime `Controller` for every change of a stack or of
/// a child it owns.
pub async fn reconcile(stack: Arc<ProductionStack>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = stack
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ProductionStack> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, labels::FINALIZER, stack, |event| async {
        match event {
            FinalizerEvent::Apply(stack) => apply_stack(&stack, &ctx).await,
            FinalizerEvent::Cleanup(stack) => cleanup::cleanup(&stack, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled(
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    result
}

/// What the controller does after a failed reconcile: log it, tell the person through
/// an Event, and try again with a delay that grows with the kind of failure.
pub fn error_policy(stack: Arc<ProductionStack>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(stack = %stack.name_any(), namespace = ?stack.namespace(), category = error.category(), error = %error, "reconcile failed");
    let ctx2 = ctx.clone();
    let note = error.to_string();
    let reason = match error {
        Error::Conflict { .. } => "FieldConflict",
        Error::ChildInvalid { .. } => "ChildRefused",
        _ => "ReconcileError",
    };
    tokio::spawn(async move {
        ctx2.event(&stack, true, reason, note).await;
    });
    match error {
        Error::Kube(kube::Error::Api(s)) if s.code == 409 => {
            Action::requeue(Duration::from_secs(1))
        }
        _ => Action::requeue(Duration::from_secs(10)),
    }
}

async fn apply_stack(stack: &ProductionStack, ctx: &Context) -> Result<Action> {
    let name = stack.name_any();
    let ns = stack.namespace().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let previous = stack.status.clone().unwrap_or_default();
    let now = crate::context::now();

    // 1. Validate what the schema could not: refuse before touching anything.
    let order = match validation::validate(&name, &stack.spec) {
        Ok(order) => order,
        Err(invalid) => {
            let (new_status, event) = plan::invalid(
                &previous,
                stack.metadata.generation,
                &invalid.to_string(),
                &now,
            );
            status::write(&ctx.client, stack, &previous, &new_status).await?;
            if let Some(e) = event {
                ctx.event(stack, e.warning, e.reason, e.note).await;
            }
            ctx.metrics.set_phase(&key, new_status.phase);
            return Ok(Action::await_change());
        }
    };

    // 2. The revision the spec maps to (created once, found again after a crash).
    let revision = revisions::ensure_current(&ctx.client, stack).await?;
    if revision.created {
        ctx.event(
            stack,
            false,
            "RevisionCreated",
            format!("Created revision {} ({})", revision.number, revision.hash),
        )
        .await;
    }

    // 3. Observe, 4. plan.
    let observed = observe::workloads(&ctx.client, stack).await?;
    let hashes: BTreeMap<String, String> = stack
        .spec
        .components
        .iter()
        .map(|c| (c.name.clone(), revisions::component_hash(c)))
        .collect();
    let decision = plan::plan(plan::PlanInput {
        spec: &stack.spec,
        generation: stack.metadata.generation,
        order: &order.0,
        revision: revision.number,
        revision_hash: &revision.hash,
        hashes: &hashes,
        observed: &observed,
        previous: &previous,
        now,
    });

    // 5. Apply the one component the plan chose.
    if let Some(component) = &decision.apply {
        let spec = stack
            .spec
            .component(component)
            .expect("planned components come from the spec");
        let objects = build::component_objects(stack, spec, &hashes[component], revision.number);
        apply::component(&ctx.client, &ns, &objects).await?;
        tracing::info!(stack = %key, component, revision = revision.number, "applied component");
    }

    // 6. Status and Events.
    status::write(&ctx.client, stack, &previous, &decision.status).await?;
    for e in decision.events {
        ctx.event(stack, e.warning, e.reason, e.note).await;
    }
    ctx.metrics.set_phase(&key, decision.status.phase);

    let resync = ctx.resync;
    Ok(match (decision.apply, decision.requeue_after) {
        // Workload watches bring us back when the applied component progresses; the
        // short requeue only guards against a missed event.
        (Some(_), _) => Action::requeue(Duration::from_secs(5).min(resync)),
        (None, Some(after)) => Action::requeue(after.min(resync) + Duration::from_millis(200)),
        (None, None) => Action::requeue(resync),
    })
}
