//! Server-side apply of arbitrary YAML manifests (any kind, many documents, `List`s),
//! resolved through API discovery, as `kubectl apply --server-side` does. Used by the
//! sandbox's `--apply` and by tests that load fixture files.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde::Deserialize;

use crate::error::{HarnessError, Result};

/// How long to wait for a kind to appear in discovery (a CRD applied just before).
const DISCOVERY_WAIT: Duration = Duration::from_secs(30);

/// Splits multi-document YAML into objects: empty documents are skipped and `List`s are
/// expanded into their items.
pub fn parse_documents(yaml: &str, source_name: &str) -> Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(document).map_err(|e| HarnessError::Apply {
            source_name: source_name.to_owned(),
            message: format!("invalid YAML: {e}"),
        })?;
        collect_objects(value, source_name, &mut objects)?;
    }
    Ok(objects)
}

fn collect_objects(
    value: serde_json::Value,
    source_name: &str,
    out: &mut Vec<DynamicObject>,
) -> Result<()> {
    if value.is_null() {
        return Ok(());
    }
    let is_list = value.get("kind").and_then(|k| k.as_str()) == Some("List");
    if is_list {
        if let Some(items) = value.get("items").and_then(|i| i.as_array()) {
            for item in items.clone() {
                collect_objects(item, source_name, out)?;
            }
        }
        return Ok(());
    }
    let object: DynamicObject = serde_json::from_value(value).map_err(|e| HarnessError::Apply {
        source_name: source_name.to_owned(),
        message: format!("not a Kubernetes object: {e}"),
    })?;
    if object.types.is_none() || object.metadata.name.is_none() {
        return Err(HarnessError::Apply {
            source_name: source_name.to_owned(),
            message: "every object needs apiVersion, kind and metadata.name".into(),
        });
    }
    out.push(object);
    Ok(())
}

/// Server-side applies every object of `yaml` with `field_manager` (forcing conflicts, as
/// a one-shot tool should); namespaced objects without a namespace go to
/// `default_namespace`. Returns `kind/name` (or `kind/namespace/name`) of each applied
/// object, in order.
pub async fn apply_yaml(
    client: &kube::Client,
    yaml: &str,
    source_name: &str,
    field_manager: &str,
    default_namespace: &str,
) -> Result<Vec<String>> {
    let objects = parse_documents(yaml, source_name)?;
    let mut discovery = run_discovery(client).await?;
    let cel_dropped = !server_keeps_cel_rules(client).await?;
    let mut applied = Vec::with_capacity(objects.len());
    for mut object in objects {
        let gvk = object
            .types
            .as_ref()
            .map(GroupVersionKind::try_from)
            .transpose()
            .map_err(|e| HarnessError::Apply {
                source_name: source_name.to_owned(),
                message: format!("bad apiVersion: {e}"),
            })?
            .ok_or_else(|| HarnessError::Apply {
                source_name: source_name.to_owned(),
                message: "object without apiVersion/kind".into(),
            })?;
        let (resource, caps) = resolve(client, &mut discovery, &gvk, source_name).await?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = object
                    .metadata
                    .namespace
                    .get_or_insert_with(|| default_namespace.to_owned())
                    .clone();
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
            Scope::Cluster => {
                object.metadata.namespace = None;
                Api::all_with(client.clone(), &resource)
            }
        };
        if cel_dropped && gvk.kind == "CustomResourceDefinition" {
            strip_cel_rules(&mut object.data);
        }
        // Server-side apply must not carry these; they come from `kubectl get -o yaml`.
        object.metadata.managed_fields = None;
        object.metadata.resource_version = None;
        object.metadata.uid = None;
        let params = PatchParams::apply(field_manager).force();
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .map_err(|e| HarnessError::kube(format!("applying {} {name}", gvk.kind), e))?;
        applied.push(match &object.metadata.namespace {
            Some(ns) => format!("{}/{ns}/{name}", gvk.kind),
            None => format!("{}/{name}", gvk.kind),
        });
    }
    Ok(applied)
}

/// Whether the API server knows `x-kubernetes-validations` (CEL rules, 1.25+). An older
/// one drops the field from a CRD it creates, but refuses it in a server-side apply (the
/// field is not in its schema), so for those servers the harness leaves the rules out:
/// the same CRD the server would have stored.
async fn server_keeps_cel_rules(client: &kube::Client) -> Result<bool> {
    let v = client
        .apiserver_version()
        .await
        .map_err(|e| HarnessError::kube("reading the server version", e))?;
    let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(u32::MAX);
    Ok(v.major != "1" || minor >= 25)
}

/// Removes every `x-kubernetes-validations` from a CRD's schemas.
fn strip_cel_rules(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            for child in map.values_mut() {
                strip_cel_rules(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_cel_rules),
        _ => {}
    }
}

async fn run_discovery(client: &kube::Client) -> Result<Discovery> {
    Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| HarnessError::kube("API discovery", e))
}

/// Finds the resource for `gvk`, re-running discovery until it appears: a CRD applied
/// earlier in the same file takes a moment to be served.
async fn resolve(
    client: &kube::Client,
    discovery: &mut Discovery,
    gvk: &GroupVersionKind,
    source_name: &str,
) -> Result<(ApiResource, ApiCapabilities)> {
    let started = Instant::now();
    loop {
        if let Some(found) = discovery.resolve_gvk(gvk) {
            return Ok(found);
        }
        if started.elapsed() >= DISCOVERY_WAIT {
            return Err(HarnessError::Apply {
                source_name: source_name.to_owned(),
                message: format!(
                    "the API server does not serve {}/{} {} (waited {DISCOVERY_WAIT:?})",
                    gvk.group, gvk.version, gvk.kind
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        *discovery = run_discovery(client).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_empty_docs() {
        let yaml = "
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: b, namespace: x}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: c}
";
        let objects = parse_documents(yaml, "test.yaml").expect("parses");
        let kinds: Vec<_> = objects
            .iter()
            .map(|o| o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default())
            .collect();
        assert_eq!(kinds, ["ConfigMap", "Secret", "Deployment"]);
        assert_eq!(objects[1].metadata.namespace.as_deref(), Some("x"));
    }

    #[test]
    fn objects_without_names_are_rejected() {
        let err =
            parse_documents("apiVersion: v1\nkind: ConfigMap\n", "f.yaml").expect_err("no name");
        assert!(err.to_string().contains("f.yaml"), "{err}");
    }
}
