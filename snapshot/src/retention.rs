//! Retention and garbage collection.
//!
//! [`plan_retention`] is a pure function over snapshot metadata: per source (stack and
//! component), keep the newest `keep_last`, plus the newest snapshot of each of the last
//! `keep_daily` UTC calendar days, plus anything pinned (the snapshot a rollback would go
//! back to must never be forgotten under it). [`Repository::forget_by_policy`] deletes the
//! other manifests; [`Repository::gc`] then marks every chunk still referenced and sweeps
//! the rest; a pack object is kept whole while any chunk in it is referenced (packs are not
//! rewritten, so a pack can hold some dead bytes until all its chunks are dead). Gc holds the exclusive lock (see [`crate::lock`]) and also spares chunks
//! younger than its grace period, as a second guard for a snapshot whose lock went stale.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::id::{ChunkId, SnapshotId};
use crate::lock::{self, LockKind, DEFAULT_STALE_AFTER};
use crate::manifest::SnapshotInfo;
use crate::repo::Repository;
use crate::store::ObjectKind;

/// How many snapshots to keep, per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N.
    pub keep_last: usize,
    /// Keep the newest of each of the last D days (today included).
    pub keep_daily: u32,
}

/// What a policy keeps and forgets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Snapshots kept.
    pub keep: Vec<SnapshotId>,
    /// Snapshots to forget.
    pub forget: Vec<SnapshotId>,
}

/// Decides which snapshots a policy keeps. Snapshots dated after `now` (clock skew) are kept.
pub fn plan_retention(
    snapshots: &[SnapshotInfo],
    policy: RetentionPolicy,
    now: DateTime<Utc>,
    pinned: &[SnapshotId],
) -> RetentionPlan {
    let mut groups: BTreeMap<(&str, &str), Vec<&SnapshotInfo>> = BTreeMap::new();
    for s in snapshots {
        groups
            .entry((&s.meta.source.stack, &s.meta.source.component))
            .or_default()
            .push(s);
    }
    let today = now.date_naive();
    let mut keep: HashSet<SnapshotId> = pinned.iter().copied().collect();
    for list in groups.values_mut() {
        list.sort_by(|a, b| b.meta.created.cmp(&a.meta.created).then(b.id.cmp(&a.id)));
        keep.extend(list.iter().take(policy.keep_last).map(|s| s.id));
        let mut days_seen = HashSet::new();
        for s in list.iter() {
            if s.meta.created > now {
                keep.insert(s.id);
                continue;
            }
            let day = s.meta.created.date_naive();
            let age_days = (today - day).num_days();
            if age_days < i64::from(policy.keep_daily) && days_seen.insert(day) {
                keep.insert(s.id);
            }
        }
    }
    let mut plan = RetentionPlan::default();
    for s in snapshots {
        if keep.contains(&s.id) {
            plan.keep.push(s.id);
        } else {
            plan.forget.push(s.id);
        }
    }
    plan
}

/// Tuning for [`Repository::gc`].
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced chunks younger than this are kept.
    pub grace: Duration,
    /// Locks older than this are treated as abandoned.
    pub stale_lock_after: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            stale_lock_after: DEFAULT_STALE_AFTER,
        }
    }
}

/// What a gc did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Snapshots whose chunks were marked.
    pub snapshots: u64,
    /// Distinct chunks still referenced.
    pub referenced_chunks: u64,
    /// Chunk and pack objects kept because they hold referenced chunks.
    pub referenced_objects: u64,
    /// Chunks deleted.
    pub deleted_chunks: u64,
    /// Stored bytes freed.
    pub deleted_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub kept_young: u64,
    /// Leftover temporary files removed.
    pub temporaries_removed: u64,
}

impl Repository {
    /// Applies a retention policy: deletes the manifests it does not keep.
    pub fn forget_by_policy(
        &self,
        policy: RetentionPolicy,
        now: DateTime<Utc>,
        pinned: &[SnapshotId],
    ) -> Result<RetentionPlan> {
        let snapshots = self.list_snapshots()?;
        let plan = plan_retention(&snapshots, policy, now, pinned);
        for id in &plan.forget {
            self.forget(*id)?;
        }
        Ok(plan)
    }

    /// Deletes chunks that no complete snapshot references. Refuses to run while any
    /// manifest is unreadable: its chunks cannot be marked, and deleting them would make a
    /// repairable problem permanent.
    pub fn gc(&self, options: &GcOptions) -> Result<GcReport> {
        let _lock = lock::acquire(
            &self.store,
            LockKind::Exclusive,
            "gc",
            options.stale_lock_after,
        )?;
        let (referenced, listing) = self.referenced_chunks()?;
        if let Some((_, e)) = listing.unreadable.into_iter().next() {
            return Err(e);
        }
        // Objects to keep: standalone chunks by id, packs by name (a pack stays whole while
        // any chunk in it is referenced; packs are not rewritten).
        let objects: HashSet<ChunkId> = referenced
            .iter()
            .map(|(id, c)| c.pack.map_or(*id, |p| p.object))
            .collect();
        let mut report = GcReport {
            snapshots: listing.snapshots.len() as u64,
            referenced_chunks: referenced.len() as u64,
            referenced_objects: objects.len() as u64,
            ..GcReport::default()
        };
        let now = SystemTime::now();
        for o in self.store.list(ObjectKind::Chunk)? {
            if o.name.parse().is_ok_and(|id| objects.contains(&id)) {
                continue;
            }
            // Unknown age counts as young: never delete what cannot be shown to be old.
            let old = o
                .modified
                .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= options.grace);
            if !old {
                report.kept_young += 1;
                continue;
            }
            self.store.delete(ObjectKind::Chunk, &o.name)?;
            report.deleted_chunks += 1;
            report.deleted_bytes += o.size;
        }
        report.temporaries_removed = self.store.remove_stale_temporaries(options.grace)? as u64;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MethodKind, SnapshotMeta, Source};
    use chrono::TimeZone;

    fn snap(n: u8, component: &str, at: DateTime<Utc>) -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId([n; 32]),
            meta: SnapshotMeta {
                source: Source::new("shop", component, format!("r{n}")),
                method: MethodKind::Files,
                created: at,
                total_size: 0,
                file_count: 0,
                chunk_count: 0,
            },
        }
    }

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn keep_last_per_source() {
        let s = vec![
            snap(1, "db", at(1, 1)),
            snap(2, "db", at(1, 2)),
            snap(3, "db", at(1, 3)),
            snap(4, "web", at(1, 1)),
        ];
        let plan = plan_retention(
            &s,
            RetentionPolicy {
                keep_last: 2,
                keep_daily: 0,
            },
            at(10, 0),
            &[],
        );
        assert_eq!(plan.forget, vec![SnapshotId([1; 32])]);
        assert_eq!(plan.keep.len(), 3);
    }

    #[test]
    fn keep_daily_keeps_newest_of_each_recent_day() {
        let s = vec![
            snap(1, "db", at(8, 1)),
            snap(2, "db", at(8, 23)),
            snap(3, "db", at(9, 5)),
            snap(4, "db", at(10, 1)),
            snap(5, "db", at(10, 2)),
            snap(6, "db", at(5, 2)),
        ];
        // Days 10, 9, 8 are the last three days at 10th 12:00.
        let plan = plan_retention(
            &s,
            RetentionPolicy {
                keep_last: 0,
                keep_daily: 3,
            },
            at(10, 12),
            &[],
        );
        let ids = |v: &[SnapshotId]| v.iter().map(|i| i.0[0]).collect::<Vec<_>>();
        assert_eq!(ids(&plan.keep), vec![2, 3, 5]);
        assert_eq!(ids(&plan.forget), vec![1, 4, 6]);
    }

    #[test]
    fn pinned_and_future_snapshots_are_kept() {
        let s = vec![snap(1, "db", at(1, 1)), snap(2, "db", at(20, 1))];
        let plan = plan_retention(
            &s,
            RetentionPolicy {
                keep_last: 0,
                keep_daily: 0,
            },
            at(10, 0),
            &[SnapshotId([1; 32])],
        );
        assert!(plan.forget.is_empty());
    }

    #[test]
    fn nothing_kept_without_policy() {
        let s = vec![snap(1, "db", at(1, 1))];
        let plan = plan_retention(
            &s,
            RetentionPolicy {
                keep_last: 0,
                keep_daily: 0,
            },
            at(10, 0),
            &[],
        );
        assert_eq!(plan.forget.len(), 1);
    }
}
