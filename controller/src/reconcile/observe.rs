//! Reads what the cluster runs for each component: the workload's deployctl annotations,
//! its rollout progress, and, when it is not available, why (pod waiting reasons), so the
//! status tells a person at 3 a.m. what is wrong without a second command.

use crate::error::Result;
use crate::reconcile::build::selector_labels;
use crate::reconcile::plan::WorkloadState;
use deployctl_api::{child_name, labels, ProductionStack, WorkloadKind};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Observes the workloads of these components, given as (name, kind) (absent from the
/// map when the workload does not exist).
pub async fn workloads(
    ctx: &crate::context::Context,
    stack: &ProductionStack,
    components: &[(String, WorkloadKind)],
) -> Result<BTreeMap<String, WorkloadState>> {
    let ns = stack.namespace().unwrap_or_default();
    let mut unique: Vec<&(String, WorkloadKind)> = Vec::with_capacity(components.len());
    for c in components {
        if !unique.iter().any(|u| u.0 == c.0) {
            unique.push(c);
        }
    }
    // One request per component, all at once: on a busy API server each waits its turn,
    // and a reconcile should wait for the slowest, not the sum.
    let hpas = crate::reconcile::autoscale::hpas(ctx, &ns).await?;
    let states = futures::future::try_join_all(
        unique
            .iter()
            .map(|(component, kind)| workload(ctx, &ns, stack, component, *kind, &hpas)),
    )
    .await?;
    Ok(unique
        .into_iter()
        .zip(states)
        .filter_map(|((component, _), state)| Some((component.clone(), state?)))
        .collect())
}

/// Observes one component's workload; None when it does not exist (or is not the stack's).
/// Read from the controller's cache when it has one (no request), else with a GET.
async fn workload(
    ctx: &crate::context::Context,
    ns: &str,
    stack: &ProductionStack,
    component: &str,
    kind: WorkloadKind,
    hpas: &[k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler],
) -> Result<Option<WorkloadState>> {
    let client = &ctx.client;
    let stack_name = stack.name_any();
    let name = child_name(&stack_name, component);
    let caches = ctx.caches.as_ref();
    let remembered_of = |a: &BTreeMap<String, String>| {
        a.get(crate::reconcile::autoscale::REPLICAS_BEFORE_STOP)
            .and_then(|r| r.parse::<i32>().ok())
    };
    let (state, remembered) = match kind {
        WorkloadKind::Deployment => read(caches.map(|c| &c.deployments), client, ns, &name)
            .await?
            .filter(|d| owned_by(d.owner_references(), stack))
            .map(|d| (Some(deployment_state(&d)), remembered_of(d.annotations())))
            .unwrap_or_default(),
        WorkloadKind::StatefulSet => read(caches.map(|c| &c.statefulsets), client, ns, &name)
            .await?
            .filter(|s| owned_by(s.owner_references(), stack))
            .map(|s| (Some(statefulset_state(&s)), remembered_of(s.annotations())))
            .unwrap_or_default(),
    };
    let Some(mut state) = state else {
        return Ok(None);
    };
    // The canary Deployment of a component with canary steps; read from the cache when
    // there is one, so it costs nothing for the others either.
    if kind == WorkloadKind::Deployment {
        let canary = deployctl_api::canary_name(&stack_name, component);
        state.canary = read(caches.map(|c| &c.deployments), client, ns, &canary)
            .await?
            .filter(|d| owned_by(d.owner_references(), stack))
            .map(|d| Box::new(deployment_state(&d)));
    }
    state.autoscaled_by = crate::reconcile::autoscale::autoscaler(hpas, kind, &name);
    state.replicas_before_stop = remembered;
    // A stopped component is drained only once no pod of it is left at all:
    // terminating pods still write.
    if state.stopped {
        state.drained =
            state.replicas == 0 && pod_count(client, ns, &stack_name, component).await? == 0;
    }
    // Pods explain an unavailable workload only once its controller has seen the
    // spec and pods are wanted; listing them costs a read of the namespace's pods.
    if !state.available && state.replicas > 0 && state.seen {
        let pods = pod_problems(client, ns, &stack_name, component).await?;
        if pods.is_some() {
            state.message = pods;
        }
    }
    Ok(Some(state))
}

/// Object `name` in `ns`: from `store` when there is one, else with a GET.
async fn read<K>(
    store: Option<&Store<K>>,
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<Arc<K>>>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(match store {
        Some(s) => s.get(&ObjectRef::new(name).within(ns)),
        None => Api::<K>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(Arc::new),
    })
}

fn owned_by(
    refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    stack: &ProductionStack,
) -> bool {
    refs.iter()
        .any(|o| Some(&o.uid) == stack.metadata.uid.as_ref())
}

fn stopped<K: ResourceExt>(o: &K) -> bool {
    o.annotations().contains_key(labels::STOPPED)
}

fn annotations<K: ResourceExt>(o: &K) -> (Option<String>, Option<i64>) {
    let a = o.annotations();
    (
        a.get(labels::SPEC_HASH).cloned(),
        a.get(labels::REVISION).and_then(|r| r.parse().ok()),
    )
}

/// Rollout progress of a Deployment, as `kubectl rollout status` judges it.
pub fn deployment_state(d: &Deployment) -> WorkloadState {
    let (spec_hash, revision) = annotations(d);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let seen = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let available_pods = st.available_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = seen && updated == want && available_pods >= want && total == want;
    let seen_spec = seen;
    let message = (!available).then(|| {
        st.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| {
                format!("{updated} of {want} pods updated, {available_pods} available")
            })
    });
    WorkloadState {
        kind: WorkloadKind::Deployment,
        spec_hash,
        revision,
        replicas: want,
        ready_replicas: st.ready_replicas.unwrap_or(0),
        updated_replicas: updated,
        available,
        seen: seen_spec,
        message,
        stopped: stopped(d),
        drained: false,
        canary: None,
        autoscaled_by: None,
        replicas_before_stop: None,
    }
}

/// Rollout progress of a StatefulSet, as `kubectl rollout status` judges it.
pub fn statefulset_state(s: &StatefulSet) -> WorkloadState {
    let (spec_hash, revision) = annotations(s);
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = s.status.clone().unwrap_or_default();
    let seen = st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let same_revision = st.update_revision.is_none() || st.update_revision == st.current_revision;
    // A partition stages the rollout: only the pods at or above it take the new revision,
    // and the StatefulSet never reaches one revision while it is set.
    let partition = s
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let rolled = if partition > 0 {
        updated >= (want - partition).max(0)
    } else {
        updated == want && same_revision
    };
    // availableReplicas honours minReadySeconds; older API servers leave it unset.
    let available_pods = st.available_replicas.unwrap_or(ready);
    let available = seen
        && ready == want
        && available_pods >= want
        && st.replicas == want
        && (want == 0 || rolled);
    WorkloadState {
        kind: WorkloadKind::StatefulSet,
        spec_hash,
        revision,
        replicas: want,
        ready_replicas: ready,
        updated_replicas: updated,
        available,
        seen,
        message: (!available).then(|| format!("{ready} of {want} pods ready, {updated} updated")),
        stopped: stopped(s),
        drained: false,
        canary: None,
        autoscaled_by: None,
        replicas_before_stop: None,
    }
}

/// Pods of a component, terminating ones included.
async fn pod_count(client: &Client, ns: &str, stack: &str, component: &str) -> Result<usize> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&component_selector(stack, component)))
        .await?;
    Ok(pods.items.len())
}

fn component_selector(stack: &str, component: &str) -> String {
    selector_labels(stack, component)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The first pod problem worth telling a person (image pull, crash loop, not ready).
async fn pod_problems(
    client: &Client,
    ns: &str,
    stack: &str,
    component: &str,
) -> Result<Option<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&component_selector(stack, component)))
        .await?;
    Ok(pods.items.iter().find_map(pod_problem))
}

/// Describes what is wrong with a pod, if anything.
pub fn pod_problem(p: &Pod) -> Option<String> {
    let name = p.name_any();
    let st = p.status.as_ref()?;
    for cs in st.container_statuses.iter().flatten() {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            if reason != "ContainerCreating" && !reason.is_empty() {
                let restarts = if cs.restart_count > 0 {
                    format!(" (restarted {} times)", cs.restart_count)
                } else {
                    String::new()
                };
                let msg = w
                    .message
                    .clone()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                return Some(format!(
                    "pod {name}: container {} {reason}{restarts}{msg}",
                    cs.name
                ));
            }
        }
        if !cs.ready && cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some() {
            return Some(format!(
                "pod {name}: container {} is running but not ready",
                cs.name
            ));
        }
    }
    if st.phase.as_deref() == Some("Pending") {
        if let Some(c) = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            return Some(format!(
                "pod {name} is not scheduled: {}",
                c.message.clone().unwrap_or_default()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_is_available_only_when_fully_rolled() {
        let mut d: Deployment = serde_yaml_ng::from_str(
            "metadata: {name: x, generation: 2, annotations: {deployctl.dev/spec-hash: h, deployctl.dev/revision: '3'}}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 3, updatedReplicas: 2, availableReplicas: 2, readyReplicas: 3}",
        )
        .unwrap();
        let s = deployment_state(&d);
        assert!(!s.available, "an old pod is still there");
        assert_eq!((s.spec_hash.as_deref(), s.revision), (Some("h"), Some(3)));
        d.status.as_mut().unwrap().replicas = Some(2);
        assert!(deployment_state(&d).available);
        d.metadata.generation = Some(3);
        assert!(
            !deployment_state(&d).available,
            "the Deployment controller has not seen the spec"
        );
    }

    #[test]
    fn a_partitioned_statefulset_is_rolled_out_when_the_pods_above_the_partition_are() {
        let mut s: StatefulSet = serde_yaml_ng::from_str(
            "metadata: {name: x, generation: 2}
spec: {replicas: 2, selector: {}, template: {}, serviceName: x, updateStrategy: {rollingUpdate: {partition: 1}}}
status: {observedGeneration: 2, replicas: 2, readyReplicas: 2, availableReplicas: 2, updatedReplicas: 0, currentRevision: a, updateRevision: b}",
        )
        .unwrap();
        assert!(
            !statefulset_state(&s).available,
            "ordinal 1 is not updated yet"
        );
        s.status.as_mut().unwrap().updated_replicas = Some(1);
        assert!(
            statefulset_state(&s).available,
            "ordinal 0 stays on the old revision"
        );
        s.status.as_mut().unwrap().available_replicas = Some(1);
        assert!(
            !statefulset_state(&s).available,
            "a pod still inside minReadySeconds is not available"
        );
        // Without a partition, every pod must be on the one revision.
        s.spec.as_mut().unwrap().update_strategy = None;
        s.status.as_mut().unwrap().available_replicas = Some(2);
        assert!(!statefulset_state(&s).available);
    }

    #[test]
    fn pod_problem_names_the_waiting_reason() {
        let p: Pod = serde_yaml_ng::from_str(
            "metadata: {name: shop-api-1}
status:
  phase: Pending
  containerStatuses:
  - {name: api, image: x, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff, message: 'Back-off pulling image x'}}}",
        )
        .unwrap();
        assert_eq!(
            pod_problem(&p).as_deref(),
            Some("pod shop-api-1: container api ImagePullBackOff: Back-off pulling image x")
        );
    }
}
