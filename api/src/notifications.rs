//! `spec.notifications`: where a stack's rollout, rollback and snapshot news is sent.

use crate::gates::SecretName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Secret a namespace's stacks use when they have no `spec.notifications`: keys
/// `url` (required), `token` (optional, sent as `Authorization: Bearer`) and `format`
/// (optional: `CloudEvents`, the default, `Slack` or `Teams`).
pub const NAMESPACE_SECRET: &str = "deployctl-notifications";

/// Where and what to notify about this stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notifications {
    /// Secret in the stack's namespace holding the receiver: key `url` (required; it
    /// must be on the controller's allow-list, chart value
    /// `notifications.allowedUrlPrefixes`) and key `token` (optional, sent as
    /// `Authorization: Bearer`). Without `spec.notifications`, the namespace's Secret
    /// `deployctl-notifications` is used when it exists.
    pub secret_ref: SecretName,

    /// Which events to send; all of them when empty or omitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub events: Vec<NotificationEvent>,

    /// The payload's shape: `CloudEvents` (the default), `Slack` or `Teams`; without it,
    /// the Secret's key `format`, else `CloudEvents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotificationFormat>,
}

impl Notifications {
    /// Whether `event` is among those asked for.
    pub fn wants(&self, event: NotificationEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }
}

/// Something that happened to a stack worth telling people about: `RolloutStarted`,
/// `RolloutPromoted`, `RolloutFailed` (rolled back or stalled), `RollbackStarted`,
/// `RollbackDone`, `RollbackOverDeadline`, `RestoreFailed`, `SnapshotFailed`,
/// `SnapshotCorrupt`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum NotificationEvent {
    /// A revision started rolling out.
    RolloutStarted,
    /// A revision passed its analysis and became stable.
    RolloutPromoted,
    /// A rollout failed: it is being rolled back, or it stalled waiting for a person.
    RolloutFailed,
    /// A rollback started.
    RollbackStarted,
    /// A rollback finished.
    RollbackDone,
    /// A rollback is taking longer than `spec.rollout.rollbackDeadline`.
    RollbackOverDeadline,
    /// Restoring a component's data from its snapshot failed.
    RestoreFailed,
    /// A snapshot could not be taken (before a rollout, on schedule, or asked for).
    SnapshotFailed,
    /// A snapshot's verification found it corrupt.
    SnapshotCorrupt,
}

impl NotificationEvent {
    /// Every event, in the order above.
    pub const ALL: [NotificationEvent; 9] = [
        NotificationEvent::RolloutStarted,
        NotificationEvent::RolloutPromoted,
        NotificationEvent::RolloutFailed,
        NotificationEvent::RollbackStarted,
        NotificationEvent::RollbackDone,
        NotificationEvent::RollbackOverDeadline,
        NotificationEvent::RestoreFailed,
        NotificationEvent::SnapshotFailed,
        NotificationEvent::SnapshotCorrupt,
    ];
}

/// The payload's shape: `CloudEvents` (a CloudEvents 1.0 structured JSON event, the
/// default), `Slack` (an incoming webhook's message) or `Teams` (a Microsoft Teams
/// incoming webhook's Adaptive Card message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum NotificationFormat {
    /// CloudEvents 1.0, structured JSON (`application/cloudevents+json`).
    #[default]
    CloudEvents,
    /// A Slack incoming webhook's message (`text` and `blocks`).
    Slack,
    /// A Microsoft Teams incoming webhook's message card.
    Teams,
}

impl NotificationFormat {
    /// Every format.
    pub const ALL: [NotificationFormat; 3] = [Self::CloudEvents, Self::Slack, Self::Teams];

    /// Bounded metric label and the spelling in a Secret's `format` key.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationFormat::CloudEvents => "CloudEvents",
            NotificationFormat::Slack => "Slack",
            NotificationFormat::Teams => "Teams",
        }
    }

    /// The format a Secret's `format` key names.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
    }
}
