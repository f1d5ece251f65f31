//! `canary`: a Deployment component's new revision rolled out in steps by replica ratio
//! (Argo Rollouts' basic canary without a traffic router): a second Deployment,
//! `<stack>-<component>-canary`, gets a share of the replicas behind the same Service.

use crate::duration::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most steps of a canary.
pub const MAX_CANARY_STEPS: usize = 32;

/// Canary steps of a Deployment component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// The steps a new revision goes through, in order: `setWeight` gives the new pods
    /// that share of the replicas, `pause` waits, `analysis` analyses the component's
    /// gates on the new pods. After the last step the stable Deployment gets the new
    /// template and the canary Deployment is removed.
    #[schemars(length(min = 1, max = MAX_CANARY_STEPS))]
    pub steps: Vec<CanaryStep>,
}

/// One canary step: exactly one of `setWeight`, `pause` and `analysis`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) == 1",
    "message": "a canary step sets exactly one of setWeight, pause and analysis: split it into several steps"
}]))]
pub struct CanaryStep {
    /// Percentage of the component's replicas that run the new revision: the canary
    /// Deployment gets `ceil(replicas * setWeight / 100)` pods (at least 1), the stable
    /// one the rest. Traffic follows the pod count, as the Service selects both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub set_weight: Option<i32>,

    /// Wait: for `duration`, or without one until `deployctl promote`. The gates keep
    /// being measured on the new pods meanwhile; a failed gate aborts the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<CanaryPause>,

    /// Analyse the component's gates on the new pods (label `deployctl.dev/revision`) at
    /// the current weight; the step passes when every gate passed for the whole window.
    /// A failure aborts the canary at once and the stack is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
}

/// A canary pause.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryPause {
    /// How long to wait, e.g. `1m`. Without it the rollout waits for a `Promote`
    /// operation (`deployctl promote`), which ends the pause and skips the remaining steps
    /// and analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

/// A canary analysis step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// Analysis window at this weight. Defaults to `spec.rollout.analysis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

impl std::fmt::Display for CanaryStep {
    /// The step as Events and the CLI name it: `setWeight 25%`, `pause 1m`, `analysis`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(w) = self.set_weight {
            write!(f, "setWeight {w}%")
        } else if let Some(p) = &self.pause {
            match &p.duration {
                Some(d) => write!(f, "pause {d}"),
                None => f.write_str("pause until promoted"),
            }
        } else if let Some(a) = &self.analysis {
            match &a.duration {
                Some(d) => write!(f, "analysis {d}"),
                None => f.write_str("analysis"),
            }
        } else {
            f.write_str("empty step")
        }
    }
}

impl Canary {
    /// The steps in one line: `setWeight 25%, analysis, setWeight 50%, analysis`.
    pub fn summary(&self) -> String {
        self.steps
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Canary pods out of `replicas` at weight `weight` percent: rounded up, at least one
/// for any weight above 0, never more than `replicas`.
pub fn canary_replicas(replicas: i32, weight: i32) -> i32 {
    if weight <= 0 || replicas <= 0 {
        return 0;
    }
    let w = weight.min(100) as i64;
    let n = (replicas as i64 * w + 99) / 100;
    (n.max(1) as i32).min(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_replicas_round_up_and_stay_within_the_total() {
        assert_eq!(canary_replicas(4, 25), 1);
        assert_eq!(canary_replicas(4, 50), 2);
        assert_eq!(canary_replicas(4, 26), 2);
        assert_eq!(canary_replicas(10, 1), 1);
        assert_eq!(canary_replicas(3, 100), 3);
        assert_eq!(canary_replicas(1, 5), 1);
        assert_eq!(canary_replicas(4, 0), 0);
        assert_eq!(canary_replicas(0, 50), 0);
    }
}
