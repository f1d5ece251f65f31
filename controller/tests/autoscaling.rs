//! Autoscaled components and workload strategies on the real control plane, with the demo
//! app running on the simulated node. The cluster's kube-controller-manager runs the HPA
//! controller: without a metrics API it still lifts a target below `minReplicas` up to
//! it, and otherwise leaves the count alone, which is all these tests need.

mod support;

use deployctl_api::{ProductionStack, StackPhase};
use deployctl_harness::{require_sim_node, shared, TestNamespace};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(120);

struct Env {
    client: Client,
    ns: TestNamespace,
    stacks: Api<ProductionStack>,
    _controller: ControllerProcess,
}

async fn setup(prefix: &str) -> Env {
    let env = shared();
    let client = install_crd(env).await;
    let ns = env.namespace(prefix).await;
    let controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    Env {
        stacks: Api::namespaced(client.clone(), ns.name()),
        client,
        ns,
        _controller: controller,
    }
}

impl Env {
    async fn apply(&self, s: &ProductionStack) {
        self.stacks
            .patch(
                "shop",
                &PatchParams::apply("tester").force(),
                &Patch::Apply(s),
            )
            .await
            .unwrap();
    }

    async fn healthy_on(&self, rev: i64) -> ProductionStack {
        wait_stack(
            &self.stacks,
            "shop",
            &format!("Healthy on revision {rev}"),
            T,
            |s| is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(rev),
        )
        .await
    }

    /// An autoscaling/v2 HorizontalPodAutoscaler `name` of the apps/v1 `kind` `target`,
    /// between `min` and `max` replicas (no metrics: the cluster's HPA controller brings a
    /// count below `min` up to it and otherwise keeps it).
    async fn create_hpa(&self, name: &str, kind: &str, target: &str, min: i32, max: i32) {
        let hpa: HorizontalPodAutoscaler = serde_yaml_ng::from_str(&format!(
            "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: {kind}, name: {target}}}
  minReplicas: {min}
  maxReplicas: {max}"
        ))
        .unwrap();
        self.api::<HorizontalPodAutoscaler>()
            .create(&PostParams::default(), &hpa)
            .await
            .unwrap();
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.ns.name())
    }
}

/// `api` (replicas 1, autoscaled) with an HTTP gate; `env` is appended to its container's.
fn autoscaled(env: &str) -> ProductionStack {
    api_stack(env, "replicas: 1\n    autoscaling: {hpa: true}")
}

/// `api` with these fields (`replicas`, `autoscaling`) and an HTTP gate.
fn api_stack(env: &str, scaling: &str) -> ProductionStack {
    stack_yaml(
        "shop",
        &format!(
            "  rollout: {{progressDeadline: 60s, rollbackDeadline: 90s, analysis: 3s}}
  components:
  - name: api
    {scaling}
    template: {tpl}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    gates: [{{name: http, interval: 500ms, failureLimit: 1, http: {{path: /, port: http}}}}]
",
            tpl = template(env),
        ),
    )
}

/// The demo app with its data on an emptyDir; `env` is appended to its env list.
fn template(env: &str) -> String {
    format!(
        "{{spec: {{terminationGracePeriodSeconds: 5, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}{env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}}}"
    )
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn component_status(s: &ProductionStack, name: &str) -> deployctl_api::ComponentStatus {
    s.status
        .as_ref()
        .and_then(|st| st.components.iter().find(|c| c.name == name).cloned())
        .unwrap_or_else(|| panic!("no status of component {name}"))
}

#[tokio::test]
async fn an_hpa_keeps_its_count_through_a_rollout_a_scale_and_a_rollback() {
    require_sim_node!(shared());
    let e = setup("hpa").await;
    let deployments: Api<Deployment> = e.api();
    e.create_hpa("api", "Deployment", "shop-api", 3, 5).await;
    e.apply(&autoscaled("")).await;

    // Every count the Deployment has from the moment it first reaches 3: deployctl must
    // never write the spec's 1 back over the HPA's.
    let seen: Arc<Mutex<Vec<i32>>> = Arc::default();
    let watcher = {
        use futures::StreamExt;
        use kube::runtime::{watcher, WatchStreamExt};
        let seen = seen.clone();
        let stream = watcher(
            deployments.clone(),
            watcher::Config::default().fields("metadata.name=shop-api"),
        )
        .default_backoff()
        .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(d)) = stream.next().await {
                let mut seen = seen.lock().unwrap();
                if !seen.is_empty() || replicas(&d) == 3 {
                    seen.push(replicas(&d));
                }
            }
        })
    };

    let s = wait_stack(&e.stacks, "shop", "Healthy with the HPA's 3 pods", T, |s| {
        is_ready(s)
            && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
            && component_status(s, "api").ready_replicas == 3
    })
    .await;
    let api = component_status(&s, "api");
    assert_eq!(api.autoscaled_by.as_deref(), Some("api"), "{api:?}");
    assert_eq!(api.replicas, 3);

    // A new revision, and meanwhile a scale as an HPA makes it: an Update of the scale
    // subresource under another field manager.
    e.apply(&autoscaled(", {name: RELEASE, value: '2'}")).await;
    deployments
        .patch_scale(
            "shop-api",
            &PatchParams {
                field_manager: Some("hpa-like".into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    let s = e.healthy_on(2).await;
    assert_eq!(component_status(&s, "api").replicas, 4);
    assert_eq!(replicas(&deployments.get("shop-api").await.unwrap()), 4);

    // A failing revision rolls back by itself, and the count stays the HPA's.
    e.apply(&autoscaled(", {name: FAULT_ERROR_RATE, value: '1.0'}"))
        .await;
    let s = wait_stack(&e.stacks, "shop", "RolledBack and Available", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack)
            && component_status(s, "api").phase == deployctl_api::ComponentPhase::Available
    })
    .await;
    assert_eq!(
        s.status
            .as_ref()
            .unwrap()
            .last_rollback
            .as_ref()
            .map(|r| r.to_revision),
        Some(2)
    );
    let d = deployments.get("shop-api").await.unwrap();
    assert_eq!(replicas(&d), 4, "the rollback kept the HPA's count");
    assert!(
        !deployctl_controller::reconcile::autoscale::applies_replicas(
            d.metadata.managed_fields.as_deref().unwrap_or_default(),
            deployctl_api::labels::FIELD_MANAGER
        ),
        "deployctl's apply must not own spec.replicas: {:#?}",
        d.metadata.managed_fields
    );

    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|&n| n >= 3),
        "the count went below the HPA's minimum after it got there: {seen:?}"
    );
    let events = e.api::<Event>().list(&ListParams::default()).await.unwrap();
    let conflicts: Vec<String> = events
        .items
        .iter()
        .filter_map(|ev| ev.message.clone())
        .filter(|m| m.to_lowercase().contains("conflict"))
        .collect();
    assert!(conflicts.is_empty(), "conflict Events: {conflicts:?}");

    // Autoscaling off: the HPA goes, the flag goes, and the spec's count comes back
    // although another manager set the count last.
    e.api::<HorizontalPodAutoscaler>()
        .delete("api", &Default::default())
        .await
        .unwrap();
    e.apply(&api_stack(", {name: RELEASE, value: '4'}", "replicas: 2"))
        .await;
    let s = e.healthy_on(4).await;
    let api = component_status(&s, "api");
    assert_eq!((api.replicas, api.autoscaled_by), (2, None));
    let d = deployments.get("shop-api").await.unwrap();
    assert_eq!(replicas(&d), 2);
    assert!(
        !d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("deployctl.dev/autoscaled"),
        "the autoscaled mark goes with the flag"
    );
}

#[tokio::test]
async fn a_partition_stages_a_statefulset_and_a_deployment_takes_its_strategy() {
    require_sim_node!(shared());
    let e = setup("strategy").await;
    let stack = |release: &str| {
        let env = format!(", {{name: RELEASE, value: '{release}'}}");
        stack_yaml(
            "shop",
            &format!(
                "  rollout: {{progressDeadline: 60s, analysis: 1s}}
  components:
  - name: db
    kind: StatefulSet
    replicas: 2
    updateStrategy: {{rollingUpdate: {{partition: 1}}}}
    minReadySeconds: 1
    template: {tpl}
    service: {{ports: [{{name: http, port: 8080}}]}}
  - name: api
    replicas: 2
    metadata: {{labels: {{team: web}}, annotations: {{owner: alice}}}}
    strategy: {{rollingUpdate: {{maxSurge: 0, maxUnavailable: 1}}}}
    template: {tpl}
",
                tpl = template(&env),
            ),
        )
    };
    e.apply(&stack("1")).await;
    e.healthy_on(1).await;
    e.apply(&stack("2")).await;
    e.healthy_on(2).await;

    let release = |p: &Pod| {
        p.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .find(|v| v.name == "RELEASE")
            .and_then(|v| v.value.clone())
    };
    let pods: Api<Pod> = e.api();
    let db0 = pods.get("shop-db-0").await.unwrap();
    let db1 = pods.get("shop-db-1").await.unwrap();
    assert_eq!(
        (release(&db0).as_deref(), release(&db1).as_deref()),
        (Some("1"), Some("2")),
        "only the ordinal at or above the partition takes the new revision"
    );
    let sts = e.api::<StatefulSet>().get("shop-db").await.unwrap();
    assert_eq!(sts.spec.unwrap().min_ready_seconds, Some(1));

    let d = e.api::<Deployment>().get("shop-api").await.unwrap();
    assert_eq!(d.metadata.labels.as_ref().unwrap()["team"], "web");
    assert_eq!(d.metadata.annotations.as_ref().unwrap()["owner"], "alice");
    let st = d.status.unwrap();
    assert_eq!(
        (st.updated_replicas, st.available_replicas),
        (Some(2), Some(2)),
        "maxSurge 0 / maxUnavailable 1 rolled both pods"
    );
}

#[tokio::test]
async fn a_component_stopped_for_its_snapshot_starts_again_with_the_hpas_count() {
    require_sim_node!(shared());
    let e = setup("hpa-data").await;
    let deployments: Api<Deployment> = e.api();
    // Files data, quiesced: the component is scaled to zero for each snapshot.
    let stack = |release: &str| {
        stack_yaml(
            "shop",
            &format!(
                "  rollout: {{progressDeadline: 60s, analysis: 1s}}
  components:
  - name: cache
    replicas: 1
    autoscaling: {{hpa: true}}
    volumeClaims: [{{name: data, size: 10Mi}}]
    data: {{volume: data}}
    template: {tpl}
",
                tpl = demo_template("v1", &format!(", {{name: RELEASE, value: '{release}'}}")),
            ),
        )
    };
    e.create_hpa("cache", "Deployment", "shop-cache", 2, 5)
        .await;
    e.apply(&stack("1")).await;
    wait_stack(&e.stacks, "shop", "Healthy with the HPA's 2 pods", T, |s| {
        is_ready(s) && component_status(s, "cache").ready_replicas == 2
    })
    .await;
    // The HPA settles on 3 (within its bounds it keeps what it has without metrics): a
    // count that neither the spec (1) nor the HPA's minimum (2) would bring back.
    deployments
        .patch_scale(
            "shop-cache",
            &PatchParams {
                field_manager: Some("hpa-like".into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    wait_stack(&e.stacks, "shop", "Healthy with 3 pods", T, |s| {
        is_ready(s) && component_status(s, "cache").ready_replicas == 3
    })
    .await;

    e.apply(&stack("2")).await;
    let s = e.healthy_on(2).await;
    let events = e.api::<Event>().list(&ListParams::default()).await.unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|ev| ev.reason.as_deref() == Some("ComponentQuiesced")),
        "the component was stopped for the snapshot"
    );
    assert_eq!(component_status(&s, "cache").replicas, 3);
    let d = deployments.get("shop-cache").await.unwrap();
    assert_eq!(replicas(&d), 3, "started again with the count it had");
    assert!(
        !d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(deployctl_controller::reconcile::autoscale::REPLICAS_BEFORE_STOP),
        "the remembered count goes once it is back"
    );
}

#[tokio::test]
async fn an_autoscaled_statefulsets_snapshot_covers_every_replica_the_hpa_runs() {
    require_sim_node!(shared());
    let e = setup("hpa-sts").await;
    let stack = |release: &str| {
        stack_yaml(
            "shop",
            &format!(
                "  rollout: {{progressDeadline: 60s, analysis: 1s}}
  components:
  - name: db
    kind: StatefulSet
    replicas: 1
    autoscaling: {{hpa: true}}
    service: {{ports: [{{name: http, port: 8080}}]}}
    volumeClaims: [{{name: data, size: 10Mi}}]
    data: {{volume: data}}
    template: {tpl}
",
                tpl = demo_template("v1", &format!(", {{name: RELEASE, value: '{release}'}}")),
            ),
        )
    };
    e.create_hpa("db", "StatefulSet", "shop-db", 2, 3).await;
    e.apply(&stack("1")).await;
    wait_stack(&e.stacks, "shop", "Healthy with the HPA's 2 pods", T, |s| {
        is_ready(s) && component_status(s, "db").ready_replicas == 2
    })
    .await;

    e.apply(&stack("2")).await;
    let s = e.healthy_on(2).await;
    assert_eq!(component_status(&s, "db").replicas, 2);
    let sts = e.api::<StatefulSet>().get("shop-db").await.unwrap();
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(2));
    let snapshots = e
        .api::<deployctl_api::StackSnapshot>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let snap = snapshots
        .items
        .iter()
        .find(|s| s.spec.component == "db")
        .expect("a snapshot before the rollout");
    let ordinals: Vec<i32> = snap
        .status
        .as_ref()
        .map(|st| st.replicas.iter().map(|r| r.ordinal).collect())
        .unwrap_or_default();
    assert_eq!(
        ordinals,
        vec![0, 1],
        "both running replicas' data, not the spec's one"
    );
}
