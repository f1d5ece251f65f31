//! The I/O half of the stack's data: reads its StackSnapshots and agent Jobs, drives each
//! snapshot's Job (created once the component is quiet when the method needs it; its
//! result, from the agent's termination message, written to the StackSnapshot's status),
//! and carries out the planner's data actions (create a StackSnapshot, stop a component,
//! start a restore Job).

use crate::agent::job::{self, AgentOp, JobRequest, StoreLocation};
use crate::agent::result::{parse_termination_message, AgentResult};
use crate::context::Context;
use crate::error::Result;
use crate::reconcile::build::{self, owner_ref, Workload};
use crate::reconcile::plan::snapshots::{agent_busy, job_name};
use crate::reconcile::plan::{housekeeping, lifecycle};
use crate::reconcile::plan::{
    AgentRun, DataObserved, JobOutcome, RepositoryMeasurement, RevisionRef, SnapshotObserved,
    WorkloadState,
};
use crate::reconcile::replicas::{self, Combined, Failure, Finished};
use deployctl_api::{
    child_name, labels, Component, ComponentData, DataMethod, ProductionStack, ReplicaSnapshot,
    SnapshotPhase, SnapshotReason, StackSnapshot, StackSnapshotSpec, StackSnapshotStatus,
    VerificationResult, WorkloadKind,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;

/// Default size of the filesystem repository's claim.
const DEFAULT_STORE_SIZE: &str = "10Gi";
/// A data Job that runs longer than this is failed by Kubernetes.
const JOB_DEADLINE_SECONDS: i64 = 3600;

/// What the controller read of the stack's data this reconcile.
#[derive(Debug, Default)]
pub struct DataWorld {
    /// The stack's StackSnapshots.
    pub snapshots: Vec<StackSnapshot>,
    /// Its agent Jobs.
    pub jobs: Vec<Job>,
    /// Names a pre-rollout snapshot must not adopt (see [`DataObserved::foreign`]).
    pub foreign: std::collections::BTreeSet<String>,
}

/// Whether the stack has data to look after (components declaring it, or restores in
/// flight): stacks without any pay no extra reads.
pub fn involved(stack: &ProductionStack) -> bool {
    stack.spec.components.iter().any(|c| c.data.is_some())
        || stack
            .status
            .as_ref()
            .and_then(|s| s.rollback.as_ref())
            .is_some_and(|r| !r.restores.is_empty())
}

/// Reads the stack's StackSnapshots and agent Jobs.
pub async fn read(client: &Client, stack: &ProductionStack) -> Result<DataWorld> {
    let ns = stack.namespace().unwrap_or_default();
    let selector = format!("{}={}", labels::STACK, stack.name_any());
    // By spec.stack, not by label: a person's StackSnapshot names its stack only there.
    let (snapshots, others): (Vec<StackSnapshot>, Vec<StackSnapshot>) =
        Api::<StackSnapshot>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .partition(|s| s.spec.stack == stack.name_any());
    // Names a pre-rollout snapshot must not adopt: every object that is not one.
    let foreign = others
        .iter()
        .chain(
            snapshots
                .iter()
                .filter(|s| s.spec.reason != SnapshotReason::BeforeRollout),
        )
        .map(|s| s.name_any())
        .collect();
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{selector},{}", labels::DATA_OPERATION)))
        .await?
        .items;
    Ok(DataWorld {
        snapshots,
        jobs,
        foreign,
    })
}

/// Where the stack's repository is.
pub fn store_location(stack: &ProductionStack) -> StoreLocation {
    let policy = stack.spec.snapshots.clone().unwrap_or_default();
    let store = policy.store.unwrap_or_default();
    match store.s3 {
        Some(s3) => StoreLocation::S3 {
            endpoint: s3.endpoint,
            bucket: s3.bucket,
            region: s3.region.unwrap_or_else(|| "us-east-1".into()),
            prefix: s3.prefix.unwrap_or_else(|| {
                format!(
                    "{}/{}/",
                    stack.namespace().unwrap_or_default(),
                    stack.name_any()
                )
            }),
            credentials_secret: s3.credentials_secret,
        },
        None => StoreLocation::Filesystem {
            claim: store
                .filesystem
                .and_then(|f| f.claim_name)
                .unwrap_or_else(|| format!("{}-snapshots", stack.name_any())),
        },
    }
}

/// `pvc://<claim>` or `s3://<bucket>/<prefix>`, for status and the CLI.
fn store_text(store: &StoreLocation) -> String {
    match store {
        StoreLocation::Filesystem { claim } => format!("pvc://{claim}"),
        StoreLocation::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
    }
}

/// Creates the default filesystem repository's claim when it is missing. It has no owner:
/// the snapshots must outlive the stack.
pub async fn ensure_store(client: &Client, stack: &ProductionStack) -> Result<()> {
    let policy = stack.spec.snapshots.clone().unwrap_or_default();
    let fs = policy.store.unwrap_or_default();
    if fs.s3.is_some() {
        return Ok(());
    }
    let fs = fs.filesystem.unwrap_or_default();
    let StoreLocation::Filesystem { claim } = store_location(stack) else {
        return Ok(());
    };
    let ns = stack.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    if api.get_opt(&claim).await?.is_some() {
        return Ok(());
    }
    if fs.claim_name.is_some() {
        // A claim the user named is theirs to create; the Job stays Pending until it exists.
        return Ok(());
    }
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": claim,
            "labels": {
                labels::STACK: stack.name_any(),
                labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            },
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": fs.storage_class_name,
            "resources": {"requests": {"storage": fs.size.unwrap_or_else(|| DEFAULT_STORE_SIZE.into())}},
        },
    }))?;
    match api
        .create(
            &PostParams {
                field_manager: Some(labels::FIELD_MANAGER.into()),
                ..Default::default()
            },
            &pvc,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Name of the Job that takes snapshot `snapshot` of `component`.
pub fn snapshot_job_name(stack: &str, component: &str, snapshot: &str) -> String {
    job_name(&child_name(stack, component), "snap", snapshot)
}

/// The agent Job for one operation on one component's data.
struct AgentJob<'a> {
    op: AgentOp,
    name: String,
    component: &'a Component,
    data: &'a ComponentData,
    /// The StackSnapshot concerned (for labels).
    snapshot_object: &'a str,
    /// Its digest (restore, verify).
    digest: Option<String>,
    revision: Option<i64>,
    node: Option<String>,
    forget: Vec<String>,
    /// The replica whose claim the Job works on (0 for a Deployment's shared claim).
    ordinal: i32,
    /// How many Jobs the group `name` has (one per replica).
    group_size: usize,
}

/// Starts agent Job `j`: replica `j.ordinal`'s Job of group `j.name`.
async fn start_agent(ctx: &Context, stack: &ProductionStack, j: AgentJob<'_>) -> Result<()> {
    let name = stack.name_any();
    let ns = stack.namespace().unwrap_or_default();
    let req = JobRequest {
        name: replicas::job(&j.name, j.ordinal),
        namespace: ns.clone(),
        owner: owner_ref(stack).expect("a stored stack has a uid"),
        labels: job_labels(&name, &j.component.name, j.op.as_str(), j.snapshot_object),
        op: j.op,
        image: ctx.agent_image.clone(),
        stack: name.clone(),
        component: j.component.name.clone(),
        revision: j.revision,
        data: j.data,
        workload: (j.data.method == DataMethod::Exec).then_some(j.component),
        data_claim: j
            .op
            .uses_data()
            .then(|| replicas::claim(&name, j.component, j.data, j.ordinal))
            .flatten(),
        store: store_location(stack),
        encryption: encryption(stack),
        snapshot: j.digest,
        node_name: j.node,
        keep_last: None,
        keep_daily: None,
        forget: j.forget,
        active_deadline_seconds: Some(JOB_DEADLINE_SECONDS),
        identity: job::agent_identity(j.component, j.data),
        resources: stack
            .spec
            .snapshots
            .as_ref()
            .and_then(|p| p.agent_resources.clone())
            .unwrap_or_else(|| ctx.agent_resources.clone()),
    };
    let mut job = job::build(&req);
    let annotations = job
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    if !j.snapshot_object.is_empty() {
        // An annotation, not only a label: object names may be longer than label values.
        annotations.insert(labels::SNAPSHOT.into(), j.snapshot_object.to_string());
    }
    annotations.insert(labels::JOB_GROUP.into(), j.name.clone());
    annotations.insert(labels::JOB_GROUP_SIZE.into(), j.group_size.to_string());
    job.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(labels::DATA_ORDINAL.into(), j.ordinal.to_string());
    create_job(&ctx.client, &ns, &job).await
}

/// Drives the stack's unfinished snapshots and its verification and retention one step,
/// and returns what the planner sees, with when to look again for the schedules.
/// `requested` are the snapshots pending Restore operations name: retention keeps them.
pub async fn sync(
    ctx: &Context,
    stack: &ProductionStack,
    desired: &RevisionRef,
    workloads: &BTreeMap<String, WorkloadState>,
    world: &mut DataWorld,
    requested: &[String],
) -> Result<(DataObserved, Option<std::time::Duration>)> {
    let name = stack.name_any();
    let ns = stack.namespace().unwrap_or_default();
    let client = &ctx.client;
    let store = store_location(stack);
    // Updated as this pass starts Jobs, so it never starts two on one component's data.
    let mut agents = running_agents(&world.jobs);
    let rollback = stack.status.as_ref().and_then(|s| s.rollback.as_ref());
    let repository_exists = world
        .snapshots
        .iter()
        .any(|s| s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Completed));
    // Read: each unfinished snapshot with its Jobs' outcomes.
    // An autoscaled component's data is copied for the replicas it runs, not its spec's.
    let counted: BTreeMap<&str, Component> = desired
        .components
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                crate::reconcile::autoscale::counted(c, workloads.get(&c.name)),
            )
        })
        .collect();
    let mut unfinished = vec![];
    for snap in &world.snapshots {
        let st = snap.status.clone().unwrap_or_default();
        if st.phase.is_some_and(SnapshotPhase::is_final) {
            continue;
        }
        let comp_name = snap.spec.component.clone();
        let spec = counted.get(comp_name.as_str());
        let job = snapshot_job_name(&name, &comp_name, &snap.name_any());
        let mut jobs = vec![];
        for o in spec
            .map(|c| lifecycle::ordinals(&st, c))
            .unwrap_or_default()
        {
            let n = replicas::job(&job, o);
            let outcome = match world.jobs.iter().find(|j| j.name_any() == n) {
                Some(j) => Some(job_outcome(client, &ns, j).await?),
                None => None,
            };
            jobs.push((o, outcome));
        }
        unfinished.push(lifecycle::Unfinished {
            name: snap.name_any(),
            component: comp_name,
            status: st,
            spec,
            job,
            jobs,
        });
    }
    // Decide.
    let statuses: BTreeMap<String, (StackSnapshotStatus, String, Option<&Component>)> = unfinished
        .iter()
        .map(|u| (u.name.clone(), (u.status.clone(), u.job.clone(), u.spec)))
        .collect();
    let steps = lifecycle::steps(
        unfinished,
        &mut agents,
        rollback,
        workloads,
        repository_exists,
    );
    // Carry out.
    for (snap_name, step) in steps {
        let (st, job, spec) = statuses[&snap_name].clone();
        let Some(snap) = world
            .snapshots
            .iter_mut()
            .find(|s| s.name_any() == snap_name)
        else {
            continue;
        };
        let comp_name = snap.spec.component.clone();
        match step {
            lifecycle::Step::Nothing => {}
            lifecycle::Step::Reject(msg) => {
                set_status(client, snap, failed(st, format!("{msg} (stack {name})"))).await?;
            }
            lifecycle::Step::Wait(why) => {
                if st.phase != Some(SnapshotPhase::Pending) || st.message.as_deref() != Some(&why) {
                    let mut next = st;
                    next.phase = Some(SnapshotPhase::Pending);
                    next.message = Some(why);
                    set_status(client, snap, next).await?;
                }
            }
            lifecycle::Step::Start { ordinals, first } => {
                let component = spec.expect("a snapshot that starts has its component");
                let data = component.data.as_ref().expect("and its data");
                let revision = if first {
                    workloads.get(&comp_name).and_then(|w| w.revision)
                } else {
                    st.revision
                };
                let group_size = if first {
                    ordinals.len()
                } else {
                    st.replicas.len().max(1)
                };
                for &o in &ordinals {
                    let node = live_copy_node(client, &ns, &name, component, data, o).await?;
                    start_agent(
                        ctx,
                        stack,
                        AgentJob {
                            op: AgentOp::Snapshot,
                            name: job.clone(),
                            component,
                            data,
                            snapshot_object: &snap_name,
                            digest: None,
                            revision,
                            node,
                            forget: vec![],
                            ordinal: o,
                            group_size,
                        },
                    )
                    .await?;
                }
                if first {
                    let mut next = st;
                    next.phase = Some(SnapshotPhase::Running);
                    next.job = Some(job.clone());
                    next.revision = revision;
                    next.method = Some(data.method);
                    next.store = Some(store_text(&store));
                    next.started_at = Some(crate::context::now());
                    next.message = None;
                    next.replicas = if component.kind == WorkloadKind::StatefulSet {
                        ordinals
                            .iter()
                            .map(|&o| ReplicaSnapshot {
                                ordinal: o,
                                job: Some(replicas::job(&job, o)),
                                ..Default::default()
                            })
                            .collect()
                    } else {
                        vec![]
                    };
                    set_status(client, snap, next).await?;
                }
            }
            lifecycle::Step::Complete(results) => {
                let mut next = st;
                next.phase = Some(SnapshotPhase::Completed);
                record_results(&mut next, &results);
                next.completed_at = Some(crate::context::now());
                next.message = None;
                for (_, r) in &results {
                    if let Some(d) = r.duration_seconds {
                        ctx.metrics.snapshot_operation("snapshot", d, r.size_bytes);
                    }
                }
                set_status(client, snap, next).await?;
            }
            lifecycle::Step::Fail {
                message,
                kind,
                completed,
            } => {
                record_failure(ctx, &store, "snapshot", kind);
                let notice = crate::notifications::kinds::snapshot_failed(
                    &snap_name,
                    snap.spec.reason,
                    &message,
                    &stack.status.clone().unwrap_or_default(),
                );
                crate::notifications::dispatch(
                    ctx,
                    stack,
                    stack.metadata.generation,
                    notice.into_iter().collect(),
                );
                let mut next = st;
                // The replicas that did complete are in the repository: recorded, so
                // retention forgets them with this object.
                record_results(&mut next, &completed);
                next.digest = None;
                set_status(client, snap, failed(next, message)).await?;
            }
        }
    }

    // Before verification Jobs are recorded and deleted: they measure the repository too.
    let since = stack
        .status
        .as_ref()
        .and_then(|s| s.snapshot_repository.as_ref())
        .map(|r| r.measured_at.clone());
    let measurement = newest_measurement(client, &ns, &world.jobs, since.as_ref()).await?;
    record_verifications(ctx, &ns, &store, world).await?;
    let next = keep_house(ctx, stack, desired, world, &mut agents, requested).await?;

    let mut observed = DataObserved::default();
    for s in &world.snapshots {
        let st = s.status.clone().unwrap_or_default();
        observed.snapshots.insert(
            s.name_any(),
            SnapshotObserved {
                component: s.spec.component.clone(),
                phase: st.phase,
                message: st.message.clone(),
                digest: st.digest.clone(),
                corrupt: st.verification == Some(VerificationResult::Corrupt),
                verified: st.verification == Some(VerificationResult::Verified),
                created: s.metadata.creation_timestamp.clone(),
                digests: st.digests().into_iter().map(|(_, d)| d).collect(),
                stored_bytes: st.stored_bytes,
                new_bytes: st.new_bytes,
            },
        );
    }
    // One restore is a group of Jobs, one per replica: the planner sees the group.
    let mut groups: BTreeMap<String, (usize, Vec<(i32, Finished)>)> = BTreeMap::new();
    for j in &world.jobs {
        if j.labels().get(labels::DATA_OPERATION).map(String::as_str) != Some("restore") {
            continue;
        }
        let finished = job_outcome(client, &ns, j).await?;
        match &finished {
            Finished::Running => {}
            Finished::Ok(r) => {
                if let Some(d) = r.duration_seconds {
                    // Counted once: the Job's result is read again on later reconciles
                    // only while the rollback still waits for it.
                    if j.status
                        .as_ref()
                        .and_then(|s| s.completion_time.as_ref())
                        .is_some()
                        && !j.annotations().contains_key(labels::RECORDED)
                    {
                        ctx.metrics.snapshot_operation("restore", d, r.size_bytes);
                        ctx.metrics.stack_restore(&ns, &stack.name_any(), true);
                        mark_recorded(client, &ns, j).await?;
                    }
                }
            }
            Finished::Failed(_, kind) => {
                if !j.annotations().contains_key(labels::RECORDED) {
                    record_failure(ctx, &store, "restore", *kind);
                    ctx.metrics.stack_restore(&ns, &stack.name_any(), false);
                    mark_recorded(client, &ns, j).await?;
                }
            }
        }
        let (group, size, ordinal) = job_group(j);
        let entry = groups.entry(group).or_insert((size, vec![]));
        entry.1.push((ordinal, finished));
    }
    for (group, (size, mut outcomes)) in groups {
        if outcomes.len() < size {
            // Not every replica's Job was created yet: seen as not started, the planner
            // asks for the restore again and the missing ones are created.
            continue;
        }
        outcomes.sort_by_key(|(o, _)| *o);
        let outcome = match replicas::combine(outcomes) {
            Combined::Running => JobOutcome::Running,
            Combined::Ok(_) => JobOutcome::Succeeded,
            Combined::Failed { message, .. } => JobOutcome::Failed(message),
        };
        observed.restore_jobs.insert(group, outcome);
    }
    observed.agents = agents;
    observed.foreign = world.foreign.clone();
    observed.repository = measurement;
    Ok((observed, next))
}

/// The newest measurement of the repository among the agent Jobs (snapshot, verify,
/// prune) that succeeded after the measurement the status holds (`since`). Usually no
/// Job qualifies and nothing is read; a Job that finished since is read once, as the
/// planner then records its measurement. A Job whose agent reported none (the
/// measurement failed) is read again on later passes until a newer one is recorded, at
/// most for the day a finished Job is kept.
async fn newest_measurement(
    client: &Client,
    ns: &str,
    jobs: &[Job],
    since: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Result<Option<RepositoryMeasurement>> {
    let mut finished: Vec<(&Job, k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)> = jobs
        .iter()
        .filter(|j| {
            matches!(
                j.labels().get(labels::DATA_OPERATION).map(String::as_str),
                Some("snapshot" | "verify" | "prune")
            )
        })
        .filter_map(|j| {
            let done = j.status.as_ref()?.completion_time.clone()?;
            Some((j, done))
        })
        .filter(|(_, done)| since.is_none_or(|s| done.0 > s.0))
        .collect();
    finished.sort_by_key(|(_, done)| std::cmp::Reverse(done.0));
    for (job, at) in finished {
        let Finished::Ok(r) = job_outcome(client, ns, job).await? else {
            continue;
        };
        let Some(used) = r.repository_bytes else {
            continue;
        };
        return Ok(Some(RepositoryMeasurement {
            used_bytes: used,
            objects: r.repository_objects,
            volume: r.total_bytes.zip(r.available_bytes),
            at,
            job: job.name_any(),
            operation: r.operation.as_str().to_string(),
        }));
    }
    Ok(None)
}

/// The group an agent Job belongs to, the group's size and the Job's replica (a Job made
/// before groups existed is a group of its own).
fn job_group(j: &Job) -> (String, usize, i32) {
    let a = j.annotations();
    (
        a.get(labels::JOB_GROUP)
            .cloned()
            .unwrap_or_else(|| j.name_any()),
        a.get(labels::JOB_GROUP_SIZE)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
        j.labels()
            .get(labels::DATA_ORDINAL)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Writes the agents' results into a snapshot's status: each replica's, and the totals
/// (`digest` is ordinal 0's).
fn record_results(st: &mut StackSnapshotStatus, results: &[(i32, AgentResult)]) {
    let total = |f: fn(&AgentResult) -> Option<u64>| {
        results
            .iter()
            .filter_map(|(_, r)| f(r))
            .map(|v| v as i64)
            .reduce(|a, b| a + b)
    };
    st.digest = results
        .iter()
        .find(|(o, _)| *o == 0)
        .and_then(|(_, r)| r.digest.clone());
    st.size_bytes = total(|r| r.size_bytes);
    st.files = total(|r| r.files);
    st.chunks = total(|r| r.chunks);
    st.new_bytes = total(|r| r.new_bytes);
    st.stored_bytes = total(|r| r.stored_bytes);
    for (o, r) in results {
        if let Some(e) = st.replicas.iter_mut().find(|e| e.ordinal == *o) {
            e.digest = r.digest.clone();
            e.size_bytes = r.size_bytes.map(|v| v as i64);
            e.files = r.files.map(|v| v as i64);
        }
    }
}

/// Where replica `ordinal`'s data must be copied from while the component runs: the node
/// its pod is on (a ReadWriteOnce claim is mounted only there). None when the component
/// is stopped for the copy: the claim's own binding then places the Job.
async fn live_copy_node(
    client: &Client,
    ns: &str,
    stack: &str,
    component: &Component,
    data: &ComponentData,
    ordinal: i32,
) -> Result<Option<String>> {
    if data.quiesces() {
        return Ok(None);
    }
    if component.kind == WorkloadKind::StatefulSet {
        let pod = format!("{}-{ordinal}", child_name(stack, &component.name));
        return Ok(Api::<Pod>::namespaced(client.clone(), ns)
            .get_opt(&pod)
            .await?
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .and_then(|p| p.spec?.node_name));
    }
    component_node(client, ns, stack, &component.name).await
}

/// Marks a finished Job as counted in the metrics.
async fn mark_recorded(client: &Client, ns: &str, job: &Job) -> Result<()> {
    Api::<Job>::namespaced(client.clone(), ns)
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {labels::RECORDED: "true"}}})),
        )
        .await?;
    Ok(())
}

/// Writes the results of finished verification Jobs into their snapshots' status, then
/// deletes the Jobs (the status is the record).
async fn record_verifications(
    ctx: &Context,
    ns: &str,
    store: &StoreLocation,
    world: &mut DataWorld,
) -> Result<()> {
    let client = &ctx.client;
    let mut done = Vec::new();
    // One verification is a group of Jobs, one per replica: recorded once all ended.
    let mut groups: BTreeMap<String, (String, usize, Vec<&Job>)> = BTreeMap::new();
    for j in &world.jobs {
        if j.labels().get(labels::DATA_OPERATION).map(String::as_str) != Some("verify") {
            continue;
        }
        let Some(snap_name) = j.annotations().get(labels::SNAPSHOT).cloned() else {
            continue;
        };
        let (group, size, _) = job_group(j);
        groups
            .entry(group)
            .or_insert((snap_name, size, vec![]))
            .2
            .push(j);
    }
    for (_, (snap_name, size, jobs)) in groups {
        if jobs.len() < size {
            // The rest are created by housekeeping on this pass.
            continue;
        }
        let mut outcomes = vec![];
        for j in &jobs {
            outcomes.push((job_group(j).2, job_outcome(client, ns, j).await?));
        }
        outcomes.sort_by_key(|(o, _)| *o);
        let (result, message) = match replicas::combine(outcomes) {
            Combined::Running => continue,
            Combined::Ok(results) => {
                for (_, r) in &results {
                    if let Some(d) = r.duration_seconds {
                        ctx.metrics.snapshot_operation("verify", d, r.size_bytes);
                    }
                }
                (VerificationResult::Verified, None)
            }
            Combined::Failed {
                message,
                kind: Failure::Corrupt,
                ..
            } => {
                record_failure(ctx, store, "verify", Failure::Corrupt);
                (VerificationResult::Corrupt, Some(message))
            }
            Combined::Failed { message, kind, .. } => {
                // The store was unreachable, or similar: not a finding about the snapshot.
                tracing::warn!(snapshot = %snap_name, "verification could not run: {message}");
                record_failure(ctx, store, "verify", kind);
                done.extend(jobs.iter().map(|j| j.name_any()));
                continue;
            }
        };
        if let Some(snap) = world
            .snapshots
            .iter_mut()
            .find(|s| s.name_any() == snap_name)
        {
            let mut st = snap.status.clone().unwrap_or_default();
            st.last_verified_at = Some(crate::context::now());
            st.verification = Some(result);
            if result == VerificationResult::Corrupt {
                st.message = message;
            }
            set_status(client, snap, st).await?;
        }
        done.extend(jobs.iter().map(|j| j.name_any()));
    }
    for name in done {
        let api: Api<Job> = Api::namespaced(client.clone(), ns);
        match api
            .delete(&name, &kube::api::DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        world.jobs.retain(|j| j.name_any() != name);
    }
    Ok(())
}

fn timestamp(
    t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default()
}

/// Scheduled snapshots, scheduled and requested verification, retention.
async fn keep_house(
    ctx: &Context,
    stack: &ProductionStack,
    desired: &RevisionRef,
    world: &mut DataWorld,
    agents: &mut BTreeMap<String, Vec<AgentRun>>,
    requested: &[String],
) -> Result<Option<std::time::Duration>> {
    let name = stack.name_any();
    let ns = stack.namespace().unwrap_or_default();
    let policy = stack.spec.snapshots.clone().unwrap_or_default();
    let components: Vec<String> = desired
        .order
        .iter()
        .filter(|c| desired.component(c).is_some_and(|c| c.data.is_some()))
        .cloned()
        .collect();
    let facts: Vec<housekeeping::SnapshotFacts> = world
        .snapshots
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            housekeeping::SnapshotFacts {
                name: s.name_any(),
                component: s.spec.component.clone(),
                reason: s.spec.reason,
                phase: st.phase,
                created: s
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(timestamp)
                    .unwrap_or_else(chrono::Utc::now),
                checked: st
                    .last_verified_at
                    .as_ref()
                    .or(st.completed_at.as_ref())
                    .map(timestamp),
                digests: st.digests().into_iter().map(|(_, d)| d).collect(),
                verify_requested: s
                    .annotations()
                    .get(labels::VERIFY_REQUESTED)
                    .and_then(|v| v.parse().ok()),
                last_verified: st.last_verified_at.as_ref().map(timestamp),
            }
        })
        .collect();
    let status = stack.status.clone().unwrap_or_default();
    // What a rollout, a rollback or a pending Restore operation may still restore.
    let protected = housekeeping::protected(&status, requested.iter().map(String::as_str));
    let now = chrono::Utc::now();
    let stack_created = stack
        .metadata
        .creation_timestamp
        .as_ref()
        .map(timestamp)
        .unwrap_or(now);
    let plan = housekeeping::plan(
        &name,
        &policy,
        &components,
        &facts,
        &protected,
        stack_created,
        now,
    );

    for (component, snap_name) in &plan.create {
        create_snapshot(
            &ctx.client,
            stack,
            component,
            snap_name,
            SnapshotReason::Scheduled,
        )
        .await?;
    }
    for (snap_name, key) in &plan.verify {
        let Some(snap) = world.snapshots.iter().find(|s| &s.name_any() == snap_name) else {
            continue;
        };
        let Some((component, data)) = desired
            .component(&snap.spec.component)
            .and_then(|c| c.data.as_ref().map(|d| (c, d)))
        else {
            continue;
        };
        let job = job_name(&child_name(&name, &component.name), "verify", key);
        let digests = snap
            .status
            .as_ref()
            .map(StackSnapshotStatus::digests)
            .unwrap_or_default();
        let missing: Vec<&(i32, String)> = digests
            .iter()
            .filter(|(o, _)| {
                let n = replicas::job(&job, *o);
                !world.jobs.iter().any(|j| j.name_any() == n)
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        // Decided again on a later pass, once the component's data is free (unless this
        // verification's own Jobs are the ones running: the controller stopped between
        // starting them).
        if missing.len() == digests.len()
            && agent_busy(agents, status.rollback.as_ref(), &component.name, true).is_some()
        {
            continue;
        }
        for (ordinal, digest) in missing {
            agents
                .entry(component.name.clone())
                .or_default()
                .push(AgentRun {
                    operation: "verify".into(),
                    job: replicas::job(&job, *ordinal),
                });
            start_agent(
                ctx,
                stack,
                AgentJob {
                    op: AgentOp::Verify,
                    name: job.clone(),
                    component,
                    data,
                    snapshot_object: snap_name,
                    digest: Some(digest.clone()),
                    revision: None,
                    node: None,
                    forget: vec![],
                    ordinal: *ordinal,
                    group_size: digests.len(),
                },
            )
            .await?;
        }
    }
    // Prune before the objects go: a controller that dies in between decides the same
    // prune again (same Job name) and then deletes them.
    let mut prune_waits = std::collections::BTreeSet::new();
    for (component_name, forget) in &plan.prune {
        let Some((component, data)) = desired
            .component(component_name)
            .and_then(|c| c.data.as_ref().map(|d| (c, d)))
        else {
            continue;
        };
        let job = job_name(
            &child_name(&name, component_name),
            "prune",
            &forget.join(","),
        );
        if world.jobs.iter().any(|j| j.name_any() == job) {
            continue;
        }
        if agent_busy(agents, status.rollback.as_ref(), component_name, true).is_some() {
            // Its objects stay too: the same prune is decided again on a later pass.
            prune_waits.insert(component_name.clone());
            continue;
        }
        agents
            .entry(component_name.clone())
            .or_default()
            .push(AgentRun {
                operation: "prune".into(),
                job: job.clone(),
            });
        start_prune(ctx, stack, component, data, &job, forget).await?;
    }
    let api: Api<StackSnapshot> = Api::namespaced(ctx.client.clone(), &ns);
    for snap_name in &plan.delete {
        let component = world
            .snapshots
            .iter()
            .find(|s| &s.name_any() == snap_name)
            .map(|s| s.spec.component.clone());
        if component.is_some_and(|c| prune_waits.contains(&c)) {
            continue;
        }
        match api.delete(snap_name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        world.snapshots.retain(|s| &s.name_any() != snap_name);
    }
    Ok(plan.next)
}

/// Starts the prune Job `job` that forgets exactly the digests `forget` of `component`
/// and garbage-collects the repository.
async fn start_prune(
    ctx: &Context,
    stack: &ProductionStack,
    component: &Component,
    data: &ComponentData,
    job: &str,
    forget: &[String],
) -> Result<()> {
    start_agent(
        ctx,
        stack,
        AgentJob {
            op: AgentOp::Prune,
            name: job.to_string(),
            component,
            data,
            snapshot_object: "",
            digest: None,
            revision: None,
            node: None,
            forget: forget.to_vec(),
            ordinal: 0,
            group_size: 1,
        },
    )
    .await
}

/// Carries out a prune to fit (the planner's `Prune`): the prune Job first, then the
/// StackSnapshots it forgets. Prune before the objects go, as retention does: a
/// controller that dies in between finds the same prune in the status and the Job
/// already there.
pub async fn prune_to_fit(
    ctx: &Context,
    stack: &ProductionStack,
    revisions: &[&RevisionRef],
    (component, job, forget, snapshots): (&str, Option<&str>, &[String], &[String]),
) -> Result<()> {
    if let Some(job) = job {
        let Some((spec, data)) = revisions.iter().find_map(|r| {
            r.component(component)
                .and_then(|c| c.data.as_ref().map(|d| (c, d)))
        }) else {
            return Ok(());
        };
        start_prune(ctx, stack, spec, data, job, forget).await?;
    }
    let api: Api<StackSnapshot> =
        Api::namespaced(ctx.client.clone(), &stack.namespace().unwrap_or_default());
    for name in snapshots {
        match api.delete(name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Counts a failed agent Job in the metrics.
fn record_failure(ctx: &Context, store: &StoreLocation, operation: &'static str, kind: Failure) {
    let store_kind = match store {
        StoreLocation::Filesystem { .. } => "fs",
        StoreLocation::S3 { .. } => "s3",
    };
    ctx.metrics.snapshot_failed(
        operation,
        kind == Failure::Corrupt,
        (kind == Failure::Store).then_some(store_kind),
    );
}

fn failed(mut st: StackSnapshotStatus, msg: String) -> StackSnapshotStatus {
    st.phase = Some(SnapshotPhase::Failed);
    st.message = Some(msg);
    st.completed_at = Some(crate::context::now());
    st
}

fn encryption(stack: &ProductionStack) -> Option<deployctl_api::SecretKeyRef> {
    stack
        .spec
        .snapshots
        .as_ref()
        .and_then(|p| p.encryption.as_ref())
        .map(|e| e.key_secret.clone())
}

fn job_labels(stack: &str, component: &str, op: &str, snapshot: &str) -> BTreeMap<String, String> {
    let mut l = build::selector_labels(stack, component);
    // The component's selector labels would make the agent's pod count as one of the
    // component's pods; keep the stack label only, and say what the pod is.
    l.remove(labels::COMPONENT);
    l.insert(labels::DATA_OPERATION.into(), op.into());
    l.insert(labels::DATA_COMPONENT.into(), component.into());
    l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    if snapshot.len() <= 63 {
        l.insert(labels::SNAPSHOT.into(), snapshot.into());
    }
    l
}

async fn set_status(
    client: &Client,
    snap: &mut StackSnapshot,
    status: StackSnapshotStatus,
) -> Result<()> {
    let api: Api<StackSnapshot> =
        Api::namespaced(client.clone(), &snap.namespace().unwrap_or_default());
    api.patch_status(
        &snap.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    snap.status = Some(status);
    Ok(())
}

async fn create_job(client: &Client, ns: &str, job: &Job) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    match api
        .create(
            &PostParams {
                field_manager: Some(labels::FIELD_MANAGER.into()),
                ..Default::default()
            },
            job,
        )
        .await
    {
        Ok(_) => Ok(()),
        // Created by an earlier reconcile that did not get to record it.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The node a running pod of the component is on: a live copy of a ReadWriteOnce volume
/// must run there.
async fn component_node(
    client: &Client,
    ns: &str,
    stack: &str,
    component: &str,
) -> Result<Option<String>> {
    let selector = build::selector_labels(stack, component)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())))
}

/// Whether a Job has neither succeeded nor failed yet.
fn job_running(job: &Job) -> bool {
    let st = job.status.clone().unwrap_or_default();
    let failed_condition = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    st.succeeded.unwrap_or(0) == 0 && st.failed.unwrap_or(0) == 0 && !failed_condition
}

/// The agent Jobs still running, by the component whose data they work on (Jobs made
/// before that label existed count for no component).
pub fn running_agents(jobs: &[Job]) -> BTreeMap<String, Vec<AgentRun>> {
    let mut out: BTreeMap<String, Vec<AgentRun>> = BTreeMap::new();
    for j in jobs.iter().filter(|j| job_running(j)) {
        let l = j.labels();
        if let (Some(component), Some(op)) =
            (l.get(labels::DATA_COMPONENT), l.get(labels::DATA_OPERATION))
        {
            out.entry(component.clone()).or_default().push(AgentRun {
                operation: op.clone(),
                job: j.name_any(),
            });
        }
    }
    out
}

/// Why the namespace refuses the pod of agent Job `job`, which then never starts (Pod
/// Security admission, a quota, an admission policy), from the Job controller's
/// `FailedCreate` Event. The Job is deleted: it would retry for as long as it lives and
/// count as an agent working on the data.
async fn pod_refused(client: &Client, ns: &str, job: &Job) -> Result<Option<String>> {
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Job,involvedObject.name={},reason=FailedCreate",
            job.name_any()
        )))
        .await?;
    let Some(message) = events
        .items
        .iter()
        .filter(|e| e.involved_object.uid.as_deref() == job.metadata.uid.as_deref())
        .find_map(|e| e.message.clone())
    else {
        return Ok(None);
    };
    match Api::<Job>::namespaced(client.clone(), ns)
        .delete(&job.name_any(), &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let hint = if message.contains("PodSecurity") {
        " The agent runs as the component's own user when the component sets a non-root \
         securityContext.runAsUser (the restricted level then admits it); a component whose \
         user only its image knows gets a root agent, which needs the baseline level."
    } else {
        ""
    };
    Ok(Some(format!(
        "the namespace refused the pod of agent Job {}: {message}.{hint}",
        job.name_any()
    )))
}

/// Reads a Job's outcome and, once it ended, the agent's result from its pod's
/// termination message.
async fn job_outcome(client: &Client, ns: &str, job: &Job) -> Result<Finished> {
    let st = job.status.clone().unwrap_or_default();
    let failed_condition = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    let done = st.succeeded.unwrap_or(0) > 0;
    if job_running(job) {
        if st.active.unwrap_or(0) == 0 {
            if let Some(why) = pod_refused(client, ns, job).await? {
                return Ok(Finished::Failed(why, Failure::Other));
            }
        }
        return Ok(Finished::Running);
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("job-name={}", job.name_any())))
        .await?;
    let statuses: Vec<&PodStatus> = pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref())
        .collect();
    Ok(outcome(
        &job.name_any(),
        done,
        failed_condition.map(|c| c.message.clone().or(c.reason.clone()).unwrap_or_default()),
        &statuses,
    ))
}

/// How a finished Job ended, from its pods' container statuses: a failed `Exec` command
/// (its exit code and the end of its output, the termination message), else the agent's
/// result (its termination message, whether it ran as a container or an init container).
fn outcome(
    job: &str,
    done: bool,
    failed_condition: Option<String>,
    pods: &[&PodStatus],
) -> Finished {
    let all = |p: &&PodStatus| {
        p.init_container_statuses
            .iter()
            .flatten()
            .chain(p.container_statuses.iter().flatten())
            .cloned()
            .collect::<Vec<_>>()
    };
    let statuses: Vec<_> = pods.iter().flat_map(all).collect();
    let command_failure = statuses.iter().find_map(|c| {
        if ![job::DUMP_CONTAINER, job::RESTORE_CONTAINER].contains(&c.name.as_str()) {
            return None;
        }
        let t = c.state.as_ref()?.terminated.as_ref()?;
        (t.exit_code != 0).then(|| {
            let output = t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_else(|| " with no output".into());
            format!(
                "the {} command (container {} of Job {job}) exited with code {}{output}",
                c.name, c.name, t.exit_code
            )
        })
    });
    if let Some(msg) = command_failure {
        return Finished::Failed(msg, Failure::Other);
    }
    let message = statuses
        .iter()
        .filter(|c| c.name == job::CONTAINER)
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone());
    let result = message.as_deref().map(parse_termination_message);
    match (done, result) {
        (true, Some(Ok(r))) if r.ok => Finished::Ok(Box::new(r)),
        (_, Some(Ok(r))) => {
            let kind = if r.is_corruption() {
                Failure::Corrupt
            } else if r
                .category
                .as_deref()
                .is_some_and(|c| c.starts_with("store"))
            {
                Failure::Store
            } else {
                Failure::Other
            };
            Finished::Failed(
                r.message
                    .unwrap_or_else(|| format!("the agent reported {} failed", r.operation)),
                kind,
            )
        }
        (true, _) => Finished::Failed(
            format!("Job {job} succeeded but left no result in its termination message"),
            Failure::Other,
        ),
        (false, _) => Finished::Failed(
            match failed_condition {
                Some(c) => format!("Job {job} failed: {c}"),
                None => format!("Job {job} failed without a result"),
            },
            Failure::Other,
        ),
    }
}

/// Creates a StackSnapshot (its Job follows in the next reconcile).
pub async fn create_snapshot(
    client: &Client,
    stack: &ProductionStack,
    component: &str,
    name: &str,
    reason: SnapshotReason,
) -> Result<()> {
    let ns = stack.namespace().unwrap_or_default();
    let api: Api<StackSnapshot> = Api::namespaced(client.clone(), &ns);
    let mut l = BTreeMap::from([
        (labels::STACK.to_string(), stack.name_any()),
        (labels::COMPONENT.to_string(), component.to_string()),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
    ]);
    l.retain(|_, v| v.len() <= 63);
    let snap = StackSnapshot {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.clone()),
            labels: Some(l),
            owner_references: owner_ref(stack).map(|mut o| {
                // Owned (deleted with the stack), but not controlled: people create them too.
                o.controller = None;
                vec![o]
            }),
            ..Default::default()
        },
        spec: StackSnapshotSpec {
            stack: stack.name_any(),
            component: component.to_string(),
            reason,
        },
        status: None,
    };
    match api
        .create(
            &PostParams {
                field_manager: Some(labels::FIELD_MANAGER.into()),
                ..Default::default()
            },
            &snap,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Ours from an earlier pass is adopted; anyone else's is left alone, and the
            // planner, which sees it as foreign on the next pass, picks another name.
            let existing = api.get(name).await?;
            if existing.spec != snap.spec {
                tracing::warn!(
                    snapshot = name,
                    "a StackSnapshot of this name exists and is not the one the controller asked for; leaving it alone"
                );
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Scales a component to zero on revision `source`'s spec, marked stopped.
pub async fn stop(
    ctx: &crate::context::Context,
    stack: &ProductionStack,
    source: &RevisionRef,
    component: &str,
) -> Result<()> {
    let spec = source
        .component(component)
        .expect("planned components come from their revision");
    let mut objects =
        build::component_objects(stack, spec, &source.hashes[component], source.number);
    let mark = |meta: &mut ObjectMeta| {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(labels::STOPPED.into(), "data".into());
    };
    match &mut objects.workload {
        Workload::Deployment(d) => {
            mark(&mut d.metadata);
            if let Some(s) = d.spec.as_mut() {
                s.replicas = Some(0);
            }
        }
        Workload::StatefulSet(s) => {
            mark(&mut s.metadata);
            if let Some(s) = s.spec.as_mut() {
                s.replicas = Some(0);
            }
        }
    }
    crate::reconcile::apply::component(ctx, &stack.namespace().unwrap_or_default(), &objects).await
}

/// Starts the Jobs restoring StackSnapshot `snapshot` into `component`'s claims (group
/// `job`: one Job per replica the snapshot holds, each into that replica's claim); the
/// data spec comes from the first of `revisions` that declares it. Jobs that exist already
/// are left alone, so a restore the controller started only partly is completed.
pub async fn restore(
    ctx: &Context,
    stack: &ProductionStack,
    revisions: &[&RevisionRef],
    world: &DataWorld,
    (component, snapshot, job): (&str, &str, &str),
) -> Result<()> {
    let Some(snap) = world.snapshots.iter().find(|s| s.name_any() == snapshot) else {
        return Ok(());
    };
    let Some(spec) = revisions
        .iter()
        .find_map(|r| r.component(component).filter(|c| c.data.is_some()))
    else {
        return Ok(());
    };
    let mut digests = snap
        .status
        .as_ref()
        .map(StackSnapshotStatus::digests)
        .unwrap_or_default();
    if spec.kind != WorkloadKind::StatefulSet {
        // One shared claim: only one replica's data can go into it.
        digests.retain(|(o, _)| *o == 0);
    }
    if digests.is_empty() {
        return Ok(());
    }
    let data = spec.data.as_ref().expect("filtered on data");
    // An Exec restore runs while the component does: a ReadWriteOnce claim it needs must
    // be mounted where the component's pod is.
    let node = if data.method == DataMethod::Exec && data.volume.is_some() {
        let ns = stack.namespace().unwrap_or_default();
        component_node(&ctx.client, &ns, &stack.name_any(), component).await?
    } else {
        None
    };
    for (ordinal, digest) in &digests {
        let name = replicas::job(job, *ordinal);
        if world.jobs.iter().any(|j| j.name_any() == name) {
            continue;
        }
        start_agent(
            ctx,
            stack,
            AgentJob {
                op: AgentOp::Restore,
                name: job.to_string(),
                component: spec,
                data,
                snapshot_object: snapshot,
                digest: Some(digest.clone()),
                revision: snap.status.as_ref().and_then(|s| s.revision),
                node: node.clone(),
                forget: vec![],
                ordinal: *ordinal,
                group_size: digests.len(),
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: serde_json::Value, main: serde_json::Value) -> PodStatus {
        serde_json::from_value(json!({
            "initContainerStatuses": init,
            "containerStatuses": main,
        }))
        .unwrap()
    }

    fn status(name: &str, exit: i32, message: Option<&str>) -> serde_json::Value {
        json!({
            "name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit, "message": message}},
        })
    }

    fn agent_line(ok: bool, message: Option<&str>, category: Option<&str>) -> String {
        let mut r = AgentResult::new(AgentOp::Snapshot, ok, 1.0);
        r.digest = ok.then(|| "ab".repeat(32));
        r.message = message.map(str::to_string);
        r.category = category.map(str::to_string);
        r.to_json_line()
    }

    #[test]
    fn a_failed_dump_command_fails_the_job_with_its_output() {
        let p = pod(
            json!([status("dump", 3, Some("pg_dump: connection refused"))]),
            json!([{"name": "agent", "image": "x", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]),
        );
        match outcome("j", false, Some("BackoffLimitExceeded".into()), &[&p]) {
            Finished::Failed(m, Failure::Other) => {
                assert_eq!(
                    m,
                    "the dump command (container dump of Job j) exited with code 3: pg_dump: connection refused"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exec_restore_reads_the_agent_in_its_init_container() {
        let ok = agent_line(true, None, None);
        let p = pod(
            json!([status("agent", 0, Some(&ok))]),
            json!([status("restore", 0, None)]),
        );
        assert!(matches!(outcome("j", true, None, &[&p]), Finished::Ok(r) if r.digest.is_some()));

        // The restore command failed after the agent verified the snapshot.
        let p = pod(
            json!([status("agent", 0, Some(&ok))]),
            json!([status("restore", 1, None)]),
        );
        match outcome("j", false, None, &[&p]) {
            Finished::Failed(m, Failure::Other) => {
                assert!(m.starts_with("the restore command"), "{m}");
                assert!(m.ends_with("exited with code 1 with no output"), "{m}");
            }
            other => panic!("{other:?}"),
        }

        // A corrupt snapshot: the agent refused, the restore command never ran.
        let corrupt = agent_line(
            false,
            Some("restore refused: chunk corrupt"),
            Some("chunk_corrupt"),
        );
        let p = pod(json!([status("agent", 1, Some(&corrupt))]), json!([]));
        match outcome("j", false, None, &[&p]) {
            Finished::Failed(m, Failure::Corrupt) => assert!(m.contains("chunk corrupt"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_agent_jobs_read_as_before() {
        let line = agent_line(false, Some("store down"), Some("store_unreachable"));
        let p = pod(json!([]), json!([status("agent", 1, Some(&line))]));
        assert!(matches!(
            outcome("j", false, None, &[&p]),
            Finished::Failed(_, Failure::Store)
        ));
        assert!(matches!(
            outcome("j", false, Some("DeadlineExceeded".into()), &[]),
            Finished::Failed(m, Failure::Other) if m == "Job j failed: DeadlineExceeded"
        ));
    }
}
