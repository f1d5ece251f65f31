//! Reading stacks and their revisions from the API server, with the errors a person can
//! act on: a missing stack suggests close names in the namespace, a missing CRD says so.

use crate::cluster::Cluster;
use crate::error::{Call, CliError};
use deployctl_api::{labels, Component, ProductionStack};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::ListParams;
use kube::core::Request;
use kube::{Api, Resource, ResourceExt};
use serde::Deserialize;

/// Resource name of stacks, for messages.
pub const STACKS: &str = "productionstacks.deployctl.dev";
/// Resource name of operations, for messages.
pub const OPERATIONS: &str = "stackoperations.deployctl.dev";
/// Resource name of revisions, for messages.
pub const REVISIONS: &str = "controllerrevisions.apps";

fn call<'a>(cluster: &'a Cluster, verb: &'a str, resource: &'a str, action: String) -> Call<'a> {
    Call {
        verb,
        resource,
        namespace: Some(&cluster.namespace),
        action,
    }
}

/// Reads one stack; a missing one becomes [`CliError::NotFound`] with suggestions.
pub async fn get(cluster: &Cluster, name: &str) -> Result<ProductionStack, CliError> {
    let api: Api<ProductionStack> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match api.get(name).await {
        Ok(s) => Ok(s),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(not_found(cluster, name).await),
        Err(e) => Err(cluster.error(
            e,
            &call(cluster, "get", STACKS, format!("reading stack \"{name}\"")),
        )),
    }
}

/// Reads one stack as the API server returns it (every field, even ones this CLI does
/// not know), for `-o json|yaml`.
pub async fn get_raw(cluster: &Cluster, name: &str) -> Result<serde_json::Value, CliError> {
    let url = ProductionStack::url_path(&(), Some(&cluster.namespace));
    let req = Request::new(url)
        .get(name, &Default::default())
        .map_err(|e| CliError::Api {
            action: format!("reading stack \"{name}\""),
            message: e.to_string(),
        })?;
    match cluster.client.request::<serde_json::Value>(req).await {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(not_found(cluster, name).await),
        Err(e) => Err(cluster.error(
            e,
            &call(cluster, "get", STACKS, format!("reading stack \"{name}\"")),
        )),
    }
}

/// Lists the stacks of the namespace (or all namespaces) as the API server returns the
/// list (a `ProductionStackList`).
pub async fn list_raw(
    cluster: &Cluster,
    all_namespaces: bool,
    selector: Option<&str>,
) -> Result<serde_json::Value, CliError> {
    let ns = (!all_namespaces).then_some(cluster.namespace.as_str());
    let url = ProductionStack::url_path(&(), ns);
    let mut params = ListParams::default();
    if let Some(s) = selector {
        params = params.labels(s);
    }
    let req = Request::new(url).list(&params).map_err(|e| CliError::Api {
        action: "listing stacks".into(),
        message: e.to_string(),
    })?;
    match cluster.client.request::<serde_json::Value>(req).await {
        Ok(v) => Ok(v),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(CliError::ApiNotInstalled {
            server: cluster.target.server.clone(),
            resource: STACKS.into(),
        }),
        Err(e) => Err(cluster.error(
            e,
            &Call {
                verb: "list",
                resource: STACKS,
                namespace: ns,
                action: "listing stacks".into(),
            },
        )),
    }
}

/// The typed items of a raw list; items this CLI cannot read are skipped rather than
/// failing the whole table.
pub fn items(list: &serde_json::Value) -> Vec<ProductionStack> {
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

/// The not-found error for `name`, with the close names that exist in the namespace; or
/// the missing-CRD error when stacks are not served at all.
async fn not_found(cluster: &Cluster, name: &str) -> CliError {
    let api: Api<ProductionStack> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let names: Vec<String> = match api.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items.iter().map(|m| m.name_any()).collect(),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return CliError::ApiNotInstalled {
                server: cluster.target.server.clone(),
                resource: STACKS.into(),
            }
        }
        // Not allowed to list, or a hiccup: the error without suggestions is still right.
        Err(_) => Vec::new(),
    };
    CliError::NotFound {
        kind: "stack",
        name: name.to_string(),
        namespace: cluster.namespace.clone(),
        suggestions: suggest(name, &names),
    }
}

/// Names close to `wanted`, closest first, at most three: those within a small edit
/// distance, and those that contain it or are contained in it (`shop` → `shop-api`).
pub fn suggest(wanted: &str, names: &[String]) -> Vec<String> {
    let limit = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter(|n| n.as_str() != wanted)
        .filter_map(|n| {
            let d = strsim::levenshtein(wanted, n);
            let related = n.contains(wanted) || wanted.contains(n.as_str());
            (d <= limit || related).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, n)| n.clone()).collect()
}

/// One revision of a stack, from its ControllerRevision.
#[derive(Clone, Debug)]
pub struct Revision {
    /// Its number.
    pub number: i64,
    /// The ControllerRevision's name.
    pub name: String,
    /// Digest of its components (label `deployctl.dev/revision-hash`).
    pub hash: Option<String>,
    /// The stack generation that first produced it (annotation `deployctl.dev/generation`).
    pub generation: Option<i64>,
    /// When it was created.
    pub created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Its components; `None` if the data could not be read.
    pub components: Option<Vec<Component>>,
    /// The ConfigMaps and Secrets each component reads at this revision (names and
    /// digests), by component.
    pub configs: std::collections::BTreeMap<String, Vec<deployctl_api::ConfigVersion>>,
}

#[derive(Deserialize)]
struct RevisionData {
    components: Vec<Component>,
    #[serde(default)]
    configs: std::collections::BTreeMap<String, Vec<deployctl_api::ConfigVersion>>,
}

impl Revision {
    /// Its components as the user wrote them: config references name the user's
    /// objects again instead of their per-revision copies.
    pub fn unresolved(&self) -> Option<Vec<Component>> {
        let components = self.components.as_ref()?;
        let copies: std::collections::BTreeMap<&str, &str> = self
            .configs
            .values()
            .flatten()
            .map(|v| (v.copy.as_str(), v.name.as_str()))
            .collect();
        if copies.is_empty() {
            return Some(components.clone());
        }
        fn rename(v: &mut serde_json::Value, copies: &std::collections::BTreeMap<&str, &str>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m.iter_mut() {
                        match x {
                            serde_json::Value::String(s) if k == "name" || k == "secretName" => {
                                if let Some(n) = copies.get(s.as_str()) {
                                    *s = n.to_string();
                                }
                            }
                            _ => rename(x, copies),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| rename(x, copies)),
                _ => {}
            }
        }
        components
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c).ok()?;
                if let Some(t) = v.get_mut("template") {
                    rename(t, &copies);
                }
                serde_json::from_value(v).ok()
            })
            .collect()
    }
}

impl Revision {
    /// Reads a ControllerRevision written by the controller.
    pub fn from_controller_revision(r: &ControllerRevision) -> Revision {
        let data = r
            .data
            .as_ref()
            .and_then(|d| serde_json::from_value::<RevisionData>(d.0.clone()).ok());
        Revision {
            number: r.revision,
            name: r.name_any(),
            hash: r.labels().get(labels::REVISION_HASH).cloned(),
            generation: r
                .annotations()
                .get(labels::REVISION_GENERATION)
                .and_then(|g| g.parse().ok()),
            created: r.metadata.creation_timestamp.clone(),
            configs: data.as_ref().map(|d| d.configs.clone()).unwrap_or_default(),
            components: data.map(|d| d.components),
        }
    }
}

/// The stack's revisions, oldest first. Revisions left by an earlier stack of the same
/// name (another owner uid) are ignored, as the controller does.
pub async fn revisions(
    cluster: &Cluster,
    stack: &ProductionStack,
) -> Result<Vec<Revision>, CliError> {
    let api: Api<ControllerRevision> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let name = stack.name_any();
    let lp = ListParams::default().labels(&format!("{}={}", labels::STACK, name));
    let list = api.list(&lp).await.map_err(|e| {
        cluster.error(
            e,
            &call(
                cluster,
                "list",
                REVISIONS,
                format!("listing the revisions of stack \"{name}\""),
            ),
        )
    })?;
    let uid = stack.meta().uid.clone();
    let mut revs: Vec<Revision> = list
        .items
        .iter()
        .filter(|r| {
            uid.is_none()
                || r.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .map(Revision::from_controller_revision)
        .collect();
    revs.sort_by_key(|r| r.number);
    Ok(revs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn suggestions_are_close_or_related_names() {
        let all = names(&["shop-api", "shpo", "billing", "shops", "payments"]);
        assert_eq!(suggest("shop", &all), names(&["shops", "shpo", "shop-api"]));
        assert_eq!(suggest("billng", &all), names(&["billing"]));
        assert!(suggest("zzz", &all).is_empty());
        assert!(suggest("shop", &names(&["shop"])).is_empty());
    }

    #[test]
    fn revisions_read_number_hash_generation_and_components() {
        let r: ControllerRevision = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {
                "name": "shop-abc", "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"deployctl.dev/stack": "shop", "deployctl.dev/revision-hash": "abc"},
                "annotations": {"deployctl.dev/generation": "3"}
            },
            "revision": 2,
            "data": {"components": [{"name": "api", "template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}]}
        }))
        .unwrap();
        let rev = Revision::from_controller_revision(&r);
        assert_eq!(rev.number, 2);
        assert_eq!(rev.hash.as_deref(), Some("abc"));
        assert_eq!(rev.generation, Some(3));
        assert_eq!(rev.components.unwrap()[0].name, "api");
    }

    #[test]
    fn raw_list_items_are_typed_and_unreadable_ones_skipped() {
        let list = serde_json::json!({"items": [
            {"apiVersion": "deployctl.dev/v1alpha1", "kind": "ProductionStack",
             "metadata": {"name": "shop"}, "spec": {"components": []}},
            {"apiVersion": "deployctl.dev/v1alpha1", "kind": "ProductionStack",
             "metadata": {"name": "bad"}, "spec": {"components": "nope"}}
        ]});
        let stacks = items(&list);
        assert_eq!(stacks.len(), 1);
        assert_eq!(stacks[0].name_any(), "shop");
    }
}
