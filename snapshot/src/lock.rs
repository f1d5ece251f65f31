//! Repository locks, so gc never deletes a chunk that a running snapshot is about to
//! reference.
//!
//! A snapshot dedups against chunks of existing snapshots without rewriting them; if a gc
//! ran meanwhile and those snapshots had been forgotten, it would delete the chunks and the
//! new snapshot would reference nothing. So snapshot, restore and verify hold a *shared*
//! lock and gc an *exclusive* one. Taking a lock writes `locks/<kind>-<random>` first and
//! then lists: if a conflicting live lock is seen, ours is removed and the operation is
//! refused; two racing writers both see each other, so at worst both back off. A lock
//! whose holder was killed goes stale after `stale_after` (default 30 min) and is ignored.
//! A held lock is rewritten by a thread of its own every third of that period, whatever
//! the operation is doing (a read stalled on a slow disk does not stop it); if the store
//! refuses the rewrites until the lock is stale, the lock counts as lost and
//! [`LockGuard::ensure_held`] says so: a snapshot then never writes its manifest, since a
//! gc may have deleted chunks it reused. Gc additionally keeps chunks younger than its
//! grace period.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{ObjectKind, Store};

/// Locks older than this are considered abandoned.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockBody {
    kind: LockKind,
    refreshed: DateTime<Utc>,
    pid: u32,
    operation: String,
}

/// A held lock, refreshed by a thread of its own; released on drop.
#[derive(Debug)]
pub(crate) struct LockGuard {
    store: Arc<dyn Store>,
    name: String,
    stale_after: Duration,
    /// When the lock was last written successfully.
    last_written: Arc<Mutex<Instant>>,
    /// Dropping it stops the refresher.
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn write(store: &dyn Store, name: &str, body: &LockBody) -> Result<()> {
    store.put(
        ObjectKind::Lock,
        name,
        &serde_json::to_vec(body).expect("locks serialize"),
    )?;
    Ok(())
}

pub(crate) fn acquire(
    store: &Arc<dyn Store>,
    kind: LockKind,
    operation: &str,
    stale_after: Duration,
) -> Result<LockGuard> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).expect("system random number generator failed");
    let name = format!(
        "{}-{}",
        if kind == LockKind::Shared {
            "shared"
        } else {
            "exclusive"
        },
        hex::encode(rnd)
    );
    let body = LockBody {
        kind,
        refreshed: Utc::now(),
        pid: std::process::id(),
        operation: operation.to_string(),
    };
    write(&**store, &name, &body)?;
    let mut guard = LockGuard {
        store: store.clone(),
        name,
        stale_after,
        last_written: Arc::new(Mutex::new(Instant::now())),
        stop: None,
        refresher: None,
    };
    let now = Utc::now();
    for other in store.list(ObjectKind::Lock)? {
        if other.name == guard.name {
            continue;
        }
        let Ok(bytes) = store.get(ObjectKind::Lock, &other.name) else {
            continue;
        };
        let Ok(theirs) = serde_json::from_slice::<LockBody>(&bytes) else {
            continue;
        };
        let age = (now - theirs.refreshed).to_std().unwrap_or_default();
        let conflicts = kind == LockKind::Exclusive || theirs.kind == LockKind::Exclusive;
        if conflicts && age < stale_after {
            // `guard` drops here and removes our lock.
            return Err(Error::Locked {
                holder: theirs.operation,
                lock: other.name,
                created: theirs.refreshed.to_rfc3339(),
            });
        }
    }
    guard.start_refreshing(body);
    Ok(guard)
}

impl LockGuard {
    /// Rewrites the lock every third of its staleness period until dropped.
    fn start_refreshing(&mut self, mut body: LockBody) {
        let (stop, stopped) = mpsc::channel::<()>();
        let (store, name, last_written) = (
            self.store.clone(),
            self.name.clone(),
            self.last_written.clone(),
        );
        let every = (self.stale_after / 3).max(Duration::from_millis(10));
        let handle = std::thread::spawn(move || {
            // Ends when the guard drops its sender.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                body.refreshed = Utc::now();
                match write(&*store, &name, &body) {
                    Ok(()) => {
                        *last_written.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now()
                    }
                    Err(e) => {
                        tracing::warn!(lock = %name, error = %e, "refreshing the repository lock")
                    }
                }
            }
        });
        self.stop = Some(stop);
        self.refresher = Some(handle);
    }

    /// Errs once the lock may have gone stale (no rewrite succeeded for its whole
    /// staleness period): another process may have taken a conflicting lock since, and a
    /// gc may have run.
    pub(crate) fn ensure_held(&self) -> Result<()> {
        let since = self
            .last_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if since >= self.stale_after {
            return Err(Error::LockLost {
                lock: self.name.clone(),
                since_secs: since.as_secs(),
            });
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
        if let Err(e) = self.store.delete(ObjectKind::Lock, &self.name) {
            tracing::warn!(lock = %self.name, error = %e, "could not remove repository lock; it will go stale");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn mem() -> Arc<dyn Store> {
        Arc::new(MemStore::new())
    }

    #[test]
    fn shared_locks_coexist_and_exclude_gc() {
        let s = mem();
        let a = acquire(&s, LockKind::Shared, "snapshot", DEFAULT_STALE_AFTER).unwrap();
        let _b = acquire(&s, LockKind::Shared, "restore", DEFAULT_STALE_AFTER).unwrap();
        let err = acquire(&s, LockKind::Exclusive, "gc", DEFAULT_STALE_AFTER).unwrap_err();
        assert_eq!(err.category(), "locked");
        drop(a);
        drop(_b);
        let g = acquire(&s, LockKind::Exclusive, "gc", DEFAULT_STALE_AFTER).unwrap();
        assert!(acquire(&s, LockKind::Shared, "snapshot", DEFAULT_STALE_AFTER).is_err());
        drop(g);
        assert!(s.list(ObjectKind::Lock).unwrap().is_empty());
    }

    #[test]
    fn stale_locks_are_ignored() {
        let s = mem();
        let held = acquire(&s, LockKind::Shared, "snapshot", DEFAULT_STALE_AFTER).unwrap();
        std::mem::forget(held);
        assert!(acquire(&s, LockKind::Exclusive, "gc", Duration::ZERO).is_ok());
    }

    /// A store that refuses every write once `fail` is set (a store outage).
    #[derive(Debug)]
    struct Outage {
        inner: MemStore,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Store for Outage {
        fn put(
            &self,
            kind: ObjectKind,
            name: &str,
            data: &[u8],
        ) -> std::result::Result<(), crate::store::StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError::Config("store down".into()));
            }
            self.inner.put(kind, name, data)
        }
        fn put_new(
            &self,
            kind: ObjectKind,
            name: &str,
            data: &[u8],
        ) -> std::result::Result<bool, crate::store::StoreError> {
            self.inner.put_new(kind, name, data)
        }
        fn get(
            &self,
            kind: ObjectKind,
            name: &str,
        ) -> std::result::Result<Vec<u8>, crate::store::StoreError> {
            self.inner.get(kind, name)
        }
        fn get_range(
            &self,
            kind: ObjectKind,
            name: &str,
            offset: u64,
            len: u64,
        ) -> std::result::Result<Vec<u8>, crate::store::StoreError> {
            self.inner.get_range(kind, name, offset, len)
        }
        fn list(
            &self,
            kind: ObjectKind,
        ) -> std::result::Result<Vec<crate::store::ObjectInfo>, crate::store::StoreError> {
            self.inner.list(kind)
        }
        fn delete(
            &self,
            kind: ObjectKind,
            name: &str,
        ) -> std::result::Result<(), crate::store::StoreError> {
            self.inner.delete(kind, name)
        }
        fn sync(&self) -> std::result::Result<(), crate::store::StoreError> {
            self.inner.sync()
        }
    }

    fn refreshed(s: &dyn Store) -> DateTime<Utc> {
        let locks = s.list(ObjectKind::Lock).unwrap();
        let bytes = s.get(ObjectKind::Lock, &locks[0].name).unwrap();
        serde_json::from_slice::<LockBody>(&bytes)
            .unwrap()
            .refreshed
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_held_lock_is_refreshed_on_a_timer_and_counts_as_lost_when_it_cannot_be() {
        let outage = Arc::new(Outage {
            inner: MemStore::new(),
            fail: false.into(),
        });
        let s: Arc<dyn Store> = outage.clone();
        let held = acquire(&s, LockKind::Shared, "snapshot", Duration::from_millis(300)).unwrap();
        let first = refreshed(&*s);
        // Nothing calls the guard: its own thread rewrites the lock.
        wait_for("a refresh", || refreshed(&*s) > first);
        held.ensure_held().unwrap();
        // The store refuses writes: once the lock may be stale, it is lost.
        outage.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        wait_for("the lock to count as lost", || held.ensure_held().is_err());
        assert_eq!(held.ensure_held().unwrap_err().category(), "lock_lost");
        outage
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        drop(held);
        assert!(
            s.list(ObjectKind::Lock).unwrap().is_empty(),
            "released on drop"
        );
    }
}
