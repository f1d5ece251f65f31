//! The bodies a notification is sent as: CloudEvents 1.0 structured JSON, a Slack
//! incoming webhook's message, a Microsoft Teams incoming webhook's Adaptive Card.
//! Pure functions of the notice.

use super::kinds::Notice;
use deployctl_api::{NotificationEvent, NotificationFormat};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A notice about one stack, with what makes it unique.
#[derive(Clone, Debug, PartialEq)]
pub struct Addressed {
    /// The stack's namespace.
    pub namespace: String,
    /// The stack's name.
    pub stack: String,
    /// Unique per event, the same on every attempt and every re-plan of the same event:
    /// receivers deduplicate on it.
    pub id: String,
    /// When it happened (RFC 3339).
    pub time: String,
    /// What happened.
    pub notice: Notice,
}

impl Addressed {
    /// `notice` about the stack `namespace/stack` (uid `uid`, at `generation`) at `time`.
    /// The id hashes what identifies the event, not when it was sent: the stack's uid (a
    /// re-created stack is another), the generation, the kind, the revisions and the note.
    pub fn new(
        namespace: &str,
        stack: &str,
        uid: &str,
        generation: Option<i64>,
        time: String,
        notice: Notice,
    ) -> Self {
        let mut h = Sha256::new();
        for part in [
            uid.to_string(),
            format!("{generation:?}"),
            ce_type(notice.event).to_string(),
            format!("{:?}/{:?}", notice.revision, notice.stable_revision),
            notice.message.clone(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Addressed {
            namespace: namespace.to_string(),
            stack: stack.to_string(),
            id: hex::encode(&h.finalize()[..16]),
            time,
            notice,
        }
    }
}

/// The CloudEvents `type` of an event.
pub fn ce_type(e: NotificationEvent) -> &'static str {
    use NotificationEvent as N;
    match e {
        N::RolloutStarted => "dev.deployctl.rollout.started",
        N::RolloutPromoted => "dev.deployctl.rollout.promoted",
        N::RolloutFailed => "dev.deployctl.rollout.failed",
        N::RollbackStarted => "dev.deployctl.rollback.started",
        N::RollbackDone => "dev.deployctl.rollback.done",
        N::RollbackOverDeadline => "dev.deployctl.rollback.overdeadline",
        N::RestoreFailed => "dev.deployctl.restore.failed",
        N::SnapshotFailed => "dev.deployctl.snapshot.failed",
        N::SnapshotCorrupt => "dev.deployctl.snapshot.corrupt",
    }
}

/// A title for a person.
fn title(e: NotificationEvent) -> &'static str {
    use NotificationEvent as N;
    match e {
        N::RolloutStarted => "Rollout started",
        N::RolloutPromoted => "Rollout promoted",
        N::RolloutFailed => "Rollout failed",
        N::RollbackStarted => "Rollback started",
        N::RollbackDone => "Rollback done",
        N::RollbackOverDeadline => "Rollback over its deadline",
        N::RestoreFailed => "Restore failed",
        N::SnapshotFailed => "Snapshot failed",
        N::SnapshotCorrupt => "Snapshot corrupt",
    }
}

/// Whether the news is bad.
fn bad(e: NotificationEvent) -> bool {
    !matches!(
        e,
        NotificationEvent::RolloutStarted
            | NotificationEvent::RolloutPromoted
            | NotificationEvent::RollbackDone
    )
}

/// The body and its `Content-Type` in `format`.
pub fn body(format: NotificationFormat, a: &Addressed) -> (&'static str, Value) {
    match format {
        NotificationFormat::CloudEvents => ("application/cloudevents+json", cloudevent(a)),
        NotificationFormat::Slack => ("application/json", slack(a)),
        NotificationFormat::Teams => ("application/json", teams(a)),
    }
}

/// A CloudEvents 1.0 event in the structured JSON mode.
pub fn cloudevent(a: &Addressed) -> Value {
    let n = &a.notice;
    json!({
        "specversion": "1.0",
        "id": a.id,
        "source": format!(
            "/apis/deployctl.dev/v1alpha1/namespaces/{}/productionstacks/{}",
            a.namespace, a.stack
        ),
        "type": ce_type(n.event),
        "time": a.time,
        "subject": a.stack,
        "datacontenttype": "application/json",
        "data": {
            "namespace": a.namespace,
            "stack": a.stack,
            "revision": n.revision,
            "stableRevision": n.stable_revision,
            "reason": n.reason,
            "message": n.message,
        },
    })
}

fn headline(a: &Addressed) -> String {
    format!("{}: {}/{}", title(a.notice.event), a.namespace, a.stack)
}

fn revisions(n: &Notice) -> String {
    let show = |r: Option<i64>| r.map_or("none".to_string(), |r| r.to_string());
    format!(
        "revision {}, stable revision {}, reason {}",
        show(n.revision),
        show(n.stable_revision),
        n.reason
    )
}

/// A Slack incoming webhook's message: `text` (the notification's fallback) and blocks.
pub fn slack(a: &Addressed) -> Value {
    let n = &a.notice;
    let icon = if bad(n.event) {
        ":warning:"
    } else {
        ":white_check_mark:"
    };
    json!({
        "text": format!("{icon} {}: {}", headline(a), n.message),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": headline(a)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": n.message}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": revisions(n)}]},
        ],
    })
}

/// A Microsoft Teams incoming webhook's (or Workflows webhook's) message: one Adaptive
/// Card attachment.
pub fn teams(a: &Addressed) -> Value {
    let n = &a.notice;
    let show = |r: Option<i64>| r.map_or("none".to_string(), |r| r.to_string());
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": headline(a),
                        "weight": "Bolder",
                        "size": "Medium",
                        "color": if bad(n.event) { "Attention" } else { "Good" },
                        "wrap": true,
                    },
                    {"type": "TextBlock", "text": n.message, "wrap": true},
                    {"type": "FactSet", "facts": [
                        {"title": "Namespace", "value": a.namespace},
                        {"title": "Stack", "value": a.stack},
                        {"title": "Revision", "value": show(n.revision)},
                        {"title": "Stable revision", "value": show(n.stable_revision)},
                        {"title": "Reason", "value": n.reason},
                    ]},
                ],
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addressed(event: NotificationEvent, message: &str) -> Addressed {
        Addressed::new(
            "shop-prod",
            "shop",
            "uid-1",
            Some(4),
            "2026-12-05T20:00:00Z".into(),
            Notice {
                event,
                reason: "GateFailed".into(),
                message: message.into(),
                revision: Some(3),
                stable_revision: Some(2),
            },
        )
    }

    #[test]
    fn a_cloudevent_has_the_required_attributes_and_a_stable_id() {
        let a = addressed(NotificationEvent::RolloutFailed, "gate errors failed");
        let (content_type, v) = body(NotificationFormat::CloudEvents, &a);
        assert_eq!(content_type, "application/cloudevents+json");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "dev.deployctl.rollout.failed");
        assert_eq!(
            v["source"],
            "/apis/deployctl.dev/v1alpha1/namespaces/shop-prod/productionstacks/shop"
        );
        assert_eq!(v["subject"], "shop");
        assert_eq!(v["time"], "2026-12-05T20:00:00Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(
            v["data"],
            json!({"namespace": "shop-prod", "stack": "shop", "revision": 3,
                   "stableRevision": 2, "reason": "GateFailed", "message": "gate errors failed"})
        );
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
        let again = addressed(NotificationEvent::RolloutFailed, "gate errors failed");
        assert_eq!(a.id, again.id, "the same event has the same id");
        for other in [
            addressed(NotificationEvent::RollbackStarted, "gate errors failed"),
            addressed(NotificationEvent::RolloutFailed, "another message"),
        ] {
            assert_ne!(a.id, other.id);
        }
        // Every type is distinct and under dev.deployctl.
        let types: std::collections::BTreeSet<_> =
            NotificationEvent::ALL.iter().map(|e| ce_type(*e)).collect();
        assert_eq!(types.len(), NotificationEvent::ALL.len());
        assert!(types.iter().all(|t| t.starts_with("dev.deployctl.")));
    }

    #[test]
    fn slack_gets_text_and_blocks() {
        let a = addressed(NotificationEvent::RolloutFailed, "gate errors failed");
        let (content_type, v) = body(NotificationFormat::Slack, &a);
        assert_eq!(content_type, "application/json");
        assert_eq!(
            v["text"],
            ":warning: Rollout failed: shop-prod/shop: gate errors failed"
        );
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        assert_eq!(blocks[1]["text"]["text"], "gate errors failed");
        assert_eq!(blocks[2]["type"], "context");
        assert!(blocks[2]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("revision 3, stable revision 2"));
    }

    #[test]
    fn teams_gets_an_adaptive_card() {
        let a = addressed(NotificationEvent::RolloutPromoted, "revision 3 is stable");
        let (_, v) = body(NotificationFormat::Teams, &a);
        assert_eq!(v["type"], "message");
        let att = &v["attachments"][0];
        assert_eq!(
            att["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &att["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["body"][0]["text"], "Rollout promoted: shop-prod/shop");
        assert_eq!(card["body"][0]["color"], "Good");
        assert_eq!(card["body"][1]["text"], "revision 3 is stable");
        assert_eq!(card["body"][2]["type"], "FactSet");
        assert_eq!(card["body"][2]["facts"][2]["value"], "3");
    }
}
