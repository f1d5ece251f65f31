//! Reads the StackOperations that target a stack and records what became of them.
//! Acting on them is the planner's job (pure); this module is the I/O around it.

use crate::error::Result;
use crate::reconcile::plan::{OperationResult, PendingOperation};
use deployctl_api::{ProductionStack, StackOperation, StackOperationStatus};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// An operation the stack acted on before a restart, whose result was not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Its name.
    pub name: String,
    /// Whether the stack refused it (as its status records).
    pub refused: bool,
}

/// Operations for `stack` with no result yet, oldest first; and those the stack already
/// acted on but whose result was not written (the controller stopped in between).
pub async fn pending(
    ctx: &crate::context::Context,
    stack: &ProductionStack,
) -> Result<(Vec<PendingOperation>, Vec<Recovered>)> {
    let ns = stack.namespace().unwrap_or_default();
    let api: Api<StackOperation> = Api::namespaced(ctx.client.clone(), &ns);
    let processed = stack
        .status
        .as_ref()
        .map(|s| s.processed_operations.clone())
        .unwrap_or_default();
    let refused = stack
        .status
        .as_ref()
        .map(|s| s.refused_operations.clone())
        .unwrap_or_default();
    let unanswered = |o: &StackOperation| {
        o.spec.stack == stack.name_any()
            && o.status.as_ref().and_then(|s| s.phase).is_none()
            && o.metadata.deletion_timestamp.is_none()
    };
    let mut ops: Vec<StackOperation> = match &ctx.caches {
        // The cache may hold a copy from before a result was written: an operation acted
        // on twice, or a recovery note written over its result. Operations are few, so
        // each that looks unanswered is read again.
        Some(c) => {
            let mut fresh = Vec::new();
            for o in c.operations_for(&ns, &stack.name_any()) {
                if unanswered(&o) {
                    fresh.extend(api.get_opt(&o.name_any()).await?.filter(unanswered));
                }
            }
            fresh
        }
        None => api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(unanswered)
            .collect(),
    };
    ops.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
    let (done, todo): (Vec<StackOperation>, Vec<StackOperation>) = ops
        .into_iter()
        .partition(|o| processed.contains(&o.name_any()));
    Ok((
        todo.into_iter()
            .map(|o| PendingOperation {
                name: o.name_any(),
                action: o.spec.action,
                to_revision: o.spec.to_revision,
                reason: o.spec.reason.clone(),
                requested_by: o.spec.requested_by.clone(),
                snapshot: o.spec.snapshot.clone(),
            })
            .collect(),
        done.into_iter()
            .map(|o| Recovered {
                refused: refused.contains(&o.name_any()),
                name: o.name_any(),
            })
            .collect(),
    ))
}

/// Writes an operation's result to its status.
pub async fn record(client: &Client, ns: &str, result: &OperationResult) -> Result<()> {
    write(
        client,
        ns,
        &result.name,
        StackOperationStatus {
            phase: Some(result.phase),
            message: Some(result.message.clone()),
            processed_at: Some(crate::context::now()),
            target_revision: result.target_revision,
        },
    )
    .await
}

/// Marks an operation the stack acted on before a restart, whose detailed result is in
/// the stack's Events: refused stays refused.
pub async fn record_recovered(client: &Client, ns: &str, op: &Recovered) -> Result<()> {
    let (phase, message) = if op.refused {
        (
            deployctl_api::OperationPhase::Failed,
            "refused; the reason is in the stack's Events (OperationRefused)",
        )
    } else {
        (
            deployctl_api::OperationPhase::Succeeded,
            "acted on; see the stack's Events for details",
        )
    };
    write(
        client,
        ns,
        &op.name,
        StackOperationStatus {
            phase: Some(phase),
            message: Some(message.into()),
            processed_at: Some(crate::context::now()),
            target_revision: None,
        },
    )
    .await
}

async fn write(client: &Client, ns: &str, name: &str, status: StackOperationStatus) -> Result<()> {
    let api: Api<StackOperation> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "deployctl.dev/v1alpha1",
        "kind": "StackOperation",
        "status": status,
    });
    match api
        .patch_status(
            name,
            &PatchParams::apply(deployctl_api::labels::STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
