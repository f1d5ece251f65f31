//! Following one object by name with a kube watch, until a check says done or a deadline
//! passes. Used by `wait`, `status --watch` and the operation commands; the watch
//! restarts by itself after a dropped connection, and RBAC refusals end it at once.

use crate::cluster::Cluster;
use crate::error::{Call, CliError};
use futures::stream::BoxStream;
use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tokio::time::Instant;

/// What the watch saw.
#[derive(Debug)]
pub enum Seen<K> {
    /// The object as it is now.
    Changed(K),
    /// The object is gone.
    Deleted,
}

/// A watch on one object.
pub struct ObjectWatch<K> {
    stream: BoxStream<'static, Result<Event<K>, watcher::Error>>,
    /// Whether the current (re)list has shown the object.
    seen_in_init: bool,
}

impl<K> Debug for ObjectWatch<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWatch").finish_non_exhaustive()
    }
}

impl<K> ObjectWatch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    /// Watches the object `name` of `api`; each watch request ends (and a new one starts)
    /// within `request_timeout` when one is set.
    pub fn new(api: Api<K>, name: &str, request_timeout: Option<std::time::Duration>) -> Self {
        let mut config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        if let Some(t) = request_timeout {
            // The server ends the watch cleanly before the client's read timeout would.
            config = config.timeout((t.as_secs() as u32).saturating_sub(1).max(1));
        }
        ObjectWatch {
            stream: watcher::watcher(api, config).default_backoff().boxed(),
            seen_in_init: false,
        }
    }

    /// The next change, or an error of the watch (after which it restarts by itself).
    pub async fn next(&mut self) -> Result<Seen<K>, watcher::Error> {
        loop {
            match self.stream.next().await {
                Some(Ok(Event::Apply(k))) => return Ok(Seen::Changed(k)),
                Some(Ok(Event::InitApply(k))) => {
                    self.seen_in_init = true;
                    return Ok(Seen::Changed(k));
                }
                Some(Ok(Event::Delete(_))) => return Ok(Seen::Deleted),
                Some(Ok(Event::Init)) => self.seen_in_init = false,
                // A (re)list that did not show the object: it was deleted meanwhile.
                Some(Ok(Event::InitDone)) if !self.seen_in_init => return Ok(Seen::Deleted),
                Some(Ok(Event::InitDone)) => {}
                Some(Err(e)) => return Err(e),
                // The backoff-wrapped watcher never ends; treat an end as a deletion of
                // what we were watching rather than spinning.
                None => return Ok(Seen::Deleted),
            }
        }
    }
}

/// Whether a watch error will not go away by retrying (RBAC, a missing resource), and
/// the error to report for it.
pub fn fatal(
    err: watcher::Error,
    cluster: &Cluster,
    resource: &str,
    what: &str,
) -> Result<String, CliError> {
    let (verb, inner) = match err {
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
        other => return Ok(other.to_string()),
    };
    match &inner {
        kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404) => Err(cluster.error(
            inner,
            &Call {
                verb,
                resource,
                namespace: Some(&cluster.namespace),
                action: format!("watching {what}"),
            },
        )),
        _ => Ok(crate::error::root_cause(&inner)),
    }
}

/// The outcome of a check on one version of the object.
#[derive(Debug)]
pub enum Step<T> {
    /// Finished with this value.
    Done(T),
    /// Finished with this error.
    Fail(CliError),
    /// Keep waiting.
    Continue,
}

/// How a wait ended without its check saying done.
#[derive(Debug)]
pub enum Ended<K> {
    /// The deadline passed; the last version seen.
    TimedOut(Option<K>),
    /// The object was deleted; the last version seen.
    Deleted(Option<K>),
}

/// Checks `initial`, then every new version of the object until `check` is done or
/// fails, the object is deleted or the deadline passes. `on_seen` is told about every
/// version (for the spinner), `on_error` about watch hiccups.
#[allow(clippy::too_many_arguments)] // each is a distinct concern of the one wait loop
pub async fn until<K, T>(
    cluster: &Cluster,
    api: Api<K>,
    resource: &str,
    name: &str,
    initial: Option<K>,
    deadline: Instant,
    mut check: impl FnMut(&K) -> Step<T>,
    mut on_error: impl FnMut(&str),
) -> Result<Result<T, Ended<K>>, CliError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let mut last = initial;
    if let Some(k) = &last {
        match check(k) {
            Step::Done(t) => return Ok(Ok(t)),
            Step::Fail(e) => return Err(e),
            Step::Continue => {}
        }
    }
    let mut watch = ObjectWatch::new(api, name, cluster.request_timeout);
    loop {
        let next = match tokio::time::timeout_at(deadline, watch.next()).await {
            Err(_) => return Ok(Err(Ended::TimedOut(last))),
            Ok(n) => n,
        };
        match next {
            Ok(Seen::Changed(k)) => {
                let step = check(&k);
                last = Some(k);
                match step {
                    Step::Done(t) => return Ok(Ok(t)),
                    Step::Fail(e) => return Err(e),
                    Step::Continue => {}
                }
            }
            Ok(Seen::Deleted) => return Ok(Err(Ended::Deleted(last))),
            Err(e) => {
                let message = fatal(e, cluster, resource, &format!("\"{name}\""))?;
                on_error(&message);
            }
        }
    }
}
