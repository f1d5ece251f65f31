//! How a component's workload is shaped beyond its pod template: labels and annotations
//! on the objects, the update strategy of either kind, `minReadySeconds`, and whether an
//! autoscaler owns the replica count.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most labels (and most annotations) a component may add to its objects.
pub const MAX_OBJECT_METADATA: usize = 64;

/// Label and annotation keys deployctl keeps for itself: its own prefix (which holds the
/// selector labels `deployctl.dev/stack` and `deployctl.dev/component`) and the
/// `app.kubernetes.io/managed-by` label it sets.
pub const RESERVED_PREFIX: &str = "deployctl.dev/";

/// Labels and annotations put on a component's workload, Service and claims.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMetadata {
    /// Labels added to the workload, its Service and its PersistentVolumeClaims. Pod
    /// labels come from `template.metadata.labels`. Keys under `deployctl.dev/` (the
    /// selector labels among them) and `app.kubernetes.io/managed-by` are deployctl's own
    /// and refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_OBJECT_METADATA,
        "x-kubernetes-validations" = [{
            "rule": "self.all(k, !k.startsWith('deployctl.dev/') && k != 'app.kubernetes.io/managed-by')",
            "message": "labels under deployctl.dev/ and app.kubernetes.io/managed-by are deployctl's own (the selector among them): use another key"
        }]
    ))]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the workload, its Service and its PersistentVolumeClaims. Pod
    /// annotations come from `template.metadata.annotations`. Keys under `deployctl.dev/`
    /// are deployctl's own and refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = MAX_OBJECT_METADATA,
        "x-kubernetes-validations" = [{
            "rule": "self.all(k, !k.startsWith('deployctl.dev/'))",
            "message": "annotations under deployctl.dev/ are deployctl's own: use another key"
        }]
    ))]
    pub annotations: BTreeMap<String, String>,
}

/// How a Deployment component replaces its pods with a new revision's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.type) || self.type != 'Recreate' || !has(self.rollingUpdate)",
    "message": "rollingUpdate goes with type RollingUpdate: remove it, or remove type: Recreate"
}]))]
pub struct DeploymentStrategy {
    /// `RollingUpdate` (default): new pods replace old ones a few at a time, as
    /// `rollingUpdate` says. `Recreate`: every old pod is removed before new ones start
    /// (the component is down in between).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    // Bounded for the rule's cost on API servers that do not derive a length from the enum.
    #[schemars(extend("maxLength" = 13))]
    pub type_: Option<DeploymentStrategyType>,

    /// Pace of a `RollingUpdate`. Defaults to maxSurge 1 and maxUnavailable 0: a new pod
    /// is ready before an old one goes, so no capacity is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// Kind of Deployment strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DeploymentStrategyType {
    /// Replace pods a few at a time.
    #[default]
    RollingUpdate,
    /// Remove every old pod, then start the new ones.
    Recreate,
}

impl DeploymentStrategyType {
    /// The type as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStrategyType::RollingUpdate => "RollingUpdate",
            DeploymentStrategyType::Recreate => "Recreate",
        }
    }
}

/// Pace of a Deployment's rolling update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.maxSurge) || (string(self.maxSurge) != '0' && string(self.maxSurge) != '0%') || (has(self.maxUnavailable) && string(self.maxUnavailable) != '0' && string(self.maxUnavailable) != '0%')",
    "message": "maxSurge and maxUnavailable cannot both be 0 (maxUnavailable defaults to 0): the rollout could never replace a pod"
}]))]
pub struct RollingUpdate {
    /// Pods created above the desired count during the update: a number or a percentage
    /// of the desired count (`25%`). Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 8))]
    pub max_surge: Option<IntOrString>,

    /// Pods that may be unavailable during the update: a number or a percentage of the
    /// desired count. Defaults to 0: no loss of capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 8))]
    pub max_unavailable: Option<IntOrString>,
}

/// How a StatefulSet component replaces its pods with a new revision's (always a rolling
/// update, highest ordinal first).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetUpdateStrategy {
    /// Pace and extent of the rolling update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<StatefulSetRollingUpdate>,
}

/// Pace and extent of a StatefulSet's rolling update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetRollingUpdate {
    /// Only pods with an ordinal at or above the partition get the new revision; the
    /// others keep the old one. The component counts as rolled out (and its gates then
    /// measure) when the pods at or above the partition run the new revision, so a
    /// partition stages a rollout: lower it in a later revision to go on. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub partition: Option<i32>,

    /// Pods that may be unavailable during the update: a number (at least 1) or a
    /// percentage of the replicas. Defaults to 1. Needs the `MaxUnavailableStatefulSet`
    /// feature of the cluster; without it Kubernetes updates one pod at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// What scales a component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// An HPA manages this component's replicas: deployctl creates the workload with
    /// `replicas` and never sets the count again, rollouts and rollbacks keep the count
    /// the HPA set, and availability is judged against it. deployctl also detects an
    /// autoscaling/v2 HorizontalPodAutoscaler targeting the workload without this flag;
    /// set it so that the count is left alone even before the HPA exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hpa: bool,
}
