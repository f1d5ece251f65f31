//! A deterministic simulation of the planner, in the spirit of FoundationDB's simulator
//! and TigerBeetle's VOPR: a seeded world plays a stack (db with data, api depending on
//! it) through random spec changes, gate results, agent Job outcomes (success, failure,
//! still running), other agents busy on the same data, scheduled snapshots falling due
//! (their Jobs started by the snapshot lifecycle's decisions, `lifecycle::steps`, as the
//! controller starts them), snapshots that fail, operations of every kind and restarts,
//! and checks the data invariants after every step: nothing starts on data still to be
//! restored, a restore or a snapshot starts only while no other agent works on that
//! data, a rollback ends with every restore settled, and a failed restore always has its
//! ways out. Half the seeds give the store a small quota (raised now and then), half of
//! those with `retention.pruneToFit`: a rollout's snapshots are asked for only when they
//! fit, nothing of a revision is applied while it waits for room, and a prune to fit
//! never forgets a snapshot a rollout, rollback or restore needs, nor a component's
//! newest (the world refuses such a prune).
//!
//! A restart keeps only what status holds: the planner is a pure function of the world
//! and the status, so every step *is* a restart; the world here never keeps anything
//! the controller would have to remember outside the stack's status.
//!
//! `DEPLOYCTL_SIM_SEEDS=N` runs N seeds (default 1500); `DEPLOYCTL_SIM_SEED=S` replays
//! one, printing every step. A failure names its seed and the steps that led to it.

use super::tests::{data_spec, World, EXEC, FILES, SQLITE};
use super::*;
use deployctl_api::{MeasurementOutcome, RestorePhase, RolloutStep};

/// xorshift64*: small, fast, and the same sequence on every platform and Rust version.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FORWARD_ONLY: &str =
    "{volume: data, method: Sqlite, database: app.db, restoreOnRollback: Never}";
const STEPS: usize = 80;
const CANARY_STEPS: &str =
    "{steps: [{setWeight: 25}, {analysis: {}}, {pause: {duration: 5s}}, {setWeight: 50}, {analysis: {}}]}";

/// The components that must not run while `restored`'s data is restored: itself and
/// what depends on it (api depends on db).
fn held(restored: &str) -> &'static [&'static str] {
    match restored {
        "db" => &["db", "api"],
        _ => &["api"],
    }
}

/// Runs one seed; returns the steps taken, or the first broken invariant with them.
fn run(seed: u64, verbose: bool) -> Result<Vec<String>, String> {
    let mut rng = Rng::new(seed);
    let method = [SQLITE, SQLITE, EXEC, FILES, FORWARD_ONLY][rng.below(5) as usize];
    let exec = method == EXEC;
    // Odd seeds give api 4 replicas and canary steps (decided without the generator, so
    // the other seeds play as they always did).
    let canary = seed % 2 == 1;
    let spec = |db: &str, api: &str| {
        let mut s = data_spec(db, api, method);
        if canary {
            s.components[1].replicas = Some(4);
            s.components[1].canary =
                Some(serde_yaml_ng::from_str(CANARY_STEPS).expect("valid canary steps"));
        }
        s
    };
    let mut w = World::new(spec("db:1", "api:1"));
    // The store: unmeasured and unbounded, or a small quota each snapshot eats into.
    let mut quota = [None, None, Some(250), Some(450)][rng.below(4) as usize];
    let prune_to_fit = quota.is_some() && rng.chance(50);
    let policy = |quota: Option<i64>| -> Option<deployctl_api::SnapshotPolicy> {
        quota.map(|q| {
            serde_yaml_ng::from_str(&format!(
                "{{store: {{filesystem: {{quota: '{q}'}}}}, retention: {{pruneToFit: {prune_to_fit}}}}}"
            ))
            .expect("a valid policy")
        })
    };
    if quota.is_some() {
        w.repo_used = Some(0);
        w.snapshot_adds = 60 + rng.below(80) as i64;
    }
    w.spec.snapshots = policy(quota);
    let mut now = w.settle(0, true);
    let mut revision = 1;
    let mut log = vec![format!(
        "seed {seed}: method {method}, quota {quota:?}, pruneToFit {prune_to_fit}"
    )];
    let mut agent_left = 0u32;
    for step in 0..STEPS {
        let mut event = String::new();
        match rng.below(100) {
            0..=9 => {
                revision += 1;
                let db = if rng.chance(40) {
                    format!("db:{revision}")
                } else {
                    "db:1".into()
                };
                event = format!("new revision {revision} ({db}, api:{revision})");
                w.change(spec(&db, &format!("api:{revision}")), revision);
                w.spec.snapshots = policy(quota);
            }
            10..=19 => {
                let (name, action, to) = match rng.below(6) {
                    0 => ("retry", OperationAction::Retry, None),
                    1 => ("accept", OperationAction::AcceptLiveData, None),
                    2 => ("rollback", OperationAction::Rollback, None),
                    3 => ("rollback-to-1", OperationAction::Rollback, Some(1)),
                    4 => ("abort", OperationAction::Abort, None),
                    _ => ("restore", OperationAction::Restore, None),
                };
                let name = format!("{name}-{step}");
                w.op(&name, action, to);
                if action == OperationAction::Restore {
                    let snap = w
                        .data
                        .snapshots
                        .iter()
                        .filter(|(_, s)| s.phase == Some(SnapshotPhase::Completed))
                        .map(|(n, _)| n.clone())
                        .next();
                    match snap {
                        Some(s) => w.ops.last_mut().expect("just pushed").snapshot = Some(s),
                        None => {
                            w.ops.pop();
                        }
                    }
                }
                event = format!("operation {name}");
            }
            20..=22 => {
                // Its agent Job starts when the lifecycle's rules let it.
                let name = format!("shop-db-s{step}");
                w.data.snapshots.insert(
                    name.clone(),
                    SnapshotObserved {
                        component: "db".into(),
                        phase: None,
                        message: None,
                        digest: None,
                        corrupt: false,
                        verified: false,
                        ..Default::default()
                    },
                );
                event = format!("scheduled snapshot {name} of db falls due");
            }
            26..=27 if quota.is_some() => {
                quota = quota.map(|q| q + 200);
                w.spec.snapshots = policy(quota);
                event = format!("the quota is raised to {quota:?}");
            }
            23..=25 if agent_left == 0 => {
                agent_left = 1 + rng.below(4) as u32;
                w.data.agents.insert(
                    "db".into(),
                    vec![AgentRun {
                        operation: "verify".into(),
                        job: format!("shop-db-verify-{step}"),
                    }],
                );
                event = format!("a verification of db runs for {agent_left} steps");
            }
            _ => {}
        }
        if agent_left > 0 {
            agent_left -= 1;
            if agent_left == 0 {
                w.data.agents.clear();
            }
        }
        w.restore_result = match rng.below(10) {
            0..=5 => JobOutcome::Succeeded,
            6..=7 => JobOutcome::Failed("chunk 3f2a does not match its digest".into()),
            _ => JobOutcome::Running,
        };
        w.snapshot_result = match rng.below(20) {
            0 => Some(SnapshotPhase::Failed),
            1 => None,
            _ => Some(SnapshotPhase::Completed),
        };
        w.healthy = if rng.chance(15) {
            vec![]
        } else {
            (1..=revision).collect()
        };
        if let Some(c) = w.status.rollout.as_ref().and_then(|r| {
            (r.step == Some(RolloutStep::Analysing))
                .then(|| r.component.clone())
                .flatten()
        }) {
            let outcome = if rng.chance(50) {
                MeasurementOutcome::Success
            } else {
                MeasurementOutcome::Failure
            };
            w.measure(&c, "http", outcome, now);
        }

        let before = w.clone();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.step(now)));
        let p = match stepped {
            Ok(p) => p,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                log.push(format!("step {step}: {event}"));
                return Err(format!(
                    "the world refused a planned action: {msg}\n{}",
                    log.join("\n")
                ));
            }
        };
        log.push(format!(
            "step {step} (t={now}): {event} -> {:?} / {:?}{}",
            p.actions,
            w.status.phase,
            if stalled_for_room(&w) {
                " (waiting for room)"
            } else {
                ""
            }
        ));
        if verbose {
            eprintln!("{}", log.last().expect("just pushed"));
        }
        if let Err(broken) = check(&before, &p, &w, exec) {
            return Err(format!("{broken}\n{}", log.join("\n")));
        }
        now += 1 + rng.below(15) as i64;
    }
    let scheduled = |phase: SnapshotPhase, waiting: bool| {
        w.data
            .snapshots
            .iter()
            .filter(|(n, s)| {
                n.starts_with("shop-db-s")
                    && s.phase == Some(phase)
                    && (!waiting || s.message.as_deref().is_some_and(|m| m.contains("waiting")))
            })
            .count()
    };
    log.push(format!(
        "scheduled snapshots: {} completed, {} waiting",
        scheduled(SnapshotPhase::Completed, false),
        scheduled(SnapshotPhase::Pending, true)
    ));
    Ok(log)
}

/// Whether the stack waits for room in the snapshot store.
fn stalled_for_room(w: &World) -> bool {
    w.status
        .condition(deployctl_api::conditions::STALLED)
        .is_some_and(|c| {
            c.status == "True" && c.reason == deployctl_api::conditions::reason::SNAPSHOT_STORE_FULL
        })
}

/// The invariants, after one step from `before` that planned `p` and led to `w`.
fn check(before: &World, p: &Plan, w: &World, exec: bool) -> Result<(), String> {
    check_canary(before, p, w)?;
    let unsettled = |w: &World| -> Vec<String> {
        w.status
            .rollback
            .iter()
            .flat_map(|rb| &rb.restores)
            .filter(|r| !r.phase.is_settled())
            .map(|r| r.component.clone())
            .collect()
    };
    for a in &p.actions {
        match a {
            // Nothing of a revision waiting for room in the store is applied.
            Action::Apply {
                component,
                revision,
            } if stalled_for_room(w)
                && *revision == w.desired.number
                && before.running(component) != Some(*revision) =>
            {
                return Err(format!(
                    "{component} applied at revision {revision} while the rollout waits for room: {:?}",
                    w.status.message
                ));
            }
            // Old code never runs on data it cannot read: nothing that uses data still to
            // be restored starts.
            Action::Apply { component, .. } => {
                for r in unsettled(w) {
                    if held(&r).contains(&component.as_str()) {
                        return Err(format!(
                            "{component} started while the data of {r} is not restored"
                        ));
                    }
                }
            }
            // A pre-rollout snapshot is asked for only when it fits, or room is unknown.
            Action::Snapshot { name, .. } => {
                let st = p.status.snapshot_repository.as_ref();
                let room = st.and_then(|s| s.available_bytes);
                let need = st.and_then(|s| s.next_rollout_bytes);
                if let (Some(room), Some(need)) = (room, need) {
                    if need > room {
                        return Err(format!(
                            "pre-rollout snapshot {name} asked for with {room} bytes of room for an estimated {need}"
                        ));
                    }
                }
            }
            // A restore writes only into stopped components' data, one agent at a time.
            Action::Restore { component, .. } => {
                for c in held(component) {
                    let stopped = before.observed.get(*c).is_none_or(|w| w.stopped);
                    let restored_in_place = exec && c == component;
                    if !stopped && !restored_in_place {
                        return Err(format!("restore of {component} started while {c} runs"));
                    }
                }
                if let Some(runs) = before.agents_now().get(component) {
                    return Err(format!(
                        "restore of {component} started while {runs:?} works on its data"
                    ));
                }
            }
            _ => {}
        }
    }
    // A snapshot's Job starts only while nothing else works on its component's data: no
    // other agent, no restore running or about to run.
    for (name, s) in &w.data.snapshots {
        let was = before.data.snapshots.get(name).and_then(|b| b.phase);
        if s.phase != Some(SnapshotPhase::Running) || was == Some(SnapshotPhase::Running) {
            continue;
        }
        let mut others = before.agents_now().remove(&s.component).unwrap_or_default();
        others.extend(w.agents_now().remove(&s.component).unwrap_or_default());
        others.retain(|r| &r.job != name);
        if let Some(r) = others.first() {
            return Err(format!(
                "snapshot {name} of {} started while the {} Job {} works on its data",
                s.component, r.operation, r.job
            ));
        }
        if let Some(r) = w
            .status
            .rollback
            .iter()
            .flat_map(|rb| &rb.restores)
            .find(|r| {
                r.component == s.component
                    && !r.phase.is_settled()
                    && r.phase != RestorePhase::Failed
            })
        {
            return Err(format!(
                "snapshot {name} of {} started while its restore is {:?}",
                s.component, r.phase
            ));
        }
    }
    // A rollback ends only once every restore is settled, and leaves nothing stopped.
    if before.status.rollback.is_some() && w.status.rollback.is_none() {
        if let Some(last) = &w.status.last_rollback {
            if let Some(r) = last.restores.iter().find(|r| !r.phase.is_settled()) {
                return Err(format!(
                    "rollback ended with the restore of {} {:?}",
                    r.component, r.phase
                ));
            }
        }
    }
    // Judged by what the planner saw: the world ends Jobs after the plan.
    let quiet = w.status.rollout.is_none()
        && w.status.rollback.is_none()
        && before
            .data
            .snapshots
            .values()
            .all(|s| s.phase.is_some_and(SnapshotPhase::is_final));
    if quiet && p.actions.is_empty() {
        if let Some((c, _)) = w.observed.iter().find(|(_, o)| o.stopped) {
            return Err(format!(
                "{c} left stopped on a settled stack (snapshots the planner saw: {:?})",
                before.data.snapshots
            ));
        }
    }
    // Every failed restore leaves a way out that is accepted.
    let failed = w
        .status
        .rollback
        .iter()
        .flat_map(|rb| &rb.restores)
        .any(|r| r.phase == RestorePhase::Failed);
    if failed {
        for action in [
            OperationAction::Retry,
            OperationAction::AcceptLiveData,
            OperationAction::Rollback,
        ] {
            let mut probe = w.clone();
            probe.ops.clear();
            probe.op("way-out", action, None);
            let planned = probe.step(10_000_000);
            let accepted = planned
                .operations
                .iter()
                .any(|o| o.name == "way-out" && o.phase == OperationPhase::Succeeded);
            if !accepted {
                return Err(format!(
                    "after a failed restore, {action:?} was refused: {:?}",
                    planned.operations
                ));
            }
        }
    }
    Ok(())
}

/// The canary invariants: a stable pod goes only once a ready canary pod replaces it
/// (a scale-down never leaves stable + ready canary below the replicas), and a failed rollout or a rollback
/// never leaves a canary pod after the plan that decided it.
fn check_canary(before: &World, p: &Plan, w: &World) -> Result<(), String> {
    for a in &p.actions {
        if let Action::Canary {
            component,
            revision,
            canary_replicas,
            stable_replicas,
            ..
        } = a
        {
            let full = w.desired.component(component).map_or(1, |c| c.replicas());
            let ready_canary = before
                .observed
                .get(component)
                .and_then(|o| o.canary.as_ref())
                .filter(|c| c.available && c.revision == Some(*revision))
                .map_or(0, |c| c.replicas.min(*canary_replicas));
            let stable_before = before.observed.get(component).map_or(0, |o| o.replicas);
            if *stable_replicas < stable_before && stable_replicas + ready_canary < full {
                return Err(format!(
                    "{component}: stable scaled to {stable_replicas} with {ready_canary} ready canary pod(s), below {full}"
                ));
            }
        }
    }
    let failed = w.status.rollback.is_some()
        || w.status.hold.is_some()
        || w.status
            .rollout
            .as_ref()
            .is_some_and(|r| r.failure.is_some());
    if failed {
        for (name, o) in &w.observed {
            if let Some(c) = o.canary.as_ref().filter(|c| c.replicas > 0) {
                return Err(format!(
                    "{name}: {} canary pod(s) left after a failure ({:?})",
                    c.replicas, w.status.phase
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_data_invariants_hold_under_random_failures_and_operations() {
    if let Ok(seed) = std::env::var("DEPLOYCTL_SIM_SEED") {
        let seed: u64 = seed.parse().expect("DEPLOYCTL_SIM_SEED is a number");
        if let Err(e) = run(seed, true) {
            panic!("{e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("DEPLOYCTL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rolled_back = 0;
    let mut canaries = 0;
    let mut failed_restores = 0;
    let (mut scheduled_done, mut scheduled_waiting) = (0, 0);
    let (mut waited_for_room, mut pruned_to_fit) = (0, 0);
    for seed in 0..seeds {
        match run(seed, false) {
            Ok(log) => {
                rolled_back += usize::from(log.iter().any(|l| l.contains("RolledBack")));
                canaries += usize::from(log.iter().any(|l| l.contains("EndCanary")));
                failed_restores += usize::from(log.iter().any(|l| l.contains("operation accept")));
                waited_for_room += usize::from(log.iter().any(|l| l.contains("waiting for room")));
                pruned_to_fit += usize::from(log.iter().any(|l| l.contains("Prune {")));
                let last = log.last().expect("a summary line");
                scheduled_done += usize::from(!last.contains(": 0 completed"));
                scheduled_waiting += usize::from(!last.contains(", 0 waiting"));
            }
            Err(e) => panic!(
                "seed {seed} broke an invariant (replay: DEPLOYCTL_SIM_SEED={seed} cargo test -p deployctl-controller --lib simulation):\n{e}"
            ),
        }
    }
    // The simulation must reach the states it is about, or it proves nothing.
    assert!(
        rolled_back as u64 > seeds / 4,
        "only {rolled_back} of {seeds} seeds reached a rollback"
    );
    assert!(failed_restores > 0, "no seed tried a way out");
    assert!(
        canaries as u64 > seeds / 10,
        "only {canaries} of {seeds} seeds ended a canary"
    );
    assert!(
        scheduled_done as u64 > seeds / 4,
        "only {scheduled_done} of {seeds} seeds completed a scheduled snapshot"
    );
    assert!(
        scheduled_waiting > 0,
        "no scheduled snapshot ever had to wait for another agent"
    );
    assert!(
        waited_for_room as u64 > seeds / 20,
        "only {waited_for_room} of {seeds} seeds held a rollout for room in the store"
    );
    assert!(
        pruned_to_fit as u64 > seeds / 50,
        "only {pruned_to_fit} of {seeds} seeds pruned to fit"
    );
}
