//! Applies a component's objects with server-side apply under deployctl's field manager,
//! never forcing: a field owned by another manager is reported as a conflict, not
//! overwritten.

use crate::error::{Error, Result};
use crate::reconcile::autoscale;
use crate::reconcile::build::{ComponentObjects, Workload};
use deployctl_api::labels::FIELD_MANAGER;
use deployctl_api::WorkloadKind;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Applies the claims, then the Service, then the workload (so pods never start without
/// their volumes), and removes a workload of the other kind left from an earlier spec.
pub async fn component(
    ctx: &crate::context::Context,
    ns: &str,
    objects: &ComponentObjects,
) -> Result<()> {
    let client = &ctx.client;
    for claim in &objects.claims {
        ensure_claim(client, ns, claim).await?;
    }
    if let Some(svc) = &objects.service {
        apply(client, ns, "Service", svc, false).await?;
    }
    // Whether a workload of the other kind may exist: the cache knows (a kind change is
    // rare, and its old workload has long been in the cache); without one, ask.
    let other_may_exist = |kind, name: &str| {
        ctx.caches
            .as_ref()
            .is_none_or(|c| c.has_workload(kind, ns, name))
    };
    // An autoscaled component's count is the HPA's: see `autoscale`.
    let mut workload = objects.workload.clone();
    let prepared =
        autoscale::prepare(ctx, ns, &mut workload, objects.hpa, objects.replicas).await?;
    // No longer autoscaled (no flag, no HPA) but it was: the spec's count is taken back
    // from the autoscaler that set it last. Any other conflict (a person's `kubectl scale`
    // of a component never autoscaled, too) is still reported.
    let replicas_only = |e: &Error| {
        !prepared.autoscaled
            && matches!(e, Error::Conflict { message, .. } if autoscale::only_replicas_conflict(message))
    };
    let (kind, name) = match &workload {
        Workload::Deployment(d) => {
            if other_may_exist(WorkloadKind::StatefulSet, &d.name_any()) {
                remove_other_kind::<StatefulSet>(client, ns, &d.name_any(), d.as_ref()).await?;
            }
            match apply(client, ns, "Deployment", d.as_ref(), false).await {
                Err(e) if replicas_only(&e) => {
                    let live = Api::<Deployment>::namespaced(client.clone(), ns)
                        .get_metadata(&d.name_any())
                        .await?;
                    if !autoscale::was_autoscaled(&live.metadata) {
                        return Err(e);
                    }
                    tracing::info!(namespace = ns, workload = %d.name_any(), "no longer autoscaled: taking spec.replicas back");
                    apply(client, ns, "Deployment", d.as_ref(), true).await?
                }
                other => other?,
            }
            (WorkloadKind::Deployment, d.name_any())
        }
        Workload::StatefulSet(s) => {
            if other_may_exist(WorkloadKind::Deployment, &s.name_any()) {
                remove_other_kind::<Deployment>(client, ns, &s.name_any(), s.as_ref()).await?;
            }
            match apply(client, ns, "StatefulSet", s.as_ref(), false).await {
                Err(e) if replicas_only(&e) => {
                    let live = Api::<StatefulSet>::namespaced(client.clone(), ns)
                        .get_metadata(&s.name_any())
                        .await?;
                    if !autoscale::was_autoscaled(&live.metadata) {
                        return Err(e);
                    }
                    tracing::info!(namespace = ns, workload = %s.name_any(), "no longer autoscaled: taking spec.replicas back");
                    apply(client, ns, "StatefulSet", s.as_ref(), true).await?
                }
                other => other?,
            }
            (WorkloadKind::StatefulSet, s.name_any())
        }
    };
    if let Some(n) = prepared.scale_after {
        autoscale::scale(client, ns, kind, &name, n).await?;
    }
    Ok(())
}

/// Runs a canary step: the canary Deployment first (so new pods are coming before any
/// stable pod goes), then the stable objects at their scaled replica count.
pub async fn canary(
    ctx: &crate::context::Context,
    ns: &str,
    canary: &Deployment,
    stable: &ComponentObjects,
) -> Result<()> {
    apply(&ctx.client, ns, "Deployment", canary, false).await?;
    component(ctx, ns, stable).await
}

/// Ends a canary: the stable objects back at full size (when given), then the canary
/// Deployment scaled to zero, which takes its pods out of the Service's endpoints at
/// once, and deleted.
pub async fn end_canary(
    ctx: &crate::context::Context,
    stack: &deployctl_api::ProductionStack,
    component_name: &str,
    stable: Option<&ComponentObjects>,
) -> Result<()> {
    let ns = stack.namespace().unwrap_or_default();
    if let Some(stable) = stable {
        component(ctx, &ns, stable).await?;
    }
    let name = deployctl_api::canary_name(&stack.name_any(), component_name);
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let zero = serde_json::json!({"spec": {"replicas": 0}});
    match api
        .patch_scale(&name, &PatchParams::default(), &Patch::Merge(&zero))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    crate::reconcile::cleanup::delete_owned::<Deployment>(&ctx.client, &ns, &name, stack).await
}

/// Deletes a component's workload (either kind) and Service, when owned by the stack.
pub async fn delete_component(
    client: &Client,
    stack: &deployctl_api::ProductionStack,
    component: &str,
) -> Result<()> {
    let ns = stack.namespace().unwrap_or_default();
    let name = deployctl_api::child_name(&stack.name_any(), component);
    crate::reconcile::cleanup::delete_owned::<Deployment>(client, &ns, &name, stack).await?;
    crate::reconcile::cleanup::delete_owned::<StatefulSet>(client, &ns, &name, stack).await?;
    let canary = deployctl_api::canary_name(&stack.name_any(), component);
    crate::reconcile::cleanup::delete_owned::<Deployment>(client, &ns, &canary, stack).await?;
    crate::reconcile::cleanup::delete_owned::<k8s_openapi::api::core::v1::Service>(
        client, &ns, &name, stack,
    )
    .await
}

/// Components that have workloads but are not in `keep` (removed from the spec).
/// Read from the controller's cache when it has one: a list would read every workload
/// of the namespace (label selectors are applied after the read), thousands of objects
/// on every promotion of a busy namespace.
pub async fn orphans(
    ctx: &crate::context::Context,
    stack: &deployctl_api::ProductionStack,
    keep: &[String],
) -> Result<Vec<String>> {
    let ns = stack.namespace().unwrap_or_default();
    let name = stack.name_any();
    let uid = stack.metadata.uid.clone();
    // The component of a workload of this stack's, if `m` is one.
    let component = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let label = |k: &str| m.labels.as_ref().and_then(|l| l.get(k));
        let ours = m.namespace.as_deref() == Some(ns.as_str())
            && label(deployctl_api::labels::STACK) == Some(&name)
            && m.owner_references
                .iter()
                .flatten()
                .any(|r| Some(&r.uid) == uid.as_ref());
        ours.then(|| label(deployctl_api::labels::COMPONENT).cloned())
            .flatten()
    };
    let mut found = std::collections::BTreeSet::new();
    match &ctx.caches {
        Some(c) => {
            for d in c.deployments.state() {
                found.extend(component(&d.metadata));
            }
            for s in c.statefulsets.state() {
                found.extend(component(&s.metadata));
            }
        }
        None => {
            let lp = kube::api::ListParams::default()
                .labels(&format!("{}={name}", deployctl_api::labels::STACK));
            for d in Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
                .list(&lp)
                .await?
            {
                found.extend(component(&d.metadata));
            }
            for s in Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
                .list(&lp)
                .await?
            {
                found.extend(component(&s.metadata));
            }
        }
    }
    Ok(found.into_iter().filter(|c| !keep.contains(c)).collect())
}

/// Server-side apply under deployctl's manager; `force` only to take `spec.replicas` back
/// from a former autoscaler (see [`component`]).
async fn apply<K>(client: &Client, ns: &str, kind: &'static str, obj: &K, force: bool) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(obj)?;
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    match api
        .patch(
            &name,
            &if force {
                PatchParams::apply(FIELD_MANAGER).force()
            } else {
                PatchParams::apply(FIELD_MANAGER)
            },
            &Patch::Apply(body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict {
            kind,
            name,
            message: e.message,
        }),
        Err(kube::Error::Api(e)) if e.code == 422 => Err(Error::ChildInvalid {
            kind,
            name,
            message: e.message,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Claims are created once and then left alone: their spec is immutable, and re-applying
/// a changed size or class would only fail. Their data is the point.
async fn ensure_claim(client: &Client, ns: &str, claim: &PersistentVolumeClaim) -> Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let name = claim.name_any();
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            claim,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 422 => Err(Error::ChildInvalid {
            kind: "PersistentVolumeClaim",
            name,
            message: e.message,
        }),
        Err(e) => Err(e.into()),
    }
}

async fn remove_other_kind<K>(
    client: &Client,
    ns: &str,
    name: &str,
    owner: &impl Resource,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = owner
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| existing.owner_references().iter().any(|e| e.uid == o.uid));
    if ours {
        match api.delete(name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
