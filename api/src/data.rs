//! The data half of a stack: which volume of a component holds its state and how a
//! consistent copy of it is taken (`Component.data`), where snapshots are kept and when
//! they are taken (`ProductionStackSpec.snapshots`), and the `StackSnapshot` kind that
//! records each snapshot (and is how a person asks for one).

use crate::gates::CelRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The rule on paths inside a volume or a bucket (`data.path`, `data.database`,
/// `s3.prefix`).
const RELATIVE_PATH: CelRule = CelRule {
    rule: "!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
    message: "must be a relative path without '..' segments: remove the leading '/' and any '..'",
};

/// The pattern of the store's byte sizes (`size`, `quota`): a Kubernetes quantity in
/// bytes, such as `10Gi` or `500M`.
const BYTES_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// Where a component keeps its state, and how deployctl copies it consistently.
///
/// deployctl snapshots it before every rollout and, when the rollout fails, restores it
/// (verified) before the component starts again on the stable revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.method != 'Sqlite' || has(self.database)",
        "message": "database is required with method Sqlite: set it to the database file, relative to path"
    },
    {
        "rule": "self.method == 'Sqlite' || !has(self.database)",
        "message": "database is only used with method Sqlite: remove it, or set method: Sqlite"
    },
    {
        "rule": "self.method == 'Files' || !has(self.consistency)",
        "message": "consistency is only used with method Files (Sqlite and Exec copies are taken live): remove it"
    },
    {
        "rule": "self.method == 'Exec' || has(self.volume)",
        "message": "volume is required with methods Files and Sqlite: set it to the volumeClaims entry that holds the data"
    },
    {
        "rule": "self.method != 'Exec' || has(self.exec)",
        "message": "exec is required with method Exec: set exec.dump and exec.restore"
    },
    {
        "rule": "self.method == 'Exec' || !has(self.exec)",
        "message": "exec is only used with method Exec: remove it, or set method: Exec"
    },
    {
        "rule": "self.method != 'Exec' || !has(self.path)",
        "message": "path is not used with method Exec (the commands run with the container's own mounts): remove it"
    }
]))]
pub struct ComponentData {
    /// Name of the entry of `volumeClaims` that holds the data. For a StatefulSet with
    /// `Files` or `Sqlite`, every replica's claim (ordinals 0 to `replicas` - 1) is
    /// snapshotted and restored, each by its own agent Job on its own node: `Files` with
    /// `Quiesce` copies them all while the whole StatefulSet is stopped (one consistent
    /// point in time); `Sqlite` and `Live` copy each replica's data consistently on its
    /// own. With `Exec` the dump is of the whole database, taken once.
    /// Required with `Files` and `Sqlite`. With `Exec` it is optional: the claim the
    /// commands need, mounted where `exec.container` mounts it (other claims are not
    /// mounted); leave it out for a database reached over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub volume: Option<String>,

    /// Directory inside the volume that holds the data, relative to the volume's root
    /// (no `..`). Defaults to the whole volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1024),
        extend("x-kubernetes-validations" = [RELATIVE_PATH])
    )]
    pub path: Option<String>,

    /// How the copy is taken: `Files` (default: the directory tree), `Sqlite` (a live,
    /// consistent copy of one SQLite database with SQLite's online backup API) or `Exec`
    /// (the output of a dump command, such as `pg_dump`, given back to a restore command).
    #[serde(default)]
    pub method: DataMethod,

    /// For `Sqlite`: the database file, relative to `path`. Required with `Sqlite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        extend("x-kubernetes-validations" = [RELATIVE_PATH])
    )]
    pub database: Option<String>,

    /// For `Files`: `Quiesce` (default) scales the component to zero while the snapshot
    /// is taken, so no writer changes the files mid-copy; `Live` copies while it runs
    /// (only for data that is safe to copy live, such as append-only files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,

    /// For `Exec`: the commands that dump and restore the data. Required with `Exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecData>,

    /// Whether a rollback brings this data back from the failed rollout's pre-rollout
    /// snapshot. `Always` (default): yes, whether or not this component's own spec
    /// changed, since another component's new version may have migrated it through its
    /// API; the component and every component that depends on it are stopped first and
    /// started again, in dependency order, once the data is back and verified. `Never`:
    /// the data stays as the failed revision left it (forward-only data: a schema the
    /// stable revision can read, or writes that must never be undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_on_rollback: Option<RestoreOnRollback>,
}

/// Whether a rollback restores a component's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RestoreOnRollback {
    /// Restore it from the failed rollout's pre-rollout snapshot.
    #[default]
    Always,
    /// Leave it as the failed revision left it.
    Never,
}

/// The commands of the `Exec` method. Each runs in its own pod, in the image of one of the
/// component's containers with that container's env, envFrom, volumeMounts and
/// securityContext, while the component keeps running (a dump must be consistent on its
/// own, as `pg_dump` is). Each is an argv run by `/bin/sh` (`exec "$@"`), so the image
/// needs `/bin/sh`; no shell parses the arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "size(self.dump) > 0",
        "message": "dump must not be empty: give the program and its arguments, e.g. [pg_dump, --format=custom, app]"
    },
    {
        "rule": "size(self.restore) > 0",
        "message": "restore must not be empty: give the program and its arguments, e.g. [pg_restore, --clean, --dbname=app]"
    }
]))]
pub struct ExecData {
    /// Program and arguments that write the data to stdout and exit 0; a non-zero exit
    /// fails the snapshot with the end of its output. The first entry is looked up in the
    /// container's `PATH`.
    #[schemars(length(max = 64), inner(length(min = 1, max = 4096)))]
    pub dump: Vec<String>,

    /// Program and arguments that read a dump on stdin and put the data back, exiting 0.
    /// It runs only once every chunk of the snapshot has been verified, while the
    /// component runs (it is not stopped for an `Exec` restore).
    #[schemars(length(max = 64), inner(length(min = 1, max = 4096)))]
    pub restore: Vec<String>,

    /// Name of the component's container whose image, env, envFrom, volumeMounts and
    /// securityContext the commands run with. Defaults to the first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,
}

impl ComponentData {
    /// Whether a restore stops the component first. An `Exec` restore command talks to
    /// the running component (`pg_restore` needs the database up), so it is not stopped.
    pub fn restore_stops(&self) -> bool {
        self.method != DataMethod::Exec
    }

    /// Whether a rollback restores this data from its pre-rollout snapshot.
    pub fn restores_on_rollback(&self) -> bool {
        self.restore_on_rollback.unwrap_or_default() == RestoreOnRollback::Always
    }

    /// Whether taking a snapshot stops the component.
    pub fn quiesces(&self) -> bool {
        self.method == DataMethod::Files
            && self.consistency.unwrap_or_default() == Consistency::Quiesce
    }
}

/// Parses a cron schedule (five fields, or six with seconds first), for validation and
/// for finding the next time it fires.
pub fn parse_schedule(s: &str) -> Result<croner::Cron, String> {
    s.parse::<croner::Cron>()
        .map_err(|e| format!("{s:?} is not a cron schedule ({e}); for example \"0 3 * * *\" is every day at 03:00 UTC"))
}

/// The first time `schedule` fires strictly after `after` (UTC).
pub fn next_run(
    schedule: &str,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    parse_schedule(schedule)
        .ok()?
        .find_next_occurrence(&after, false)
        .ok()
}

/// How a component's data is copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DataMethod {
    /// The directory tree: every file, its mode and its bytes.
    #[default]
    Files,
    /// One SQLite database, copied live with the online backup API (no downtime).
    Sqlite,
    /// The output of a dump command, restored by a restore command reading it on stdin
    /// (no downtime: neither stops the component).
    Exec,
}

impl DataMethod {
    /// The method as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            DataMethod::Files => "Files",
            DataMethod::Sqlite => "Sqlite",
            DataMethod::Exec => "Exec",
        }
    }
}

/// Whether a `Files` snapshot stops the component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Consistency {
    /// Scale the component to zero while the snapshot is taken, then back.
    #[default]
    Quiesce,
    /// Copy while the component runs.
    Live,
}

/// When snapshots of the stack's data are taken, where they are kept, and for how long.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPolicy {
    /// Snapshot every component that declares `data` before each rollout, so a failed
    /// rollout can bring the data back. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_rollout: Option<bool>,

    /// Where the snapshots are kept. Defaults to a filesystem repository on a
    /// PersistentVolumeClaim named `<stack>-snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<SnapshotStore>,

    /// Encrypt the repository at rest (AES-256-GCM) with a key from a Secret. Set it
    /// when the repository is created; a repository cannot change its encryption later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<SnapshotEncryption>,

    /// Also take snapshots on a schedule, in cron syntax (five fields, UTC), e.g.
    /// `0 3 * * *` for every day at 03:00.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 100))]
    pub schedule: Option<String>,

    /// CPU and memory of this stack's snapshot agent Jobs (requests and limits), in place
    /// of the controller's default (`--agent-resources`; the chart's `agent.resources`:
    /// 100m CPU and 128Mi requested, 1Gi memory limit). More CPU restores a large
    /// database faster (chunks are verified in parallel); a namespace's ResourceQuota
    /// may require limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,

    /// Which snapshots to keep; the others are forgotten and the chunks no kept
    /// snapshot needs are garbage-collected. Snapshots the current rollout or rollback
    /// may restore are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<SnapshotRetention>,

    /// Re-read and re-hash the latest snapshot of each component on a schedule (cron
    /// syntax, UTC): a restore drill that raises the `SnapshotsVerified=False` condition
    /// when a snapshot is damaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 100))]
    pub verify_schedule: Option<String>,
}

impl SnapshotPolicy {
    /// Whether pre-rollout snapshots are on.
    pub fn before_rollout(&self) -> bool {
        self.before_rollout.unwrap_or(true)
    }

    /// Whether retention may forget older snapshots to make room for a rollout's.
    pub fn prune_to_fit(&self) -> bool {
        self.retention
            .as_ref()
            .and_then(|r| r.prune_to_fit)
            .unwrap_or(false)
    }

    /// The store's quota in bytes, when one is set and valid (validation refuses the
    /// others).
    pub fn quota_bytes(&self) -> Option<u64> {
        self.store
            .as_ref()
            .and_then(SnapshotStore::quota)
            .and_then(|q| parse_bytes(q).ok())
    }
}

/// A snapshot repository: exactly one of `filesystem` or `s3`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.filesystem) != has(self.s3)",
    "message": "set exactly one of filesystem or s3 (or remove store for the default filesystem repository)"
}]))]
pub struct SnapshotStore {
    /// A repository on a PersistentVolumeClaim (the default). With volumes that are
    /// ReadWriteOnce, every component with data must be on the node that holds it: use
    /// a ReadWriteMany class, or S3, on clusters with more than one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStore>,

    /// A repository in an S3-compatible bucket (AWS S3, MinIO, Ceph, Garage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
}

/// A filesystem repository on a PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStore {
    /// Name of the claim. Defaults to `<stack>-snapshots`, which deployctl creates (and
    /// never deletes: the snapshots outlive the stack). An existing claim is used as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,

    /// Size of the claim deployctl creates, e.g. `10Gi`. Defaults to `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = BYTES_PATTERN))]
    pub size: Option<String>,

    /// The most this stack's repository may take on the claim, e.g. `8Gi`, when it must
    /// leave room for other files or share the claim. Optional: the claim's free space
    /// (measured by every snapshot, verify and prune) is always a limit; the room for new
    /// snapshots is the smaller of that free space and the quota less what the repository
    /// takes. A rollout whose pre-rollout snapshots do not fit does not start (`Stalled`,
    /// reason `SnapshotStoreFull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = BYTES_PATTERN))]
    pub quota: Option<String>,

    /// StorageClass of the claim deployctl creates; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// A repository in an S3-compatible bucket (path-style requests, AWS Signature V4).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://minio:9000`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub endpoint: String,

    /// Bucket name. The bucket must exist.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,

    /// Signing region. Defaults to `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Key prefix of this stack's repository. Defaults to `<namespace>/<stack>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 512),
        extend("x-kubernetes-validations" = [RELATIVE_PATH])
    )]
    pub prefix: Option<String>,

    /// Secret (in the stack's namespace) with the keys `accessKeyId` and
    /// `secretAccessKey`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,

    /// The most this stack's repository may take in the bucket, e.g. `200Gi` (bytes as
    /// stored, after compression and encryption). S3 has no free space to ask for, so
    /// without a quota deployctl cannot tell whether a snapshot fits and never holds a
    /// rollout for room. With one, a rollout whose pre-rollout snapshots would take the
    /// repository past it does not start (`Stalled`, reason `SnapshotStoreFull`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = BYTES_PATTERN))]
    pub quota: Option<String>,
}

impl SnapshotStore {
    /// The configured quota (of whichever kind is set), as written.
    pub fn quota(&self) -> Option<&str> {
        match (&self.filesystem, &self.s3) {
            (_, Some(s3)) => s3.quota.as_deref(),
            (Some(fs), None) => fs.quota.as_deref(),
            (None, None) => None,
        }
    }
}

/// `n` bytes as people read them: binary units (`512 B`, `1.5 KiB`, `340 MiB`), one
/// decimal below ten so small differences still show.
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // 9.96 would print as "10.0": switch to whole numbers where the rounding does.
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// Bytes of a Kubernetes quantity as the store's fields take it (`10Gi`, `1.5G`, `500`):
/// binary (`Ki` to `Ei`) or decimal (`k` to `E`) suffixes, rounded up to a whole byte as
/// Kubernetes does. Errors say what is wrong and what a valid value looks like.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let hint = "give bytes as a quantity such as 20Gi, 500Mi or 1T";
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u128.pow(2),
        "G" => 1000u128.pow(3),
        "T" => 1000u128.pow(4),
        "P" => 1000u128.pow(5),
        "E" => 1000u128.pow(6),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        other => return Err(format!("{s:?}: unknown suffix {other:?}; {hint}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) || fraction.len() > 9 {
        return Err(format!("{s:?} is not a quantity; {hint}"));
    }
    let too_big = || format!("{s:?} is too large (at most 8Ei); {hint}");
    let whole: u128 = whole.parse().map_err(|_| too_big())?;
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| too_big())?
    };
    let numerator = (whole * scale + fraction)
        .checked_mul(multiplier)
        .ok_or_else(too_big)?;
    let bytes = numerator.div_ceil(scale);
    u64::try_from(bytes)
        .ok()
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(too_big)
}

/// Encryption at rest of a snapshot repository.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEncryption {
    /// The Secret key (in the stack's namespace) holding the 32-byte master key, raw or
    /// as 64 hex digits. Losing it loses the snapshots.
    pub key_secret: SecretKeyRef,
}

/// A key of a Secret in the stack's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret. Defaults to `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Which snapshots to keep (a snapshot kept by any rule is kept).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRetention {
    /// Keep the newest N snapshots of each component. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub keep_last: Option<u32>,

    /// Also keep the newest snapshot of each of the last D days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub keep_daily: Option<u32>,

    /// When a rollout's pre-rollout snapshots would not fit in the store (its quota, or
    /// the claim's free space), forget older snapshots first instead of stalling: the
    /// oldest complete ones, beyond what `keepLast` and `keepDaily` keep if need be,
    /// until what they added to the repository covers the shortfall. Never the newest
    /// complete snapshot of a component, nor one a rollout, a rollback or a pending
    /// Restore may restore. The controller prunes once per rollout, then measures the
    /// repository again; if the snapshots still do not fit, the rollout stalls
    /// (`SnapshotStoreFull`). Defaults to false: snapshots are only forgotten by the
    /// rules above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_to_fit: Option<bool>,
}

/// One snapshot of one component's data. deployctl creates them before rollouts and on
/// the policy's schedule; a person creates one (spec only) to take a snapshot now.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "deployctl.dev",
    version = "v1alpha1",
    kind = "StackSnapshot",
    plural = "stacksnapshots",
    singular = "stacksnapshot",
    shortname = "ssnap",
    category = "deployctl",
    namespaced,
    status = "StackSnapshotStatus",
    printcolumn = r#"{"name":"Stack","type":"string","jsonPath":".spec.stack"}"#,
    printcolumn = r#"{"name":"Component","type":"string","jsonPath":".spec.component"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".status.sizeBytes"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","priority":1,"jsonPath":".status.digest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StackSnapshotSpec {
    /// Name of the stack, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub stack: String,

    /// Component whose data to snapshot; it must declare `data`.
    #[schemars(length(min = 1, max = 40))]
    pub component: String,

    /// Why it was taken: `BeforeRollout`, `Scheduled` or `Manual` (the default, for
    /// snapshots people ask for).
    #[serde(default)]
    pub reason: SnapshotReason,
}

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SnapshotReason {
    /// Before a rollout, so it can be rolled back with its data.
    BeforeRollout,
    /// On the policy's schedule.
    Scheduled,
    /// Asked for by a person or a pipeline.
    #[default]
    Manual,
}

/// What the snapshot holds and how it went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackSnapshotStatus {
    /// `Pending`, `Running`, `Completed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,
    /// Revision of the stack the data belongs to (the stable revision when taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `Files`, `Sqlite` or `Exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<DataMethod>,
    /// The snapshot's identity in the repository: SHA-256 of its manifest, which lists
    /// the SHA-256 of every chunk of every file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes of data in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Regular files in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,
    /// Chunks the snapshot references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<i64>,
    /// Bytes of data this snapshot added to the repository (the rest was already stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bytes: Option<i64>,
    /// What this snapshot added to the store, as stored (its new chunks after compression
    /// and encryption): the figure the controller's capacity check estimates the next
    /// snapshot of this component from. Unset for snapshots taken before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<i64>,
    /// Where the repository is: `pvc://<claim>` or `s3://<bucket>/<prefix>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The Job doing the work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the snapshot was complete in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// When the snapshot was last re-read and re-hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_at: Option<Time>,
    /// Result of the last verification: `Verified` or `Corrupt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationResult>,
    /// What went wrong (or the verification's finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a StatefulSet component: each replica's data, by ordinal (the claim of
    /// ordinal N is `<volume>-<stack>-<component>-N`). `digest` is then ordinal 0's,
    /// and `sizeBytes`, `files`, `chunks`, `newBytes` and `storedBytes` are totals over
    /// the replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub replicas: Vec<ReplicaSnapshot>,
}

/// One StatefulSet replica's data in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSnapshot {
    /// The replica's ordinal.
    #[schemars(range(min = 0))]
    pub ordinal: i32,
    /// SHA-256 of this replica's manifest in the repository, once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes of this replica's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Regular files in this replica's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,
    /// The agent Job copying this replica's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

impl StackSnapshotStatus {
    /// Every replica's digest, by ordinal: the `replicas` entries, or the one `digest`
    /// of a Deployment's (or an older) snapshot as ordinal 0. Empty until complete.
    pub fn digests(&self) -> Vec<(i32, String)> {
        if self.replicas.is_empty() {
            return self.digest.iter().map(|d| (0, d.clone())).collect();
        }
        self.replicas
            .iter()
            .filter_map(|r| r.digest.clone().map(|d| (r.ordinal, d)))
            .collect()
    }
}

/// Lifecycle of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SnapshotPhase {
    /// Waiting for its Job (and, for quiesced components, for the component to stop).
    Pending,
    /// The Job is copying the data.
    Running,
    /// Complete and checksummed in the repository.
    Completed,
    /// Not taken; see the message.
    Failed,
}

impl SnapshotPhase {
    /// Whether the snapshot will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, SnapshotPhase::Completed | SnapshotPhase::Failed)
    }
}

/// Result of re-hashing a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum VerificationResult {
    /// Every chunk and the manifest match their digests.
    Verified,
    /// Something does not; the snapshot will not be restored.
    Corrupt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_bytes_rounded_up_like_kubernetes() {
        assert_eq!(parse_bytes("500"), Ok(500));
        assert_eq!(parse_bytes("20Gi"), Ok(20 << 30));
        assert_eq!(parse_bytes("1.5Ki"), Ok(1536));
        assert_eq!(parse_bytes("2k"), Ok(2000));
        assert_eq!(parse_bytes("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("0.001k"), Ok(1));
        assert_eq!(
            parse_bytes("0.0001k"),
            Ok(1),
            "a fraction of a byte is a byte"
        );
        assert_eq!(parse_bytes("7Ei"), Ok(7 << 60));
        assert!(parse_bytes("8Ei").unwrap_err().contains("too large"));
        assert!(parse_bytes("1GB").unwrap_err().contains("unknown suffix"));
        assert!(parse_bytes(".5Gi").unwrap_err().contains("not a quantity"));
        assert!(parse_bytes("").unwrap_err().contains("not a quantity"));
    }
}
