//! Writes a stack's status with server-side apply under the status field manager, and
//! only when it changed, so steady stacks cost no writes and no watch events.

use crate::error::Result;
use deployctl_api::labels::STATUS_FIELD_MANAGER;
use deployctl_api::{ProductionStack, ProductionStackStatus};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Writes `new` if it differs from `previous`.
pub async fn write(
    client: &Client,
    stack: &ProductionStack,
    previous: &ProductionStackStatus,
    new: &ProductionStackStatus,
) -> Result<()> {
    if previous == new && stack.status.is_some() {
        return Ok(());
    }
    let api: Api<ProductionStack> =
        Api::namespaced(client.clone(), &stack.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "deployctl.dev/v1alpha1",
        "kind": "ProductionStack",
        "status": new,
    });
    // Force: the status belongs to the controller alone.
    api.patch_status(
        &stack.name_any(),
        &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}
