//! A local-directory volume provisioner: the default `StorageClass` `local-dir`
//! (`WaitForFirstConsumer`), a `local` PV at `state_dir/pvs/<pv>` for each claim the
//! scheduler assigned to one of this node's names (annotation
//! `volume.kubernetes.io/selected-node`), pinned to that node; the controller-manager's
//! binder then binds it. When a PV of ours is released (reclaim policy `Delete`) its
//! directory and the PV are deleted; a PV deleted by anyone else loses its directory too.
//! Data therefore survives pod restarts and rescheduling on the same node.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::watch;

use crate::error::{Result, SimNodeError};

/// The storage class's name.
pub const STORAGE_CLASS: &str = "local-dir";
/// The provisioner name on the class and on the PVs.
pub const PROVISIONER: &str = "deployctl.dev/local-dir";
/// The scheduler's annotation naming the node a claim's consumer goes to.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Label on our PVs: the node they belong to.
const NODE_LABEL: &str = "deployctl.dev/local-dir-node";

/// Creates the default class unless it exists.
pub(crate) async fn ensure_storage_class(client: &kube::Client) -> Result<()> {
    let api: Api<StorageClass> = Api::all(client.clone());
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .map_err(|e| SimNodeError::Config(format!("storage class: {e}")))?;
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(SimNodeError::kube("creating storage class local-dir", e)),
    }
}

/// The node a claim should be provisioned on, if it is ours to provision.
pub(crate) fn claim_node<'a>(pvc: &'a PersistentVolumeClaim, nodes: &[String]) -> Option<&'a str> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pvc.spec.as_ref()?;
    if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS) {
        return None;
    }
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return None;
    }
    if pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p != "Pending")
    {
        return None;
    }
    let node = pvc.metadata.annotations.as_ref()?.get(SELECTED_NODE)?;
    nodes.iter().any(|n| n == node).then_some(node.as_str())
}

/// The PV for `pvc` on `node`, pre-bound to the claim.
pub(crate) fn volume_for(
    pvc: &PersistentVolumeClaim,
    node: &str,
    pv_root: &Path,
) -> Option<PersistentVolume> {
    let uid = pvc.metadata.uid.as_deref()?;
    let name = format!("pvc-{uid}");
    let spec = pvc.spec.as_ref()?;
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map_or_else(|| "1Gi".to_owned(), |q| q.0.clone());
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {NODE_LABEL: node},
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
            "local": {"path": pv_root.join(&name)},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace,
                "name": pvc.metadata.name,
                "uid": uid,
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
        },
    }))
    .ok()
}

/// The directory of one of our PVs, if it lies under `pv_root` (nothing else is removed).
pub(crate) fn our_dir(pv: &PersistentVolume, pv_root: &Path) -> Option<PathBuf> {
    let path = PathBuf::from(&pv.spec.as_ref()?.local.as_ref()?.path);
    (path.starts_with(pv_root) && path != pv_root).then_some(path)
}

fn is_ours(pv: &PersistentVolume, nodes: &[String]) -> bool {
    pv.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(NODE_LABEL))
        .is_some_and(|n| nodes.contains(n))
}

async fn provision(
    client: &kube::Client,
    pvc: &PersistentVolumeClaim,
    nodes: &[String],
    pv_root: &Path,
) {
    let Some(node) = claim_node(pvc, nodes) else {
        return;
    };
    let Some(pv) = volume_for(pvc, node, pv_root) else {
        return;
    };
    if let Some(dir) = our_dir(&pv, pv_root) {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "creating a PV directory");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
    }
    let api: Api<PersistentVolume> = Api::all(client.clone());
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => tracing::debug!(pv = ?pv.metadata.name, "provisioned"),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => tracing::warn!(error = %e, "creating a PV"),
    }
}

async fn reclaim(client: &kube::Client, pv: &PersistentVolume, pv_root: &Path) {
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if !(released && delete) || pv.metadata.deletion_timestamp.is_some() {
        return;
    }
    if let Some(dir) = our_dir(pv, pv_root) {
        let _ = std::fs::remove_dir_all(dir);
    }
    let api: Api<PersistentVolume> = Api::all(client.clone());
    if let Some(name) = &pv.metadata.name {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(pv = %name, error = %e, "deleting a released PV"),
        }
    }
}

/// Watches claims and volumes until `stop`.
pub(crate) async fn run(
    client: kube::Client,
    nodes: Vec<String>,
    pv_root: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let claims = watcher(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| Either::Claim(Box::new(e)))
    .boxed();
    let volumes = watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default().labels(NODE_LABEL),
    )
    .default_backoff()
    .map(|e| Either::Volume(Box::new(e)))
    .boxed();
    let mut events = futures::stream::select(claims, volumes);
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = stop.changed() => return,
        };
        let Some(item) = next else { return };
        match item {
            Either::Claim(event) => match *event {
                Ok(Event::Apply(pvc) | Event::InitApply(pvc)) => {
                    provision(&client, &pvc, &nodes, &pv_root).await;
                }
                Err(e) => tracing::debug!(error = %e, "provisioner watch error; retrying"),
                _ => {}
            },
            Either::Volume(event) => match *event {
                Ok(Event::Apply(pv) | Event::InitApply(pv)) if is_ours(&pv, &nodes) => {
                    reclaim(&client, &pv, &pv_root).await;
                }
                Ok(Event::Delete(pv)) if is_ours(&pv, &nodes) => {
                    if let Some(dir) = our_dir(&pv, &pv_root) {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "provisioner watch error; retrying"),
                _ => {}
            },
        }
    }
}

enum Either {
    Claim(Box<std::result::Result<Event<PersistentVolumeClaim>, watcher::Error>>),
    Volume(Box<std::result::Result<Event<PersistentVolume>, watcher::Error>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(annotations: serde_json::Value, class: &str, phase: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "1234", "annotations": annotations},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "2Gi"}}},
            "status": {"phase": phase}
        }))
        .expect("pvc")
    }

    #[test]
    fn provisions_only_our_claims() {
        let nodes = vec!["simnode-0".to_owned()];
        let ours = claim(
            json!({SELECTED_NODE: "simnode-0"}),
            STORAGE_CLASS,
            "Pending",
        );
        assert_eq!(claim_node(&ours, &nodes), Some("simnode-0"));
        let other_node = claim(
            json!({SELECTED_NODE: "elsewhere"}),
            STORAGE_CLASS,
            "Pending",
        );
        assert_eq!(claim_node(&other_node, &nodes), None);
        let other_class = claim(json!({SELECTED_NODE: "simnode-0"}), "fast", "Pending");
        assert_eq!(claim_node(&other_class, &nodes), None);
        let not_selected = claim(json!({}), STORAGE_CLASS, "Pending");
        assert_eq!(claim_node(&not_selected, &nodes), None);
        let bound = claim(json!({SELECTED_NODE: "simnode-0"}), STORAGE_CLASS, "Bound");
        assert_eq!(claim_node(&bound, &nodes), None);
    }

    #[test]
    fn builds_a_prebound_local_volume() {
        let pvc = claim(
            json!({SELECTED_NODE: "simnode-0"}),
            STORAGE_CLASS,
            "Pending",
        );
        let root = Path::new("/state/pvs");
        let pv = volume_for(&pvc, "simnode-0", root).expect("pv");
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-1234"));
        let spec = pv.spec.as_ref().expect("spec");
        assert_eq!(
            spec.capacity
                .as_ref()
                .and_then(|c| c.get("storage"))
                .map(|q| q.0.as_str()),
            Some("2Gi")
        );
        assert_eq!(
            spec.local.as_ref().map(|l| l.path.as_str()),
            Some("/state/pvs/pvc-1234")
        );
        let claim_ref = spec.claim_ref.as_ref().expect("claimRef");
        assert_eq!(claim_ref.uid.as_deref(), Some("1234"));
        assert_eq!(claim_ref.namespace.as_deref(), Some("ns"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert!(is_ours(&pv, &["simnode-0".to_owned()]));
        assert!(!is_ours(&pv, &["other".to_owned()]));
        assert_eq!(
            our_dir(&pv, root),
            Some(PathBuf::from("/state/pvs/pvc-1234"))
        );
        assert_eq!(our_dir(&pv, Path::new("/elsewhere")), None);
    }
}
