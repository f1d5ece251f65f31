//! Capacity of the snapshot store, decided before a rollout takes its snapshots: the
//! repository's use and room in status (the agents' last measurement and the spec's
//! quota), the estimate of what the next pre-rollout snapshots add, and the check that
//! holds a rollout whose snapshots cannot fit (`Stalled`, `SnapshotStoreFull`, nothing
//! changed) or, with `retention.pruneToFit`, forgets older snapshots first.
//!
//! The estimate, per component to snapshot: the most any of its last
//! [`ESTIMATE_WINDOW`] complete snapshots added to the store (`storedBytes`, or
//! `newBytes` for snapshots older than that figure). Deduplication makes a snapshot add
//! only what changed since the last one, so the largest recent addition is a fair upper
//! guess at the next. A component never snapshotted has no estimate and adds nothing
//! (its first snapshot is as large as its data, which nothing has measured yet): it is
//! named in status so a person sees the estimate is partial. Room that is not known (no
//! measurement yet, or S3 without a quota) never holds a rollout: a guess must not stop
//! a release.

use super::{housekeeping, Action, Planner, SnapshotObserved};
use deployctl_api::data::human_bytes;
use deployctl_api::{PruneToFit, RolloutState, SnapshotPhase, SnapshotRepositoryStatus};
use std::collections::{BTreeMap, BTreeSet};

/// How many of a component's newest complete snapshots the estimate looks at.
pub const ESTIMATE_WINDOW: usize = 5;

/// Records the newest measurement in status and works out, from it and the spec, the
/// quota, the room and the next rollout's estimate (every pass: a raised quota counts at
/// once, without a new measurement).
pub(super) fn record(p: &mut Planner<'_>) {
    let previous = p.status.snapshot_repository.take();
    let newer = p
        .input
        .data
        .repository
        .as_ref()
        .filter(|m| previous.as_ref().is_none_or(|s| m.at.0 > s.measured_at.0));
    let mut st = match (newer, previous) {
        (Some(m), _) => SnapshotRepositoryStatus {
            used_bytes: clamp(m.used_bytes),
            objects: m.objects.map(clamp),
            volume_bytes: m.volume.map(|(total, _)| clamp(total)),
            volume_available_bytes: m.volume.map(|(_, free)| clamp(free)),
            quota_bytes: None,
            capacity_bytes: None,
            available_bytes: None,
            next_rollout_bytes: None,
            unestimated: vec![],
            measured_at: m.at.clone(),
            measured_by: Some(m.job.clone()),
            operation: Some(m.operation.clone()),
        },
        (None, Some(st)) => st,
        (None, None) => return,
    };
    let policy = p.input.spec.snapshots.clone().unwrap_or_default();
    st.quota_bytes = policy.quota_bytes().map(clamp);
    st.capacity_bytes = min_known(st.quota_bytes, st.volume_bytes);
    st.available_bytes = room(&st);
    let components: Vec<String> = p
        .input
        .desired
        .order
        .iter()
        .filter(|c| {
            p.input
                .desired
                .component(c)
                .is_some_and(|c| c.data.is_some())
        })
        .cloned()
        .collect();
    let estimate = estimate(&p.input.data.snapshots, &components);
    st.next_rollout_bytes = estimate.bytes;
    st.unestimated = estimate.unestimated;
    p.status.snapshot_repository = Some(st);
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn min_known(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Room for new snapshots: the volume's free space, or the quota less what the
/// repository takes, whichever is smaller; None when neither is known.
pub fn room(st: &SnapshotRepositoryStatus) -> Option<i64> {
    let under_quota = st
        .quota_bytes
        .map(|q| q.saturating_sub(st.used_bytes).max(0));
    min_known(under_quota, st.volume_available_bytes)
}

/// What the next snapshots of some components are estimated to add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Bytes, over the components that have an estimate; None when none has.
    pub bytes: Option<i64>,
    /// Each component's estimate, for the message.
    pub by_component: Vec<(String, i64)>,
    /// Components without one (never snapshotted).
    pub unestimated: Vec<String>,
}

/// The estimate of what snapshots of `components` add (see the module's header).
pub fn estimate(snapshots: &BTreeMap<String, SnapshotObserved>, components: &[String]) -> Estimate {
    let mut out = Estimate::default();
    for c in components {
        let mut complete: Vec<(&String, &SnapshotObserved)> = snapshots
            .iter()
            .filter(|(_, s)| &s.component == c && s.phase == Some(SnapshotPhase::Completed))
            .collect();
        complete.sort_by(newest_first);
        let largest = complete
            .iter()
            .take(ESTIMATE_WINDOW)
            .filter_map(|(_, s)| s.stored_bytes.or(s.new_bytes))
            .max();
        match largest {
            Some(b) => out.by_component.push((c.clone(), b.max(0))),
            None => out.unestimated.push(c.clone()),
        }
    }
    if !out.by_component.is_empty() {
        out.bytes = Some(out.by_component.iter().map(|(_, b)| *b).sum());
    }
    out
}

/// Newest first by creation time, then by name (for equal times).
fn newest_first(
    a: &(&String, &SnapshotObserved),
    b: &(&String, &SnapshotObserved),
) -> std::cmp::Ordering {
    let at = |s: &SnapshotObserved| s.created.as_ref().map(|t| t.0.as_second());
    at(b.1).cmp(&at(a.1)).then(b.0.cmp(a.0))
}

/// What the check before a rollout's snapshots decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// They fit, or the room is not known: take them.
    Fits,
    /// Room is being made (a prune to fit); look again later.
    Making(String),
    /// They do not fit: hold the rollout, with this message.
    Full(String),
}

/// The check before rollout `r` requests its snapshots (nothing has changed yet).
pub(super) fn check(p: &mut Planner<'_>, r: &mut RolloutState) -> Room {
    let components: Vec<String> = r.snapshots.iter().map(|s| s.component.clone()).collect();
    let est = estimate(&p.input.data.snapshots, &components);
    let Some(st) = p.status.snapshot_repository.clone() else {
        return Room::Fits;
    };
    let (Some(room), Some(need)) = (st.available_bytes, est.bytes) else {
        return Room::Fits;
    };
    if need <= room {
        return Room::Fits;
    }
    let shortfall = need - room;
    if let Some(pruned) = &r.pruned_to_fit {
        let running: Vec<&String> = pruned
            .jobs
            .iter()
            .filter(|j| p.input.data.agents.values().flatten().any(|a| &&a.job == j))
            .collect();
        if !running.is_empty() {
            return Room::Making(format!(
                "forgetting {} older snapshot(s) to make room for the pre-rollout snapshots (retention.pruneToFit): waiting for prune Job {}",
                pruned.snapshots.len(),
                running.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let after = if st.measured_at.0 >= pruned.at.0 {
            "measured after the prune"
        } else {
            "the prune reported no new measurement"
        };
        return Room::Full(full_message(
            p,
            r,
            &est,
            &st,
            room,
            &format!(
                "retention.pruneToFit already forgot {} snapshot(s) for this rollout ({after}); ",
                pruned.snapshots.len()
            ),
        ));
    }
    let policy = p.input.spec.snapshots.clone().unwrap_or_default();
    if policy.prune_to_fit() {
        let requested: Vec<&str> = p
            .input
            .operations
            .iter()
            .filter_map(|o| o.snapshot.as_deref())
            .collect();
        let mut status = p.status.clone();
        status.rollout = Some(r.clone());
        let protected = housekeeping::protected(&status, requested);
        match choose(&p.input.data.snapshots, &protected, shortfall) {
            Some(plan) => return prune(p, r, plan, shortfall),
            None => {
                return Room::Full(full_message(
                    p,
                    r,
                    &est,
                    &st,
                    room,
                    "retention.pruneToFit found too little to forget (the newest snapshot of each component, and those a rollout, rollback or restore needs, are kept); ",
                ))
            }
        }
    }
    Room::Full(full_message(p, r, &est, &st, room, ""))
}

/// Starts the prune to fit, or waits for the data's other agent Jobs to end first.
fn prune(p: &mut Planner<'_>, r: &mut RolloutState, plan: Vec<Forget>, shortfall: i64) -> Room {
    let busy: Vec<String> = plan
        .iter()
        .filter_map(|f| {
            super::snapshots::agent_busy(
                &p.input.data.agents,
                p.status.rollback.as_ref(),
                &f.component,
                true,
            )
        })
        .collect();
    if let Some(why) = busy.first() {
        return Room::Making(format!(
            "about to forget older snapshots to make room (retention.pruneToFit), {why}"
        ));
    }
    let mut jobs = vec![];
    let mut names = vec![];
    for f in plan {
        let job = (!f.digests.is_empty()).then(|| {
            super::snapshots::job_name(
                &deployctl_api::child_name(p.input.stack, &f.component),
                "prune",
                &f.digests.join(","),
            )
        });
        jobs.extend(job.clone());
        names.extend(f.snapshots.iter().cloned());
        p.actions.push(Action::Prune {
            component: f.component,
            job,
            forget: f.digests,
            snapshots: f.snapshots,
        });
    }
    p.event(
        false,
        "PruningToFit",
        format!(
            "The pre-rollout snapshots of revision {} need {} more than the snapshot store has; forgetting {} older snapshot(s) first (retention.pruneToFit): {}",
            r.revision,
            human_bytes(shortfall),
            names.len(),
            names.join(", ")
        ),
    );
    let note = format!(
        "forgetting {} older snapshot(s) to make room for the pre-rollout snapshots (retention.pruneToFit)",
        names.len()
    );
    r.pruned_to_fit = Some(PruneToFit {
        at: p.now(),
        jobs,
        snapshots: names,
        shortfall_bytes: shortfall,
    });
    Room::Making(note)
}

/// The snapshots of one component a prune to fit forgets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forget {
    /// Component.
    pub component: String,
    /// StackSnapshots deleted, oldest first.
    pub snapshots: Vec<String>,
    /// Digests the repository forgets (sorted): those no snapshot that stays names.
    pub digests: Vec<String>,
}

/// The oldest complete snapshots to forget until what they added covers `shortfall`,
/// by component; never the newest complete snapshot of a component nor a `protected`
/// one. None when even all of them would not cover it: forgetting history that cannot
/// make enough room would lose it for nothing.
pub fn choose(
    snapshots: &BTreeMap<String, SnapshotObserved>,
    protected: &BTreeSet<String>,
    shortfall: i64,
) -> Option<Vec<Forget>> {
    let mut newest: BTreeMap<&str, (&String, &SnapshotObserved)> = BTreeMap::new();
    let complete: Vec<(&String, &SnapshotObserved)> = snapshots
        .iter()
        .filter(|(_, s)| s.phase == Some(SnapshotPhase::Completed))
        .collect();
    for c in &complete {
        let e = newest.entry(c.1.component.as_str()).or_insert(*c);
        if newest_first(c, e).is_lt() {
            *e = *c;
        }
    }
    let mut candidates: Vec<(&String, &SnapshotObserved)> = complete
        .iter()
        .filter(|(n, s)| !protected.contains(*n) && newest[s.component.as_str()].0 != *n)
        .copied()
        .collect();
    candidates.sort_by(|a, b| newest_first(b, a));
    let mut freed = 0i64;
    let mut chosen: Vec<(&String, &SnapshotObserved)> = vec![];
    for c in candidates {
        if freed >= shortfall {
            break;
        }
        freed = freed.saturating_add(c.1.stored_bytes.or(c.1.new_bytes).unwrap_or(0).max(0));
        chosen.push(c);
    }
    if freed < shortfall || chosen.is_empty() {
        return None;
    }
    let mut by_component: BTreeMap<&str, Forget> = BTreeMap::new();
    for (name, s) in &chosen {
        by_component
            .entry(s.component.as_str())
            .or_insert_with(|| Forget {
                component: s.component.clone(),
                snapshots: vec![],
                digests: vec![],
            })
            .snapshots
            .push((*name).clone());
    }
    for f in by_component.values_mut() {
        // Two objects may name one digest (the same data snapshotted twice): a digest is
        // forgotten only when no object that stays names it, as retention does.
        let staying: BTreeSet<&str> = snapshots
            .iter()
            .filter(|(n, s)| s.component == f.component && !f.snapshots.contains(n))
            .flat_map(|(_, s)| s.digests.iter().map(String::as_str))
            .collect();
        let mut digests: Vec<String> = f
            .snapshots
            .iter()
            .flat_map(|n| snapshots[n].digests.iter().cloned())
            .filter(|d| !staying.contains(d.as_str()))
            .collect();
        digests.sort();
        digests.dedup();
        f.digests = digests;
    }
    Some(by_component.into_values().collect())
}

/// Why the rollout does not start, what it needs, and the ways out.
fn full_message(
    p: &Planner<'_>,
    r: &RolloutState,
    est: &Estimate,
    st: &SnapshotRepositoryStatus,
    room: i64,
    pruned: &str,
) -> String {
    let need = est.bytes.unwrap_or(0);
    let parts: Vec<String> = est
        .by_component
        .iter()
        .map(|(c, b)| format!("{c} {}", human_bytes(*b)))
        .collect();
    let mut limits = vec![];
    if let Some(q) = st.quota_bytes {
        limits.push(format!(
            "quota {} with {} used",
            human_bytes(q),
            human_bytes(st.used_bytes)
        ));
    }
    if let Some(v) = st.volume_available_bytes {
        limits.push(format!("{} free on the claim", human_bytes(v)));
    }
    let kind = match p
        .input
        .spec
        .snapshots
        .as_ref()
        .and_then(|s| s.store.as_ref())
    {
        Some(s) if s.s3.is_some() => "s3",
        _ => "filesystem",
    };
    let grow = if kind == "s3" {
        String::new()
    } else {
        ", grow the claim".to_string()
    };
    format!(
        "the pre-rollout snapshots of revision {} need about {} ({}) but the snapshot store has {} left ({}); revision {} was not rolled out and nothing was changed. {pruned}\
         Make room: raise spec.snapshots.store.{kind}.quota{grow}, forget snapshots (`deployctl snapshot list {}`, lower retention.keepLast, or set retention.pruneToFit: true), or move the store; the rollout starts as soon as the snapshots fit",
        r.revision,
        human_bytes(need),
        parts.join(", "),
        human_bytes(room),
        limits.join(", "),
        r.revision,
        p.input.stack,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Option<Time> {
        Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + secs).unwrap(),
        ))
    }

    fn snap(
        component: &str,
        created: i64,
        stored: Option<i64>,
        new: Option<i64>,
    ) -> SnapshotObserved {
        SnapshotObserved {
            component: component.into(),
            phase: Some(SnapshotPhase::Completed),
            created: at(created),
            stored_bytes: stored,
            new_bytes: new,
            ..Default::default()
        }
    }

    fn world(snaps: Vec<(&str, SnapshotObserved)>) -> BTreeMap<String, SnapshotObserved> {
        snaps
            .into_iter()
            .map(|(n, mut s)| {
                s.digests = vec![format!("digest-{n}")];
                (n.to_string(), s)
            })
            .collect()
    }

    #[test]
    fn the_estimate_is_the_largest_recent_addition_per_component() {
        let mut snaps = vec![
            // Out of the window: the 6th newest of db, however large.
            ("db-0", snap("db", 0, Some(9_000), None)),
            // An older snapshot without storedBytes counts its newBytes.
            ("db-1", snap("db", 1, None, Some(700))),
        ];
        for i in 2..6 {
            snaps.push(("db-x", snap("db", i, Some(100 + i), None)));
            snaps.last_mut().unwrap().0 = ["db-2", "db-3", "db-4", "db-5"][i as usize - 2];
        }
        let mut failed = snap("search", 9, Some(5_000), None);
        failed.phase = Some(SnapshotPhase::Failed);
        snaps.push(("search-f", failed));
        let snaps = world(snaps);
        let e = estimate(&snaps, &["db".into(), "search".into(), "cache".into()]);
        assert_eq!(e.bytes, Some(700));
        assert_eq!(e.by_component, vec![("db".to_string(), 700)]);
        assert_eq!(
            e.unestimated,
            vec!["search".to_string(), "cache".to_string()],
            "a failed snapshot is no estimate"
        );
        assert_eq!(estimate(&snaps, &["cache".into()]).bytes, None);
    }

    #[test]
    fn room_is_the_smaller_of_free_space_and_what_the_quota_leaves() {
        let mut st = SnapshotRepositoryStatus {
            used_bytes: 800,
            objects: None,
            volume_bytes: Some(10_000),
            volume_available_bytes: Some(5_000),
            quota_bytes: None,
            capacity_bytes: None,
            available_bytes: None,
            next_rollout_bytes: None,
            unestimated: vec![],
            measured_at: at(0).unwrap(),
            measured_by: None,
            operation: None,
        };
        assert_eq!(room(&st), Some(5_000));
        st.quota_bytes = Some(1_000);
        assert_eq!(room(&st), Some(200));
        st.used_bytes = 1_500;
        assert_eq!(room(&st), Some(0), "over quota is no room, not negative");
        st.volume_available_bytes = None;
        st.quota_bytes = None;
        assert_eq!(room(&st), None, "S3 without a quota");
    }

    #[test]
    fn choose_takes_the_oldest_first_and_never_the_newest_or_a_protected_one() {
        let snaps = world(vec![
            ("db-1", snap("db", 1, Some(40), None)),
            ("db-2", snap("db", 2, Some(40), None)),
            ("db-3", snap("db", 3, Some(40), None)),
            ("db-4", snap("db", 4, Some(40), None)),
            ("search-1", snap("search", 0, Some(40), None)),
        ]);
        let protected = BTreeSet::from(["db-1".to_string()]);
        let plan = choose(&snaps, &protected, 60).unwrap();
        assert_eq!(
            plan,
            vec![Forget {
                component: "db".into(),
                snapshots: vec!["db-2".into(), "db-3".into()],
                digests: vec!["digest-db-2".into(), "digest-db-3".into()],
            }],
            "search-1 is its component's newest; db-1 is protected"
        );
        assert_eq!(choose(&snaps, &protected, 81), None, "80 is all there is");
    }

    #[test]
    fn a_digest_a_staying_snapshot_names_is_not_forgotten() {
        let mut snaps = world(vec![
            ("db-1", snap("db", 1, Some(40), None)),
            ("db-2", snap("db", 2, Some(40), None)),
        ]);
        snaps.get_mut("db-1").unwrap().digests = vec!["same".into()];
        snaps.get_mut("db-2").unwrap().digests = vec!["same".into()];
        let plan = choose(&snaps, &BTreeSet::new(), 10).unwrap();
        assert_eq!(plan[0].snapshots, vec!["db-1".to_string()]);
        assert!(plan[0].digests.is_empty(), "db-2 still names it");
    }
}
