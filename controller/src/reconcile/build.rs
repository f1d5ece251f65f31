//! Builds the child objects of a component (workload, Service, claims) from the spec.
//!
//! Pure: a function of the stack and the component, tested without a cluster. Objects
//! are complete server-side-apply intents: every field listed is one deployctl owns.

use deployctl_api::labels;
use deployctl_api::{child_name, Component, DeploymentStrategyType, ProductionStack, WorkloadKind};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodTemplateSpec, Service, ServicePort, ServiceSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use std::collections::BTreeMap;

/// The objects one component is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentObjects {
    /// The workload.
    pub workload: Workload,
    /// The Service, when the component declares one.
    pub service: Option<Service>,
    /// Claims applied separately (Deployments only; a StatefulSet makes its own).
    pub claims: Vec<PersistentVolumeClaim>,
    /// The spec says an HPA manages the replicas (`autoscaling.hpa`).
    pub hpa: bool,
    /// The spec's replica count (the workload's may differ: a stop sets zero).
    pub replicas: i32,
}

/// A Deployment or a StatefulSet.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// A Deployment.
    Deployment(Box<Deployment>),
    /// A StatefulSet.
    StatefulSet(Box<StatefulSet>),
}

/// Labels that select a component's pods; never change for the life of the component
/// because workload selectors are immutable.
pub fn selector_labels(stack: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::STACK.to_string(), stack.to_string()),
        (labels::COMPONENT.to_string(), component.to_string()),
    ])
}

fn object_labels(stack: &str, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(stack, component);
    l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    l
}

/// Owner reference making the stack the controller of a child, so the garbage collector
/// removes children with the stack and watches map child events back to it.
pub fn owner_ref(stack: &ProductionStack) -> Option<OwnerReference> {
    stack.controller_owner_ref(&())
}

/// Name of the PersistentVolumeClaim of a Deployment component's volume claim.
pub fn claim_name(stack: &str, component: &str, claim: &str) -> String {
    format!("{}-{claim}", child_name(stack, component))
}

/// Builds every object of `component` for `stack`, annotated with the component's spec
/// digest and the revision that carries it.
pub fn component_objects(
    stack: &ProductionStack,
    component: &Component,
    spec_hash: &str,
    revision: i64,
) -> ComponentObjects {
    let stack_name = stack.metadata.name.clone().unwrap_or_default();
    let namespace = stack.metadata.namespace.clone();
    let name = child_name(&stack_name, &component.name);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: namespace.clone(),
        labels: Some(with_user(
            component.metadata.as_ref().map(|m| &m.labels),
            object_labels(&stack_name, &component.name),
        )),
        annotations: Some(with_user(
            component.metadata.as_ref().map(|m| &m.annotations),
            BTreeMap::from([
                (labels::SPEC_HASH.to_string(), spec_hash.to_string()),
                (labels::REVISION.to_string(), revision.to_string()),
            ]),
        )),
        owner_references: owner_ref(stack).map(|o| vec![o]),
        ..Default::default()
    };
    let selector = LabelSelector {
        match_labels: Some(selector_labels(&stack_name, &component.name)),
        ..Default::default()
    };
    let mut template = component.template.clone();
    add_pod_labels(&mut template, &stack_name, &component.name);
    // Which revision a pod runs, for gate queries and dashboards. Only components that are
    // applied get it, so a component unchanged in a new revision keeps its pods.
    if let Some(l) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.insert(labels::REVISION.to_string(), revision.to_string());
    }

    let (workload, claims) = match component.kind {
        WorkloadKind::Deployment => {
            let claims: Vec<PersistentVolumeClaim> = component
                .volume_claims
                .iter()
                .map(|vc| {
                    let claim = claim_name(&stack_name, &component.name, &vc.name);
                    add_volume(&mut template, &vc.name, &claim);
                    PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some(claim),
                            namespace: namespace.clone(),
                            // No owner reference: the claim (the data) must survive the
                            // stack unless spec.volumeClaimRetention says Delete, which the
                            // finalizer carries out.
                            labels: Some(with_user(
                                component.metadata.as_ref().map(|m| &m.labels),
                                object_labels(&stack_name, &component.name),
                            )),
                            annotations: component
                                .metadata
                                .as_ref()
                                .filter(|m| !m.annotations.is_empty())
                                .map(|m| m.annotations.clone()),
                            ..Default::default()
                        },
                        spec: Some(claim_spec(vc)),
                        status: None,
                    }
                })
                .collect();
            let d = Deployment {
                metadata: meta.clone(),
                spec: Some(DeploymentSpec {
                    replicas: Some(component.replicas()),
                    selector,
                    template,
                    strategy: Some(deployment_strategy(component.strategy.as_ref())),
                    min_ready_seconds: component.min_ready_seconds,
                    ..Default::default()
                }),
                status: None,
            };
            (Workload::Deployment(Box::new(d)), claims)
        }
        WorkloadKind::StatefulSet => {
            let templates: Vec<PersistentVolumeClaim> = component
                .volume_claims
                .iter()
                .map(|vc| PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(vc.name.clone()),
                        labels: Some(object_labels(&stack_name, &component.name)),
                        ..Default::default()
                    },
                    spec: Some(claim_spec(vc)),
                    status: None,
                })
                .collect();
            let s = StatefulSet {
                metadata: meta.clone(),
                spec: Some(StatefulSetSpec {
                    replicas: Some(component.replicas()),
                    selector,
                    service_name: Some(name.clone()),
                    template,
                    volume_claim_templates: (!templates.is_empty()).then_some(templates),
                    update_strategy: Some(statefulset_update_strategy(component)),
                    min_ready_seconds: component.min_ready_seconds,
                    ..Default::default()
                }),
                status: None,
            };
            (Workload::StatefulSet(Box::new(s)), Vec::new())
        }
    };

    let service = component.service.as_ref().map(|svc| Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&stack_name, &component.name)),
            ports: Some(
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: p.port,
                        target_port: Some(
                            p.target_port.clone().unwrap_or(IntOrString::Int(p.port)),
                        ),
                        protocol: Some(p.protocol.unwrap_or_default().as_str().into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    });

    ComponentObjects {
        workload,
        service,
        claims,
        hpa: component.hpa(),
        replicas: component.replicas(),
    }
}

/// `ours` with the user's entries added where they do not collide (validation refuses the
/// keys that would, so a collision here is only an unvalidated spec: ours win).
fn with_user(
    user: Option<&BTreeMap<String, String>>,
    ours: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all = user.cloned().unwrap_or_default();
    all.extend(ours);
    all
}

/// The Deployment strategy: the user's, or by default new pods ready before old ones go
/// (maxSurge 1, maxUnavailable 0: no loss of capacity). Unset fields of a rolling update
/// take these defaults too, not Kubernetes' 25%, so setting one does not quietly change
/// the other.
fn deployment_strategy(user: Option<&deployctl_api::DeploymentStrategy>) -> DeploymentStrategy {
    let type_ = user.and_then(|s| s.type_).unwrap_or_default();
    if type_ == DeploymentStrategyType::Recreate {
        return DeploymentStrategy {
            type_: Some(type_.as_str().into()),
            rolling_update: None,
        };
    }
    let ru = user.and_then(|s| s.rolling_update.as_ref());
    DeploymentStrategy {
        type_: Some(type_.as_str().into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(
                ru.and_then(|r| r.max_surge.clone())
                    .unwrap_or(IntOrString::Int(1)),
            ),
            max_unavailable: Some(
                ru.and_then(|r| r.max_unavailable.clone())
                    .unwrap_or(IntOrString::Int(0)),
            ),
        }),
    }
}

/// The StatefulSet update strategy: always a rolling update, partition 0 unless staged.
fn statefulset_update_strategy(component: &Component) -> StatefulSetUpdateStrategy {
    let ru = component
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref());
    StatefulSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateStatefulSetStrategy {
            partition: Some(component.partition()),
            max_unavailable: ru.and_then(|r| r.max_unavailable.clone()),
        }),
    }
}

/// The objects of a component with its workload scaled to `replicas` (the stable side of
/// a canary), everything else as [`component_objects`] builds it.
pub fn with_replicas(mut objects: ComponentObjects, replicas: i32) -> ComponentObjects {
    match &mut objects.workload {
        Workload::Deployment(d) => {
            if let Some(s) = d.spec.as_mut() {
                s.replicas = Some(replicas);
            }
        }
        Workload::StatefulSet(s) => {
            if let Some(s) = s.spec.as_mut() {
                s.replicas = Some(replicas);
            }
        }
    }
    objects
}

/// The canary Deployment of a Deployment component: the component's Deployment at
/// `revision`, named `<stack>-<component>-canary`, with `replicas` pods, and the label
/// `deployctl.dev/track: canary` added to its selector and pods. Its pods keep the
/// component's labels, so the component's Service sends them their share of requests.
/// None for a StatefulSet.
pub fn canary_deployment(
    stack: &ProductionStack,
    component: &Component,
    spec_hash: &str,
    revision: i64,
    replicas: i32,
) -> Option<Deployment> {
    let objects = component_objects(stack, component, spec_hash, revision);
    let Workload::Deployment(d) = objects.workload else {
        return None;
    };
    let mut d = *d;
    let stack_name = stack.metadata.name.clone().unwrap_or_default();
    let track = (labels::TRACK.to_string(), labels::TRACK_CANARY.to_string());
    d.metadata.name = Some(deployctl_api::canary_name(&stack_name, &component.name));
    d.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(track.0.clone(), track.1.clone());
    let spec = d.spec.as_mut()?;
    spec.replicas = Some(replicas);
    spec.selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(track.0.clone(), track.1.clone());
    spec.template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(track.0, track.1);
    Some(d)
}

fn claim_spec(vc: &deployctl_api::VolumeClaim) -> PersistentVolumeClaimSpec {
    let modes = if vc.access_modes.is_empty() {
        vec!["ReadWriteOnce".to_string()]
    } else {
        vc.access_modes
            .iter()
            .map(|m| m.as_str().to_string())
            .collect()
    };
    PersistentVolumeClaimSpec {
        access_modes: Some(modes),
        storage_class_name: vc.storage_class_name.clone(),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([("storage".to_string(), vc.size.clone())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn add_pod_labels(template: &mut PodTemplateSpec, stack: &str, component: &str) {
    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.extend(selector_labels(stack, component));
}

fn add_volume(template: &mut PodTemplateSpec, volume: &str, claim: &str) {
    let spec = template.spec.get_or_insert_with(Default::default);
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: volume.to_string(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_string(),
            read_only: None,
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(yaml: &str) -> ProductionStack {
        let mut s: ProductionStack = serde_yaml_ng::from_str(yaml).expect("fixture parses");
        s.metadata.uid = Some("uid-1".into());
        s
    }

    const STACK: &str = "
apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {name: shop, namespace: prod}
spec:
  components:
  - name: db
    kind: StatefulSet
    service: {ports: [{name: http, port: 8080}]}
    volumeClaims: [{name: data, size: 1Gi}]
    template:
      metadata: {labels: {team: data}}
      spec: {containers: [{name: db, image: 'deployctl.dev/demo-app:v1', volumeMounts: [{name: data, mountPath: /data}]}]}
  - name: api
    replicas: 2
    dependsOn: [db]
    volumeClaims: [{name: cache, size: 100Mi, storageClassName: fast, accessModes: [ReadWriteMany]}]
    template:
      spec: {containers: [{name: api, image: 'deployctl.dev/demo-app:v1', volumeMounts: [{name: cache, mountPath: /cache}]}]}
";

    #[test]
    fn pods_carry_their_revision_and_a_canary_has_its_own_selector() {
        let s = stack(STACK);
        let api = &s.spec.components[1];
        let objs = component_objects(&s, api, "abc", 3);
        let Workload::Deployment(stable) = &objs.workload else {
            panic!("expected a Deployment")
        };
        let pod_labels = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .clone()
                .unwrap()
        };
        assert_eq!(pod_labels(stable)[labels::REVISION], "3");
        assert!(!pod_labels(stable).contains_key(labels::TRACK));

        let canary = canary_deployment(&s, api, "def", 4, 1).unwrap();
        assert_eq!(canary.metadata.name.as_deref(), Some("shop-api-canary"));
        let spec = canary.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        let selector = spec.selector.match_labels.clone().unwrap();
        assert_eq!(selector[labels::TRACK], labels::TRACK_CANARY);
        assert_eq!(selector[labels::COMPONENT], "api");
        let pods = pod_labels(&canary);
        assert_eq!(pods[labels::REVISION], "4");
        assert_eq!(pods[labels::TRACK], labels::TRACK_CANARY);
        // The Service selects canary pods too: its selector is a subset of their labels.
        for (k, v) in &selector_labels("shop", "api") {
            assert_eq!(pods.get(k), Some(v), "{k}");
        }
        // The stable Deployment's selector stays what it was (selectors are immutable).
        assert_eq!(
            stable
                .spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .clone()
                .unwrap(),
            selector_labels("shop", "api")
        );
        let scaled = with_replicas(objs.clone(), 3);
        let Workload::Deployment(d) = &scaled.workload else {
            panic!("expected a Deployment")
        };
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    }

    #[test]
    fn deployment_gets_labels_owner_claims_and_surge_strategy() {
        let s = stack(STACK);
        let objs = component_objects(&s, &s.spec.components[1], "abc", 3);
        let Workload::Deployment(d) = &objs.workload else {
            panic!("expected a Deployment")
        };
        assert_eq!(d.metadata.name.as_deref(), Some("shop-api"));
        let ann = d.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[labels::SPEC_HASH], "abc");
        assert_eq!(ann[labels::REVISION], "3");
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ProductionStack", Some(true))
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(pod_labels[labels::COMPONENT], "api");
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap()[labels::STACK],
            "shop"
        );
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let vols = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap();
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "shop-api-cache"
        );
        assert_eq!(objs.claims.len(), 1);
        let claim = objs.claims[0].spec.as_ref().unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.access_modes.as_ref().unwrap(),
            &vec!["ReadWriteMany".to_string()]
        );
        assert!(
            objs.claims[0].metadata.owner_references.is_none(),
            "claims outlive the stack"
        );
        assert!(objs.service.is_none());
    }

    fn deployment(objs: &ComponentObjects) -> &DeploymentSpec {
        match &objs.workload {
            Workload::Deployment(d) => d.spec.as_ref().unwrap(),
            other => panic!("expected a Deployment, got {other:?}"),
        }
    }

    fn statefulset(objs: &ComponentObjects) -> &StatefulSetSpec {
        match &objs.workload {
            Workload::StatefulSet(s) => s.spec.as_ref().unwrap(),
            other => panic!("expected a StatefulSet, got {other:?}"),
        }
    }

    fn with(component: usize, yaml: &str) -> ComponentObjects {
        let mut s = stack(STACK);
        let extra: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let mut c = serde_json::to_value(&s.spec.components[component]).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        s.spec.components[component] = serde_json::from_value(c).unwrap();
        component_objects(&s, &s.spec.components[component], "h", 1)
    }

    #[test]
    fn labels_and_annotations_go_on_the_workload_service_and_claims_never_over_ours() {
        let objs = with(
            1,
            "{metadata: {labels: {team: web, app.kubernetes.io/managed-by: helm}, annotations: {owner: alice}}, service: {ports: [{port: 80}]}}",
        );
        let Workload::Deployment(d) = &objs.workload else {
            panic!()
        };
        let svc = objs.service.as_ref().unwrap();
        for (what, meta) in [
            ("workload", &d.metadata),
            ("service", &svc.metadata),
            ("claim", &objs.claims[0].metadata),
        ] {
            let l = meta.labels.as_ref().unwrap();
            assert_eq!(l["team"], "web", "{what}");
            assert_eq!(l[labels::MANAGED_BY], "deployctl", "{what}: ours win");
            assert_eq!(l[labels::COMPONENT], "api", "{what}");
            assert_eq!(
                meta.annotations.as_ref().unwrap()["owner"],
                "alice",
                "{what}"
            );
        }
        assert_eq!(
            d.metadata.annotations.as_ref().unwrap()[labels::REVISION],
            "1"
        );
        let pod = deployment(&objs).template.metadata.as_ref().unwrap();
        assert!(
            !pod.labels.as_ref().unwrap().contains_key("team"),
            "pod labels come from the template only"
        );
        // Without metadata the objects carry only ours, as before.
        let plain = with(1, "{}");
        assert_eq!(plain.claims[0].metadata.annotations, None);
    }

    #[test]
    fn deployment_strategy_defaults_to_no_loss_of_capacity_and_takes_the_users() {
        let s = |objs: &ComponentObjects| deployment(objs).strategy.clone().unwrap();
        let default = s(&with(1, "{}"));
        assert_eq!(default.type_.as_deref(), Some("RollingUpdate"));
        let ru = default.rolling_update.unwrap();
        assert_eq!(
            (ru.max_surge, ru.max_unavailable),
            (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
        );
        let ru = s(&with(1, "{strategy: {rollingUpdate: {maxUnavailable: 1}}}"))
            .rolling_update
            .unwrap();
        assert_eq!(
            (ru.max_surge, ru.max_unavailable),
            (Some(IntOrString::Int(1)), Some(IntOrString::Int(1))),
            "an unset field keeps deployctl's default, not Kubernetes' 25%"
        );
        let ru = s(&with(1, "{strategy: {rollingUpdate: {maxSurge: 50%}}}"))
            .rolling_update
            .unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::String("50%".into())));
        let recreate = s(&with(1, "{strategy: {type: Recreate}}"));
        assert_eq!(
            (recreate.type_.as_deref(), recreate.rolling_update),
            (Some("Recreate"), None)
        );
    }

    #[test]
    fn statefulset_update_strategy_stages_by_partition() {
        let u = |objs: &ComponentObjects| {
            statefulset(objs)
                .update_strategy
                .clone()
                .unwrap()
                .rolling_update
                .unwrap()
        };
        let default = u(&with(0, "{}"));
        assert_eq!(
            (default.partition, default.max_unavailable),
            (Some(0), None)
        );
        let staged = u(&with(
            0,
            "{updateStrategy: {rollingUpdate: {partition: 1, maxUnavailable: 2}}}",
        ));
        assert_eq!(
            (staged.partition, staged.max_unavailable),
            (Some(1), Some(IntOrString::Int(2)))
        );
    }

    #[test]
    fn min_ready_seconds_goes_on_either_kind() {
        assert_eq!(
            deployment(&with(1, "{minReadySeconds: 5}")).min_ready_seconds,
            Some(5)
        );
        assert_eq!(
            statefulset(&with(0, "{minReadySeconds: 7}")).min_ready_seconds,
            Some(7)
        );
        assert_eq!(deployment(&with(1, "{}")).min_ready_seconds, None);
    }

    #[test]
    fn statefulset_gets_claim_templates_and_its_service() {
        let s = stack(STACK);
        let objs = component_objects(&s, &s.spec.components[0], "h", 1);
        let Workload::StatefulSet(st) = &objs.workload else {
            panic!("expected a StatefulSet")
        };
        let spec = st.spec.as_ref().unwrap();
        assert_eq!(spec.service_name.as_deref(), Some("shop-db"));
        let tpl = &spec.volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(tpl.metadata.name.as_deref(), Some("data"));
        assert_eq!(
            tpl.spec.as_ref().unwrap().access_modes.as_ref().unwrap(),
            &vec!["ReadWriteOnce".to_string()]
        );
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(pod_labels["team"], "data", "user labels are kept");
        assert!(objs.claims.is_empty());
        let svc = objs.service.unwrap();
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.target_port, Some(IntOrString::Int(8080)));
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
    }
}
