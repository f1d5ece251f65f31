//! Builds the Job that runs the agent: a pure function of a [`JobRequest`], so every
//! mount, flag and security setting is checked by unit tests without a cluster.

use std::collections::BTreeMap;

use deployctl_api::{ComponentData, DataMethod, SecretKeyRef};
use deployctl_snapshot::store::{ACCESS_KEY_ENV, SECRET_KEY_ENV};
use deployctl_snapshot::StoreSpec;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
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
    /// For Prune: the digests to keep (the others taken before `forget_before` go).
    pub keep: Vec<String>,
    /// For Prune with `keep`: the time the decision was made.
    pub forget_before: Option<String>,
    /// Kill the Job after this long.
    pub active_deadline_seconds: Option<i64>,
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
    if req.op.uses_data() {
        flag("data", data_dir(req.data));
        let method = match req.data.method {
            DataMethod::Files => "files",
            DataMethod::Sqlite => "sqlite",
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
            for k in &req.keep {
                flag("keep", k.clone());
            }
            if let Some(t) = &req.forget_before {
                flag("forget-before", t.clone());
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

/// Root, so files of any owner can be read and restored with their owners, but with
/// only the capabilities that takes and nothing else writable.
fn security_context() -> SecurityContext {
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
fn resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("100m")),
            ("memory".to_string(), q("128Mi")),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), q("1Gi"))])),
        ..Default::default()
    }
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
    if let (true, Some(claim)) = (req.op.uses_data(), &req.data_claim) {
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
        resources: Some(resources()),
        security_context: Some(security_context()),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        ..Default::default()
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
                    containers: vec![container],
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
            data_claim: op.uses_data().then(|| "data-shop-db-0".into()),
            store: StoreLocation::Filesystem {
                claim: "shop-snapshots".into(),
            },
            encryption: None,
            snapshot: matches!(op, AgentOp::Restore | AgentOp::Verify).then(|| "ab".repeat(32)),
            node_name: None,
            keep_last: Some(5),
            keep_daily: Some(7),
            keep: vec![],
            forget_before: None,
            active_deadline_seconds: Some(600),
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
}
