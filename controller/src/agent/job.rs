//! Builds the Job that runs the agent: a pure function of a [`JobRequest`], so every
//! mount, flag and security setting is checked by unit tests without a cluster.

use std::collections::BTreeMap;

use deployctl_api::{Component, ComponentData, DataMethod, SecretKeyRef};
use deployctl_snapshot::store::{ACCESS_KEY_ENV, SECRET_KEY_ENV};
use deployctl_snapshot::StoreSpec;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};

/// Where the component's data claim is mounted in the agent's pod.
pub const DATA_MOUNT: &str = "/data";
/// Where a filesystem store's claim is mounted.
pub const STORE_MOUNT: &str = "/store";
/// Where the encryption key Secret is mounted.
pub const KEY_DIR: &str = "/var/run/deployctl/key";
/// Where the agent writes its result (the kubelet's default termination message path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Name of the agent's container.
pub const CONTAINER: &str = "agent";
/// Name of the container running an `Exec` dump command (an init container, before the
/// agent).
pub const DUMP_CONTAINER: &str = "dump";
/// Name of the container running an `Exec` restore command (after the agent, an init
/// container, has verified the snapshot).
pub const RESTORE_CONTAINER: &str = "restore";
/// Where an `Exec` Job's containers exchange the stream (an emptyDir).
pub const STREAM_DIR: &str = "/deployctl-stream";
/// The stream file in [`STREAM_DIR`].
pub const STREAM_FILE: &str = "/deployctl-stream/dump";
/// Name of the stream's emptyDir volume; the component's volumes are renamed `app-<n>`,
/// so none can collide with it or with the agent's own volumes.
const STREAM_VOLUME: &str = "deployctl-stream";
/// Finished Jobs are deleted a day later: long enough to read their logs after a failure.
pub const TTL_AFTER_FINISHED_SECONDS: i32 = 86_400;

/// The Secret keys holding S3 credentials (documented on `S3Store.credentialsSecret`).
const ACCESS_KEY_SECRET_KEY: &str = "accessKeyId";
const SECRET_KEY_SECRET_KEY: &str = "secretAccessKey";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What an agent run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AgentOp {
    /// Take a snapshot of the live data.
    Snapshot,
    /// Replace the live data with a snapshot, verified before anything is touched.
    Restore,
    /// Re-read and re-hash every chunk of a snapshot.
    Verify,
    /// Forget snapshots a retention policy does not keep, then delete unreferenced chunks.
    Prune,
}

impl AgentOp {
    /// The subcommand word, also used in Job names and results.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentOp::Snapshot => "snapshot",
            AgentOp::Restore => "restore",
            AgentOp::Verify => "verify",
            AgentOp::Prune => "prune",
        }
    }

    /// Whether the operation reads or writes the component's live data.
    pub fn uses_data(self) -> bool {
        matches!(self, AgentOp::Snapshot | AgentOp::Restore)
    }
}

impl std::fmt::Display for AgentOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the repository is, as the Job sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A repository on a PersistentVolumeClaim, mounted at [`STORE_MOUNT`].
    Filesystem {
        /// The claim.
        claim: String,
    },
    /// A repository in an S3-compatible bucket.
    S3 {
        /// Endpoint URL.
        endpoint: String,
        /// Bucket.
        bucket: String,
        /// Signing region.
        region: String,
        /// Key prefix of the repository.
        prefix: String,
        /// Secret with the keys `accessKeyId` and `secretAccessKey`.
        credentials_secret: String,
    },
}

impl StoreLocation {
    /// The engine's store spec as seen from inside the agent's pod.
    pub fn spec(&self) -> StoreSpec {
        match self {
            StoreLocation::Filesystem { .. } => StoreSpec::Filesystem {
                path: STORE_MOUNT.into(),
            },
            StoreLocation::S3 {
                endpoint,
                bucket,
                region,
                prefix,
                ..
            } => StoreSpec::S3 {
                endpoint: endpoint.clone(),
                bucket: bucket.clone(),
                region: region.clone(),
                prefix: prefix.clone(),
            },
        }
    }

    /// Where the repository is, for people and `StackSnapshot.status.store`:
    /// `pvc://<claim>` or `s3://<bucket>/<prefix>`.
    pub fn uri(&self) -> String {
        match self {
            StoreLocation::Filesystem { claim } => format!("pvc://{claim}"),
            StoreLocation::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// Everything the agent's Job depends on.
#[derive(Debug, Clone)]
pub struct JobRequest<'a> {
    /// Name of the Job.
    pub name: String,
    /// Namespace of the Job (the stack's).
    pub namespace: String,
    /// The ProductionStack, so the Job goes with it.
    pub owner: OwnerReference,
    /// Labels of the Job and its pod template.
    pub labels: BTreeMap<String, String>,
    /// What the agent does.
    pub op: AgentOp,
    /// The controller's image (its entrypoint is `deployctl-controller`).
    pub image: String,
    /// The stack, recorded in snapshots and checked on restore.
    pub stack: String,
    /// The component, recorded in snapshots and checked on restore.
    pub component: String,
    /// The stack revision the data belongs to (snapshot).
    pub revision: Option<i64>,
    /// The component's data declaration.
    pub data: &'a ComponentData,
    /// The component itself, for `Exec` snapshots and restores: the commands run in one of
    /// its containers' image, env and mounts. `None` for the other methods.
    pub workload: Option<&'a Component>,
    /// The component's PersistentVolumeClaim; required for Snapshot and Restore, `None`
    /// for Verify and Prune.
    pub data_claim: Option<String>,
    /// Where the repository is.
    pub store: StoreLocation,
    /// The encryption key, when the repository is encrypted.
    pub encryption: Option<SecretKeyRef>,
    /// The snapshot's digest, for Restore and Verify.
    pub snapshot: Option<String>,
    /// The node of the component's pod: the agent is pinned next to it, so a
    /// ReadWriteOnce volume can be mounted.
    pub node_name: Option<String>,
    /// Prune: keep the newest N snapshots.
    pub keep_last: Option<u32>,
    /// Prune: keep the newest snapshot of each of the last D days.
    pub keep_daily: Option<u32>,
    /// For Prune: exactly the digests to forget (the controller's decision).
    pub forget: Vec<String>,
    /// Kill the Job after this long.
    pub active_deadline_seconds: Option<i64>,
    /// Whom the agent runs as ([`agent_identity`]); `None`: root.
    pub identity: Option<AgentIdentity>,
    /// The agent container's CPU and memory.
    pub resources: ResourceRequirements,
}

/// The user a component's data belongs to, which the agent then runs as: the component's
/// own non-root user, group and `fsGroup`. The agent reads and writes the files as the
/// component does and passes the `restricted` Pod Security level wherever the component
/// does; files are restored owned by that user (which is who wrote them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentIdentity {
    pub uid: i64,
    pub gid: Option<i64>,
    pub fs_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
}

/// The non-root identity of `component`'s container that mounts the data's volume (else
/// its first container): `runAsUser` and `runAsGroup` of the container over the pod's, and
/// the pod's `fsGroup` and `supplementalGroups`. `None` when it runs as root or its user
/// is only the image's (`runAsNonRoot` without `runAsUser`): the agent then runs as root
/// with `CHOWN`, `DAC_OVERRIDE` and `FOWNER`, which the `baseline` level allows and
/// `restricted` refuses.
pub fn agent_identity(component: &Component, data: &ComponentData) -> Option<AgentIdentity> {
    let pod = component.template.spec.as_ref()?;
    let container = pod
        .containers
        .iter()
        .find(|c| {
            data.volume
                .as_deref()
                .is_some_and(|v| c.volume_mounts.iter().flatten().any(|m| m.name == v))
        })
        .or_else(|| pod.containers.first());
    let psc = pod.security_context.as_ref();
    let csc = container.and_then(|c| c.security_context.as_ref());
    let uid = csc
        .and_then(|c| c.run_as_user)
        .or(psc.and_then(|p| p.run_as_user))
        .filter(|u| *u != 0)?;
    Some(AgentIdentity {
        uid,
        gid: csc
            .and_then(|c| c.run_as_group)
            .or(psc.and_then(|p| p.run_as_group)),
        fs_group: psc.and_then(|p| p.fs_group),
        supplemental_groups: psc
            .and_then(|p| p.supplemental_groups.clone())
            .unwrap_or_default(),
    })
}

/// The `--data` directory: the claim's mount, or the `path` inside it.
fn data_dir(data: &ComponentData) -> String {
    match data.path.as_deref().map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{DATA_MOUNT}/{p}"),
        _ => DATA_MOUNT.to_string(),
    }
}

/// The file the agent reads the key from: the Secret's key, projected alone.
fn key_file_name(key: &SecretKeyRef) -> String {
    key.key.clone().unwrap_or_else(|| "key".into())
}

/// `agent <op> <flags>`: only the flags the operation reads.
pub fn agent_args(req: &JobRequest) -> Vec<String> {
    let mut args = vec!["agent".to_string(), req.op.as_str().to_string()];
    let mut flag = |name: &str, value: String| {
        args.push(format!("--{name}"));
        args.push(value);
    };
    flag(
        "store",
        serde_json::to_string(&req.store.spec()).expect("a store spec serializes"),
    );
    if let Some(key) = &req.encryption {
        flag("key-file", format!("{KEY_DIR}/{}", key_file_name(key)));
    }
    // Stack and component on every operation: a snapshot records them, the others refuse
    // a snapshot (or prune no snapshot) of another component.
    flag("stack", req.stack.clone());
    flag("component", req.component.clone());
    if req.op.uses_data() && req.data.method == DataMethod::Exec {
        flag("method", "exec".into());
        flag("stream", STREAM_FILE.into());
    } else if req.op.uses_data() {
        flag("data", data_dir(req.data));
        let method = match req.data.method {
            DataMethod::Files => "files",
            DataMethod::Sqlite => "sqlite",
            DataMethod::Exec => unreachable!("handled above"),
        };
        flag("method", method.into());
        if req.data.method == DataMethod::Sqlite {
            if let Some(db) = &req.data.database {
                flag("database", db.clone());
            }
        }
    }
    match req.op {
        AgentOp::Snapshot => {
            if let Some(r) = req.revision {
                flag("revision", r.to_string());
            }
        }
        AgentOp::Restore | AgentOp::Verify => {
            if let Some(s) = &req.snapshot {
                flag("snapshot", s.clone());
            }
        }
        AgentOp::Prune => {
            if let Some(n) = req.keep_last {
                flag("keep-last", n.to_string());
            }
            if let Some(d) = req.keep_daily {
                flag("keep-daily", d.to_string());
            }
            for d in &req.forget {
                flag("forget", d.clone());
            }
        }
    }
    args
}

fn claim_volume(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// As the component's own user when it has one (no capability at all: what `restricted`
/// asks), else root, so files of any owner can be read and restored with their owners,
/// with only the capabilities that takes. Nothing else writable either way.
fn security_context(identity: Option<&AgentIdentity>) -> SecurityContext {
    if let Some(id) = identity {
        return SecurityContext {
            run_as_user: Some(id.uid),
            run_as_group: id.gid,
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        };
    }
    SecurityContext {
        run_as_user: Some(0),
        run_as_group: Some(0),
        run_as_non_root: Some(false),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(vec!["CHOWN".into(), "DAC_OVERRIDE".into(), "FOWNER".into()]),
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// A required affinity rather than `spec.nodeName`: the scheduler still runs, so volume
/// topology and node pressure are checked and an unschedulable pod says why.
fn node_affinity(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: HOSTNAME_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    match_fields: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Requests small enough to schedule next to a busy component; memory is bounded by the
/// engine's pipeline (a few chunks of at most 4 MiB per thread). No CPU limit: throttling
/// would only stretch the window the component is stopped for.
/// `/bin/sh -c 'exec "$@" <redirection>' sh <argv...>`: the argv is run as given (no
/// shell parses it), with only the stream redirected.
fn shell_wrapped(redirection: &str, argv: &[String]) -> Vec<String> {
    let mut command = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("exec \"$@\" {redirection}"),
        "sh".to_string(),
    ];
    command.extend(argv.iter().cloned());
    command
}

/// The container running an `Exec` command as the component's container `source` runs:
/// same image, env, envFrom, working directory, securityContext and resources, and the
/// mounts of `mounts` (already renamed), plus the stream.
fn command_container(
    name: &str,
    source: &Container,
    command: Vec<String>,
    mut mounts: Vec<VolumeMount>,
) -> Container {
    mounts.push(mount(STREAM_VOLUME, STREAM_DIR, false));
    Container {
        name: name.into(),
        image: source.image.clone(),
        image_pull_policy: source.image_pull_policy.clone(),
        command: Some(command),
        env: source.env.clone(),
        env_from: source.env_from.clone(),
        working_dir: source.working_dir.clone(),
        volume_mounts: Some(mounts),
        security_context: source.security_context.clone(),
        resources: source.resources.clone(),
        // A failing command's last output lines become its termination message, which
        // is how its error reaches the StackSnapshot or the rollback's status.
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The component's container the `Exec` commands run as, with the volumes its mounts
/// need, renamed `app-<n>`: the pod template's own volumes as written, and of the
/// claims only the data's (`data.volume`), as `claim`. Mounts of other claims are left
/// out: they may be ReadWriteOnce volumes held elsewhere.
fn exec_source(
    component: &Component,
    data: &ComponentData,
    claim: Option<&str>,
) -> Option<(Container, Vec<VolumeMount>, Vec<Volume>)> {
    let pod = component.template.spec.as_ref()?;
    let exec = data.exec.as_ref()?;
    let source = match &exec.container {
        Some(name) => pod.containers.iter().find(|c| &c.name == name)?,
        None => pod.containers.first()?,
    };
    let template_volumes = pod.volumes.as_deref().unwrap_or_default();
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for m in source.volume_mounts.iter().flatten() {
        let volume = if let Some(v) = template_volumes.iter().find(|v| v.name == m.name) {
            Some(v.clone())
        } else if data.volume.as_deref() == Some(m.name.as_str()) {
            claim.map(|claim| claim_volume(&m.name, claim))
        } else {
            None
        };
        let Some(mut volume) = volume else { continue };
        let next = format!("app-{}", renamed.len());
        let name = renamed.entry(m.name.clone()).or_insert_with(|| {
            volume.name = next.clone();
            volumes.push(volume);
            next
        });
        mounts.push(VolumeMount {
            name: name.clone(),
            ..m.clone()
        });
    }
    Some((source.clone(), mounts, volumes))
}

/// The agent's Job for `req`.
pub fn build(req: &JobRequest) -> Job {
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    let mut mounts = vec![mount("tmp", "/tmp", false)];
    let mut env = Vec::new();
    let exec = (req.op.uses_data() && req.data.method == DataMethod::Exec)
        .then(|| {
            req.workload
                .and_then(|w| exec_source(w, req.data, req.data_claim.as_deref()))
        })
        .flatten();
    if let Some((_, _, app_volumes)) = &exec {
        volumes.push(Volume {
            name: STREAM_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(mount(STREAM_VOLUME, STREAM_DIR, false));
        volumes.extend(app_volumes.iter().cloned());
    } else if let (true, Some(claim)) = (req.op.uses_data(), &req.data_claim) {
        // Read-write even for a snapshot: the sqlite method writes its consistent copy
        // beside the database, and an interrupted restore is rolled back first.
        volumes.push(claim_volume("data", claim));
        mounts.push(mount("data", DATA_MOUNT, false));
    }
    match &req.store {
        StoreLocation::Filesystem { claim } => {
            volumes.push(claim_volume("store", claim));
            mounts.push(mount("store", STORE_MOUNT, false));
        }
        StoreLocation::S3 {
            credentials_secret, ..
        } => {
            // References only: the credentials never appear in the Job object.
            env.push(secret_env(
                ACCESS_KEY_ENV,
                credentials_secret,
                ACCESS_KEY_SECRET_KEY,
            ));
            env.push(secret_env(
                SECRET_KEY_ENV,
                credentials_secret,
                SECRET_KEY_SECRET_KEY,
            ));
        }
    }
    if let Some(key) = &req.encryption {
        let file = key_file_name(key);
        volumes.push(Volume {
            name: "key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(key.name.clone()),
                // Only the one key: other keys of the Secret stay out of the pod.
                items: Some(vec![KeyToPath {
                    key: file.clone(),
                    path: file,
                    mode: None,
                }]),
                default_mode: Some(0o400),
                optional: Some(false),
            }),
            ..Default::default()
        });
        mounts.push(mount("key", KEY_DIR, true));
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(req.image.clone()),
        args: Some(agent_args(req)),
        env: (!env.is_empty()).then_some(env),
        volume_mounts: Some(mounts),
        resources: Some(req.resources.clone()),
        security_context: Some(security_context(req.identity.as_ref())),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
    };
    // Exec: the dump runs before the agent reads its output; the agent verifies the
    // snapshot before the restore command may read it. Each step is a container that must
    // succeed before the next starts, so a failed dump or a corrupt snapshot ends the pod
    // there.
    // The component's fsGroup, so the agent can write the claim as the component can.
    let mut pod_security_context = req.identity.as_ref().map(|id| PodSecurityContext {
        fs_group: id.fs_group,
        supplemental_groups: (!id.supplemental_groups.is_empty())
            .then(|| id.supplemental_groups.clone()),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    });
    let mut image_pull_secrets = None;
    let (init_containers, containers) = match exec {
        None => (None, vec![container]),
        Some((source, app_mounts, _)) => {
            let argv = req.data.exec.as_ref().expect("exec_source found exec");
            if let Some(pod) = req.workload.and_then(|w| w.template.spec.as_ref()) {
                pod_security_context = pod.security_context.clone();
                image_pull_secrets = pod.image_pull_secrets.clone();
            }
            if req.op == AgentOp::Snapshot {
                let dump = command_container(
                    DUMP_CONTAINER,
                    &source,
                    shell_wrapped(&format!("> {STREAM_FILE}"), &argv.dump),
                    app_mounts,
                );
                (Some(vec![dump]), vec![container])
            } else {
                let restore = command_container(
                    RESTORE_CONTAINER,
                    &source,
                    shell_wrapped(&format!("< {STREAM_FILE}"), &argv.restore),
                    app_mounts,
                );
                (Some(vec![container]), vec![restore])
            }
        }
    };
    let labels = (!req.labels.is_empty()).then(|| req.labels.clone());
    Job {
        metadata: ObjectMeta {
            name: Some(req.name.clone()),
            namespace: Some(req.namespace.clone()),
            labels: labels.clone(),
            owner_references: Some(vec![req.owner.clone()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // One attempt: a retry is the controller's decision (a restore must not be
            // re-run behind its back), and the result of the one pod is the result.
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED_SECONDS),
            active_deadline_seconds: req.active_deadline_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // The agent calls no API: its result goes back in the termination
                    // message, so the pod gets no token to lose.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    affinity: req.node_name.as_deref().map(node_affinity),
                    init_containers,
                    containers,
                    security_context: pod_security_context,
                    image_pull_secrets,
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "deployctl.dev/v1alpha1".into(),
            kind: "ProductionStack".into(),
            name: "shop".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn files_data() -> ComponentData {
        serde_yaml_ng::from_str("{volume: data, path: /pg/}").unwrap()
    }

    fn sqlite_data() -> ComponentData {
        serde_yaml_ng::from_str("{volume: data, method: Sqlite, database: app.db}").unwrap()
    }

    fn request(op: AgentOp, data: &ComponentData) -> JobRequest<'_> {
        JobRequest {
            name: format!("shop-db-{op}-1"),
            namespace: "prod".into(),
            owner: owner(),
            labels: BTreeMap::from([("deployctl.dev/stack".into(), "shop".into())]),
            op,
            image: "example/deployctl:1".into(),
            stack: "shop".into(),
            component: "db".into(),
            revision: Some(7),
            data,
            workload: None,
            data_claim: op.uses_data().then(|| "data-shop-db-0".into()),
            store: StoreLocation::Filesystem {
                claim: "shop-snapshots".into(),
            },
            encryption: None,
            snapshot: matches!(op, AgentOp::Restore | AgentOp::Verify).then(|| "ab".repeat(32)),
            node_name: None,
            keep_last: Some(5),
            keep_daily: Some(7),
            forget: vec![],
            active_deadline_seconds: Some(600),
            identity: None,
            resources: serde_json::from_str(crate::context::DEFAULT_AGENT_RESOURCES).unwrap(),
        }
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn container(job: &Job) -> &Container {
        &pod(job).containers[0]
    }

    fn mounts(job: &Job) -> Vec<(String, String, bool)> {
        container(job)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.clone(),
                    m.mount_path.clone(),
                    m.read_only == Some(true),
                )
            })
            .collect()
    }

    fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == &format!("--{name}"))?;
        args.get(i + 1).map(String::as_str)
    }

    fn volume<'a>(job: &'a Job, name: &str) -> &'a Volume {
        pod(job)
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    #[test]
    fn job_shape_and_security() {
        let data = files_data();
        let job = build(&request(AgentOp::Snapshot, &data));
        assert_eq!(job.metadata.name.as_deref(), Some("shop-db-snapshot-1"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(job.metadata.owner_references, Some(vec![owner()]));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.ttl_seconds_after_finished, Some(86_400));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        assert_eq!(
            spec.template.metadata.as_ref().unwrap().labels,
            job.metadata.labels
        );
        assert!(job.metadata.labels.as_ref().unwrap()["deployctl.dev/stack"] == "shop");
        let p = pod(&job);
        assert_eq!(p.restart_policy.as_deref(), Some("Never"));
        assert_eq!(p.automount_service_account_token, Some(false));
        assert_eq!(p.enable_service_links, Some(false));
        assert!(p.affinity.is_none());
        assert!(p.node_name.is_none());
        let c = container(&job);
        assert_eq!(c.name, "agent");
        assert_eq!(c.image.as_deref(), Some("example/deployctl:1"));
        assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            caps.add,
            Some(vec![
                "CHOWN".to_string(),
                "DAC_OVERRIDE".to_string(),
                "FOWNER".to_string()
            ])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let res = c.resources.as_ref().unwrap();
        assert!(res.requests.as_ref().unwrap().contains_key("cpu"));
        assert!(!res.limits.as_ref().unwrap().contains_key("cpu"));
    }

    #[test]
    fn snapshot_mounts_data_store_and_tmp() {
        let data = files_data();
        let job = build(&request(AgentOp::Snapshot, &data));
        assert_eq!(
            mounts(&job),
            vec![
                ("tmp".into(), "/tmp".into(), false),
                ("data".into(), "/data".into(), false),
                ("store".into(), "/store".into(), false),
            ]
        );
        let claim = |v: &Volume| {
            v.persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name
                .clone()
        };
        assert_eq!(claim(volume(&job, "data")), "data-shop-db-0");
        assert_eq!(claim(volume(&job, "store")), "shop-snapshots");
        assert!(volume(&job, "tmp").empty_dir.is_some());
        assert!(container(&job).env.is_none());
    }

    #[test]
    fn args_per_operation() {
        let files = files_data();
        let sqlite = sqlite_data();
        let store = r#"{"type":"filesystem","path":"/store"}"#;

        let args = agent_args(&request(AgentOp::Snapshot, &files));
        assert_eq!(&args[..2], ["agent", "snapshot"]);
        assert_eq!(flag(&args, "store"), Some(store));
        assert_eq!(flag(&args, "data"), Some("/data/pg"));
        assert_eq!(flag(&args, "method"), Some("files"));
        assert_eq!(flag(&args, "stack"), Some("shop"));
        assert_eq!(flag(&args, "component"), Some("db"));
        assert_eq!(flag(&args, "revision"), Some("7"));
        for absent in [
            "database",
            "snapshot",
            "keep-last",
            "keep-daily",
            "key-file",
        ] {
            assert_eq!(flag(&args, absent), None, "{absent} in {args:?}");
        }

        let args = agent_args(&request(AgentOp::Restore, &sqlite));
        assert_eq!(&args[..2], ["agent", "restore"]);
        assert_eq!(flag(&args, "data"), Some("/data"));
        assert_eq!(flag(&args, "method"), Some("sqlite"));
        assert_eq!(flag(&args, "database"), Some("app.db"));
        assert_eq!(flag(&args, "snapshot"), Some("ab".repeat(32).as_str()));
        assert_eq!(flag(&args, "revision"), None);

        let job = build(&request(AgentOp::Verify, &files));
        let args = container(&job).args.clone().unwrap();
        assert_eq!(&args[..2], ["agent", "verify"]);
        assert_eq!(flag(&args, "snapshot"), Some("ab".repeat(32).as_str()));
        assert_eq!(flag(&args, "data"), None);
        assert_eq!(flag(&args, "method"), None);
        assert!(
            !mounts(&job).iter().any(|m| m.0 == "data"),
            "verify needs no data volume"
        );

        let args = agent_args(&request(AgentOp::Prune, &files));
        assert_eq!(&args[..2], ["agent", "prune"]);
        assert_eq!(flag(&args, "keep-last"), Some("5"));
        assert_eq!(flag(&args, "keep-daily"), Some("7"));
        assert_eq!(flag(&args, "snapshot"), None);
        assert_eq!(flag(&args, "data"), None);
    }

    #[test]
    fn s3_credentials_come_from_secret_refs_only() {
        let data = files_data();
        let mut req = request(AgentOp::Snapshot, &data);
        req.store = StoreLocation::S3 {
            endpoint: "http://garage:3900".into(),
            bucket: "snaps".into(),
            region: "garage".into(),
            prefix: "prod/shop/".into(),
            credentials_secret: "s3-creds".into(),
        };
        let job = build(&req);
        let env = container(&job).env.clone().unwrap();
        let refs: Vec<_> = env
            .iter()
            .map(|e| {
                assert!(e.value.is_none(), "inline value in {e:?}");
                let r = e
                    .value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap();
                (e.name.as_str(), r.name.as_str(), r.key.as_str())
            })
            .collect();
        assert_eq!(
            refs,
            vec![
                ("DEPLOYCTL_S3_ACCESS_KEY_ID", "s3-creds", "accessKeyId"),
                (
                    "DEPLOYCTL_S3_SECRET_ACCESS_KEY",
                    "s3-creds",
                    "secretAccessKey"
                ),
            ]
        );
        assert!(!mounts(&job).iter().any(|m| m.0 == "store"));
        let args = container(&job).args.clone().unwrap();
        let spec: StoreSpec = serde_json::from_str(flag(&args, "store").unwrap()).unwrap();
        assert_eq!(spec, req.store.spec());
        assert_eq!(req.store.uri(), "s3://snaps/prod/shop/");
        // Nothing secret anywhere in the object: only the Secret's name.
        let text = serde_json::to_string(&job).unwrap();
        assert!(!text.contains("secretAccessKey\":\""), "{text}");
    }

    #[test]
    fn encryption_key_is_mounted_read_only_and_passed_as_a_file() {
        let data = files_data();
        let mut req = request(AgentOp::Restore, &data);
        req.encryption = Some(SecretKeyRef {
            name: "snap-key".into(),
            key: Some("master".into()),
        });
        let job = build(&req);
        let args = container(&job).args.clone().unwrap();
        assert_eq!(
            flag(&args, "key-file"),
            Some("/var/run/deployctl/key/master")
        );
        assert!(mounts(&job).contains(&("key".into(), "/var/run/deployctl/key".into(), true)));
        let secret = volume(&job, "key").secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("snap-key"));
        let items = secret.items.as_ref().unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("master", "master")
        );
        assert_eq!(secret.default_mode, Some(0o400));

        req.encryption = Some(SecretKeyRef {
            name: "snap-key".into(),
            key: None,
        });
        let args = agent_args(&req);
        assert_eq!(flag(&args, "key-file"), Some("/var/run/deployctl/key/key"));
    }

    fn exec_component() -> Component {
        serde_yaml_ng::from_str(
            "name: db
kind: StatefulSet
template:
  spec:
    securityContext: {fsGroup: 1000}
    imagePullSecrets: [{name: regcred}]
    volumes: [{name: config, configMap: {name: db-config}}, {name: tmp, emptyDir: {}}]
    containers:
    - {name: sidecar, image: 'example/proxy:1'}
    - name: app
      image: 'example/db:3'
      env: [{name: DATA_DIR, value: /var/lib/db}]
      envFrom: [{secretRef: {name: db-creds}}]
      securityContext: {runAsUser: 999}
      volumeMounts:
      - {name: data, mountPath: /var/lib/db}
      - {name: config, mountPath: /etc/db, readOnly: true}
      - {name: tmp, mountPath: /tmp}
      - {name: other, mountPath: /other}
volumeClaims: [{name: data, size: 1Gi}, {name: other, size: 1Gi}]
data: {volume: data, method: Exec, exec: {container: app, dump: [db, dump, --all], restore: [db, load]}}
",
        )
        .unwrap()
    }

    #[test]
    fn exec_snapshot_dumps_in_the_component_image_before_the_agent() {
        let component = exec_component();
        let data = component.data.clone().unwrap();
        let mut req = request(AgentOp::Snapshot, &data);
        req.workload = Some(&component);
        let job = build(&req);
        let p = pod(&job);
        let init = p.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        let dump = &init[0];
        assert_eq!(dump.name, "dump");
        assert_eq!(dump.image.as_deref(), Some("example/db:3"));
        assert_eq!(
            dump.command.clone().unwrap(),
            [
                "/bin/sh",
                "-c",
                "exec \"$@\" > /deployctl-stream/dump",
                "sh",
                "db",
                "dump",
                "--all"
            ]
        );
        assert!(dump.args.is_none());
        assert_eq!(
            dump.env,
            component.template.spec.as_ref().unwrap().containers[1].env
        );
        assert_eq!(dump.env_from.as_ref().unwrap().len(), 1);
        assert_eq!(
            dump.security_context.as_ref().unwrap().run_as_user,
            Some(999)
        );
        assert_eq!(
            dump.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        // The component's volumes, renamed; the data claim as the first replica's claim;
        // the other claim left out.
        let dmounts: Vec<_> = dump
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            dmounts,
            [
                ("app-0", "/var/lib/db", None),
                ("app-1", "/etc/db", Some(true)),
                ("app-2", "/tmp", None),
                ("deployctl-stream", "/deployctl-stream", None),
            ]
        );
        let claim = volume(&job, "app-0")
            .persistent_volume_claim
            .as_ref()
            .unwrap();
        assert_eq!(claim.claim_name, "data-shop-db-0");
        assert_eq!(
            volume(&job, "app-1").config_map.as_ref().unwrap().name,
            "db-config"
        );
        assert!(volume(&job, "deployctl-stream").empty_dir.is_some());
        assert!(!pod(&job)
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name == "data" || v.name == "other"));
        assert_eq!(p.security_context.as_ref().unwrap().fs_group, Some(1000));
        assert_eq!(p.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");

        // The agent snapshots the stream file; it does not mount the data.
        let agent = container(&job);
        assert_eq!(agent.name, "agent");
        let args = agent.args.clone().unwrap();
        assert_eq!(flag(&args, "method"), Some("exec"));
        assert_eq!(flag(&args, "stream"), Some("/deployctl-stream/dump"));
        assert_eq!(flag(&args, "data"), None);
        assert_eq!(
            mounts(&job),
            vec![
                ("tmp".into(), "/tmp".into(), false),
                ("deployctl-stream".into(), "/deployctl-stream".into(), false),
                ("store".into(), "/store".into(), false),
            ]
        );
        assert_eq!(
            agent.security_context.as_ref().unwrap().run_as_user,
            Some(0)
        );
    }

    #[test]
    fn exec_restore_runs_the_command_only_after_the_agent_verified() {
        let component = exec_component();
        let data = component.data.clone().unwrap();
        let mut req = request(AgentOp::Restore, &data);
        req.workload = Some(&component);
        let job = build(&req);
        let p = pod(&job);
        let init = p.init_containers.as_ref().unwrap();
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].name, "agent");
        let args = init[0].args.clone().unwrap();
        assert_eq!(&args[..2], ["agent", "restore"]);
        assert_eq!(flag(&args, "stream"), Some("/deployctl-stream/dump"));
        assert_eq!(p.containers.len(), 1);
        let restore = &p.containers[0];
        assert_eq!(restore.name, "restore");
        assert_eq!(
            restore.command.clone().unwrap(),
            [
                "/bin/sh",
                "-c",
                "exec \"$@\" < /deployctl-stream/dump",
                "sh",
                "db",
                "load"
            ]
        );

        // Without a volume, no claim is mounted; the first container is the default.
        let mut component = exec_component();
        let d = component.data.as_mut().unwrap();
        d.volume = None;
        d.exec.as_mut().unwrap().container = None;
        let data = component.data.clone().unwrap();
        let mut req = request(AgentOp::Restore, &data);
        req.data_claim = None;
        req.workload = Some(&component);
        let job = build(&req);
        let restore = &pod(&job).containers[0];
        assert_eq!(restore.image.as_deref(), Some("example/proxy:1"));
        assert!(!pod(&job).volumes.iter().flatten().any(|v| v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name.starts_with("data"))));

        // Verify and prune of an Exec component are plain agent Jobs.
        let data = exec_component().data.unwrap();
        let job = build(&request(AgentOp::Verify, &data));
        assert!(pod(&job).init_containers.is_none());
        assert_eq!(flag(&container(&job).args.clone().unwrap(), "method"), None);
    }

    #[test]
    fn pinned_to_the_component_node_by_required_affinity() {
        let data = files_data();
        let mut req = request(AgentOp::Restore, &data);
        req.node_name = Some("node-3".into());
        let job = build(&req);
        let p = pod(&job);
        assert!(p.node_name.is_none(), "nodeName would bypass the scheduler");
        let terms = &p
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(expr.key, "kubernetes.io/hostname");
        assert_eq!(expr.operator, "In");
        assert_eq!(expr.values, Some(vec!["node-3".to_string()]));
    }

    #[test]
    fn the_agent_runs_as_the_components_non_root_user_and_passes_restricted() {
        let component: Component = serde_yaml_ng::from_str(
            "{name: db, template: {spec: {securityContext: {runAsUser: 1000, fsGroup: 2000, runAsNonRoot: true},
              containers: [{name: side, image: x, securityContext: {runAsUser: 7}},
                           {name: app, image: x, securityContext: {runAsGroup: 3000}, volumeMounts: [{name: data, mountPath: /d}]}]}},
              volumeClaims: [{name: data, size: 1Gi}], data: {volume: data}}",
        )
        .unwrap();
        let data = component.data.clone().unwrap();
        let id = agent_identity(&component, &data).expect("a non-root user");
        assert_eq!(
            id,
            AgentIdentity {
                uid: 1000,
                gid: Some(3000),
                fs_group: Some(2000),
                supplemental_groups: vec![],
            },
            "the container that mounts the data, over the pod"
        );
        let mut req = request(AgentOp::Restore, &data);
        req.identity = Some(id);
        let job = build(&req);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.fs_group, Some(2000));
        assert_eq!(psc.run_as_non_root, Some(true));
        let sc = pod.containers[0].security_context.clone().unwrap();
        // What the restricted level checks: non-root, no escalation, every capability
        // dropped and none added, a seccomp profile.
        assert_eq!(
            (sc.run_as_user, sc.run_as_non_root),
            (Some(1000), Some(true))
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(caps.add, None);
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        // A root component (or one whose user only its image knows): the agent is root.
        let root: Component = serde_yaml_ng::from_str(
            "{name: db, template: {spec: {securityContext: {runAsNonRoot: true}, containers: [{name: app, image: x}]}},
              volumeClaims: [{name: data, size: 1Gi}], data: {volume: data}}",
        )
        .unwrap();
        assert_eq!(agent_identity(&root, &data), None);
    }
}
