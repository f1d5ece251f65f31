//! Revision history: every distinct set of component specs is a numbered revision,
//! stored as a `ControllerRevision` owned by the stack and named after the digest of its
//! content, so a controller that crashes after creating one finds it again instead of
//! creating a duplicate.

use crate::context::Context;
use crate::error::{Error, Result};
use deployctl_api::{labels, Component, ProductionStack, ProductionStackStatus};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What a ControllerRevision's `data` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RevisionData {
    /// The components of the stack at this revision, resolved: config references name
    /// the per-revision copies.
    pub components: Vec<Component>,
    /// The ConfigMaps and Secrets each component reads at this revision (names and
    /// digests only). Absent in revisions of older controllers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, Vec<deployctl_api::ConfigVersion>>,
}

/// Digest of one component's spec; a workload annotated with the same digest needs no
/// update.
pub fn component_hash(c: &Component) -> String {
    // `canary` says how a new template rolls out, not what runs: changing the steps alone
    // must not roll the pods.
    if c.canary.is_some() {
        let mut without = c.clone();
        without.canary = None;
        return digest(
            &serde_json::to_vec(&without).expect("components serialize"),
            16,
        );
    }
    digest(&serde_json::to_vec(c).expect("components serialize"), 16)
}

/// Digest of all components; names the ControllerRevision.
pub fn revision_hash(components: &[Component]) -> String {
    digest(
        &serde_json::to_vec(components).expect("components serialize"),
        10,
    )
}

fn digest(bytes: &[u8], len: usize) -> String {
    let mut h = hex::encode(Sha256::digest(bytes));
    h.truncate(len);
    h
}

/// Name of the ControllerRevision for a digest.
pub fn revision_name(stack: &str, hash: &str) -> String {
    format!("{stack}-{hash}")
}

/// The revision the spec asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct CurrentRevision {
    /// Its number.
    pub number: i64,
    /// Digest of its components.
    pub hash: String,
    /// Whether this reconcile created it.
    pub created: bool,
    /// An owner reference to its ControllerRevision, when this reconcile read or created
    /// it (not on the fast path: the status records a revision only after its config
    /// copies exist).
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
}

/// Finds or creates the revision for the stack's resolved components, and prunes the
/// history beyond the limit (the stable revision is always kept).
pub async fn ensure_current(
    ctx: &Context,
    stack: &ProductionStack,
    resolved: &crate::reconcile::resolve::Resolved,
) -> Result<CurrentRevision> {
    let client = &ctx.client;
    let components = &resolved.components;
    let hash = revision_hash(components);
    let status = stack.status.clone().unwrap_or_default();
    // Fast path: the status already records this digest (written after the revision was
    // created), so no list call per reconcile.
    if status.current_revision_hash.as_deref() == Some(hash.as_str()) {
        if let Some(number) = status.current_revision {
            return Ok(CurrentRevision {
                number,
                hash,
                created: false,
                owner: None,
            });
        }
    }
    let ns = stack
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = stack.name_any();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let existing = owned(ctx, &api, stack).await?;
    if let Some(rev) = existing
        .iter()
        .find(|r| r.labels().get(labels::REVISION_HASH) == Some(&hash))
    {
        check_same(rev, components)?;
        return Ok(CurrentRevision {
            number: rev.revision,
            hash,
            created: false,
            owner: revision_owner(rev),
        });
    }
    let number = next_number(&existing, &status);
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(&name, &hash)),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (labels::STACK.to_string(), name.clone()),
                (labels::REVISION_HASH.to_string(), hash.clone()),
                (
                    labels::MANAGED_BY.to_string(),
                    labels::MANAGED_BY_VALUE.to_string(),
                ),
            ])),
            annotations: stack.metadata.generation.map(|g| {
                BTreeMap::from([(labels::REVISION_GENERATION.to_string(), g.to_string())])
            }),
            owner_references: crate::reconcile::build::owner_ref(stack).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(RawExtension(serde_json::to_value(RevisionData {
            components: components.clone(),
            configs: resolved.configs.clone(),
        })?)),
        revision: number,
    };
    let created = match api.create(&PostParams::default(), &rev).await {
        Ok(created) => created,
        // Created by an earlier attempt whose list did not see it yet: reuse it.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let found = api.get(&revision_name(&name, &hash)).await?;
            check_same(&found, components)?;
            return Ok(CurrentRevision {
                number: found.revision,
                hash,
                created: false,
                owner: revision_owner(&found),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let owner = revision_owner(&created);
    let mut all = existing;
    all.push(rev);
    prune(
        &api,
        all,
        stack.spec.revision_history_limit(),
        &status,
        number,
    )
    .await?;
    Ok(CurrentRevision {
        number,
        hash,
        created: true,
        owner,
    })
}

/// An owner reference to a ControllerRevision (for the config copies it uses).
fn revision_owner(
    rev: &ControllerRevision,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    rev.controller_owner_ref(&())
}

/// Revision numbers only grow, even when old ControllerRevisions were pruned.
fn next_number(existing: &[ControllerRevision], status: &ProductionStackStatus) -> i64 {
    existing
        .iter()
        .map(|r| r.revision)
        .chain(status.current_revision)
        .chain(status.stable_revision)
        .max()
        .unwrap_or(0)
        + 1
}

fn check_same(rev: &ControllerRevision, components: &[Component]) -> Result<()> {
    let data = decode(rev)?;
    if data.components != components {
        return Err(Error::RevisionCollision(rev.name_any()));
    }
    Ok(())
}

/// Decodes a ControllerRevision's components.
pub fn decode(rev: &ControllerRevision) -> Result<RevisionData> {
    let raw = rev.data.as_ref().ok_or_else(|| Error::BadRevision {
        name: rev.name_any(),
        message: "no data".into(),
    })?;
    serde_json::from_value(raw.0.clone()).map_err(|e| Error::BadRevision {
        name: rev.name_any(),
        message: e.to_string(),
    })
}

/// The stack's ControllerRevisions, oldest first. Revisions of an earlier stack of the
/// same name (other owner uid) are ignored.
pub async fn list_owned(
    api: &Api<ControllerRevision>,
    stack: &ProductionStack,
) -> Result<Vec<ControllerRevision>> {
    let lp = ListParams::default().labels(&format!("{}={}", labels::STACK, stack.name_any()));
    let uid = stack.metadata.uid.clone();
    let mut revs: Vec<ControllerRevision> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();
    revs.sort_by_key(|r| r.revision);
    Ok(revs)
}

/// The stack's revisions: from the cache when the controller runs one, else listed.
async fn owned(
    ctx: &Context,
    api: &Api<ControllerRevision>,
    stack: &ProductionStack,
) -> Result<Vec<ControllerRevision>> {
    match &ctx.caches {
        Some(c) => Ok(c.revisions_of(stack)),
        None => list_owned(api, stack).await,
    }
}

/// Every revision of the stack's history, decoded and ordered, by number. Revisions that
/// cannot be read are left out with a warning (they cannot be rolled back to).
pub async fn load_all(
    ctx: &Context,
    stack: &ProductionStack,
) -> Result<BTreeMap<i64, crate::reconcile::plan::RevisionRef>> {
    let ns = stack
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = BTreeMap::new();
    for rev in owned(ctx, &api, stack).await? {
        let decoded = decode(&rev).and_then(|d| {
            crate::reconcile::plan::RevisionRef::new(&stack.name_any(), rev.revision, d.components)
                .map_err(|e| Error::BadRevision {
                    name: rev.name_any(),
                    message: e.to_string(),
                })
        });
        match decoded {
            Ok(r) => {
                out.insert(rev.revision, r);
            }
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable revision"),
        }
    }
    Ok(out)
}

/// The stable revision alone, fetched by name from `status.stableRevisionHash` (the whole
/// history when the hash is not recorded, as for stacks from an older controller).
pub async fn load_stable(
    ctx: &Context,
    stack: &ProductionStack,
) -> Result<BTreeMap<i64, crate::reconcile::plan::RevisionRef>> {
    let status = stack.status.clone().unwrap_or_default();
    let (Some(number), Some(hash)) = (status.stable_revision, status.stable_revision_hash) else {
        return load_all(ctx, stack).await;
    };
    let ns = stack
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = BTreeMap::new();
    let name = revision_name(&stack.name_any(), &hash);
    let cached = ctx
        .caches
        .as_ref()
        .and_then(|c| c.revision(&ns, &name))
        .map(|r| (*r).clone());
    let found = match cached {
        Some(r) => Some(r),
        // Just created and not in the cache yet, or no cache: ask.
        None => api.get_opt(&name).await?,
    };
    let Some(rev) = found else {
        return load_all(ctx, stack).await;
    };
    let owned = rev
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == stack.metadata.uid.as_ref());
    if owned && rev.revision == number {
        let data = decode(&rev)?;
        let r =
            crate::reconcile::plan::RevisionRef::new(&stack.name_any(), number, data.components)
                .map_err(|e| Error::BadRevision {
                    name: rev.name_any(),
                    message: e.to_string(),
                })?;
        out.insert(number, r);
        Ok(out)
    } else {
        load_all(ctx, stack).await
    }
}

/// Which revisions to delete: all but the newest `limit`, never the stable or current one.
pub fn to_prune(numbers: &[i64], limit: usize, keep: &[i64]) -> Vec<i64> {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted
        .into_iter()
        .skip(limit)
        .filter(|n| !keep.contains(n))
        .collect()
}

async fn prune(
    api: &Api<ControllerRevision>,
    revs: Vec<ControllerRevision>,
    limit: usize,
    status: &ProductionStackStatus,
    current: i64,
) -> Result<()> {
    let numbers: Vec<i64> = revs.iter().map(|r| r.revision).collect();
    let mut keep = vec![current];
    keep.extend(status.stable_revision);
    let doomed = to_prune(&numbers, limit, &keep);
    for r in revs.iter().filter(|r| doomed.contains(&r.revision)) {
        match api.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(image: &str) -> Component {
        serde_yaml_ng::from_str(&format!(
            "{{name: api, template: {{spec: {{containers: [{{name: a, image: '{image}'}}]}}}}}}"
        ))
        .unwrap()
    }

    #[test]
    fn hashes_are_stable_and_content_addressed() {
        let a = component("x:1");
        assert_eq!(component_hash(&a), component_hash(&a.clone()));
        assert_ne!(component_hash(&a), component_hash(&component("x:2")));
        assert_eq!(revision_hash(std::slice::from_ref(&a)).len(), 10);
        assert_ne!(
            revision_hash(std::slice::from_ref(&a)),
            revision_hash(&[component("x:2")])
        );
    }

    #[test]
    fn an_existing_component_hashes_as_before_the_upgrade() {
        // The bytes a revision hash covers for a component written before `templateFrom`
        // and config versioning: unchanged, so no stack rolls out after the upgrade.
        let c = component("x:1");
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"name":"api","kind":"Deployment","template":{"spec":{"containers":[{"image":"x:1","name":"a"}]}}}"#
        );
        let resolved = crate::reconcile::resolve::resolve(
            "s",
            std::slice::from_ref(&c),
            &Default::default(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            revision_hash(&resolved.components),
            revision_hash(std::slice::from_ref(&c))
        );
    }

    #[test]
    fn revisions_without_config_keep_their_old_form() {
        // Revisions written before config versioning decode, and a revision without
        // config references is written exactly as before.
        let old = serde_json::json!({"components": [component("x:1")]});
        let data: RevisionData = serde_json::from_value(old.clone()).unwrap();
        assert!(data.configs.is_empty());
        assert_eq!(serde_json::to_value(&data).unwrap(), old);
    }

    #[test]
    fn prunes_oldest_but_keeps_stable_and_current() {
        assert_eq!(to_prune(&[1, 2, 3, 4, 5], 3, &[5]), vec![2, 1]);
        assert_eq!(to_prune(&[1, 2, 3, 4, 5], 3, &[5, 1]), vec![2]);
        assert!(to_prune(&[1, 2], 10, &[]).is_empty());
    }

    #[test]
    fn numbers_never_go_back_even_after_pruning() {
        let status = ProductionStackStatus {
            current_revision: Some(7),
            stable_revision: Some(6),
            ..Default::default()
        };
        assert_eq!(next_number(&[], &status), 8);
        assert_eq!(next_number(&[], &Default::default()), 1);
    }
}
