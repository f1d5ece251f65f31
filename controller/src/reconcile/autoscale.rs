//! Autoscaled components: which HorizontalPodAutoscaler targets a component's workload,
//! and how deployctl leaves the replica count to it. The workload is created with the
//! spec's `replicas`; after that deployctl's server-side apply no longer lists the field.
//! Dropping a field from an apply deletes it when deployctl was its only owner (the count
//! would fall back to 1), so the ownership is first handed over as Kubernetes documents
//! ("Transferring ownership"): the live count is applied under a second field manager,
//! which then owns the field too, and only then does deployctl's apply leave it out.
//!
//! A component stopped for its data (scaled to zero) remembers its count in an annotation
//! and gets exactly that back when it starts again; the HPA does not act on a workload
//! scaled to zero, so it does not fight the stop.

use crate::error::{Error, Result};
use crate::reconcile::build::Workload;
use crate::reconcile::plan::WorkloadState;
use deployctl_api::labels::{self, FIELD_MANAGER};
use deployctl_api::{Component, WorkloadKind};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// Field manager that takes over `spec.replicas` from deployctl's own manager.
pub const HANDOVER_MANAGER: &str = "deployctl-replicas-handover";
/// Field manager of the count changes deployctl makes to stop and start an autoscaled
/// component (Updates, as an autoscaler's are: they never conflict with the HPA's).
pub const SCALE_MANAGER: &str = "deployctl-scale";
/// Annotation on a stopped autoscaled workload: the count to give back when it starts.
pub const REPLICAS_BEFORE_STOP: &str = "deployctl.dev/replicas-before-stop";
/// Annotation on an autoscaled component's workload, applied with it: once the component
/// is no longer autoscaled, its count is taken back from whoever set it last (the next
/// apply forces `spec.replicas`, and drops the annotation).
pub const AUTOSCALED: &str = "deployctl.dev/autoscaled";

/// The HorizontalPodAutoscaler among `hpas` (of the workload's namespace) whose
/// `scaleTargetRef` is the apps/v1 workload `name` of `kind`; the first by name if
/// several are (Kubernetes refuses to act on a target with two, and says so on them).
pub fn autoscaler<'a>(
    hpas: impl IntoIterator<Item = &'a HorizontalPodAutoscaler>,
    kind: WorkloadKind,
    name: &str,
) -> Option<String> {
    let kind = kind.to_string();
    hpas.into_iter()
        .filter(|h| {
            h.spec.as_ref().is_some_and(|s| {
                let t = &s.scale_target_ref;
                t.name == name
                    && t.kind == kind
                    && t.api_version.as_deref().is_none_or(|v| v == "apps/v1")
            })
        })
        .filter_map(|h| h.metadata.name.clone())
        .min()
}

/// Whether `manager`'s server-side apply owns `spec.replicas` of the object.
pub fn applies_replicas(fields: &[ManagedFieldsEntry], manager: &str) -> bool {
    fields.iter().any(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.subresource.as_deref().unwrap_or_default().is_empty()
            && e.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
    })
}

/// What the live workload of an autoscaled component says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Live {
    /// `spec.replicas` now.
    pub replicas: i32,
    /// Marked stopped by deployctl.
    pub stopped: bool,
    /// The count it had before it was stopped.
    pub remembered: Option<i32>,
    /// deployctl's apply still owns `spec.replicas`.
    pub deployctl_owns_replicas: bool,
}

impl Live {
    fn of(meta: &ObjectMeta, replicas: Option<i32>) -> Self {
        let a = meta.annotations.as_ref();
        Live {
            replicas: replicas.unwrap_or(1),
            stopped: a.is_some_and(|a| a.contains_key(labels::STOPPED)),
            remembered: a
                .and_then(|a| a.get(REPLICAS_BEFORE_STOP))
                .and_then(|r| r.parse().ok()),
            deployctl_owns_replicas: applies_replicas(
                meta.managed_fields.as_deref().unwrap_or_default(),
                FIELD_MANAGER,
            ),
        }
    }
}

/// The steps around one apply of an autoscaled component's workload, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaSteps {
    /// Set the count to this first (starting again after a stop).
    pub scale_first: Option<i32>,
    /// Hand `spec.replicas` over at this count before deployctl's apply leaves it out.
    pub hand_over: Option<i32>,
    /// deployctl's apply lists `spec.replicas` (only when it creates the workload).
    pub apply_replicas: bool,
    /// The count the stopped workload gives back later (annotation in the apply).
    pub remember: Option<i32>,
    /// Set the count to this after the apply (a stop: zero).
    pub scale_after: Option<i32>,
}

/// Decides the steps for an apply of an autoscaled component's workload: `live` is the
/// workload as it is (None: not created yet), `stopping` whether this apply stops it, and
/// `spec_replicas` the count of the component's spec (what a workload stopped before it
/// was autoscaled goes back to).
pub fn replica_steps(live: Option<&Live>, stopping: bool, spec_replicas: i32) -> ReplicaSteps {
    let Some(live) = live else {
        // Created with the spec's count; the HPA takes it from there.
        return ReplicaSteps {
            apply_replicas: true,
            ..Default::default()
        };
    };
    let mut steps = ReplicaSteps::default();
    let mut count = live.replicas;
    if stopping {
        steps.remember = Some(if live.stopped {
            live.remembered.unwrap_or(spec_replicas)
        } else {
            live.replicas
        });
        steps.scale_after = Some(0);
    } else if live.stopped && live.replicas == 0 {
        count = live.remembered.unwrap_or(spec_replicas);
        steps.scale_first = Some(count);
    }
    if live.deployctl_owns_replicas {
        steps.hand_over = Some(count);
    }
    steps
}

/// `component` with the replica count its data is copied for: an autoscaled component's
/// live count (the one it had before a stop, while stopped), else its spec's. Each replica
/// of a StatefulSet has its own data, so a snapshot must cover the replicas that run.
pub fn counted(component: &Component, live: Option<&WorkloadState>) -> Component {
    let mut c = component.clone();
    let Some(w) = live.filter(|w| component.hpa() || w.autoscaled_by.is_some()) else {
        return c;
    };
    let count = if w.stopped {
        w.replicas_before_stop
    } else {
        Some(w.replicas)
    };
    if let Some(n) = count.filter(|n| *n > 0) {
        c.replicas = Some(n);
    }
    c
}

/// The HorizontalPodAutoscalers of namespace `ns`: from the controller's cache when it has
/// one, else listed.
pub async fn hpas(ctx: &crate::context::Context, ns: &str) -> Result<Vec<HorizontalPodAutoscaler>> {
    Ok(match &ctx.caches {
        Some(c) => c
            .hpas
            .state()
            .iter()
            .filter(|h| h.metadata.namespace.as_deref() == Some(ns))
            .map(|h| (**h).clone())
            .collect(),
        None => {
            Api::<HorizontalPodAutoscaler>::namespaced(ctx.client.clone(), ns)
                .list(&ListParams::default())
                .await?
                .items
        }
    })
}

/// Whether an apply conflict (the API server's message) is about `spec.replicas` alone,
/// e.g. `Apply failed with 1 conflict: conflict with "kube-controller-manager" using
/// apps/v1: .spec.replicas`.
pub fn only_replicas_conflict(message: &str) -> bool {
    message.contains("with 1 conflict:") && message.trim_end().ends_with(": .spec.replicas")
}

/// Whether a workload carries [`AUTOSCALED`]: deployctl left its count to an autoscaler.
pub fn was_autoscaled(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(AUTOSCALED))
}

/// What [`prepare`] found and left to do.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prepared {
    /// The component is autoscaled (flag or HPA).
    pub autoscaled: bool,
    /// The count to set after the apply (a stop).
    pub scale_after: Option<i32>,
}

/// Prepares the apply of `workload` when the component is autoscaled (`hpa` in its spec,
/// or an HPA targeting it): carries out the steps before the apply, takes `spec.replicas`
/// out of the object unless it creates the workload, and says the count to set after the
/// apply (a stop), if any. Does nothing for a component that is not autoscaled.
pub async fn prepare(
    ctx: &crate::context::Context,
    ns: &str,
    workload: &mut Workload,
    hpa: bool,
    spec_replicas: i32,
) -> Result<Prepared> {
    let (kind, name) = match workload {
        Workload::Deployment(d) => (WorkloadKind::Deployment, d.metadata.name.clone()),
        Workload::StatefulSet(s) => (WorkloadKind::StatefulSet, s.metadata.name.clone()),
    };
    let name = name.unwrap_or_default();
    if !hpa && autoscaler(&hpas(ctx, ns).await?, kind, &name).is_none() {
        return Ok(Prepared::default());
    }
    let client = &ctx.client;
    let live = match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&name)
            .await?
            .map(|d| Live::of(&d.metadata, d.spec.and_then(|s| s.replicas))),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(&name)
            .await?
            .map(|s| Live::of(&s.metadata, s.spec.and_then(|s| s.replicas))),
    };
    let (meta, replicas) = match workload {
        Workload::Deployment(d) => (&mut d.metadata, d.spec.as_mut().map(|s| &mut s.replicas)),
        Workload::StatefulSet(s) => (&mut s.metadata, s.spec.as_mut().map(|s| &mut s.replicas)),
    };
    let stopping = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(labels::STOPPED));
    let steps = replica_steps(live.as_ref(), stopping, spec_replicas);
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(AUTOSCALED.into(), "true".into());
    if let Some(n) = steps.remember {
        annotations.insert(REPLICAS_BEFORE_STOP.into(), n.to_string());
    }
    if !steps.apply_replicas {
        if let Some(r) = replicas {
            *r = None;
        }
    }
    if let Some(n) = steps.scale_first {
        scale(client, ns, kind, &name, n).await?;
    }
    if let Some(n) = steps.hand_over {
        match kind {
            WorkloadKind::Deployment => hand_over::<Deployment>(client, ns, &name, n).await?,
            WorkloadKind::StatefulSet => hand_over::<StatefulSet>(client, ns, &name, n).await?,
        }
        tracing::info!(namespace = ns, workload = %name, replicas = n, "handed spec.replicas over to the autoscaler");
    }
    Ok(Prepared {
        autoscaled: true,
        scale_after: steps.scale_after,
    })
}

/// Sets the workload's count as an autoscaler does: an Update under [`SCALE_MANAGER`].
pub async fn scale(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    replicas: i32,
) -> Result<()> {
    let patch = Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}}));
    let pp = PatchParams {
        field_manager: Some(SCALE_MANAGER.into()),
        ..Default::default()
    };
    match kind {
        WorkloadKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(name, &pp, &patch)
                .await?;
        }
        WorkloadKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch(name, &pp, &patch)
                .await?;
        }
    }
    Ok(())
}

/// Applies `spec.replicas: replicas` (the live count) under [`HANDOVER_MANAGER`], never
/// forcing: the field then has a second owner, and deployctl's next apply can leave it out
/// without the API server deleting it.
async fn hand_over<K>(client: &Client, ns: &str, name: &str, replicas: i32) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let body = serde_json::json!({
        "apiVersion": <K as k8s_openapi::Resource>::API_VERSION,
        "kind": <K as k8s_openapi::Resource>::KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas},
    });
    match Api::<K>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(HANDOVER_MANAGER),
            &Patch::Apply(body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict {
            kind: <K as k8s_openapi::Resource>::KIND,
            name: name.to_string(),
            message: e.message,
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(
        name: &str,
        kind: &str,
        target: &str,
        api_version: Option<&str>,
    ) -> HorizontalPodAutoscaler {
        let mut h: HorizontalPodAutoscaler = serde_yaml_ng::from_str(&format!(
            "metadata: {{name: {name}, namespace: prod}}
spec: {{maxReplicas: 5, scaleTargetRef: {{kind: {kind}, name: {target}}}}}"
        ))
        .unwrap();
        h.spec.as_mut().unwrap().scale_target_ref.api_version = api_version.map(Into::into);
        h
    }

    #[test]
    fn an_autoscaled_components_data_covers_the_replicas_it_runs() {
        let spec: Component = serde_yaml_ng::from_str(
            "{name: db, kind: StatefulSet, replicas: 1, autoscaling: {hpa: true}, template: {}}",
        )
        .unwrap();
        let running = WorkloadState {
            replicas: 3,
            ..Default::default()
        };
        assert_eq!(counted(&spec, Some(&running)).replicas(), 3);
        let stopped = WorkloadState {
            replicas: 0,
            stopped: true,
            replicas_before_stop: Some(3),
            ..Default::default()
        };
        assert_eq!(counted(&spec, Some(&stopped)).replicas(), 3);
        assert_eq!(counted(&spec, None).replicas(), 1, "not created yet");
        // Not autoscaled (no flag, no HPA): the spec's count.
        let mut plain = spec.clone();
        plain.autoscaling = None;
        assert_eq!(counted(&plain, Some(&running)).replicas(), 1);
        let detected = WorkloadState {
            autoscaled_by: Some("db".into()),
            ..running
        };
        assert_eq!(counted(&plain, Some(&detected)).replicas(), 3);
    }

    #[test]
    fn only_a_conflict_on_replicas_alone_can_be_taken_back() {
        assert!(only_replicas_conflict(
            r#"Apply failed with 1 conflict: conflict with "kube-controller-manager" using apps/v1: .spec.replicas"#
        ));
        assert!(!only_replicas_conflict(
            r#"Apply failed with 2 conflicts: conflicts with "kubectl" using apps/v1:
- .spec.replicas
- .spec.template.spec.containers[name="app"].image"#
        ));
        assert!(!only_replicas_conflict(
            r#"Apply failed with 1 conflict: conflict with "kubectl" using apps/v1: .spec.minReadySeconds"#
        ));
    }

    #[test]
    fn the_autoscaler_is_the_hpa_whose_target_is_the_workload() {
        let hpas = [
            hpa("web", "Deployment", "shop-web", Some("apps/v1")),
            hpa("other-kind", "StatefulSet", "shop-api", Some("apps/v1")),
            hpa(
                "other-group",
                "Deployment",
                "shop-api",
                Some("argoproj.io/v1alpha1"),
            ),
            hpa("api-b", "Deployment", "shop-api", Some("apps/v1")),
            hpa("api-a", "Deployment", "shop-api", None),
        ];
        assert_eq!(
            autoscaler(&hpas, WorkloadKind::Deployment, "shop-api").as_deref(),
            Some("api-a")
        );
        assert_eq!(
            autoscaler(&hpas, WorkloadKind::StatefulSet, "shop-api").as_deref(),
            Some("other-kind")
        );
        assert_eq!(autoscaler(&hpas, WorkloadKind::Deployment, "shop-db"), None);
    }

    fn entries(yaml: &str) -> Vec<ManagedFieldsEntry> {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn only_deployctls_own_apply_of_spec_replicas_counts_as_owning_it() {
        let created = entries(
            "- {manager: deployctl-controller, operation: Apply, apiVersion: apps/v1, fieldsType: FieldsV1, fieldsV1: {'f:spec': {'f:replicas': {}, 'f:template': {}}}}
- {manager: kube-controller-manager, operation: Update, subresource: status, apiVersion: apps/v1, fieldsType: FieldsV1, fieldsV1: {'f:status': {'f:replicas': {}}}}",
        );
        assert!(applies_replicas(&created, FIELD_MANAGER));
        let handed_over = entries(
            "- {manager: deployctl-controller, operation: Apply, apiVersion: apps/v1, fieldsType: FieldsV1, fieldsV1: {'f:spec': {'f:template': {}}}}
- {manager: deployctl-replicas-handover, operation: Apply, apiVersion: apps/v1, fieldsType: FieldsV1, fieldsV1: {'f:spec': {'f:replicas': {}}}}
- {manager: kube-controller-manager, operation: Update, subresource: scale, apiVersion: apps/v1, fieldsType: FieldsV1, fieldsV1: {'f:spec': {'f:replicas': {}}}}",
        );
        assert!(!applies_replicas(&handed_over, FIELD_MANAGER));
        // An Update of deployctl's (not its apply) does not make the apply own the field.
        let updated = entries(
            "- {manager: deployctl-controller, operation: Update, apiVersion: apps/v1, fieldsType: FieldsV1, fieldsV1: {'f:spec': {'f:replicas': {}}}}",
        );
        assert!(!applies_replicas(&updated, FIELD_MANAGER));
        assert!(!applies_replicas(&[], FIELD_MANAGER));
    }

    fn live(replicas: i32, owns: bool) -> Live {
        Live {
            replicas,
            deployctl_owns_replicas: owns,
            ..Default::default()
        }
    }

    #[test]
    fn a_new_workload_starts_with_the_specs_count_and_an_existing_one_keeps_the_hpas() {
        assert_eq!(
            replica_steps(None, false, 1),
            ReplicaSteps {
                apply_replicas: true,
                ..Default::default()
            }
        );
        // First apply after the HPA scaled it: hand the live count over, then leave it out.
        assert_eq!(
            replica_steps(Some(&live(3, true)), false, 1),
            ReplicaSteps {
                hand_over: Some(3),
                ..Default::default()
            }
        );
        // Handed over already: nothing but leaving the field out.
        assert_eq!(
            replica_steps(Some(&live(3, false)), false, 1),
            ReplicaSteps::default()
        );
    }

    #[test]
    fn a_stopped_autoscaled_workload_gets_its_own_count_back() {
        let stop = replica_steps(Some(&live(4, false)), true, 1);
        assert_eq!((stop.remember, stop.scale_after), (Some(4), Some(0)));
        let stopped = Live {
            replicas: 0,
            stopped: true,
            remembered: Some(4),
            deployctl_owns_replicas: false,
        };
        // Stopping again (a retried pass) keeps the first count, not zero.
        assert_eq!(replica_steps(Some(&stopped), true, 1).remember, Some(4));
        let start = replica_steps(Some(&stopped), false, 1);
        assert_eq!(
            start,
            ReplicaSteps {
                scale_first: Some(4),
                ..Default::default()
            }
        );
        // Stopped before it was autoscaled (deployctl applied 0): back to the spec's count,
        // and the field handed over at that count.
        let old_stop = Live {
            replicas: 0,
            stopped: true,
            remembered: None,
            deployctl_owns_replicas: true,
        };
        assert_eq!(
            replica_steps(Some(&old_stop), false, 2),
            ReplicaSteps {
                scale_first: Some(2),
                hand_over: Some(2),
                ..Default::default()
            }
        );
    }
}
