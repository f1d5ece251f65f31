//! Snapshot housekeeping, decided purely from the policy, the stack's StackSnapshots and
//! the time: scheduled snapshots (cron), scheduled and requested verification (a restore
//! drill that re-reads and re-hashes a snapshot), and retention (which snapshot objects
//! go, and exactly which snapshots the repository forgets when the agent prunes it).

use deployctl_api::{data, ProductionStackStatus, SnapshotPhase, SnapshotPolicy, SnapshotReason};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Snapshots of each component kept when the policy says nothing.
pub const DEFAULT_KEEP_LAST: u32 = 10;

type Timestamp = chrono::DateTime<chrono::Utc>;

/// What housekeeping needs of one StackSnapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotFacts {
    /// Object name.
    pub name: String,
    /// Component.
    pub component: String,
    /// Why it was taken.
    pub reason: SnapshotReason,
    /// Phase (unset: not picked up yet).
    pub phase: Option<SnapshotPhase>,
    /// When the object was created.
    pub created: Timestamp,
    /// When it was last verified (or, never verified, completed).
    pub checked: Option<Timestamp>,
    /// The digests it names in the repository: one per replica once complete; a failed
    /// snapshot of a StatefulSet may name those of the replicas that completed.
    pub digests: Vec<String>,
    /// When a person asked for a verification (annotation).
    pub verify_requested: Option<Timestamp>,
    /// When it was last verified.
    pub last_verified: Option<Timestamp>,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Housekeeping {
    /// Scheduled snapshots to create: (component, name).
    pub create: Vec<(String, String)>,
    /// Snapshots to verify now, each with the key naming its Job.
    pub verify: Vec<(String, String)>,
    /// Snapshot objects to delete (retention).
    pub delete: Vec<String>,
    /// Per component, the digests the repository forgets (sorted); present only when
    /// there is one. The agent forgets exactly these: never a snapshot it was not named,
    /// so one taken or referenced while the prune was decided cannot be lost.
    pub prune: BTreeMap<String, Vec<String>>,
    /// When to look again for the next scheduled snapshot or verification.
    pub next: Option<Duration>,
}

/// The snapshots neither retention nor a prune to fit may forget: those the rollout in
/// progress took (its rollback restores them), those the rollback in progress restores,
/// and those pending Restore operations name (`requested`). The one statement of this
/// rule: both the housekeeping pass and the capacity check use it.
pub fn protected<'a>(
    status: &ProductionStackStatus,
    requested: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    status
        .rollout
        .iter()
        .flat_map(|r| r.snapshots.iter().map(|s| s.snapshot.clone()))
        .chain(
            status
                .rollback
                .iter()
                .flat_map(|r| r.restores.iter().map(|s| s.snapshot.clone())),
        )
        .chain(requested.into_iter().map(str::to_string))
        .collect()
}

/// Decides housekeeping for stack `stack` whose components with data are `components`.
/// `protected` snapshots (the rollout's or rollback's) are never deleted.
pub fn plan(
    stack: &str,
    policy: &SnapshotPolicy,
    components: &[String],
    snaps: &[SnapshotFacts],
    protected: &BTreeSet<String>,
    stack_created: Timestamp,
    now: Timestamp,
) -> Housekeeping {
    let mut out = Housekeeping::default();
    let wake = |at: Timestamp, out: &mut Housekeeping| {
        let d = (at - now).to_std().unwrap_or(Duration::ZERO);
        out.next = Some(out.next.map_or(d, |n| n.min(d)));
    };

    // Scheduled snapshots: one per data component for each time the schedule fired since
    // the newest scheduled one (at most one catch-up, like a CronJob with no backlog), and
    // none while the component's previous scheduled snapshot is still waiting or running
    // (a CronJob's `concurrencyPolicy: Forbid`): a schedule faster than the snapshots, or
    // a long restore holding the data, must not pile up snapshots that then all run.
    if let Some(schedule) = &policy.schedule {
        let last = snaps
            .iter()
            .filter(|s| s.reason == SnapshotReason::Scheduled)
            .map(|s| s.created)
            .max()
            .unwrap_or(stack_created);
        if let Some(due) = data::next_run(schedule, last) {
            if due <= now {
                for c in components {
                    let name = format!("{stack}-{c}-s{}", due.timestamp());
                    let outstanding = snaps.iter().any(|s| {
                        &s.component == c
                            && s.reason == SnapshotReason::Scheduled
                            && !s.phase.is_some_and(SnapshotPhase::is_final)
                    });
                    if !outstanding && !snaps.iter().any(|s| s.name == name) {
                        out.create.push((c.clone(), name));
                    }
                }
                if let Some(after) = data::next_run(schedule, now) {
                    wake(after, &mut out);
                }
            } else {
                wake(due, &mut out);
            }
        }
    }

    // Verification: the newest complete snapshot of each component on the schedule, and
    // any snapshot a person asked to verify.
    for s in snaps {
        if s.phase != Some(SnapshotPhase::Completed) {
            continue;
        }
        if let Some(asked) = s.verify_requested {
            if s.last_verified.is_none_or(|v| v < asked) {
                out.verify.push((
                    s.name.clone(),
                    format!("{}@req{}", s.name, asked.timestamp()),
                ));
            }
        }
    }
    if let Some(schedule) = &policy.verify_schedule {
        for c in components {
            let newest = snaps
                .iter()
                .filter(|s| &s.component == c && s.phase == Some(SnapshotPhase::Completed))
                .max_by_key(|s| s.created);
            let Some(s) = newest else { continue };
            let since = s.checked.unwrap_or(s.created);
            let Some(due) = data::next_run(schedule, since) else {
                continue;
            };
            if due <= now {
                if !out.verify.iter().any(|(n, _)| n == &s.name) {
                    out.verify
                        .push((s.name.clone(), format!("{}@{}", s.name, due.timestamp())));
                }
            } else {
                wake(due, &mut out);
            }
        }
    }

    // Retention, per component: the newest `keepLast`, plus the newest of each of the last
    // `keepDaily` days, plus what a rollout or rollback may restore.
    let retention = policy.retention.clone().unwrap_or_default();
    let keep_last = retention.keep_last.unwrap_or(DEFAULT_KEEP_LAST) as usize;
    let mut by_component: BTreeMap<&str, Vec<&SnapshotFacts>> = BTreeMap::new();
    for s in snaps {
        by_component
            .entry(s.component.as_str())
            .or_default()
            .push(s);
    }
    for (component, mut list) in by_component {
        list.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
        let complete: Vec<&&SnapshotFacts> = list
            .iter()
            .filter(|s| s.phase == Some(SnapshotPhase::Completed))
            .collect();
        let mut keep: BTreeSet<&str> = complete
            .iter()
            .take(keep_last)
            .map(|s| s.name.as_str())
            .collect();
        if let Some(days) = retention.keep_daily {
            let mut seen_days = BTreeSet::new();
            for s in &complete {
                let age = now - s.created;
                if age.num_days() >= i64::from(days) {
                    continue;
                }
                if seen_days.insert(s.created.date_naive()) {
                    keep.insert(s.name.as_str());
                }
            }
        }
        let mut forgotten = false;
        for s in &complete {
            if !keep.contains(s.name.as_str()) && !protected.contains(&s.name) {
                out.delete.push(s.name.clone());
                forgotten = true;
            }
        }
        // Failed snapshots hold no data: keep the newest few for the record.
        for s in list
            .iter()
            .filter(|s| s.phase == Some(SnapshotPhase::Failed))
            .skip(keep_last)
        {
            if !protected.contains(&s.name) {
                out.delete.push(s.name.clone());
            }
        }
        // A failed snapshot of several replicas may have stored some of them: they go
        // with it.
        forgotten |= list
            .iter()
            .any(|s| out.delete.contains(&s.name) && !s.digests.is_empty());
        if forgotten {
            // Two objects may name one digest (the same data snapshotted twice): a digest
            // is forgotten only when no object that stays names it, whatever its phase.
            let deleted: BTreeSet<&str> = out.delete.iter().map(String::as_str).collect();
            let staying: BTreeSet<&str> = list
                .iter()
                .filter(|s| !deleted.contains(s.name.as_str()))
                .flat_map(|s| s.digests.iter().map(String::as_str))
                .collect();
            let mut forget: Vec<String> = list
                .iter()
                .filter(|s| deleted.contains(s.name.as_str()))
                .flat_map(|s| s.digests.iter().cloned())
                .filter(|d| !staying.contains(d.as_str()))
                .collect();
            forget.sort();
            forget.dedup();
            if !forget.is_empty() {
                out.prune.insert(component.to_string(), forget);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> Timestamp {
        chrono::Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0).unwrap()
    }

    fn snap(name: &str, created: Timestamp, phase: SnapshotPhase) -> SnapshotFacts {
        SnapshotFacts {
            name: name.into(),
            component: "db".into(),
            reason: SnapshotReason::BeforeRollout,
            phase: Some(phase),
            created,
            checked: None,
            digests: vec![format!("digest-{name}")],
            verify_requested: None,
            last_verified: None,
        }
    }

    fn policy(yaml: &str) -> SnapshotPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_schedule_takes_one_snapshot_per_component_when_due_and_wakes_for_the_next() {
        let p = policy("schedule: '0 3 * * *'");
        let comps = vec!["db".to_string(), "search".to_string()];
        let created = at(1, 0);
        let h = plan("shop", &p, &comps, &[], &BTreeSet::new(), created, at(2, 0));
        assert!(h.create.is_empty());
        assert_eq!(h.next, Some(Duration::from_secs(3600)));
        let h = plan("shop", &p, &comps, &[], &BTreeSet::new(), created, at(3, 0));
        let stamp = at(3, 0).timestamp();
        assert_eq!(
            h.create,
            vec![
                ("db".into(), format!("shop-db-s{stamp}")),
                ("search".into(), format!("shop-search-s{stamp}"))
            ]
        );
        assert_eq!(h.next, Some(Duration::from_secs(24 * 3600)));
        // Once taken, nothing more until tomorrow.
        let mut s = snap(
            &format!("shop-db-s{stamp}"),
            at(3, 0),
            SnapshotPhase::Running,
        );
        s.reason = SnapshotReason::Scheduled;
        let h = plan(
            "shop",
            &p,
            &comps,
            &[s],
            &BTreeSet::new(),
            created,
            at(3, 5),
        );
        assert!(h.create.is_empty());
    }

    #[test]
    fn verification_runs_on_the_newest_snapshot_when_due_and_on_request() {
        let p = policy("verifySchedule: '30 * * * *'");
        let comps = vec!["db".to_string()];
        let old = snap("old", at(1, 0), SnapshotPhase::Completed);
        let mut new = snap("new", at(2, 0), SnapshotPhase::Completed);
        let h = plan(
            "shop",
            &p,
            &comps,
            &[old.clone(), new.clone()],
            &BTreeSet::new(),
            at(0, 0),
            at(2, 10),
        );
        assert!(h.verify.is_empty());
        assert_eq!(h.next, Some(Duration::from_secs(20 * 60)));
        let h = plan(
            "shop",
            &p,
            &comps,
            &[old.clone(), new.clone()],
            &BTreeSet::new(),
            at(0, 0),
            at(2, 31),
        );
        assert_eq!(h.verify.len(), 1);
        assert_eq!(h.verify[0].0, "new");
        new.checked = Some(at(2, 31));
        new.last_verified = Some(at(2, 31));
        let mut asked = old.clone();
        asked.verify_requested = Some(at(2, 40));
        let h = plan(
            "shop",
            &p,
            &comps,
            &[asked, new],
            &BTreeSet::new(),
            at(0, 0),
            at(2, 41),
        );
        assert_eq!(h.verify.len(), 1, "{h:?}");
        assert_eq!(h.verify[0].0, "old", "a person's request");
    }

    #[test]
    fn retention_keeps_the_newest_and_what_a_rollback_needs_and_prunes_the_rest() {
        let p = policy("retention: {keepLast: 2}");
        let comps = vec!["db".to_string()];
        let snaps: Vec<SnapshotFacts> = (0..5)
            .map(|i| snap(&format!("s{i}"), at(i, 0), SnapshotPhase::Completed))
            .collect();
        let protected = BTreeSet::from(["s0".to_string()]);
        let h = plan("shop", &p, &comps, &snaps, &protected, at(0, 0), at(6, 0));
        let mut deleted = h.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["s1", "s2"]);
        assert_eq!(
            h.prune["db"],
            vec!["digest-s1", "digest-s2"],
            "exactly the deleted ones are forgotten"
        );
        // Nothing to forget: no prune.
        let h = plan(
            "shop",
            &p,
            &comps,
            &snaps[3..],
            &BTreeSet::new(),
            at(0, 0),
            at(6, 0),
        );
        assert!(h.delete.is_empty() && h.prune.is_empty());
    }

    #[test]
    fn a_digest_another_object_still_names_is_never_forgotten_nor_a_running_snapshot() {
        let p = policy("retention: {keepLast: 1}");
        let comps = vec!["db".to_string()];
        let mut snaps: Vec<SnapshotFacts> = (0..3)
            .map(|i| snap(&format!("s{i}"), at(i, 0), SnapshotPhase::Completed))
            .collect();
        // s0 and s2 hold the same data (nothing changed between them).
        snaps[0].digests = snaps[2].digests.clone();
        // A snapshot still being taken: no digest yet, and never a candidate.
        let mut running = snap("s3", at(4, 0), SnapshotPhase::Running);
        running.digests = vec![];
        snaps.push(running);
        let h = plan(
            "shop",
            &p,
            &comps,
            &snaps,
            &BTreeSet::new(),
            at(0, 0),
            at(6, 0),
        );
        let mut deleted = h.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["s0", "s1"]);
        assert_eq!(
            h.prune["db"],
            vec!["digest-s1"],
            "s0's digest is s2's too, and s2 stays"
        );
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_recent_day() {
        let p = policy("retention: {keepLast: 1, keepDaily: 3}");
        let comps = vec!["db".to_string()];
        let day = |d: u32, h: u32| chrono::Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap();
        let snaps = vec![
            snap("d26-b", day(26, 9), SnapshotPhase::Completed),
            snap("d26-a", day(26, 8), SnapshotPhase::Completed),
            snap("d25", day(25, 8), SnapshotPhase::Completed),
            snap("d24", day(24, 8), SnapshotPhase::Completed),
            snap("d20", day(20, 8), SnapshotPhase::Completed),
        ];
        let h = plan(
            "shop",
            &p,
            &comps,
            &snaps,
            &BTreeSet::new(),
            day(1, 0),
            day(26, 10),
        );
        let mut deleted = h.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["d20", "d26-a"]);
    }

    #[test]
    fn every_replicas_digest_is_forgotten_with_its_snapshot_and_a_failed_ones_stored_replicas_too()
    {
        let p = policy("retention: {keepLast: 1}");
        let comps = vec!["db".to_string()];
        let replicas = |name: &str| vec![format!("{name}-0"), format!("{name}-1")];
        let mut snaps: Vec<SnapshotFacts> = (0..2)
            .map(|i| snap(&format!("s{i}"), at(i, 0), SnapshotPhase::Completed))
            .collect();
        snaps[0].digests = replicas("s0");
        snaps[1].digests = replicas("s1");
        // Two failed snapshots; the older one had stored replica 0 before replica 1 failed.
        let mut f0 = snap("f0", at(2, 0), SnapshotPhase::Failed);
        f0.digests = vec!["f0-0".into()];
        let mut f1 = snap("f1", at(3, 0), SnapshotPhase::Failed);
        f1.digests = vec![];
        snaps.extend([f0, f1]);
        let h = plan(
            "shop",
            &p,
            &comps,
            &snaps,
            &BTreeSet::new(),
            at(0, 0),
            at(6, 0),
        );
        let mut deleted = h.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["f0", "s0"]);
        assert_eq!(h.prune["db"], vec!["f0-0", "s0-0", "s0-1"]);
    }

    #[test]
    fn no_scheduled_snapshot_is_added_while_the_previous_one_is_outstanding() {
        let p = policy("schedule: '* * * * *'");
        let comps = vec!["db".to_string()];
        let mut pending = snap("shop-db-s1", at(1, 0), SnapshotPhase::Pending);
        pending.reason = SnapshotReason::Scheduled;
        let plan_at = |snaps: &[SnapshotFacts]| {
            plan(
                "shop",
                &p,
                &comps,
                snaps,
                &BTreeSet::new(),
                at(0, 0),
                at(1, 5),
            )
        };
        let h = plan_at(std::slice::from_ref(&pending));
        assert!(h.create.is_empty(), "{h:?}");
        assert!(h.next.is_some(), "it looks again");
        // Once it is final, one catch-up snapshot follows.
        pending.phase = Some(SnapshotPhase::Completed);
        let h = plan_at(&[pending]);
        assert_eq!(h.create.len(), 1, "{h:?}");
    }
}
