//! Kubernetes Events about stacks (`events.k8s.io/v1`), with repeats folded into series.
//!
//! kube's `Recorder` treats every Event with the same reason on the same object as a
//! repeat of the first one and keeps the first one's note: "Created revision 3" would
//! be shown as the second occurrence of "Created revision 2", and a person reading
//! `kubectl describe pstack` would be told the wrong revision. Here an Event is a repeat
//! only when its type, reason, object and note are all the same (client-go's correlator
//! also keys on the message); a repeat within [`REPEAT_WINDOW`] bumps the series count of
//! the Event already written instead of writing another.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long an Event can be repeated as a series; the same as kube's and client-go's.
pub const REPEAT_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two Events the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    note: String,
    namespace: String,
    name: String,
    uid: String,
}

/// The Event written for a key, and how often it has happened.
#[derive(Debug, Clone)]
struct Written {
    name: String,
    count: i32,
    last: Timestamp,
}

/// What publishing an Event comes to.
#[derive(Debug, PartialEq, Eq)]
enum Write {
    /// A new Event object.
    Create,
    /// The `count`-th occurrence of the Event object `name`.
    Repeat { name: String, count: i32 },
}

/// The Events written lately, by key: the pure part of the recorder.
#[derive(Debug, Default)]
struct Ledger {
    written: HashMap<Key, Written>,
}

impl Ledger {
    /// Decides how to write `key` at `now`, forgetting what is older than the window.
    fn plan(&mut self, key: &Key, now: Timestamp) -> Write {
        self.written.retain(|_, w| w.last + REPEAT_WINDOW > now);
        match self.written.get(key) {
            Some(w) => Write::Repeat {
                name: w.name.clone(),
                count: w.count + 1,
            },
            None => Write::Create,
        }
    }

    /// Notes that `key` was written as the Event `name`, `count` times in all.
    fn record(&mut self, key: Key, name: String, count: i32, now: Timestamp) {
        self.written.insert(
            key,
            Written {
                name,
                count,
                last: now,
            },
        );
    }
}

/// Writes Events about objects as one controller instance.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Recorder {
    /// A recorder reporting as `controller`, instance `instance`.
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            ledger: Arc::default(),
        }
    }

    /// Writes an Event regarding `object`: a new one, or the next count of the same one.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        warning: bool,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let namespace = object.namespace.clone().unwrap_or_else(|| "default".into());
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = Key {
            warning,
            reason: reason.to_string(),
            note: note.to_string(),
            namespace: namespace.clone(),
            name: object.name.clone().unwrap_or_default(),
            uid: object.uid.clone().unwrap_or_default(),
        };
        let now = Timestamp::now();
        let plan = self.ledger().plan(&key, now);
        if let Write::Repeat { name, count } = plan {
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.ledger().record(key, name, count, now);
                    return Ok(());
                }
                // Expired on the server (Events live an hour by default): write it anew.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(object, &namespace, warning, reason, note, now);
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.ledger().record(key, name, 1, now);
        Ok(())
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves the ledger whole: every change is one insert.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(
        &self,
        object: &ObjectReference,
        namespace: &str,
        warning: bool,
        reason: &str,
        note: &str,
        now: Timestamp,
    ) -> Event {
        Event {
            metadata: ObjectMeta {
                // Unique per object and moment, like kubectl's and kube's Event names.
                name: Some(format!(
                    "{}.{:x}",
                    object.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            reason: Some(reason.to_string()),
            action: Some(reason.to_string()),
            note: Some(note.to_string()),
            regarding: Some(object.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reason: &str, note: &str) -> Key {
        Key {
            warning: false,
            reason: reason.into(),
            note: note.into(),
            namespace: "ns".into(),
            name: "shop".into(),
            uid: "u1".into(),
        }
    }

    #[test]
    fn the_same_event_again_is_the_next_count_of_the_one_written() {
        let mut l = Ledger::default();
        let t0 = Timestamp::now();
        let k = key("RollbackStarted", "rolling back to revision 3");
        assert_eq!(l.plan(&k, t0), Write::Create);
        l.record(k.clone(), "shop.1".into(), 1, t0);
        let repeat = |count| Write::Repeat {
            name: "shop.1".into(),
            count,
        };
        let t1 = t0 + SignedDuration::from_secs(30);
        assert_eq!(l.plan(&k, t1), repeat(2));
        l.record(k.clone(), "shop.1".into(), 2, t1);
        // The window runs from the last occurrence.
        let t2 = t1 + SignedDuration::from_mins(5);
        assert_eq!(l.plan(&k, t2), repeat(3));
    }

    #[test]
    fn a_different_note_with_the_same_reason_is_a_new_event() {
        let mut l = Ledger::default();
        let t0 = Timestamp::now();
        l.record(
            key("RevisionCreated", "Created revision 2"),
            "shop.1".into(),
            1,
            t0,
        );
        assert_eq!(
            l.plan(&key("RevisionCreated", "Created revision 3"), t0),
            Write::Create
        );
        let mut other = key("RevisionCreated", "Created revision 2");
        other.uid = "u2".into(); // a stack of the same name, deleted and created again
        assert_eq!(l.plan(&other, t0), Write::Create);
    }

    #[test]
    fn an_event_older_than_the_window_is_forgotten() {
        let mut l = Ledger::default();
        let t0 = Timestamp::now();
        let k = key("Paused", "paused by spec.rollout.paused");
        l.record(k.clone(), "shop.1".into(), 4, t0);
        assert_eq!(l.plan(&k, t0 + REPEAT_WINDOW), Write::Create);
        assert!(
            l.written.is_empty(),
            "old entries are dropped, not kept forever"
        );
    }
}
