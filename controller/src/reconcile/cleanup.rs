//! Deleting a stack: the finalizer holds the stack until its children are gone and, when
//! `spec.volumeClaimRetention` is `Delete`, its claims too. Runs exactly once even when the
//! stack was deleted while the controller was down: the finalizer waits for it.

use crate::context::Context;
use crate::error::Result;
use crate::reconcile::build::selector_labels;
use deployctl_api::conditions::{self, reason};
use deployctl_api::{child_name, labels, ProductionStack, StackPhase, VolumeClaimRetention};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Removes the stack's children; returns once nothing is left to wait for.
pub async fn cleanup(stack: &ProductionStack, ctx: &Context) -> Result<Action> {
    let ns = stack.namespace().unwrap_or_default();
    let name = stack.name_any();
    let previous = stack.status.clone().unwrap_or_default();
    if previous.phase != Some(StackPhase::Terminating) {
        let mut s = previous.clone();
        s.phase = Some(StackPhase::Terminating);
        s.message = Some("deleting the stack's workloads".into());
        let now = crate::context::now();
        conditions::set(
            &mut s.conditions,
            conditions::READY,
            false,
            reason::TERMINATING,
            "the stack is being deleted",
            stack.metadata.generation,
            &now,
        );
        crate::reconcile::status::write(&ctx.client, stack, &previous, &s).await?;
    }
    for c in &stack.spec.components {
        let child = child_name(&name, &c.name);
        delete_owned::<Deployment>(&ctx.client, &ns, &child, stack).await?;
        delete_owned::<StatefulSet>(&ctx.client, &ns, &child, stack).await?;
        delete_owned::<Service>(&ctx.client, &ns, &child, stack).await?;
    }
    let retention = stack.spec.volume_claim_retention.unwrap_or_default();
    let mut claims = 0;
    if retention == VolumeClaimRetention::Delete {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        for c in &stack.spec.components {
            let sel = selector_labels(&name, &c.name)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain([format!(
                    "{}={}",
                    labels::MANAGED_BY,
                    labels::MANAGED_BY_VALUE
                )])
                .collect::<Vec<_>>()
                .join(",");
            for pvc in api.list(&ListParams::default().labels(&sel)).await?.items {
                ignore_missing(api.delete(&pvc.name_any(), &DeleteParams::default()).await)?;
                claims += 1;
            }
        }
    }
    ctx.metrics.set_stack(&ns, &name, None);
    ctx.event(
        stack,
        false,
        "Deleted",
        match retention {
            VolumeClaimRetention::Retain => {
                "Deleted the stack's workloads and Services; its PersistentVolumeClaims are kept (volumeClaimRetention: Retain)".to_string()
            }
            VolumeClaimRetention::Delete => {
                format!("Deleted the stack's workloads, Services and {claims} PersistentVolumeClaims")
            }
        },
    )
    .await;
    Ok(Action::await_change())
}

/// Deletes `name` of kind `K` if the stack owns it.
pub async fn delete_owned<K>(
    client: &Client,
    ns: &str,
    name: &str,
    stack: &ProductionStack,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = obj
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == stack.metadata.uid.as_ref());
    if ours {
        ignore_missing(api.delete(name, &DeleteParams::background()).await)?;
    }
    Ok(())
}

fn ignore_missing<T>(r: Result<T, kube::Error>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
