//! `ProductionStack`: a whole stack (API, database, cache, ...) described as components
//! with dependencies, rolled out in dependency order by the controller.

use crate::canary::Canary;
use crate::data::{ComponentData, SnapshotPolicy};
use crate::duration::Duration;
use crate::gates::{Gate, MAX_GATES, UNIQUE_GATE_NAMES};
use crate::status::ProductionStackStatus;
use crate::workload::{Autoscaling, DeploymentStrategy, ObjectMetadata, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default for `spec.rollout.progressDeadline`.
pub const DEFAULT_PROGRESS_DEADLINE: &str = "10m";
/// Default for `spec.rollout.analysis`.
pub const DEFAULT_ANALYSIS: &str = "30s";
/// Default for `spec.rollout.rollbackDeadline`.
pub const DEFAULT_ROLLBACK_DEADLINE: &str = "5m";
/// Default for `spec.rollout.monitorInterval`.
pub const DEFAULT_MONITOR_INTERVAL: &str = "30s";
/// Default for `spec.revisionHistoryLimit`.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

// Bounds on what the CEL rules below iterate over. The API server estimates each rule's
// worst-case cost from them (times the lists it sits in) and refuses a CRD whose rules
// could cost too much, so every list and string a rule reads is bounded; validation.rs
// enforces the same numbers for clusters that ignore the rules.

/// Most components in a stack.
pub const MAX_COMPONENTS: usize = 64;
/// Longest component name (and `dependsOn` entry).
pub const MAX_COMPONENT_NAME: usize = 40;
/// Most `dependsOn` entries of one component.
pub const MAX_DEPENDENCIES: usize = 32;
/// Most ports of a component's Service.
pub const MAX_PORTS: usize = 50;
/// Most volume claims of one component.
pub const MAX_VOLUME_CLAIMS: usize = 16;

/// A stack of components that deployctl creates and updates in dependency order, keeping
/// a numbered history of revisions.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "deployctl.dev",
    version = "v1alpha1",
    kind = "ProductionStack",
    plural = "productionstacks",
    singular = "productionstack",
    shortname = "pstack",
    category = "deployctl",
    namespaced,
    status = "ProductionStackStatus",
    validation = Rule::new(
        "self.spec.components.all(c, size(self.metadata.name) + size(c.name) <= 51)"
    ).message(
        "metadata.name plus a component name must stay within 51 characters (the objects are named <stack>-<component>, at most 52): shorten the stack or the component name"
    ),
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the stack is in its life cycle"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.currentRevision","description":"Revision the spec asks for"}"#,
    printcolumn = r#"{"name":"Stable","type":"integer","jsonPath":".status.stableRevision","description":"Last revision that rolled out completely"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readyComponents","description":"Available components out of all"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProductionStackSpec {
    /// The components of the stack. Each becomes a Deployment or StatefulSet (named
    /// `<stack>-<component>`), with an optional Service and PersistentVolumeClaims.
    /// Components are created and updated in the order their `dependsOn` gives.
    #[schemars(
        length(min = 1, max = MAX_COMPONENTS),
        extend("x-kubernetes-validations" = [
            {
                "rule": "self.all(c, self.exists_one(o, o.name == c.name))",
                "message": "component names must be unique: rename or remove the repeated components[].name"
            },
            {
                "rule": "self.all(c, !has(c.dependsOn) || c.dependsOn.all(d, self.exists(o, o.name == d)))",
                "message": "every dependsOn entry must be the name of a component of this stack: fix the name or add that component"
            }
        ])
    )]
    pub components: Vec<Component>,

    /// How new revisions are rolled out.
    #[serde(default)]
    pub rollout: RolloutPolicy,

    /// Gates over the whole stack, analysed after the last component has passed its own,
    /// before the revision is promoted to stable, and kept running after promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_GATES),
        extend("x-kubernetes-validations" = [UNIQUE_GATE_NAMES])
    )]
    pub gates: Vec<Gate>,

    /// How many old revisions (ControllerRevision objects) to keep for history and
    /// rollback. Defaults to 10. The current and the stable revision are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub revision_history_limit: Option<i32>,

    /// What happens to the components' PersistentVolumeClaims, and so their data, when
    /// the stack is deleted. Defaults to `Retain`: data outlives the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim_retention: Option<VolumeClaimRetention>,

    /// When the data of the components that declare `data` is snapshotted, where the
    /// snapshots are kept and for how long. Defaults: before every rollout, into a
    /// filesystem repository on the claim `<stack>-snapshots`, keeping the last 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotPolicy>,

    /// Where to send news of this stack's rollouts, rollbacks and snapshots (a webhook
    /// named by a Secret). Without it, the namespace's Secret `deployctl-notifications`
    /// is used when it exists; without either, nothing is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<crate::notifications::Notifications>,
}

/// One workload of the stack: an API, a database, a cache, a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.dependsOn) || !(self.name in self.dependsOn)",
        "message": "a component cannot depend on itself: remove its own name from dependsOn"
    },
    {
        "rule": "has(self.template) != has(self.templateFrom)",
        "message": "a component takes its pod template from exactly one place: set template or templateFrom, not both or neither"
    },
    {
        "rule": "self.kind != 'StatefulSet' || has(self.service)",
        "message": "a StatefulSet needs a service (its pods get stable names through it): add service.ports, or use kind: Deployment"
    },
    {
        "rule": "!has(self.data) || !has(self.data.volume) || (has(self.volumeClaims) && self.volumeClaims.exists(v, v.name == self.data.volume))",
        "message": "data.volume must be the name of one of this component's volumeClaims: add that claim or fix the name"
    },
    {
        "rule": "!has(self.canary) || !has(self.kind) || self.kind == 'Deployment'",
        "message": "canary steps need kind: Deployment (a StatefulSet cannot run two templates side by side): remove canary or use kind: Deployment"
    },
    {
        "rule": "!has(self.canary) || !has(self.autoscaling) || !has(self.autoscaling.hpa) || !self.autoscaling.hpa",
        "message": "canary steps set the replica counts of the stable and canary Deployments, so an HPA cannot manage them: remove canary or autoscaling.hpa"
    },
    {
        "rule": "self.kind != 'StatefulSet' || !has(self.strategy)",
        "message": "strategy is for a Deployment: a StatefulSet takes updateStrategy"
    },
    {
        "rule": "self.kind == 'StatefulSet' || !has(self.updateStrategy)",
        "message": "updateStrategy is for a StatefulSet: a Deployment takes strategy"
    }
]))]
pub struct Component {
    /// Name of the component, unique in the stack; a DNS label (lower case letters,
    /// digits and `-`). Other components refer to it in `dependsOn`.
    #[schemars(
        length(min = 1, max = MAX_COMPONENT_NAME),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Kind of workload: `Deployment` (default; stateless, rolled with no loss of
    /// capacity) or `StatefulSet` (stable identity and one claim per replica).
    #[serde(default)]
    pub kind: WorkloadKind,

    /// Number of pods. Defaults to 1. For a component an HPA manages (`autoscaling`), only
    /// the count the workload is created with: the HPA's count is kept after that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,

    /// Names of components that must be Available before this one is created or
    /// updated. On rollback the order is reversed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_DEPENDENCIES),
        inner(length(max = MAX_COMPONENT_NAME)),
        extend("x-kubernetes-validations" = [{
            "rule": "self.all(d, self.exists_one(e, e == d))",
            "message": "dependsOn lists a component more than once: remove the repeat"
        }])
    )]
    pub depends_on: Vec<String>,

    /// The pod template, as in a Deployment. deployctl adds the labels
    /// `deployctl.dev/stack` and `deployctl.dev/component` and the volumes of
    /// `volumeClaims`; everything else is used as written. Exactly one of `template` and
    /// `templateFrom` is set.
    #[serde(default, skip_serializing_if = "template_unset")]
    pub template: PodTemplateSpec,

    /// A Service in front of the component's pods, named like the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// Persistent volumes that hold the component's state. Each claim is mounted as a
    /// pod volume of the same name, so containers refer to it in `volumeMounts`.
    /// For a Deployment one PersistentVolumeClaim `<stack>-<component>-<name>` is shared
    /// by its pods; for a StatefulSet they become `volumeClaimTemplates`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_VOLUME_CLAIMS),
        extend("x-kubernetes-validations" = [{
            "rule": "self.all(v, self.exists_one(w, w.name == v.name))",
            "message": "volume claim names must be unique: rename or remove the repeated volumeClaims[].name"
        }])
    )]
    pub volume_claims: Vec<VolumeClaim>,

    /// Health gates analysed after this component is Available on a new revision; the
    /// rollout moves to the next component only when all pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MAX_GATES),
        extend("x-kubernetes-validations" = [UNIQUE_GATE_NAMES])
    )]
    pub gates: Vec<Gate>,

    /// The component's state: which of its `volumeClaims` holds it and how a consistent
    /// copy is taken. deployctl snapshots it before each rollout and restores it, verified,
    /// when the rollout is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<ComponentData>,

    /// Take the pod template from an existing Deployment or StatefulSet of the stack's
    /// namespace (applied by a Helm chart, Argo CD, Flux) instead of `template`. Each
    /// revision records the template as it was, so a change of the referenced workload's
    /// template is a new revision and a rollback does not depend on it. Once deployctl's
    /// own workload is Available, the referenced one is scaled to 0 replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_from: Option<TemplateFrom>,

    /// Roll a new revision out in steps by replica ratio (Deployments only): a second
    /// Deployment `<stack>-<component>-canary` runs the new template with the share of
    /// the replicas each `setWeight` step gives, behind the same Service, while the gates
    /// are analysed on the new pods. Without it, a new revision replaces all pods at once
    /// by a rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,

    /// Labels and annotations for the component's workload, Service and claims (pod
    /// labels and annotations come from `template.metadata`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetadata>,

    /// How a Deployment component replaces its pods (a StatefulSet takes
    /// `updateStrategy`). Defaults to a rolling update with maxSurge 1 and maxUnavailable
    /// 0: no loss of capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,

    /// How a StatefulSet component replaces its pods (a Deployment takes `strategy`):
    /// a rolling update, optionally staged by a partition. Defaults to partition 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<StatefulSetUpdateStrategy>,

    /// Seconds a new pod must be ready, without a container crashing, before it counts as
    /// available (and the component as rolled out). Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub min_ready_seconds: Option<i32>,

    /// Whether something else (an HPA) owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

/// True for a template left out (a component with `templateFrom`): not serialized, so
/// specs that have one serialize exactly as before `templateFrom` existed.
fn template_unset(t: &PodTemplateSpec) -> bool {
    t == &PodTemplateSpec::default()
}

/// A workload a component takes its pod template from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateFrom {
    /// `Deployment` or `StatefulSet`.
    pub kind: WorkloadKind,
    /// Its name, in the stack's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kind of workload a component runs as.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum WorkloadKind {
    /// An `apps/v1` Deployment.
    #[default]
    Deployment,
    /// An `apps/v1` StatefulSet.
    StatefulSet,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        })
    }
}

/// The Service deployctl creates for a component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Ports the Service exposes.
    #[schemars(
        length(min = 1, max = MAX_PORTS),
        extend("x-kubernetes-validations" = [
            {
                "rule": "self.all(p, self.exists_one(q, q.port == p.port && (has(q.protocol) ? q.protocol : 'TCP') == (has(p.protocol) ? p.protocol : 'TCP')))",
                "message": "each port and protocol may appear once in ports: change or remove the repeated port"
            },
            {
                "rule": "self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))",
                "message": "port names must be unique: rename the repeated ports[].name"
            },
            {
                "rule": "size(self) <= 1 || self.all(p, has(p.name))",
                "message": "every port needs a name when there is more than one: set ports[].name"
            }
        ])
    )]
    pub ports: Vec<ServicePort>,
}

/// A port of a component's Service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Name of the port; required when there is more than one. Health gates may refer
    /// to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: Option<String>,

    /// Port the Service listens on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Port (number or container port name) on the pods. Defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,

    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Bounded for the port rule's cost on API servers before 1.29, which do not derive a
    // length from the enum.
    #[schemars(extend("maxLength" = 4))]
    pub protocol: Option<Protocol>,
}

/// Transport protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Protocol {
    /// TCP.
    #[default]
    TCP,
    /// UDP.
    UDP,
    /// SCTP.
    SCTP,
}

impl Protocol {
    /// The protocol as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::SCTP => "SCTP",
        }
    }
}

/// A persistent volume that holds a component's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaim {
    /// Name of the pod volume the claim is mounted as; containers use it in `volumeMounts`.
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Requested size, e.g. `1Gi`.
    pub size: Quantity,

    /// StorageClass of the claim; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Access modes; defaults to `[ReadWriteOnce]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<AccessMode>,
}

/// Access mode of a PersistentVolumeClaim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AccessMode {
    /// Mounted read-write by one node.
    ReadWriteOnce,
    /// Mounted read-only by many nodes.
    ReadOnlyMany,
    /// Mounted read-write by many nodes.
    ReadWriteMany,
    /// Mounted read-write by one pod.
    ReadWriteOncePod,
}

impl AccessMode {
    /// The access mode as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessMode::ReadWriteOnce => "ReadWriteOnce",
            AccessMode::ReadOnlyMany => "ReadOnlyMany",
            AccessMode::ReadWriteMany => "ReadWriteMany",
            AccessMode::ReadWriteOncePod => "ReadWriteOncePod",
        }
    }
}

/// What happens to the components' claims when the stack is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VolumeClaimRetention {
    /// Keep the PersistentVolumeClaims (and the data) after the stack is gone.
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaims with the stack.
    Delete,
}

/// How a new revision of the stack is rolled out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// How long one component may take to become Available after it was applied before
    /// the rollout is reported as failed (`ProgressDeadlineExceeded`). Defaults to `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!self.matches('^(0+([.]0+)?(ms|s|m|h))+$')",
        "message": "progressDeadline must be longer than 0s: set e.g. 10m"
    }]))]
    pub progress_deadline: Option<Duration>,

    /// While true, no new revision is rolled out: components keep what they run and the
    /// stack reports `Paused`. A rollout in progress stops after the current component.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// How long each component's gates (and then the stack's) are analysed before the
    /// rollout moves on. Defaults to `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Duration>,

    /// Whether a failed gate or a missed progress deadline rolls the stack back by
    /// itself. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,

    /// How long a rollback may take, from its decision to the stable revision Available
    /// with its data verified. Missing it raises the `RollbackDeadlineExceeded` condition
    /// reason and an Event. Defaults to `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_deadline: Option<Duration>,

    /// How often gates are measured after promotion, to see a stack that breaks later.
    /// Defaults to `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_interval: Option<Duration>,

    /// Whether a gate failing after promotion rolls the stack back (to the revision before
    /// the stable one). Defaults to false: the stack reports `Degraded` and waits for a
    /// person.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback_after_promotion: bool,
}

impl RolloutPolicy {
    /// The progress deadline, with its default.
    pub fn progress_deadline(&self) -> Duration {
        self.progress_deadline
            .clone()
            .unwrap_or_else(|| Duration::from(DEFAULT_PROGRESS_DEADLINE))
    }

    /// The analysis window, with its default.
    pub fn analysis(&self) -> Duration {
        self.analysis
            .clone()
            .unwrap_or_else(|| Duration::from(DEFAULT_ANALYSIS))
    }

    /// The rollback deadline, with its default.
    pub fn rollback_deadline(&self) -> Duration {
        self.rollback_deadline
            .clone()
            .unwrap_or_else(|| Duration::from(DEFAULT_ROLLBACK_DEADLINE))
    }

    /// The post-promotion monitoring interval, with its default.
    pub fn monitor_interval(&self) -> Duration {
        self.monitor_interval
            .clone()
            .unwrap_or_else(|| Duration::from(DEFAULT_MONITOR_INTERVAL))
    }

    /// Whether automatic rollback is on.
    pub fn auto_rollback(&self) -> bool {
        self.auto_rollback.unwrap_or(true)
    }
}

impl ProductionStackSpec {
    /// The revision history limit, with its default.
    pub fn revision_history_limit(&self) -> usize {
        self.revision_history_limit
            .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT)
            .max(1) as usize
    }

    /// The component with this name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }
}

impl Component {
    /// Desired replicas, with its default.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1)
    }

    /// Whether the spec says an HPA manages the replica count.
    pub fn hpa(&self) -> bool {
        self.autoscaling.as_ref().is_some_and(|a| a.hpa)
    }

    /// The StatefulSet partition, with its default (0).
    pub fn partition(&self) -> i32 {
        self.update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
    }
}

/// Name of the workload and Service of a component.
pub fn child_name(stack: &str, component: &str) -> String {
    format!("{stack}-{component}")
}

/// Name of the canary Deployment of a component (see `canary`).
pub fn canary_name(stack: &str, component: &str) -> String {
    format!("{stack}-{component}-canary")
}
