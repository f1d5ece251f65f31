//! A component's data, replica by replica. A StatefulSet keeps one claim per ordinal, and
//! each claim is copied, restored and verified by its own agent Job (a ReadWriteOnce claim
//! can be mounted only on its own node, and replicas of a replicated store are spread over
//! nodes on purpose). The Jobs of one snapshot, restore or verification form a group named
//! after ordinal 0's Job: the planner decides about the group as one, and this module
//! names the group's Jobs and reads their outcomes as one.

use crate::agent::result::AgentResult;
use crate::reconcile::build;
use deployctl_api::{child_name, Component, ComponentData, DataMethod, WorkloadKind};

/// Why an agent Job failed, for metrics and for telling a finding from an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Anything else (the Job could not run, a local I/O error, ...).
    Other,
    /// The snapshot store could not be reached or refused.
    Store,
    /// The data failed verification: the snapshot is unusable.
    Corrupt,
}

/// How an agent Job ended.
#[derive(Clone, Debug)]
pub enum Finished {
    Running,
    /// The agent's result (boxed: it is large next to the other variants).
    Ok(Box<AgentResult>),
    /// The message, and what kind of failure it was.
    Failed(String, Failure),
}

/// How a group of agent Jobs (one per replica) ended.
#[derive(Debug)]
pub enum Combined {
    /// At least one still runs.
    Running,
    /// Every replica's Job succeeded: their results by ordinal.
    Ok(Vec<(i32, AgentResult)>),
    /// Every Job ended and at least one failed: the failures' messages (each naming its
    /// replica when there are several), the gravest kind, and the replicas that did
    /// complete (their data is in the repository and must be accounted for).
    Failed {
        message: String,
        kind: Failure,
        completed: Vec<(i32, AgentResult)>,
    },
}

/// The ordinals whose data the component's snapshots hold: each replica's of a
/// StatefulSet copied as `Files` or `Sqlite`; one otherwise (a Deployment's replicas
/// share one claim, and an `Exec` dump is of the whole database).
pub fn ordinals(component: &Component, data: &ComponentData) -> Vec<i32> {
    if component.kind == WorkloadKind::StatefulSet && data.method != DataMethod::Exec {
        (0..component.replicas().max(1)).collect()
    } else {
        vec![0]
    }
}

/// The claim holding replica `ordinal`'s data: the Deployment's shared claim, or the
/// StatefulSet's claim of that ordinal. None for an `Exec` method without a volume.
pub fn claim(
    stack: &str,
    component: &Component,
    data: &ComponentData,
    ordinal: i32,
) -> Option<String> {
    let volume = data.volume.as_deref()?;
    Some(match component.kind {
        WorkloadKind::Deployment => build::claim_name(stack, &component.name, volume),
        WorkloadKind::StatefulSet => {
            format!("{volume}-{}-{ordinal}", child_name(stack, &component.name))
        }
    })
}

/// Name of replica `ordinal`'s Job in the group named `group`: the group's own name for
/// ordinal 0 (so a single-replica component's Jobs are named as they always were), else
/// `<group>-<ordinal>`, shortened to stay a valid Job name.
pub fn job(group: &str, ordinal: i32) -> String {
    if ordinal == 0 {
        return group.to_string();
    }
    let suffix = format!("-{ordinal}");
    let keep = 63usize.saturating_sub(suffix.len());
    let base: String = group.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

/// The outcome of a group from its Jobs' outcomes by ordinal.
pub fn combine(outcomes: Vec<(i32, Finished)>) -> Combined {
    if outcomes.iter().any(|(_, f)| matches!(f, Finished::Running)) {
        return Combined::Running;
    }
    let several = outcomes.len() > 1;
    let mut completed = vec![];
    let mut failures = vec![];
    let mut kind = None;
    for (ordinal, f) in outcomes {
        match f {
            Finished::Running => unreachable!("returned above"),
            Finished::Ok(r) => completed.push((ordinal, *r)),
            Finished::Failed(m, k) => {
                kind = kind.max(Some(k));
                failures.push(if several {
                    format!("replica {ordinal}: {m}")
                } else {
                    m
                });
            }
        }
    }
    match kind {
        None => Combined::Ok(completed),
        Some(kind) => Combined::Failed {
            message: failures.join("; "),
            kind,
            completed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::job::AgentOp;

    fn component(yaml: &str) -> Component {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn ok(digest: &str) -> Finished {
        let mut r = AgentResult::new(AgentOp::Snapshot, true, 1.0);
        r.digest = Some(digest.into());
        Finished::Ok(Box::new(r))
    }

    #[test]
    fn every_replica_of_a_statefulset_has_its_own_claim_and_job() {
        let sts = component(
            "{name: db, kind: StatefulSet, replicas: 3, template: {spec: {containers: []}}, data: {volume: data}}",
        );
        let data = sts.data.clone().unwrap();
        assert_eq!(ordinals(&sts, &data), vec![0, 1, 2]);
        assert_eq!(
            claim("shop", &sts, &data, 2).as_deref(),
            Some("data-shop-db-2")
        );
        // An Exec dump is of the whole database: taken once.
        let mut exec = data.clone();
        exec.method = DataMethod::Exec;
        assert_eq!(ordinals(&sts, &exec), vec![0]);
        // A Deployment's replicas share one claim.
        let dep = component(
            "{name: db, replicas: 3, template: {spec: {containers: []}}, data: {volume: data}}",
        );
        assert_eq!(ordinals(&dep, &data), vec![0]);
    }

    #[test]
    fn job_names_keep_ordinal_zero_as_the_group_and_stay_valid() {
        assert_eq!(job("shop-db-snap-1a2b3c4d", 0), "shop-db-snap-1a2b3c4d");
        assert_eq!(job("shop-db-snap-1a2b3c4d", 1), "shop-db-snap-1a2b3c4d-1");
        let long = format!("{}-restore-1a2b3c4d", "x".repeat(44));
        for o in [1, 12, 999] {
            let j = job(&long, o);
            assert!(j.len() <= 63, "{j}");
            assert!(j.ends_with(&format!("-{o}")));
        }
        assert_ne!(job(&long, 1), job(&long, 11));
    }

    #[test]
    fn a_group_ends_when_every_job_has_ended_and_fails_with_the_gravest_kind() {
        assert!(matches!(
            combine(vec![(0, ok("a")), (1, Finished::Running)]),
            Combined::Running
        ));
        match combine(vec![(0, ok("a")), (1, ok("b"))]) {
            Combined::Ok(r) => assert_eq!(
                r.iter()
                    .map(|(o, r)| (*o, r.digest.clone().unwrap()))
                    .collect::<Vec<_>>(),
                vec![(0, "a".to_string()), (1, "b".to_string())]
            ),
            other => panic!("{other:?}"),
        }
        match combine(vec![
            (0, ok("a")),
            (1, Finished::Failed("store down".into(), Failure::Store)),
            (2, Finished::Failed("chunk x".into(), Failure::Corrupt)),
        ]) {
            Combined::Failed {
                message,
                kind,
                completed,
            } => {
                assert_eq!(message, "replica 1: store down; replica 2: chunk x");
                assert_eq!(kind, Failure::Corrupt);
                assert_eq!(completed.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        // One replica: the message as the agent gave it.
        match combine(vec![(0, Finished::Failed("boom".into(), Failure::Other))]) {
            Combined::Failed { message, .. } => assert_eq!(message, "boom"),
            other => panic!("{other:?}"),
        }
    }
}
