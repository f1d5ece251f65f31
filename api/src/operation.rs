//! `StackOperation`: a request from a person or a pipeline to act on a stack (roll back,
//! pause, resume, promote, retry, abort). A separate kind, so RBAC can let someone on call
//! create operations without letting them edit stacks, and each request stays as a record
//! of who asked, when and why.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request to act on a `ProductionStack` in the same namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "deployctl.dev",
    version = "v1alpha1",
    kind = "StackOperation",
    plural = "stackoperations",
    singular = "stackoperation",
    shortname = "stackop",
    category = "deployctl",
    namespaced,
    status = "StackOperationStatus",
    printcolumn = r#"{"name":"Stack","type":"string","jsonPath":".spec.stack"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Requested-By","type":"string","jsonPath":".spec.requestedBy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.action != 'Restore' || has(self.snapshot)",
        "message": "snapshot is required with action Restore: name the StackSnapshot to restore"
    },
    {
        "rule": "self.action == 'Restore' || !has(self.snapshot)",
        "message": "snapshot is only used with action Restore: remove it"
    },
    {
        "rule": "self.action == 'Rollback' || !has(self.toRevision)",
        "message": "toRevision is only used with action Rollback: remove it"
    }
]))]
pub struct StackOperationSpec {
    /// Name of the stack, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub stack: String,

    /// What to do.
    pub action: OperationAction,

    /// For `Rollback`: the revision to go back to. Defaults to the stable revision (or,
    /// when the stack is stable, the one before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub to_revision: Option<i64>,

    /// For `Restore`: the StackSnapshot to restore. Its component is stopped, the data
    /// restored (verified first) and the component started again on the stable revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub snapshot: Option<String>,

    /// Why, in a person's words; shown in status, Events and `deployctl history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// Who asked, as the client saw its own identity (the CLI fills it in). The API
    /// server's audit log is the authoritative record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub requested_by: Option<String>,
}

/// Actions on a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OperationAction {
    /// Go back to the stable revision (or `toRevision`), data included, and hold there
    /// until the spec changes or a `Retry`.
    Rollback,
    /// Stop rolling: the current component finishes, no further one starts.
    Pause,
    /// Undo a `Pause`.
    Resume,
    /// Skip the remaining analysis of the rollout in progress.
    Promote,
    /// Roll the spec's revision out again after a rollback.
    Retry,
    /// Stop the rollout in progress and go back to the stable revision.
    Abort,
    /// Restore a component's data from `snapshot`, verified, on a stable stack; or, while
    /// a rollback waits after a failed restore of that component, restore this snapshot
    /// instead.
    Restore,
    /// While a rollback waits after a failed data restore: start the stopped components
    /// on the rollback's revision with their data as it is now (the failed restore left
    /// it untouched). The decision, who made it and why are recorded in the rollback.
    AcceptLiveData,
}

impl OperationAction {
    /// The action as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationAction::Rollback => "Rollback",
            OperationAction::Pause => "Pause",
            OperationAction::Resume => "Resume",
            OperationAction::Promote => "Promote",
            OperationAction::Retry => "Retry",
            OperationAction::Abort => "Abort",
            OperationAction::Restore => "Restore",
            OperationAction::AcceptLiveData => "AcceptLiveData",
        }
    }
}

/// What became of an operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackOperationStatus {
    /// `Succeeded` once the controller acted on it, `Failed` when it could not (the
    /// message says why). Unset while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<OperationPhase>,
    /// What the controller did, or why it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the controller acted on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<Time>,
    /// For rollbacks: the revision the stack goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<i64>,
}

/// Outcome of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OperationPhase {
    /// Acted on.
    Succeeded,
    /// Refused; see the message.
    Failed,
}
