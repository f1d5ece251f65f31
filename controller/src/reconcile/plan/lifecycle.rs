//! The lifecycle of StackSnapshots, decided purely: when a snapshot's agent Jobs (one per
//! replica) may start, and what their outcomes make of it. The I/O half
//! (`reconcile::snapshots`) reads the snapshots and their Jobs' outcomes, calls [`steps`]
//! and carries out what it returns, as rollout actions are carried out.
//!
//! The invariant enforced here, with retention's in `housekeeping` and the restores' in
//! `snapshots`: one agent at a time per component's data ([`agent_busy`]); a snapshot of
//! a quiesced component starts only once the component is stopped and drained; a snapshot
//! is `Completed` only when every replica's Job succeeded, and a failed one records the
//! replicas that did complete so retention can forget them.

use super::snapshots::agent_busy;
use super::{AgentRun, WorkloadState};
use crate::reconcile::replicas::{self, Combined, Failure, Finished};
use deployctl_api::{Component, RollbackState, SnapshotPhase, StackSnapshotStatus};
use std::collections::BTreeMap;

/// What the planner needs of one unfinished StackSnapshot.
#[derive(Debug)]
pub struct Unfinished<'a> {
    /// The object's name.
    pub name: String,
    /// Its component.
    pub component: String,
    /// Its status as stored.
    pub status: StackSnapshotStatus,
    /// The component in the desired revision, if it declares data.
    pub spec: Option<&'a Component>,
    /// The group name of its agent Jobs (ordinal 0's Job).
    pub job: String,
    /// Its Jobs by ordinal: the ordinals it copies (the started snapshot's recorded ones, a
    /// new snapshot's every replica), each with its Job's outcome if that Job exists.
    pub jobs: Vec<(i32, Option<Finished>)>,
}

/// What to do with one snapshot.
#[derive(Debug)]
pub enum Step {
    /// Leave it as it is.
    Nothing,
    /// Fail it: it cannot be taken.
    Reject(String),
    /// Record it `Pending` with this reason (only written when it changes).
    Wait(String),
    /// Start the Jobs of these ordinals; `first`: none existed, so record it `Running`
    /// (with its replicas) as well.
    Start { ordinals: Vec<i32>, first: bool },
    /// Every replica's Job succeeded: record it `Completed` with their results.
    Complete(Vec<(i32, crate::agent::AgentResult)>),
    /// Every Job ended and one failed at least.
    Fail {
        message: String,
        kind: Failure,
        completed: Vec<(i32, crate::agent::AgentResult)>,
    },
}

/// The ordinals a snapshot copies: those its status recorded when it started, else every
/// replica the component has now.
pub fn ordinals(status: &StackSnapshotStatus, spec: &Component) -> Vec<i32> {
    if status.phase == Some(SnapshotPhase::Running) {
        if status.replicas.is_empty() {
            vec![0]
        } else {
            status.replicas.iter().map(|r| r.ordinal).collect()
        }
    } else {
        match &spec.data {
            Some(data) => replicas::ordinals(spec, data),
            None => vec![0],
        }
    }
}

/// Decides each unfinished snapshot's step, in order. `agents` (the agent Jobs running,
/// by component) is updated with the Jobs this pass starts, so two snapshots of one
/// component never start in one pass.
pub fn steps(
    snapshots: Vec<Unfinished<'_>>,
    agents: &mut BTreeMap<String, Vec<AgentRun>>,
    rollback: Option<&RollbackState>,
    workloads: &BTreeMap<String, WorkloadState>,
    repository_exists: bool,
) -> Vec<(String, Step)> {
    let mut out = vec![];
    for s in snapshots {
        let step = step(&s, agents, rollback, workloads, repository_exists);
        if let Step::Start { ordinals, .. } = &step {
            for o in ordinals {
                agents
                    .entry(s.component.clone())
                    .or_default()
                    .push(AgentRun {
                        operation: "snapshot".into(),
                        job: replicas::job(&s.job, *o),
                    });
            }
        }
        out.push((s.name, step));
    }
    out
}

fn step(
    s: &Unfinished<'_>,
    agents: &BTreeMap<String, Vec<AgentRun>>,
    rollback: Option<&RollbackState>,
    workloads: &BTreeMap<String, WorkloadState>,
    repository_exists: bool,
) -> Step {
    let Some(data) = s.spec.and_then(|c| c.data.as_ref()) else {
        return Step::Reject(format!(
            "component {} does not declare data; nothing to snapshot",
            s.component
        ));
    };
    let missing: Vec<i32> = s
        .jobs
        .iter()
        .filter(|(_, j)| j.is_none())
        .map(|(o, _)| *o)
        .collect();
    if missing.len() == s.jobs.len() {
        if let Some(why) = agent_busy(agents, rollback, &s.component, repository_exists) {
            return Step::Wait(why);
        }
        let w = workloads.get(&s.component);
        if data.quiesces() && !w.is_some_and(|w| w.stopped && w.drained) {
            return Step::Wait(format!(
                "waiting for component {} to stop (method Files, consistency Quiesce)",
                s.component
            ));
        }
        return Step::Start {
            ordinals: missing,
            first: true,
        };
    }
    if !missing.is_empty() {
        // The controller stopped between starting one replica's Job and the next: the
        // snapshot was decided, the rest start now.
        return Step::Start {
            ordinals: missing,
            first: false,
        };
    }
    let outcomes = s
        .jobs
        .iter()
        .map(|(o, j)| (*o, j.clone().expect("none missing")))
        .collect();
    match replicas::combine(outcomes) {
        Combined::Running => Step::Nothing,
        Combined::Ok(results) => Step::Complete(results),
        Combined::Failed {
            message,
            kind,
            completed,
        } => Step::Fail {
            message,
            kind,
            completed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{AgentOp, AgentResult};
    use deployctl_api::WorkloadKind;

    fn component(yaml: &str) -> Component {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn unfinished<'a>(
        name: &str,
        spec: &'a Component,
        jobs: Vec<(i32, Option<Finished>)>,
    ) -> Unfinished<'a> {
        Unfinished {
            name: name.into(),
            component: spec.name.clone(),
            status: StackSnapshotStatus::default(),
            spec: Some(spec),
            job: format!("shop-db-snap-{name}"),
            jobs,
        }
    }

    fn ok() -> Finished {
        Finished::Ok(Box::new(AgentResult::new(AgentOp::Snapshot, true, 1.0)))
    }

    fn stopped(yes: bool) -> BTreeMap<String, WorkloadState> {
        BTreeMap::from([(
            "db".to_string(),
            WorkloadState {
                kind: WorkloadKind::StatefulSet,
                spec_hash: None,
                revision: Some(1),
                replicas: 0,
                ready_replicas: 0,
                updated_replicas: 0,
                available: false,
                seen: true,
                message: None,
                stopped: yes,
                drained: yes,
                canary: None,
                autoscaled_by: None,
                replicas_before_stop: None,
            },
        )])
    }

    const STS: &str = "{name: db, kind: StatefulSet, replicas: 2, template: {spec: {containers: []}}, data: {volume: data, method: Sqlite, database: app.db}}";

    #[test]
    fn two_snapshots_of_one_component_never_start_in_one_pass() {
        let db = component(STS);
        let mut agents = BTreeMap::new();
        let out = steps(
            vec![
                unfinished("a", &db, vec![(0, None), (1, None)]),
                unfinished("b", &db, vec![(0, None), (1, None)]),
            ],
            &mut agents,
            None,
            &stopped(false),
            true,
        );
        assert!(matches!(&out[0].1, Step::Start { ordinals, first: true } if ordinals == &[0, 1]));
        match &out[1].1 {
            Step::Wait(why) => assert!(why.contains("shop-db-snap-a"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(agents["db"].len(), 2, "both replicas' Jobs are counted");
    }

    #[test]
    fn a_quiesced_snapshot_waits_for_the_component_to_be_drained() {
        let db = component(&STS.replace("method: Sqlite, database: app.db", "method: Files"));
        let run = |w| {
            steps(
                vec![unfinished("a", &db, vec![(0, None), (1, None)])],
                &mut BTreeMap::new(),
                None,
                &stopped(w),
                true,
            )
            .remove(0)
            .1
        };
        assert!(matches!(run(false), Step::Wait(why) if why.contains("to stop")));
        assert!(matches!(run(true), Step::Start { first: true, .. }));
    }

    #[test]
    fn missing_replica_jobs_start_without_waiting_and_a_group_ends_as_one() {
        let db = component(STS);
        // Replica 0's Job runs: it is this snapshot's own, not a reason to wait.
        let mut agents = BTreeMap::from([(
            "db".to_string(),
            vec![AgentRun {
                operation: "snapshot".into(),
                job: "shop-db-snap-a".into(),
            }],
        )]);
        let out = steps(
            vec![unfinished(
                "a",
                &db,
                vec![(0, Some(Finished::Running)), (1, None)],
            )],
            &mut agents,
            None,
            &stopped(false),
            true,
        );
        assert!(matches!(&out[0].1, Step::Start { ordinals, first: false } if ordinals == &[1]));
        let out = steps(
            vec![unfinished(
                "a",
                &db,
                vec![
                    (0, Some(ok())),
                    (
                        1,
                        Some(Finished::Failed("disk full".into(), Failure::Other)),
                    ),
                ],
            )],
            &mut BTreeMap::new(),
            None,
            &stopped(false),
            true,
        );
        match &out[0].1 {
            Step::Fail {
                message, completed, ..
            } => {
                assert_eq!(message, "replica 1: disk full");
                assert_eq!(completed.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let out = steps(
            vec![unfinished("a", &db, vec![(0, Some(ok())), (1, Some(ok()))])],
            &mut BTreeMap::new(),
            None,
            &stopped(false),
            true,
        );
        assert!(matches!(&out[0].1, Step::Complete(r) if r.len() == 2));
    }

    #[test]
    fn a_snapshot_of_a_component_without_data_is_rejected_and_a_restore_pending_holds_it() {
        let plain = component("{name: db, template: {spec: {containers: []}}}");
        let out = steps(
            vec![unfinished("a", &plain, vec![(0, None)])],
            &mut BTreeMap::new(),
            None,
            &BTreeMap::new(),
            true,
        );
        assert!(matches!(&out[0].1, Step::Reject(m) if m.contains("does not declare data")));
        let db = component(STS);
        let rollback: RollbackState = serde_json::from_value(serde_json::json!({
            "fromRevision": 2, "toRevision": 1, "reason": "gate failed",
            "startedAt": "2026-12-05T10:00:00Z", "deadline": "2026-12-05T10:05:00Z",
            "restores": [{"component": "db", "snapshot": "pre", "phase": "Stopping"}],
        }))
        .unwrap();
        let out = steps(
            vec![unfinished("a", &db, vec![(0, None), (1, None)])],
            &mut BTreeMap::new(),
            Some(&rollback),
            &stopped(false),
            true,
        );
        assert!(matches!(&out[0].1, Step::Wait(m) if m.contains("restore of component db")));
    }
}
