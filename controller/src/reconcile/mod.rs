//! The reconcile pipeline for one `ProductionStack`:
//! validate (pure) → resolve config references (read, then pure) → revision (find or
//! create, with its config copies) → observe (read the world) → plan (pure)
//! → apply (at most one component) → status and Events.
//!
//! Every step is idempotent and the rollout state lives in the status, so a reconcile
//! interrupted anywhere is simply run again.

pub mod apply;
pub mod autoscale;
pub mod build;
pub mod cleanup;
pub mod configs;
pub mod observe;
pub mod operations;
pub mod plan;
pub mod replicas;
pub mod resolve;
pub mod revisions;
pub mod snapshots;
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
    let result = match current_if_deleting(&api, stack).await {
        Ok(Some(stack)) => finalizer(&api, labels::FINALIZER, stack, |event| async {
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
        }),
        // Gone: its cleanup is done.
        Ok(None) => Ok(Action::await_change()),
        Err(e) => Err(e),
    };
    ctx.metrics.reconciled(
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    result
}

/// The stack to reconcile: the cached copy, or for a stack being deleted, the API
/// server's (None when it is gone).
///
/// Cleanup must run once. Its status write wakes the stack again, and the next reconcile
/// can start from a cached copy older than the finalizer's removal; read again, the stack
/// is gone or has no finalizer left, and nothing is done twice. Deletions are rare, so
/// the GET costs nothing at scale.
async fn current_if_deleting(
    api: &Api<ProductionStack>,
    stack: Arc<ProductionStack>,
) -> Result<Option<Arc<ProductionStack>>> {
    if stack.metadata.deletion_timestamp.is_none() {
        return Ok(Some(stack));
    }
    Ok(api.get_opt(&stack.name_any()).await?.map(Arc::new))
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

    // 1. Validate what the schema could not: refuse before touching anything. A rollback
    // in progress is the exception: it goes on with the revisions already recorded (it
    // needs nothing from the new spec), so a typo pushed mid-incident does not leave the
    // stack half rolled back.
    let refused = |invalid: validation::InvalidSpec| {
        let previous = &previous;
        let now = &now;
        let (ns, name) = (&ns, &name);
        async move {
            let (new_status, event) = plan::invalid(
                previous,
                stack.metadata.generation,
                &invalid.to_string(),
                now,
            );
            status::write(&ctx.client, stack, previous, &new_status).await?;
            if let Some(e) = event {
                ctx.event(stack, e.warning, e.reason, e.note).await;
            }
            ctx.metrics.set_stack(ns, name, Some(&new_status));
            Ok::<_, Error>(Action::await_change())
        }
    };
    // 1b. Resolve: the components with their ConfigMap/Secret references pointing at
    // copies of what the objects hold now. A missing required object refuses the spec
    // like an invalid field (its watch wakes the stack once it exists).
    // `templateFrom` is filled in first, so its template's config is versioned too; then
    // the resolved components are checked as a revision (the referenced template was not
    // checked with the spec). The schema's rules come first, then the administrator's:
    // gates reach only what the controller allows (gates::policy).
    let mut referenced_workloads = resolve::Workloads::new();
    let validated = validation::validate(&name, &stack.spec)
        .and_then(|order| ctx.gate_policy.check(&stack.spec).map(|()| order));
    let resolved = match validated {
        Ok(_) => {
            referenced_workloads =
                configs::read_workloads(&ctx.client, &ns, &stack.spec.components).await?;
            match resolve::fill_templates(&stack.spec.components, &referenced_workloads) {
                Ok(filled) => {
                    let sources = configs::read(&ctx.client, &ns, &filled, ctx.versioned).await?;
                    resolve::resolve(&name, &filled, &sources, ctx.versioned).and_then(|r| {
                        plan::RevisionRef::new(&name, 0, r.components.clone()).map(|_| r)
                    })
                }
                Err(invalid) => Err(invalid),
            }
        }
        Err(invalid) => Err(invalid),
    };
    let (desired, generation) = match resolved {
        Ok(resolved) => {
            // 2. The revision the resolved components map to (created once, found again
            // after a crash), and its config copies before the status records it.
            let revision = revisions::ensure_current(ctx, stack, &resolved).await?;
            if let Some(owner) = revision.owner.as_ref() {
                configs::ensure_copies(&ctx.client, &ns, &resolved.copies, owner).await?;
            }
            if revision.created {
                // Recorded on the side: an Event is a request, and this one need not delay
                // the rollout it announces.
                let (ctx, stack) = (ctx.clone(), stack.clone());
                let note = format!("Created revision {} ({})", revision.number, revision.hash);
                tokio::spawn(async move {
                    ctx.event(&stack, false, "RevisionCreated", note).await;
                });
            }
            let desired = plan::RevisionRef::new(&name, revision.number, resolved.components)
                .expect("a validated spec makes a valid revision");
            (desired, stack.metadata.generation)
        }
        Err(invalid) if previous.rollback.is_some() => {
            let all = revisions::load_all(ctx, stack).await?;
            let Some(current) = previous.current_revision.and_then(|n| all.get(&n)).cloned() else {
                return refused(invalid).await;
            };
            if previous.observed_generation != stack.metadata.generation {
                ctx.event(
                    stack,
                    true,
                    deployctl_api::conditions::reason::INVALID_SPEC,
                    format!("{invalid}; the rollback in progress goes on, then the stack waits for a valid spec"),
                )
                .await;
            }
            // Not observed: the new generation is not what the stack runs.
            (current, previous.observed_generation)
        }
        Err(invalid) => return refused(invalid).await,
    };

    // 3. Operations, and the history when a rollback, hold or operation may need it.
    let (ops, recovered) = operations::pending(ctx, stack).await?;
    for op in &recovered {
        operations::record_recovered(&ctx.client, &ns, op).await?;
    }
    // Listing the history reads every ControllerRevision of the namespace (label selectors
    // are filtered after the read), so do it only when a rollback, a hold or an operation
    // may need another revision: never for a first rollout or a stable stack.
    let can_roll_back = previous
        .stable_revision
        .is_some_and(|s| s != desired.number);
    // The stack's data: its snapshots advance (Jobs started, results recorded) before
    // planning, so the planner sees them as they are now.
    let mut data_world = if snapshots::involved(stack) {
        snapshots::ensure_store(&ctx.client, stack).await?;
        snapshots::read(&ctx.client, stack).await?
    } else {
        snapshots::DataWorld::default()
    };
    let data_pending = data_world.snapshots.iter().any(|s| {
        !s.status
            .as_ref()
            .and_then(|st| st.phase)
            .is_some_and(deployctl_api::SnapshotPhase::is_final)
    });
    let needs_history = previous.rollback.is_some()
        || data_pending
        || previous.hold.is_some()
        || !ops.is_empty()
        || stack.spec.rollout.rollback_after_promotion;
    let history = if needs_history {
        revisions::load_all(ctx, stack).await?
    } else if can_roll_back {
        // A rollout that may fail needs only the stable revision: one GET by name.
        revisions::load_stable(ctx, stack).await?
    } else {
        BTreeMap::new()
    };

    // 4. Observe every component any of these revisions has.
    let mut components: Vec<(String, deployctl_api::WorkloadKind)> = desired
        .components
        .iter()
        .map(|c| (c.name.clone(), c.kind))
        .collect();
    for r in history.values() {
        for c in &r.components {
            if !components.iter().any(|(n, _)| n == &c.name) {
                components.push((c.name.clone(), c.kind));
            }
        }
    }
    let observed = observe::workloads(ctx, stack, &components).await?;
    let (data_observed, data_wake) =
        if snapshots::involved(stack) || !data_world.snapshots.is_empty() {
            let requested: Vec<String> = ops.iter().filter_map(|o| o.snapshot.clone()).collect();
            snapshots::sync(ctx, stack, &desired, &observed, &mut data_world, &requested).await?
        } else {
            (plan::DataObserved::default(), None)
        };

    // 5. Measure the gates that are due.
    let mut measurements = BTreeMap::new();
    for (component, gate) in plan::gates_due(&stack.spec, &desired, &previous, &now) {
        let comp = component.and_then(|c| desired.component(c));
        let attempt = gate_attempts(&previous, component, &gate.name);
        // Analysis: when it started. Monitoring: the generation (new with every spec), negated
        // so it never equals an analysis time.
        let epoch = previous
            .rollout
            .as_ref()
            .and_then(|r| r.analysis_started_at.as_ref())
            .map(|t| t.0.as_second())
            .unwrap_or_else(|| -stack.metadata.generation.unwrap_or(0));
        let subject = crate::gates::measure::Subject {
            stack,
            component: comp,
            components: &desired.components,
            revision: desired.number,
            attempt,
            epoch,
            pods_of_revision: canary_in_progress(&previous, &desired, component)
                .then_some(desired.number),
        };
        if let Some(m) = ctx.measurer.measure(subject, gate).await {
            ctx.metrics.gate_measured(
                (&ns, &name, component, &gate.name),
                crate::gates::analysis::kind(gate),
                m.outcome,
            );
            measurements.insert(plan::gate_key(component, &gate.name), m);
        }
    }

    // 6. Plan.
    let decision = plan::plan(plan::PlanInput {
        spec: &stack.spec,
        generation,
        desired: &desired,
        revisions: &history,
        observed: &observed,
        measurements: &measurements,
        operations: &ops,
        data: &data_observed,
        stack: &name,
        previous: &previous,
        now,
    });

    // 7. Record the decision first: a controller that dies after acting but before
    // recording would re-plan from the old status on restart and could undo the act (apply
    // the failed revision again in the middle of its rollback). Acting after recording is
    // safe: re-planning notices what was not done.
    status::write(&ctx.client, stack, &previous, &decision.status).await?;
    ctx.metrics.set_stack(&ns, &name, Some(&decision.status));
    ctx.metrics
        .set_repository(&ns, &name, decision.status.snapshot_repository.as_ref());

    // 8. Act.
    for action in &decision.actions {
        match action {
            plan::Action::Apply {
                component,
                revision: rev,
            } => {
                let source = if *rev == desired.number {
                    &desired
                } else {
                    history
                        .get(rev)
                        .expect("planned revisions come from the history")
                };
                let spec = source
                    .component(component)
                    .expect("planned components come from their revision");
                let objects =
                    build::component_objects(stack, spec, &source.hashes[component], *rev);
                apply::component(ctx, &ns, &objects).await?;
                tracing::info!(stack = %key, component, revision = rev, "applied component");
            }
            plan::Action::Canary {
                component,
                revision: rev,
                canary_replicas,
                stable_revision,
                stable_replicas,
            } => {
                let source = |n: i64| {
                    if n == desired.number {
                        &desired
                    } else {
                        history
                            .get(&n)
                            .expect("planned revisions come from the history")
                    }
                };
                let (new, old) = (source(*rev), source(*stable_revision));
                let spec = new
                    .component(component)
                    .expect("planned components come from their revision");
                let Some(canary) = build::canary_deployment(
                    stack,
                    spec,
                    &new.hashes[component],
                    *rev,
                    *canary_replicas,
                ) else {
                    continue;
                };
                let stable_spec = old
                    .component(component)
                    .expect("the stable revision has the component");
                let stable = build::with_replicas(
                    build::component_objects(
                        stack,
                        stable_spec,
                        &old.hashes[component],
                        *stable_revision,
                    ),
                    *stable_replicas,
                );
                apply::canary(ctx, &ns, &canary, &stable).await?;
                tracing::info!(stack = %key, component, revision = rev, canary_replicas, stable_replicas, "canary step applied");
            }
            plan::Action::EndCanary {
                component,
                stable_revision,
            } => {
                let source = stable_revision.and_then(|n| {
                    if n == desired.number {
                        Some(&desired)
                    } else {
                        history.get(&n)
                    }
                });
                let stable = source.and_then(|rev| {
                    let spec = rev.component(component)?;
                    Some(build::component_objects(
                        stack,
                        spec,
                        &rev.hashes[component],
                        rev.number,
                    ))
                });
                apply::end_canary(ctx, stack, component, stable.as_ref()).await?;
                tracing::info!(stack = %key, component, stable_revision = ?stable_revision, "canary removed");
            }
            plan::Action::Delete { component } => {
                apply::delete_component(&ctx.client, stack, component).await?;
                tracing::info!(stack = %key, component, "deleted component");
            }
            plan::Action::Snapshot {
                component, name, ..
            } => {
                snapshots::create_snapshot(
                    &ctx.client,
                    stack,
                    component,
                    name,
                    deployctl_api::SnapshotReason::BeforeRollout,
                )
                .await?;
                tracing::info!(stack = %key, component, snapshot = %name, "requested snapshot");
            }
            plan::Action::Stop {
                component,
                revision: rev,
            } => {
                let source = if *rev == desired.number {
                    &desired
                } else {
                    history
                        .get(rev)
                        .expect("planned revisions come from the history")
                };
                snapshots::stop(ctx, stack, source, component).await?;
                tracing::info!(stack = %key, component, revision = rev, "stopped component for its data");
            }
            plan::Action::Restore {
                component,
                snapshot,
                job,
            } => {
                // The data spec of the revision the rollback goes to, else any other.
                let to = decision.status.rollback.as_ref().map(|r| r.to_revision);
                let mut revisions: Vec<&plan::RevisionRef> =
                    to.and_then(|n| history.get(&n)).into_iter().collect();
                revisions.push(&desired);
                revisions.extend(history.values().rev());
                snapshots::restore(
                    ctx,
                    stack,
                    &revisions,
                    &data_world,
                    (component, snapshot, job),
                )
                .await?;
                tracing::info!(stack = %key, component, snapshot = %snapshot, job = %job, "started restore");
            }
            plan::Action::Prune {
                component,
                job,
                forget,
                snapshots: forgotten,
            } => {
                let mut revisions: Vec<&plan::RevisionRef> = vec![&desired];
                revisions.extend(history.values().rev());
                snapshots::prune_to_fit(
                    ctx,
                    stack,
                    &revisions,
                    (component, job.as_deref(), forget, forgotten),
                )
                .await?;
                tracing::info!(stack = %key, component, job = ?job, snapshots = ?forgotten, "pruning to fit");
            }
        }
    }
    // Adopted workloads: scaled to 0 once deployctl's copy serves (the planner's call).
    let referenced_replicas = referenced_workloads
        .iter()
        .map(|(k, w)| (k.clone(), w.replicas))
        .collect();
    for s in plan::adopt::scale_downs(&desired, &observed, &referenced_replicas) {
        configs::scale_down(&ctx.client, &ns, &s).await?;
        tracing::info!(stack = %key, component = %s.component, kind = %s.kind, workload = %s.name, "scaled the referenced workload to 0");
        ctx.event(
            stack,
            false,
            "ScaledDownReferenced",
            format!(
                "Scaled {} {} from {} to 0 replicas: component {} runs its template as {}; tell the tool that applies it to ignore spec.replicas, or set replicas: 0 there",
                s.kind,
                s.name,
                s.from,
                s.component,
                deployctl_api::child_name(&name, &s.component)
            ),
        )
        .await;
    }
    if decision.promoted {
        for orphan in apply::orphans(ctx, stack, &desired.order).await? {
            apply::delete_component(&ctx.client, stack, &orphan).await?;
            ctx.event(
                stack,
                false,
                "ComponentRemoved",
                format!(
                    "Removed component {orphan}: revision {} no longer has it",
                    desired.number
                ),
            )
            .await;
        }
    }

    // 9. Operation results, Events, metrics.
    for r in &decision.operations {
        operations::record(&ctx.client, &ns, r).await?;
    }
    crate::notifications::dispatch(
        ctx,
        stack,
        stack.metadata.generation,
        crate::notifications::kinds::notices(&decision.events, &previous, &decision.status),
    );
    for e in decision.events {
        ctx.event(stack, e.warning, e.reason, e.note).await;
    }
    for o in &decision.outcomes {
        ctx.metrics.outcome(&ns, &name, o);
    }

    let resync = ctx.resync;
    // The snapshot schedules wake the stack too.
    let requeue_after = match (decision.requeue_after, data_wake) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match requeue_after {
        _ if !decision.actions.is_empty() => Action::requeue(Duration::from_secs(2).min(resync)),
        Some(after) => Action::requeue(after.min(resync) + Duration::from_millis(50)),
        None => Action::requeue(resync),
    })
}

/// Whether `component` is at one of its canary steps (its gates then measure only the
/// new pods).
fn canary_in_progress(
    previous: &deployctl_api::ProductionStackStatus,
    desired: &plan::RevisionRef,
    component: Option<&str>,
) -> bool {
    let (Some(c), Some(r)) = (component, previous.rollout.as_ref()) else {
        return false;
    };
    let steps = desired
        .component(c)
        .and_then(|s| s.canary.as_ref())
        .map_or(0, |k| k.steps.len() as i32);
    r.revision == desired.number
        && r.canary
            .as_ref()
            .is_some_and(|k| k.component == c && k.step < steps)
}

/// Measurements already taken of a gate in the current analysis (names Job runs).
fn gate_attempts(
    previous: &deployctl_api::ProductionStackStatus,
    component: Option<&str>,
    gate: &str,
) -> i32 {
    let statuses = match component {
        Some(c) => previous
            .components
            .iter()
            .find(|s| s.name == c)
            .map(|s| s.gates.as_slice())
            .unwrap_or_default(),
        None => previous.gates.as_slice(),
    };
    statuses
        .iter()
        .find(|g| g.name == gate)
        .map(|g| g.successes + g.failures + g.errors)
        .unwrap_or(0)
}
