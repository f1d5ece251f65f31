//! Reference I/O around [`resolve`](super::resolve): reads the workloads `templateFrom`
//! names and the ConfigMaps and Secrets the components reference, creates the per-revision
//! config copies, owned by the ControllerRevisions that use them, and scales adopted
//! workloads down.

use super::resolve::{self, Copy, Source, Sources};
use crate::error::Result;
use deployctl_api::{Component, ConfigKind, WorkloadKind};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The workloads the components' `templateFrom` name that exist now (one GET each).
pub async fn read_workloads(
    client: &Client,
    ns: &str,
    components: &[Component],
) -> Result<resolve::Workloads> {
    let mut out = resolve::Workloads::new();
    for (kind, name) in resolve::templates_from(components) {
        let found = match kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?
                .and_then(|d| d.spec)
                .map(|s| (s.template, s.replicas)),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?
                .and_then(|d| d.spec)
                .map(|s| (s.template, s.replicas)),
        };
        if let Some((template, replicas)) = found {
            out.insert(
                (kind, name),
                resolve::Referenced {
                    template,
                    replicas: replicas.unwrap_or(1),
                },
            );
        }
    }
    Ok(out)
}

/// Field manager of the scale-downs of adopted workloads: a GitOps tool that owns
/// `spec.replicas` sees who changed it.
pub const ADOPT_FIELD_MANAGER: &str = "deployctl-adopt";

/// Scales a referenced workload to 0 through its `scale` subresource.
pub async fn scale_down(
    client: &Client,
    ns: &str,
    s: &super::plan::adopt::ScaleDown,
) -> Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": 0}});
    let pp = PatchParams {
        field_manager: Some(ADOPT_FIELD_MANAGER.into()),
        ..Default::default()
    };
    match s.kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch_scale(&s.name, &pp, &Patch::Merge(&patch))
                .await?;
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch_scale(&s.name, &pp, &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(())
}

/// The referenced objects that exist now (one GET each; none for a stack that references
/// nothing).
pub async fn read(
    client: &Client,
    ns: &str,
    components: &[Component],
    versioned: resolve::Versioned,
) -> Result<Sources> {
    let mut out = Sources::new();
    for (kind, name) in resolve::referenced(components, versioned) {
        let found = match kind {
            ConfigKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?
                .map(Source::ConfigMap),
            ConfigKind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
                .get_opt(&name)
                .await?
                .map(Source::Secret),
        };
        if let Some(s) = found {
            out.insert((kind, name), s);
        }
    }
    Ok(out)
}

/// Makes every copy exist and be owned by `revision`. Runs before the status records the
/// revision, so a controller that dies half-way does it again on the next reconcile.
pub async fn ensure_copies(
    client: &Client,
    ns: &str,
    copies: &[Copy],
    revision: &OwnerReference,
) -> Result<()> {
    for copy in copies {
        match &copy.object {
            Source::ConfigMap(o) => {
                ensure(&Api::namespaced(client.clone(), ns), o, revision).await?
            }
            Source::Secret(o) => ensure(&Api::namespaced(client.clone(), ns), o, revision).await?,
        }
    }
    Ok(())
}

async fn ensure<K>(api: &Api<K>, copy: &K, revision: &OwnerReference) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    let name = copy.meta().name.clone().unwrap_or_default();
    let existing = match api.get_opt(&name).await? {
        Some(e) => e,
        None => {
            let mut new = copy.clone();
            new.meta_mut().owner_references = resolve::with_owner(&[], revision);
            match api.create(&PostParams::default(), &new).await {
                Ok(_) => return Ok(()),
                // Created meanwhile (another revision of the same content): own it below.
                Err(kube::Error::Api(e)) if e.code == 409 => api.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let owners = existing.meta().owner_references.clone().unwrap_or_default();
    if let Some(owners) = resolve::with_owner(&owners, revision) {
        // The whole list with the resourceVersion read: a concurrent change of the owners
        // is a conflict and a retry, never a lost owner.
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": existing.meta().resource_version,
                "ownerReferences": owners,
            }
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}
