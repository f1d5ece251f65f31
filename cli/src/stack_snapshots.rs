//! Reading `StackSnapshot`s from the API server, with the errors a person can act on (a
//! missing snapshot suggests close names in the namespace, a missing CRD says so), and
//! the short forms the commands show of them: sizes, digests, verification.

use crate::cluster::Cluster;
use crate::error::{Call, CliError};
use crate::output::size::bytes;
use crate::output::time;
use deployctl_api::{SnapshotPhase, StackSnapshot, StackSnapshotStatus, VerificationResult};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::Request;
use kube::{Api, Resource, ResourceExt};

/// Resource name of snapshots, for messages.
pub const SNAPSHOTS: &str = "stacksnapshots.deployctl.dev";

/// Characters of a digest the tables show (like a short git commit).
pub const SHORT_DIGEST: usize = 12;

fn not_installed(cluster: &Cluster) -> CliError {
    CliError::ApiNotInstalled {
        server: cluster.target.server.clone(),
        resource: SNAPSHOTS.into(),
    }
}

/// Reads one snapshot; a missing one becomes [`CliError::NotFound`] with suggestions.
pub async fn get(cluster: &Cluster, name: &str) -> Result<StackSnapshot, CliError> {
    let api: Api<StackSnapshot> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match api.get(name).await {
        Ok(s) => Ok(s),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(not_found(cluster, name).await),
        Err(e) => Err(cluster.error(
            e,
            &Call {
                verb: "get",
                resource: SNAPSHOTS,
                namespace: Some(&cluster.namespace),
                action: format!("reading snapshot \"{name}\""),
            },
        )),
    }
}

/// The not-found error for `name`, with the close names that exist in the namespace; or
/// the missing-CRD error when snapshots are not served at all.
async fn not_found(cluster: &Cluster, name: &str) -> CliError {
    let api: Api<StackSnapshot> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let names: Vec<String> = match api.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items.iter().map(|m| m.name_any()).collect(),
        Err(kube::Error::Api(s)) if s.code == 404 => return not_installed(cluster),
        // Not allowed to list, or a hiccup: the error without suggestions is still right.
        Err(_) => Vec::new(),
    };
    CliError::NotFound {
        kind: "snapshot",
        name: name.to_string(),
        namespace: cluster.namespace.clone(),
        suggestions: crate::stacks::suggest(name, &names),
    }
}

/// Lists the snapshots of the namespace (or all namespaces) as the API server returns the
/// list (a `StackSnapshotList`).
pub async fn list_raw(
    cluster: &Cluster,
    all_namespaces: bool,
) -> Result<serde_json::Value, CliError> {
    let ns = (!all_namespaces).then_some(cluster.namespace.as_str());
    let url = StackSnapshot::url_path(&(), ns);
    let req = Request::new(url)
        .list(&ListParams::default())
        .map_err(|e| CliError::Api {
            action: "listing snapshots".into(),
            message: e.to_string(),
        })?;
    match cluster.client.request::<serde_json::Value>(req).await {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(not_installed(cluster)),
        Err(e) => Err(cluster.error(
            e,
            &Call {
                verb: "list",
                resource: SNAPSHOTS,
                namespace: ns,
                action: "listing snapshots".into(),
            },
        )),
    }
}

/// The snapshots of stack `stack` in the namespace, newest first. They are matched by
/// `spec.stack`, as the controller does: a snapshot someone created with kubectl names
/// its stack only there.
pub async fn of_stack(cluster: &Cluster, stack: &str) -> Result<Vec<StackSnapshot>, CliError> {
    let raw = list_raw(cluster, false).await?;
    let mut snaps: Vec<StackSnapshot> = items(&raw)
        .into_iter()
        .filter(|s| s.spec.stack == stack)
        .collect();
    newest_first(&mut snaps);
    Ok(snaps)
}

/// The typed items of a raw list; items this CLI cannot read are skipped rather than
/// failing the whole table.
pub fn items(list: &serde_json::Value) -> Vec<StackSnapshot> {
    list.get("items")
        .and_then(|i| i.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|i| serde_json::from_value(i.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sorts newest first (creation time, then name, so the order is stable).
pub fn newest_first(snaps: &mut [StackSnapshot]) {
    snaps.sort_by(|a, b| {
        let key = |s: &StackSnapshot| {
            (
                s.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
                s.name_any(),
            )
        };
        key(b).cmp(&key(a))
    });
}

/// The revision whose data a snapshot holds: `status.revision`, else (a pre-rollout
/// snapshot that failed before its Job recorded it) the `r<N>` of the name the controller
/// gives pre-rollout snapshots, `<stack>-<component>-r<N>-<unix time>`.
pub fn data_revision(s: &StackSnapshot) -> Option<i64> {
    if let Some(r) = s.status.as_ref().and_then(|st| st.revision) {
        return Some(r);
    }
    let name = s.name_any();
    let prefix = format!("{}-{}-r", s.spec.stack, s.spec.component);
    let rest = name.strip_prefix(&prefix)?;
    let (revision, stamp) = rest.split_once('-')?;
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    revision.parse().ok()
}

/// The phase as text, `Pending` before the controller has written one.
pub fn phase(s: &StackSnapshot) -> &'static str {
    match s.status.as_ref().and_then(|st| st.phase) {
        Some(SnapshotPhase::Pending) | None => "Pending",
        Some(SnapshotPhase::Running) => "Running",
        Some(SnapshotPhase::Completed) => "Completed",
        Some(SnapshotPhase::Failed) => "Failed",
    }
}

/// `1.2 MiB`, or `-` before the snapshot is complete.
pub fn size(st: Option<&StackSnapshotStatus>) -> String {
    st.and_then(|s| s.size_bytes)
        .map(bytes)
        .unwrap_or_else(|| "-".into())
}

/// What the snapshot added to the store (`storedBytes`), or `-` (not complete, or taken
/// before it was recorded).
pub fn added(st: Option<&StackSnapshotStatus>) -> String {
    st.and_then(|s| s.stored_bytes)
        .map(bytes)
        .unwrap_or_else(|| "-".into())
}

/// The repository's use and room in one line: `1.2 GiB used, 3.4 GiB left (quota 5.0
/// GiB; 8.1 GiB free on the claim of 10 GiB); next rollout adds about 120 MiB; measured
/// 3m ago by snapshot Job J`.
pub fn repository_line(r: &deployctl_api::SnapshotRepositoryStatus, now: Timestamp) -> String {
    let mut line = format!("{} used", bytes(r.used_bytes));
    match r.available_bytes {
        Some(a) => line.push_str(&format!(", {} left", bytes(a))),
        None => line.push_str(", room unknown (no quota on S3)"),
    }
    let mut limits = vec![];
    if let Some(q) = r.quota_bytes {
        limits.push(format!("quota {}", bytes(q)));
    }
    if let (Some(free), Some(total)) = (r.volume_available_bytes, r.volume_bytes) {
        limits.push(format!(
            "{} free on the claim of {}",
            bytes(free),
            bytes(total)
        ));
    }
    if !limits.is_empty() {
        line.push_str(&format!(" ({})", limits.join("; ")));
    }
    match r.next_rollout_bytes {
        Some(n) => line.push_str(&format!("; next rollout adds about {}", bytes(n))),
        None => line.push_str("; next rollout: no estimate yet"),
    }
    if r.next_rollout_bytes.is_some() && !r.unestimated.is_empty() {
        line.push_str(&format!(" (not counting {})", r.unestimated.join(", ")));
    }
    line.push_str(&format!("; measured {}", time::ago(&r.measured_at, now)));
    if let (Some(op), Some(job)) = (&r.operation, &r.measured_by) {
        line.push_str(&format!(" by {op} Job {job}"));
    }
    line
}

/// Whether the store is nearly full, as the alert judges it: under 15% of its capacity
/// left, or less room than the next rollout's snapshots are estimated to add.
pub fn repository_tight(r: &deployctl_api::SnapshotRepositoryStatus) -> bool {
    let Some(room) = r.available_bytes else {
        return false;
    };
    let low = r
        .capacity_bytes
        .is_some_and(|c| c > 0 && (room as f64) < 0.15 * c as f64);
    low || r.next_rollout_bytes.is_some_and(|n| n > room)
}

/// The first 12 hex digits of the digest, or `-`.
pub fn short_digest(st: Option<&StackSnapshotStatus>) -> String {
    st.and_then(|s| s.digest.as_deref())
        .map(|d| d.chars().take(SHORT_DIGEST).collect())
        .unwrap_or_else(|| "-".into())
}

/// The whole digest, or `-`.
pub fn digest(st: Option<&StackSnapshotStatus>) -> String {
    st.and_then(|s| s.digest.clone())
        .unwrap_or_else(|| "-".into())
}

/// `Verified 3m ago`, `Corrupt 5s ago`, or `-` when never verified.
pub fn verification(st: Option<&StackSnapshotStatus>, now: Timestamp) -> String {
    let Some(st) = st else {
        return "-".into();
    };
    let result = match st.verification {
        Some(VerificationResult::Verified) => "Verified",
        Some(VerificationResult::Corrupt) => "Corrupt",
        None => return "-".into(),
    };
    match &st.last_verified_at {
        Some(t) => format!("{result} {}", time::ago(t, now)),
        None => result.to_string(),
    }
}

/// Whether the snapshot's last verification found it damaged.
pub fn is_corrupt(s: &StackSnapshot) -> bool {
    s.status.as_ref().and_then(|st| st.verification) == Some(VerificationResult::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(yaml: &str) -> StackSnapshot {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn the_data_revision_comes_from_the_status_else_the_pre_rollout_name() {
        let s = snap(
            "apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {name: shop-db-r3-1714560000}
spec: {stack: shop, component: db, reason: BeforeRollout}
",
        );
        assert_eq!(data_revision(&s), Some(3));
        let mut with_status = s.clone();
        with_status.status = Some(StackSnapshotStatus {
            revision: Some(5),
            ..Default::default()
        });
        assert_eq!(data_revision(&with_status), Some(5));
        let manual = snap(
            "apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {name: shop-db-m1714560000}
spec: {stack: shop, component: db}
",
        );
        assert_eq!(data_revision(&manual), None);
        let odd = snap(
            "apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {name: shop-db-r3-x}
spec: {stack: shop, component: db}
",
        );
        assert_eq!(data_revision(&odd), None);
    }

    #[test]
    fn short_forms_of_size_digest_and_verification() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        let st: StackSnapshotStatus = serde_yaml_ng::from_str(&format!(
            "{{phase: Completed, digest: '{}', sizeBytes: 1572864, lastVerifiedAt: '2024-05-01T11:57:00Z', verification: Verified}}",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!(size(Some(&st)), "1.5 MiB");
        assert_eq!(short_digest(Some(&st)), "abababababab");
        assert_eq!(digest(Some(&st)).len(), 64);
        assert_eq!(verification(Some(&st), now), "Verified 3m ago");
        assert_eq!(verification(None, now), "-");
        assert_eq!(size(None), "-");
        assert_eq!(short_digest(None), "-");
    }

    #[test]
    fn lists_sort_newest_first() {
        let at = |name: &str, t: &str| {
            snap(&format!(
                "apiVersion: deployctl.dev/v1alpha1
kind: StackSnapshot
metadata: {{name: {name}, creationTimestamp: '{t}'}}
spec: {{stack: shop, component: db}}
"
            ))
        };
        let mut v = vec![
            at("a", "2024-05-01T10:00:00Z"),
            at("c", "2024-05-01T11:00:00Z"),
            at("b", "2024-05-01T11:00:00Z"),
        ];
        newest_first(&mut v);
        let names: Vec<String> = v.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["c", "b", "a"]);
    }
}
