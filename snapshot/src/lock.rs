//! Repository locks, so gc never deletes a chunk that a running snapshot is about to
//! reference.
//!
//! A snapshot dedups against chunks of existing snapshots without rewriting them; if a gc
//! ran meanwhile and those snapshots had been forgotten, it would delete the chunks and the
//! new snapshot would reference nothing. So snapshot, restore and verify hold a *shared*
//! lock and gc an *exclusive* one. Taking a lock writes `locks/<kind>-<random>` first and
//! then lists: if a conflicting live lock is seen, ours is removed and the operation is
//! refused; two racing writers both see each other, so at worst both back off. A lock
//! whose holder was killed goes stale after `stale_after` (default 30 min) and is ignored;
//! long snapshots refresh theirs well before that. Gc additionally keeps chunks younger
//! than its grace period, which covers a holder that outlived a stale lock.

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

/// A held lock; released on drop.
#[derive(Debug)]
pub(crate) struct LockGuard<'a> {
    store: &'a dyn Store,
    name: String,
    body: LockBody,
    last_refresh: Instant,
    stale_after: Duration,
}

fn write(store: &dyn Store, name: &str, body: &LockBody) -> Result<()> {
    store.put(
        ObjectKind::Lock,
        name,
        &serde_json::to_vec(body).expect("locks serialize"),
    )?;
    Ok(())
}

pub(crate) fn acquire<'a>(
    store: &'a dyn Store,
    kind: LockKind,
    operation: &str,
    stale_after: Duration,
) -> Result<LockGuard<'a>> {
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
    write(store, &name, &body)?;
    let guard = LockGuard {
        store,
        name,
        body,
        last_refresh: Instant::now(),
        stale_after,
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
    Ok(guard)
}

impl LockGuard<'_> {
    /// Rewrites the lock when a third of its staleness period has passed.
    pub(crate) fn refresh_if_due(&mut self) -> Result<()> {
        if self.last_refresh.elapsed() >= self.stale_after / 3 {
            self.body.refreshed = Utc::now();
            write(self.store, &self.name, &self.body)?;
            self.last_refresh = Instant::now();
        }
        Ok(())
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.delete(ObjectKind::Lock, &self.name) {
            tracing::warn!(lock = %self.name, error = %e, "could not remove repository lock; it will go stale");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn shared_locks_coexist_and_exclude_gc() {
        let s = MemStore::new();
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
        let s = MemStore::new();
        let held = acquire(&s, LockKind::Shared, "snapshot", DEFAULT_STALE_AFTER).unwrap();
        std::mem::forget(held);
        assert!(acquire(&s, LockKind::Exclusive, "gc", Duration::ZERO).is_ok());
    }
}
