//! A ProductionStack on the real control plane with the simulated node: creation in
//! dependency order, revisions, invalid specs, deletion.

mod support;

use deployctl_api::{labels, ProductionStack, StackPhase};
use deployctl_harness::{require_sim_node, shared};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

const READY_TIMEOUT: Duration = Duration::from_secs(90);

async fn count<K>(api: &Api<K>) -> usize
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    api.list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX)
}

#[tokio::test]
async fn three_components_come_up_in_dependency_order_and_reach_ready() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("deps-order").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns.name());

    // Watch workloads from before the stack exists. The harness runs one etcd, so the
    // resourceVersions of all objects are one sequence: the order of writes. That order,
    // not the order two separate watches happen to be read in, is what is checked.
    let avail_dep = |d: &Deployment| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        d.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            >= want
    };
    let avail_sts = |s: &StatefulSet| {
        let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        s.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            >= want
    };
    let rv = |m: &kube::api::ObjectMeta| -> u64 {
        m.resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("etcd resourceVersions are numbers")
    };
    let mut dep_events = watcher(deployments.clone(), watcher::Config::default()).boxed();
    let mut sts_events = watcher(statefulsets.clone(), watcher::Config::default()).boxed();

    stacks
        .create(&PostParams::default(), &three_tier("shop", "v1", "Delete"))
        .await
        .expect("stack is created");

    // For each workload: the write that created it, and the first that made it available.
    let mut created: BTreeMap<String, u64> = BTreeMap::new();
    let mut available: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while available.len() < 3 {
        let (name, version, is_avail) = tokio::select! {
            Some(Ok(ev)) = dep_events.next() => match ev {
                watcher::Event::Apply(d) | watcher::Event::InitApply(d) => (d.name_any(), rv(&d.metadata), avail_dep(&d)),
                _ => continue,
            },
            Some(Ok(ev)) = sts_events.next() => match ev {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => (s.name_any(), rv(&s.metadata), avail_sts(&s)),
                _ => continue,
            },
            _ = tokio::time::sleep_until(deadline) => panic!(
                "workloads did not all become available; available: {available:?}; stack: {:?}",
                stacks.get("shop").await.ok().and_then(|s| s.status)
            ),
        };
        created.entry(name.clone()).or_insert(version);
        if is_avail {
            available.entry(name).or_insert(version);
        }
    }
    for dependency in ["shop-db", "shop-cache"] {
        assert!(
            created["shop-api"] > available[dependency],
            "shop-api was created (resourceVersion {}) before {dependency} was available \
             ({}); created: {created:?}, available: {available:?}",
            created["shop-api"],
            available[dependency]
        );
    }

    let s = wait_stack(&stacks, "shop", "Ready", READY_TIMEOUT, is_ready).await;
    let st = s.status.unwrap();
    assert_eq!(st.phase, Some(StackPhase::Healthy));
    assert_eq!(
        (st.current_revision, st.stable_revision),
        (Some(1), Some(1))
    );
    assert_eq!(st.ready_components.as_deref(), Some("3/3"));
    let order: Vec<&str> = st.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        order,
        vec!["cache", "db", "api"],
        "status lists components in rollout order"
    );
    assert_eq!(st.condition("Reconciling").unwrap().status, "False");
    assert_eq!(st.condition("Stalled").unwrap().status, "False");

    // The children carry owner references and deployctl's labels.
    let api_svc = Api::<Service>::namespaced(client.clone(), ns.name())
        .get("shop-api")
        .await
        .unwrap();
    assert_eq!(
        api_svc.owner_references()[0].uid,
        s.metadata.uid.clone().unwrap()
    );
    assert_eq!(api_svc.labels()[labels::MANAGED_BY], "deployctl");
    // Events are recorded just after the status that they describe.
    let events: Api<Event> = Api::namespaced(client.clone(), ns.name());
    let wanted = [
        "RevisionCreated",
        "RolloutStarted",
        "ComponentApplied",
        "RolloutComplete",
    ];
    let reasons = wait_until("the rollout's Events", Duration::from_secs(15), || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        wanted
            .iter()
            .all(|r| reasons.iter().any(|x| x == r))
            .then_some(reasons)
    })
    .await;
    assert!(
        reasons.iter().any(|r| r == "ComponentAvailable"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_spec_change_makes_a_new_revision_and_updates_only_what_changed() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("revisions").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    stacks
        .create(&PostParams::default(), &three_tier("shop", "v1", "Delete"))
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Ready", READY_TIMEOUT, is_ready).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns.name());
    let cache_before = deployments.get("shop-cache").await.unwrap();
    let db_before = statefulsets.get("shop-db").await.unwrap();
    let api_before = deployments.get("shop-api").await.unwrap();

    // Change only the api image, as a user would with kubectl apply.
    let release = |v: &str| k8s_openapi::api::core::v1::EnvVar {
        name: "RELEASE".into(),
        value: Some(v.into()),
        ..Default::default()
    };
    let mut changed = stacks.get("shop").await.unwrap();
    let api = changed
        .spec
        .components
        .iter_mut()
        .find(|c| c.name == "api")
        .unwrap();
    // An env var, not the image: a new image would migrate api's data, which only a
    // data restore could undo on the way back.
    api.template.spec.as_mut().unwrap().containers[0]
        .env
        .get_or_insert_with(Vec::new)
        .push(release("2"));
    changed.metadata.managed_fields = None;
    stacks
        .replace("shop", &PostParams::default(), &changed)
        .await
        .unwrap();

    let s = wait_stack(&stacks, "shop", "Ready on revision 2", READY_TIMEOUT, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(2)
    })
    .await;
    let st = s.status.unwrap();
    assert_eq!(st.current_revision, Some(2));

    // Each step is its own Event with its own note, as `kubectl describe pstack` shows
    // them: the second rollout's Events are not folded into the first one's.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), ns.name());
    let wanted = [
        ("RevisionCreated", "Created revision 2 ("),
        ("ComponentApplied", "Applying component api at revision 2"),
        ("RolloutComplete", "Revision 2 is Healthy and stable"),
        ("RolloutComplete", "Revision 1 is Healthy and stable"),
    ];
    wait_until(
        "an Event for each step of both rollouts",
        READY_TIMEOUT,
        || async {
            let notes: Vec<(String, String)> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
                .collect();
            wanted
                .iter()
                .all(|(reason, note)| {
                    notes
                        .iter()
                        .any(|(r, n)| r == reason && n.starts_with(note))
                })
                .then_some(())
        },
    )
    .await;

    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns.name());
    let mut numbers: Vec<i64> = revisions
        // The StatefulSet's own ControllerRevisions carry the stack label too.
        .list(&ListParams::default().labels(labels::REVISION_HASH))
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.revision)
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        vec![1, 2],
        "one ControllerRevision per distinct spec"
    );

    let cache_after = deployments.get("shop-cache").await.unwrap();
    let db_after = statefulsets.get("shop-db").await.unwrap();
    let api_after = deployments.get("shop-api").await.unwrap();
    assert_eq!(
        cache_after.metadata.generation, cache_before.metadata.generation,
        "cache untouched"
    );
    assert_eq!(
        db_after.metadata.generation, db_before.metadata.generation,
        "db untouched"
    );
    assert!(
        api_after.metadata.generation > api_before.metadata.generation,
        "api updated"
    );
    let env = api_after
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(env.contains(&release("2")), "{env:?}");
    assert_eq!(api_after.annotations()[labels::REVISION], "2");
    assert_eq!(cache_after.annotations()[labels::REVISION], "1");
    let by_name: BTreeMap<_, _> = st
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.revision))
        .collect();
    assert_eq!(by_name["api"], Some(2));
    assert_eq!(by_name["cache"], Some(1));

    // Going back to the first spec reuses revision 1 instead of minting a third.
    let mut back = stacks.get("shop").await.unwrap();
    let api = back
        .spec
        .components
        .iter_mut()
        .find(|c| c.name == "api")
        .unwrap();
    api.template.spec.as_mut().unwrap().containers[0]
        .env
        .as_mut()
        .unwrap()
        .retain(|e| e.name != "RELEASE");
    back.metadata.managed_fields = None;
    stacks
        .replace("shop", &PostParams::default(), &back)
        .await
        .unwrap();
    let s = wait_stack(&stacks, "shop", "Ready on revision 1", READY_TIMEOUT, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.current_revision) == Some(1)
    })
    .await;
    assert_eq!(s.status.unwrap().stable_revision, Some(1));
    let stack_revisions = revisions
        .list(&ListParams::default().labels(labels::REVISION_HASH))
        .await
        .unwrap();
    assert_eq!(stack_revisions.items.len(), 2);
}

/// Specs the controller must refuse, each with the field path its message must name, and,
/// for those the CRD's CEL rules already refuse at admission, what the API server says.
fn invalid_cases() -> Vec<(&'static str, String, &'static str, Option<&'static str>)> {
    let t = demo_template("v1", "");
    let plain = "{spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}";
    vec![
        (
            "cycle",
            format!("  components:\n  - {{name: a, dependsOn: [b], template: {plain}}}\n  - {{name: b, dependsOn: [a], template: {plain}}}\n"),
            "dependency cycle",
            None,
        ),
        (
            "unknown-dep",
            format!("  components:\n  - {{name: a, dependsOn: [search], template: {plain}}}\n"),
            "spec.components[0].dependsOn[0]: unknown component \"search\"",
            Some("every dependsOn entry must be the name of a component of this stack"),
        ),
        (
            "duplicate",
            format!("  components:\n  - {{name: a, template: {plain}}}\n  - {{name: a, template: {plain}}}\n"),
            "spec.components[1].name: duplicate component name",
            Some("component names must be unique"),
        ),
        (
            "ports",
            format!("  components:\n  - {{name: a, template: {plain}, service: {{ports: [{{name: http, port: 80}}, {{name: web, port: 80}}]}}}}\n"),
            "spec.components[0].service.ports[1].port: port 80/TCP conflicts",
            Some("each port and protocol may appear once in ports"),
        ),
        (
            "claim-unmounted",
            format!("  components:\n  - {{name: a, template: {plain}, volumeClaims: [{{name: data, size: 1Mi}}]}}\n"),
            "spec.components[0].volumeClaims[0].name: no container mounts",
            None,
        ),
        (
            "zero-deadline",
            format!("  rollout: {{progressDeadline: 0s}}\n  components:\n  - {{name: a, template: {t}, volumeClaims: [{{name: data, size: 1Mi}}]}}\n"),
            "spec.rollout.progressDeadline: must be longer than 0s",
            Some("progressDeadline must be longer than 0s"),
        ),
    ]
}

#[tokio::test]
async fn invalid_specs_are_refused_or_stalled_with_the_field_path_and_nothing_is_applied() {
    let env = shared();
    let client = install_crd(env).await;
    let ns = env.namespace("invalid").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    for (name, body, _, refusal) in invalid_cases() {
        let created = stacks
            .create(&PostParams::default(), &stack_yaml(name, &body))
            .await;
        match (refusal, created) {
            (None, Ok(_)) => {}
            (None, Err(e)) => panic!("{name}: the API server refused it: {e}"),
            (Some(expected), Err(kube::Error::Api(s))) => {
                assert_eq!(s.code, 422, "{name}: {s:?}");
                assert!(s.message.contains(expected), "{name}: {}", s.message);
            }
            (Some(_), other) => panic!("{name}: the CRD's rules should refuse it: {other:?}"),
        }
    }
    // The controller's own layer: what the schema cannot express is Stalled, naming the
    // field. (The same layer refuses the others too, for objects stored before the rules.)
    for (name, _, expected, _) in invalid_cases().into_iter().filter(|c| c.3.is_none()) {
        let s = wait_stack(&stacks, name, "Stalled", Duration::from_secs(30), |s| {
            s.status.as_ref().is_some_and(|st| st.is_true("Stalled"))
        })
        .await;
        let st = s.status.unwrap();
        let stalled = st.condition("Stalled").unwrap();
        assert_eq!(stalled.reason, "InvalidSpec", "{name}");
        assert!(
            stalled.message.contains(expected),
            "{name}: {:?} lacks {expected:?}",
            stalled.message
        );
        assert_eq!(st.phase, Some(StackPhase::Invalid), "{name}");
        assert_eq!(st.condition("Ready").unwrap().status, "False");
        assert_eq!(stalled.observed_generation, s.metadata.generation);
    }
    // Nothing was applied for any of them.
    assert_eq!(
        count(&Api::<Deployment>::namespaced(client.clone(), ns.name())).await,
        0
    );
    assert_eq!(
        count(&Api::<StatefulSet>::namespaced(client.clone(), ns.name())).await,
        0
    );
    assert_eq!(
        count(&Api::<Service>::namespaced(client.clone(), ns.name())).await,
        0
    );
    assert_eq!(
        count(&Api::<PersistentVolumeClaim>::namespaced(
            client.clone(),
            ns.name()
        ))
        .await,
        0
    );
    assert_eq!(
        count(&Api::<ControllerRevision>::namespaced(
            client.clone(),
            ns.name()
        ))
        .await,
        0
    );
    // An Event says the same, once per stack.
    let events: Api<Event> = Api::namespaced(client.clone(), ns.name());
    // Events are recorded just after the status: wait until every stack has one.
    let warnings: Vec<Event> = wait_until(
        "an InvalidSpec Event per stack",
        Duration::from_secs(15),
        || async {
            let warnings: Vec<Event> = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
                .collect();
            invalid_cases()
                .iter()
                .filter(|c| c.3.is_none())
                .all(|(name, _, _, _)| {
                    warnings
                        .iter()
                        .any(|e| e.involved_object.name.as_deref() == Some(*name))
                })
                .then_some(warnings)
        },
    )
    .await;
    for (name, _, expected, _) in invalid_cases().into_iter().filter(|c| c.3.is_none()) {
        let e = warnings
            .iter()
            .find(|e| e.involved_object.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no InvalidSpec Event for {name}"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert!(
            e.message.as_deref().unwrap_or_default().contains(expected),
            "{name}: {:?}",
            e.message
        );
    }

    // What the schema can check is refused by the API server itself, naming the field.
    let bad = stack_yaml(
        "bad-duration",
        "  rollout: {progressDeadline: 10 minutes}\n  components:\n  - {name: a, template: {spec: {containers: [{name: app, image: x}]}}}\n",
    );
    let err = stacks
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.rollout.progressDeadline"), "{err}");
    let bad = stack_yaml("bad-name", "  components:\n  - {name: Not_A_Label, template: {spec: {containers: [{name: app, image: x}]}}}\n");
    let err = stacks
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.components[0].name") || err.contains("spec.components.name"),
        "{err}"
    );

    // Fixing the spec makes the stack go on.
    let mut fixed = stacks.get("cycle").await.unwrap();
    fixed.spec.components[0].depends_on.clear();
    for c in &mut fixed.spec.components {
        c.replicas = Some(0);
    }
    fixed.metadata.managed_fields = None;
    stacks
        .replace("cycle", &PostParams::default(), &fixed)
        .await
        .unwrap();
    let s = wait_stack(
        &stacks,
        "cycle",
        "Ready after the fix",
        Duration::from_secs(30),
        is_ready,
    )
    .await;
    assert_eq!(
        s.status.unwrap().condition("Stalled").unwrap().status,
        "False"
    );
}

#[tokio::test]
async fn deleting_a_stack_cleans_up_and_keeps_claims_only_when_asked() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("delete").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    stacks
        .create(&PostParams::default(), &three_tier("gone", "v1", "Delete"))
        .await
        .unwrap();
    stacks
        .create(&PostParams::default(), &three_tier("kept", "v1", "Retain"))
        .await
        .unwrap();
    wait_stack(&stacks, "gone", "Ready", READY_TIMEOUT, is_ready).await;
    wait_stack(&stacks, "kept", "Ready", READY_TIMEOUT, is_ready).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns.name());
    let claims_of = |stack: &'static str| {
        let pvcs = pvcs.clone();
        async move {
            pvcs.list(&ListParams::default().labels(&format!("{}={stack}", labels::STACK)))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(
        claims_of("gone").await,
        3,
        "api and cache claims plus db's claim template"
    );

    stacks
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    stacks
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        "both stacks to disappear",
        Duration::from_secs(60),
        || async { (count(&stacks).await == 0).then_some(()) },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns.name());
    let services: Api<Service> = Api::namespaced(client.clone(), ns.name());
    wait_until(
        "workloads and Services to be deleted",
        Duration::from_secs(60),
        || async {
            (count(&deployments).await == 0
                && count(&statefulsets).await == 0
                && count(&services).await == 0)
                .then_some(())
        },
    )
    .await;
    wait_until(
        "the Delete stack's claims to go",
        Duration::from_secs(30),
        || async { (claims_of("gone").await == 0).then_some(()) },
    )
    .await;
    assert_eq!(claims_of("kept").await, 3, "Retain keeps the data");
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns.name());
    wait_until(
        "revisions to be garbage-collected",
        Duration::from_secs(60),
        || async { (count(&revisions).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_repeated_event_is_counted_on_the_event_written_and_a_new_note_is_its_own() {
    use kube::Resource;
    let env = shared();
    let client = env.client().await;
    let ns = env.namespace("events").await;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), ns.name());
    let object = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "subject"}})).unwrap(),
        )
        .await
        .unwrap();
    let reference = object.object_ref(&());
    let recorder =
        deployctl_controller::events::Recorder::new(client.clone(), "deployctl-controller", "t");
    for note in [
        "Created revision 2 (a)",
        "Created revision 2 (a)",
        "Created revision 3 (b)",
    ] {
        recorder
            .publish(&reference, false, "RevisionCreated", note)
            .await
            .expect("the API server takes the Event");
    }
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), ns.name());
    let mut seen: Vec<(String, i32)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("Created revision 2 (a)".to_string(), 2),
            ("Created revision 3 (b)".to_string(), 1)
        ]
    );
}

/// `kubectl explain --recursive` of an optional object lists its fields (on 1.20 the
/// nullable objects were published without them): what a user reads before writing a
/// stack.
#[tokio::test]
async fn kubectl_explain_lists_the_fields_of_every_optional_object() {
    let env = shared();
    install_crd(env).await;
    let cases: [(&str, &[&str]); 9] = [
        (
            "productionstacks.spec.components.data",
            &[
                "volume",
                "path",
                "method",
                "database",
                "consistency",
                "exec",
                "restoreOnRollback",
            ],
        ),
        (
            "productionstacks.spec.snapshots",
            &[
                "beforeRollout",
                "store",
                "filesystem",
                "s3",
                "encryption",
                "schedule",
                "retention",
                "keepLast",
                "verifySchedule",
            ],
        ),
        (
            "productionstacks.spec.components.service",
            &["ports", "port", "targetPort"],
        ),
        (
            "productionstacks.spec.components.metadata",
            &["labels", "annotations"],
        ),
        (
            "productionstacks.spec.components.strategy",
            &["type", "rollingUpdate", "maxSurge", "maxUnavailable"],
        ),
        (
            "productionstacks.spec.components.updateStrategy",
            &["rollingUpdate", "partition", "maxUnavailable"],
        ),
        ("productionstacks.spec.components.autoscaling", &["hpa"]),
        (
            "stacksnapshots.status",
            &["digest", "replicas", "ordinal", "verification"],
        ),
        (
            "stackoperations.spec",
            &["action", "toRevision", "snapshot", "requestedBy"],
        ),
    ];
    let explain = |path: &str| {
        std::process::Command::new(deployctl_harness::kubectl_binary())
            .arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .args(["explain", path, "--recursive"])
            .output()
            .expect("kubectl runs")
    };
    // The API server publishes a new CRD's OpenAPI a moment after it is established.
    wait_until(
        "the CRDs' OpenAPI to be published",
        Duration::from_secs(60),
        || async {
            explain("productionstacks.spec")
                .status
                .success()
                .then_some(())
        },
    )
    .await;
    for (path, fields) in cases {
        let out = explain(path);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Field lines: the name, then its type.
        let listed: std::collections::BTreeSet<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("FIELDS:"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for f in fields {
            assert!(listed.contains(f), "{path} does not list {f}:\n{text}");
        }
    }
}
