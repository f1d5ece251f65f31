//! Components from existing workloads (`templateFrom`) on the real control plane, with the
//! demo app on the simulated node: a Deployment applied separately, as a chart would;
//! changes of its template roll out as revisions, a bad one rolls back to the recorded
//! template while the Deployment still holds the bad one, and the Deployment ends at 0.

mod support;

use deployctl_api::{ProductionStack, StackPhase};
use deployctl_harness::{require_sim_node, shared};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(120);

/// The chart's Deployment `web`, with `env` (YAML list items) appended to its container's
/// env; `replicas` only when the chart still sets it.
fn chart_deployment(env: &str, replicas: Option<i32>) -> Deployment {
    let replicas = replicas
        .map(|r| format!("  replicas: {r}\n"))
        .unwrap_or_default();
    serde_yaml_ng::from_str(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, labels: {{app: web}}}}
spec:
{replicas}  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{terminationGracePeriodSeconds: 5, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}{env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}
"
    ))
    .unwrap()
}

fn stack() -> ProductionStack {
    stack_yaml(
        "shop",
        "  rollout: {progressDeadline: 30s, rollbackDeadline: 60s, analysis: 3s, monitorInterval: 2s}
  components:
  - name: api
    templateFrom: {kind: Deployment, name: web}
    service: {ports: [{name: http, port: 80, targetPort: http}]}
    gates: [{name: http, interval: 500ms, failureLimit: 1, http: {path: /, port: http}}]
",
    )
}

fn env_of(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| format!("{}={}", e.name, e.value.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_referenced_deployment_rolls_out_rolls_back_and_is_scaled_to_zero() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("template-from").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    // The chart, applied by its own tool (its own field manager).
    let chart = |d: Deployment| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch(
                    "web",
                    &PatchParams::apply("chart").force(),
                    &Patch::Apply(&d),
                )
                .await
                .unwrap();
        }
    };
    let healthy_on = |rev: i64| {
        let stacks = stacks.clone();
        async move {
            wait_stack(
                &stacks,
                "shop",
                &format!("Healthy on revision {rev}"),
                T,
                |s| is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(rev),
            )
            .await
        }
    };
    let web_at_zero = || async {
        wait_until("the referenced Deployment to be scaled to 0", T, || async {
            let d = deployments.get("web").await.ok()?;
            (d.spec?.replicas == Some(0)).then_some(())
        })
        .await
    };

    chart(chart_deployment(", {name: RELEASE, value: '1'}", Some(2))).await;
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(stack()),
        )
        .await
        .unwrap();
    healthy_on(1).await;
    assert!(env_of(&deployments.get("shop-api").await.unwrap()).contains(&"RELEASE=1".into()));
    web_at_zero().await;

    // A new template in the chart (which no longer sets replicas, as Argo CD's
    // ignoreDifferences would have it): revision 2.
    chart(chart_deployment(", {name: RELEASE, value: '2'}", None)).await;
    healthy_on(2).await;
    assert!(env_of(&deployments.get("shop-api").await.unwrap()).contains(&"RELEASE=2".into()));

    // A bad one: revision 3 fails its gate and rolls back to the recorded template, though
    // the referenced Deployment still holds the bad one.
    chart(chart_deployment(
        ", {name: RELEASE, value: '3'}, {name: FAULT_ERROR_RATE, value: '1.0'}",
        None,
    ))
    .await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack)
    })
    .await;
    let st = s.status.unwrap();
    assert_eq!(
        (st.current_revision, st.stable_revision),
        (Some(3), Some(2))
    );
    let running = env_of(&deployments.get("shop-api").await.unwrap());
    assert!(running.contains(&"RELEASE=2".into()), "{running:?}");
    assert!(
        !running.iter().any(|e| e.starts_with("FAULT_ERROR_RATE")),
        "{running:?}"
    );
    let web = deployments.get("web").await.unwrap();
    assert!(
        env_of(&web).contains(&"FAULT_ERROR_RATE=1.0".into()),
        "never modified"
    );
    assert_eq!(web.spec.unwrap().replicas, Some(0));
}

#[tokio::test]
async fn a_missing_referenced_deployment_stalls_and_deletes_nothing() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("template-from-missing").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(stack()),
        )
        .await
        .unwrap();
    let s = wait_stack(&stacks, "shop", "Stalled", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.condition("Stalled"))
            .is_some_and(|c| c.status == "True")
    })
    .await;
    let msg = s
        .status
        .unwrap()
        .condition("Stalled")
        .unwrap()
        .message
        .clone();
    assert!(
        msg.contains("spec.components[0].templateFrom") && msg.contains("Deployment web"),
        "{msg}"
    );
    assert!(deployments.get_opt("shop-api").await.unwrap().is_none());
    // The chart arrives: the stack proceeds by itself.
    deployments
        .patch(
            "web",
            &PatchParams::apply("chart").force(),
            &Patch::Apply(chart_deployment("", Some(1))),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
}
