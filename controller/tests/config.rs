//! Config is part of the revision, on the real control plane with the demo app on the
//! simulated node: a ConfigMap change alone rolls out behind the gates and, when bad, rolls
//! back to a copy of the previous content; copies live as long as a revision uses them; a
//! missing required ConfigMap stalls the stack until it exists.

mod support;

use deployctl_api::{ConfigVersion, ProductionStack, StackPhase};
use deployctl_harness::{require_sim_node, shared};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(120);

/// One component `api` whose FAULT_ERROR_RATE comes from the ConfigMap `settings`
/// (`cm` names it) and an HTTP gate that fails when requests fail.
fn stack(name: &str, cm: &str) -> ProductionStack {
    stack_yaml(
        name,
        &format!(
            "  revisionHistoryLimit: 1
  rollout: {{progressDeadline: 30s, rollbackDeadline: 60s, analysis: 3s, monitorInterval: 2s}}
  components:
  - name: api
    template: {{spec: {{terminationGracePeriodSeconds: 5, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}, {{name: FAULT_ERROR_RATE, valueFrom: {{configMapKeyRef: {{name: {cm}, key: FAULT_ERROR_RATE}}}}}}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}}}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    gates: [{{name: http, interval: 500ms, failureLimit: 1, http: {{path: /, port: http}}}}]
"
        ),
    )
}

fn settings(name: &str, rate: &str, note: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("FAULT_ERROR_RATE".to_string(), rate.to_string()),
            ("NOTE".to_string(), note.to_string()),
        ])),
        ..Default::default()
    }
}

/// The ConfigMap name the running Deployment's FAULT_ERROR_RATE comes from.
async fn running_config(deployments: &Api<Deployment>, name: &str) -> String {
    let d = deployments.get(name).await.unwrap();
    let env = d.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    env.iter()
        .find(|e| e.name == "FAULT_ERROR_RATE")
        .and_then(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
        .map(|r| r.name.clone())
        .expect("FAULT_ERROR_RATE comes from a ConfigMap")
}

fn rate(cm: &ConfigMap) -> String {
    cm.data.as_ref().unwrap()["FAULT_ERROR_RATE"].clone()
}

/// The config versions a revision recorded.
fn recorded(rev: &ControllerRevision) -> Vec<ConfigVersion> {
    let data = &rev.data.as_ref().unwrap().0;
    serde_json::from_value(data["configs"]["api"].clone()).unwrap_or_default()
}

#[tokio::test]
async fn a_bad_configmap_change_rolls_back_to_the_previous_content() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("config").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns.name());
    let apply_cm = |cm: ConfigMap| {
        let cms = cms.clone();
        async move {
            cms.patch(
                &cm.metadata.name.clone().unwrap(),
                &PatchParams::apply("tester").force(),
                &Patch::Apply(&cm),
            )
            .await
            .unwrap();
        }
    };

    apply_cm(settings("settings", "0.0", "first")).await;
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(stack("shop", "settings")),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
    })
    .await;
    let good_copy = running_config(&deployments, "shop-api").await;
    assert!(
        good_copy.starts_with("settings-") && good_copy != "settings",
        "the pods read a copy: {good_copy}"
    );
    let copy = cms.get(&good_copy).await.unwrap();
    assert_eq!(copy.immutable, Some(true));
    assert_eq!(rate(&copy), "0.0");
    let rev1 = revisions
        .get(&format!("shop-{}", {
            let s = stacks.get("shop").await.unwrap();
            s.status.unwrap().current_revision_hash.unwrap()
        }))
        .await
        .unwrap();
    assert_eq!(
        recorded(&rev1)
            .iter()
            .map(|v| (v.name.as_str(), v.copy.as_str()))
            .collect::<Vec<_>>(),
        vec![("settings", good_copy.as_str())]
    );
    let owners = copy.metadata.owner_references.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].uid, rev1.metadata.uid.clone().unwrap());

    // A bad value, applied to the ConfigMap alone: a new revision that fails its gate.
    apply_cm(settings("settings", "1.0", "bad")).await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack)
    })
    .await;
    let st = s.status.unwrap();
    assert_eq!(
        st.current_revision,
        Some(2),
        "the ConfigMap change was revision 2"
    );
    assert_eq!(st.stable_revision, Some(1));
    let last = st.last_rollback.unwrap();
    assert_eq!((last.from_revision, last.to_revision), (2, 1));
    assert_eq!(
        running_config(&deployments, "shop-api").await,
        good_copy,
        "the pods are back on the copy of the previous content"
    );
    assert_eq!(rate(&cms.get(&good_copy).await.unwrap()), "0.0");
    assert_eq!(
        rate(&cms.get("settings").await.unwrap()),
        "1.0",
        "the user's ConfigMap holds what the user wrote"
    );
    let bad_copy = cms
        .list(&ListParams::default().labels("deployctl.dev/config-source=settings"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|c| rate(c) == "1.0")
        .expect("revision 2 has its own copy");
    let bad_copy = bad_copy.metadata.name.unwrap();

    // A good change again: revision 3 rolls out; with revisionHistoryLimit 1 revision 2 is
    // pruned, and the garbage collector takes its copy with it (revision 1's stays: it is
    // still the stable revision when 3 is created).
    apply_cm(settings("settings", "0.0", "third")).await;
    wait_stack(&stacks, "shop", "Healthy on revision 3", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(3)
    })
    .await;
    wait_until("the copy only revision 2 used to be deleted", T, || async {
        cms.get_opt(&bad_copy)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(cms.get_opt(&good_copy).await.unwrap().is_some());
}

#[tokio::test]
async fn a_missing_required_configmap_stalls_until_it_exists() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("config-missing").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    stacks
        .patch(
            "late",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(stack("late", "later")),
        )
        .await
        .unwrap();
    let s = wait_stack(&stacks, "late", "Stalled", T, |s| {
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
        msg.contains(
            "spec.components[0].template.spec.containers[0].env[1].valueFrom.configMapKeyRef"
        ) && msg.contains("ConfigMap later"),
        "the condition names the field and the object: {msg}"
    );
    assert!(
        deployments.get_opt("late-api").await.unwrap().is_none(),
        "nothing is applied"
    );
    // It proceeds by itself once the ConfigMap exists (the watch wakes it).
    cms.create(&PostParams::default(), &settings("later", "0.0", "x"))
        .await
        .unwrap();
    wait_stack(&stacks, "late", "Healthy", T, is_ready).await;
}
