//! Well-known label and annotation keys that deployctl puts on the objects it manages.
//!
//! They are part of the API: the CLI, dashboards and users' selectors rely on them.

/// Name of the `ProductionStack` that owns an object.
pub const STACK: &str = "deployctl.dev/stack";
/// Name of the stack component an object belongs to.
pub const COMPONENT: &str = "deployctl.dev/component";
/// Standard label naming the tool that manages an object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`] on everything deployctl creates.
pub const MANAGED_BY_VALUE: &str = "deployctl";
/// Annotation on a workload: the digest of the component spec last applied to it.
/// Comparing it with the desired digest tells whether a component must be rolled.
pub const SPEC_HASH: &str = "deployctl.dev/spec-hash";
/// Annotation on a workload, label on its pods (and on a `ControllerRevision`): the
/// stack revision number whose component spec the object carries. On pods it tells old
/// from new in gate queries and dashboards (`deployctl.dev/revision="7"`): during a canary
/// the stable and the canary pods differ. A component whose spec did not change in a new
/// revision keeps its pods and their label.
pub const REVISION: &str = "deployctl.dev/revision";
/// Label on the canary Deployment of a component and its pods (value [`TRACK_CANARY`]):
/// part of the canary's selector, so the stable and the canary Deployment never select
/// each other's pods while the component's Service selects both.
pub const TRACK: &str = "deployctl.dev/track";
/// Value of [`TRACK`] on a canary.
pub const TRACK_CANARY: &str = "canary";
/// Label on a `ControllerRevision`: the digest of the components it records.
pub const REVISION_HASH: &str = "deployctl.dev/revision-hash";
/// Annotation on a `ControllerRevision`: the `metadata.generation` of the stack that
/// first produced it.
pub const REVISION_GENERATION: &str = "deployctl.dev/generation";

/// Field manager the controller uses for the children it applies.
pub const FIELD_MANAGER: &str = "deployctl-controller";
/// Field manager the controller uses for the stack's status.
pub const STATUS_FIELD_MANAGER: &str = "deployctl-controller-status";
/// Finalizer that lets the controller clean up before a stack disappears.
pub const FINALIZER: &str = "deployctl.dev/cleanup";
/// Annotation on a workload deployctl scaled to zero so nothing writes its data while a
/// snapshot or restore runs; its value names why.
pub const STOPPED: &str = "deployctl.dev/stopped";
/// Label on the Jobs of the snapshot agent: `snapshot`, `restore`, `verify` or `prune`.
pub const DATA_OPERATION: &str = "deployctl.dev/data-operation";
/// Label on the Jobs of the snapshot agent: the component whose data (volume and
/// repository) the Job works on. Not the component label itself, which would make the
/// agent's pod count as one of the component's pods.
pub const DATA_COMPONENT: &str = "deployctl.dev/data-component";
/// Label on data Jobs and StackSnapshots: the StackSnapshot they concern.
pub const SNAPSHOT: &str = "deployctl.dev/snapshot";
/// Annotation on a StackSnapshot asking for a verification now (RFC 3339 time of the
/// request); `deployctl snapshot verify` sets it.
pub const VERIFY_REQUESTED: &str = "deployctl.dev/verify-requested-at";
/// Annotation on an agent Job: the group it belongs to (one Job per StatefulSet replica;
/// the group is named after ordinal 0's Job).
pub const JOB_GROUP: &str = "deployctl.dev/job-group";
/// Annotation on an agent Job: how many Jobs its group has.
pub const JOB_GROUP_SIZE: &str = "deployctl.dev/job-group-size";
/// Label on an agent Job: the StatefulSet replica (ordinal) whose claim it works on.
pub const DATA_ORDINAL: &str = "deployctl.dev/data-ordinal";
/// Annotation on a finished agent Job whose result the metrics already counted.
pub const RECORDED: &str = "deployctl.dev/recorded";
