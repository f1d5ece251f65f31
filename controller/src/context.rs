//! What every reconcile shares: the API client, metrics, the Event recorder and settings.

use crate::events::Recorder;
use crate::metrics::Metrics;
use deployctl_api::ProductionStack;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Client, Resource};
use std::sync::Arc;
use std::time::Duration;

/// The agent Jobs' resources by default: enough for the engine's worker threads to
/// verify chunks; memory bounded because a chunk buffer per worker is all it holds.
pub const DEFAULT_AGENT_RESOURCES: &str =
    r#"{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"memory":"1Gi"}}"#;
/// The agent image when none is configured: this build's release image, tagged as
/// scripts/build-image.sh and the chart's appVersion tag it (the version, no `v`).
pub const DEFAULT_AGENT_IMAGE: &str =
    concat!("deployctl.dev/deployctl:", env!("CARGO_PKG_VERSION"));

/// Shared state of the controller.
#[derive(Clone)]
pub struct Context {
    /// Client to the API server.
    pub client: Client,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Records Kubernetes Events on stacks.
    pub recorder: Recorder,
    /// How often Healthy stacks are re-checked.
    pub resync: Duration,
    /// Takes gate measurements.
    pub measurer: crate::gates::measure::Measurer,
    /// Where gates may send requests besides the component's pods.
    pub gate_policy: crate::gates::policy::GatePolicy,
    /// Image of the snapshot agent's Jobs: the controller's own build.
    pub agent_image: String,
    /// The agent Jobs' resources unless a stack sets its own.
    pub agent_resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// Sends notifications where the administrator allows.
    pub notifier: crate::notifications::Notifier,
    /// Reflector stores of what reconciles read; None reads from the API server.
    pub caches: Option<crate::cache::Caches>,
    /// Which referenced objects are versioned with the revision.
    pub versioned: crate::reconcile::resolve::Versioned,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("resync", &self.resync)
            .finish()
    }
}

impl Context {
    /// A context for `client`, recording Events as `identity`.
    pub fn new(client: Client, metrics: Arc<Metrics>, identity: &str, resync: Duration) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), "deployctl-controller", identity),
            measurer: crate::gates::measure::Measurer::new(
                client.clone(),
                crate::gates::policy::GatePolicy::default(),
            ),
            gate_policy: crate::gates::policy::GatePolicy::default(),
            client,
            metrics,
            resync,
            agent_image: DEFAULT_AGENT_IMAGE.to_string(),
            agent_resources: serde_json::from_str(DEFAULT_AGENT_RESOURCES)
                .expect("the default agent resources parse"),
            caches: None,
            versioned: Default::default(),
            notifier: crate::notifications::Notifier::default(),
        }
    }

    /// The same context sending notifications only where `policy` allows.
    pub fn with_notification_policy(
        mut self,
        policy: crate::notifications::NotificationPolicy,
    ) -> Self {
        self.notifier = crate::notifications::Notifier::new(policy);
        self
    }

    /// The same context with gates allowed to reach what `policy` lists.
    pub fn with_gate_policy(mut self, policy: crate::gates::policy::GatePolicy) -> Self {
        self.measurer = crate::gates::measure::Measurer::new(self.client.clone(), policy.clone());
        self.gate_policy = policy;
        self
    }

    /// Sets which referenced objects are versioned.
    pub fn with_versioned(mut self, versioned: crate::reconcile::resolve::Versioned) -> Self {
        self.versioned = versioned;
        self
    }

    /// The same context reading through `caches`.
    pub fn with_caches(mut self, caches: crate::cache::Caches) -> Self {
        self.caches = Some(caches);
        self
    }

    /// The same context with the agent Jobs running `image`.
    pub fn with_agent_resources(
        mut self,
        resources: k8s_openapi::api::core::v1::ResourceRequirements,
    ) -> Self {
        self.agent_resources = resources;
        self
    }

    pub fn with_agent_image(mut self, image: impl Into<String>) -> Self {
        self.agent_image = image.into();
        self
    }

    /// Records an Event on the stack; a failure to record is logged, never fatal.
    pub async fn event(&self, stack: &ProductionStack, warning: bool, reason: &str, note: String) {
        let note = truncate(note, 1000);
        let object = stack.object_ref(&());
        if let Err(e) = self.recorder.publish(&object, warning, reason, &note).await {
            tracing::warn!(error = %e, reason, "could not record an Event");
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The current time, as Kubernetes writes it.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}
