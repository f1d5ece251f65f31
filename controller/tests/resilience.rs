//! The controller as a process that crashes, restarts and runs as two replicas: it must
//! converge with nothing duplicated, hand leadership over, and finish deletions it missed.

mod support;

use deployctl_api::{labels, ProductionStack};
use deployctl_harness::{require_sim_node, shared, FAILOVER_LEASE};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::ResourceExt;
use std::time::Duration;
use support::*;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

async fn names<K>(api: &Api<K>) -> Vec<String>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let mut v: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn killed_mid_rollout_and_restarted_converges_without_duplicates() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("crash").await;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns.name());

    stacks
        .create(&PostParams::default(), &three_tier("shop", "v1", "Delete"))
        .await
        .unwrap();
    // Kill the controller (SIGKILL) right after each new child appears, three times, so
    // it dies between applying a component and recording it.
    for (round, expect_children) in [(1usize, 1usize), (2, 2), (3, 3)] {
        let mut c =
            ControllerProcess::start(env, ns.name(), &format!("crash{round}"), &FAILOVER_LEASE);
        wait_until(
            &format!("{expect_children} workloads after restart {round}"),
            READY_TIMEOUT,
            || async {
                let n = names(&deployments).await.len() + names(&statefulsets).await.len();
                (n >= expect_children).then_some(())
            },
        )
        .await;
        c.kill();
    }
    let _c = ControllerProcess::start(env, ns.name(), "final", &FAILOVER_LEASE);
    let s = wait_stack(&stacks, "shop", "Ready", READY_TIMEOUT, is_ready).await;
    assert_eq!(s.status.as_ref().unwrap().stable_revision, Some(1));

    assert_eq!(names(&deployments).await, vec!["shop-api", "shop-cache"]);
    assert_eq!(names(&statefulsets).await, vec!["shop-db"]);
    assert_eq!(
        names(&Api::<Service>::namespaced(client.clone(), ns.name())).await,
        vec!["shop-api", "shop-db"]
    );
    let revs = Api::<ControllerRevision>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default().labels(labels::REVISION_HASH))
        .await
        .unwrap();
    assert_eq!(
        revs.items.len(),
        1,
        "one stack revision, not one per restart"
    );
    // One ReplicaSet per Deployment: no spurious template changes across restarts.
    let rs = names(&Api::<ReplicaSet>::namespaced(client.clone(), ns.name())).await;
    assert_eq!(rs.len(), 2, "{rs:?}");
}

#[tokio::test]
async fn the_leader_killed_hands_over_and_the_stack_keeps_converging() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("leader").await;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns.name());
    let mut a = ControllerProcess::start(env, ns.name(), "replica-a", &FAILOVER_LEASE);
    let holder = || async {
        leases
            .get_opt("deployctl-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    wait_until("replica-a to lead", Duration::from_secs(30), || async {
        (holder().await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let mut b = ControllerProcess::start(env, ns.name(), "replica-b", &FAILOVER_LEASE);
    stacks
        .create(&PostParams::default(), &three_tier("shop", "v1", "Delete"))
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Ready", READY_TIMEOUT, is_ready).await;
    assert!(
        !b.log().contains("controller started"),
        "the standby must not reconcile:\n{}",
        b.log()
    );

    a.kill();
    wait_until(
        "replica-b to take the Lease",
        Duration::from_secs(30),
        || async { (holder().await.as_deref() == Some("replica-b")).then_some(()) },
    )
    .await;
    // A change after the hand-over is rolled out by the new leader.
    let mut changed = stacks.get("shop").await.unwrap();
    changed
        .spec
        .components
        .iter_mut()
        .find(|c| c.name == "cache")
        .unwrap()
        .replicas = Some(2);
    changed.metadata.managed_fields = None;
    stacks
        .replace("shop", &PostParams::default(), &changed)
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Ready on revision 2", READY_TIMEOUT, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(2)
    })
    .await;
    let cache = Api::<Deployment>::namespaced(client.clone(), ns.name())
        .get("shop-cache")
        .await
        .unwrap();
    assert_eq!(cache.spec.unwrap().replicas, Some(2));
    assert!(b.running());

    // A graceful stop releases the Lease at once.
    let st = b.terminate().expect("replica-b exits");
    assert!(st.success(), "SIGTERM exits 0: {st:?}");
    assert_eq!(holder().await, None, "the Lease is released on SIGTERM");
}

#[tokio::test]
async fn a_stack_deleted_while_the_controller_is_down_is_cleaned_up_once_it_returns() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("delete-down").await;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let mut c = ControllerProcess::start(env, ns.name(), "first", &FAILOVER_LEASE);
    stacks
        .create(&PostParams::default(), &three_tier("shop", "v1", "Delete"))
        .await
        .unwrap();
    let s = wait_stack(&stacks, "shop", "Ready", READY_TIMEOUT, is_ready).await;
    assert!(s.finalizers().contains(&labels::FINALIZER.to_string()));
    c.kill();

    stacks
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let held = stacks
        .get("shop")
        .await
        .expect("the finalizer holds the stack while the controller is down");
    assert!(held.metadata.deletion_timestamp.is_some());

    let _c = ControllerProcess::start(env, ns.name(), "second", &FAILOVER_LEASE);
    wait_until("the stack to be gone", Duration::from_secs(60), || async {
        stacks
            .get_opt("shop")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    wait_until(
        "its workloads to be gone",
        Duration::from_secs(60),
        || async { names(&deployments).await.is_empty().then_some(()) },
    )
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns.name());
    let deleted: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Deleted"))
        .collect();
    assert_eq!(deleted.len(), 1, "cleanup ran exactly once");
    assert_eq!(deleted[0].count.unwrap_or(1), 1);
}

#[tokio::test]
async fn serves_metrics_health_and_json_logs() {
    let env = shared();
    let client = install_crd(env).await;
    let ns = env.namespace("metrics").await;
    let c = ControllerProcess::start(env, ns.name(), "m", &["--log-format", "json"]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let s = stack_yaml("tiny", "  components:\n  - {name: a, replicas: 0, template: {spec: {containers: [{name: app, image: 'deployctl.dev/demo-app:v1'}]}}}\n");
    stacks.create(&PostParams::default(), &s).await.unwrap();
    wait_stack(&stacks, "tiny", "Ready", Duration::from_secs(30), is_ready).await;
    // The gauge is set just after the status write the test observed, so wait for it
    // the way a Prometheus scrape would see it: eventually, within a scrape or two.
    let (code, body) = wait_until(
        "/metrics to count the Healthy stack",
        Duration::from_secs(10),
        || async {
            let (code, body) = http_get(&c.metrics_addr, "/metrics").await?;
            body.contains("deployctl_stacks{phase=\"Healthy\"} 1")
                .then_some((code, body))
        },
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        body.contains("deployctl_reconcile_total{result=\"ok\"}"),
        "{body}"
    );
    assert!(body.contains("deployctl_leader 1"), "{body}");
    // The stack's name appears only in the per-stack series, as its `stack` label.
    let info = format!(
        "deployctl_stack_info{{stack_namespace=\"{}\",stack=\"tiny\",phase=\"Healthy\",revision=\"1\",stable_revision=\"1\"}} 1",
        ns.name()
    );
    assert!(body.contains(&info), "{info} missing from\n{body}");
    for line in body.lines().filter(|l| l.contains("tiny")) {
        assert!(
            line.starts_with("deployctl_stack_") && line.contains("stack=\"tiny\""),
            "a stack name outside a per-stack series: {line}"
        );
    }
    assert_eq!(http_get(&c.metrics_addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(http_get(&c.metrics_addr, "/readyz").await.unwrap().0, 200);
    let log = c.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
}

/// A controller that starts with many stacks already waiting (a restart, a new leader)
/// reconciles every one of them: none may wait on the caches forever, and each moves
/// through its dependency order on its workloads' events, not on the resync (set longer
/// than the test's deadline).
#[tokio::test]
async fn a_controller_started_with_many_stacks_waiting_brings_up_every_one() {
    let env = shared();
    let client = install_crd(env).await;
    let ns = env.namespace("many").await;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let component = |name: &str, deps: &str| {
        format!("  - {{name: {name}, replicas: 0, dependsOn: [{deps}], template: {{spec: {{containers: [{{name: app, image: 'deployctl.dev/demo-app:v1'}}]}}}}}}\n")
    };
    let body = format!(
        "  components:\n{}{}{}",
        component("db", ""),
        component("cache", "db"),
        component("api", "cache")
    );
    const N: usize = 24;
    for i in 0..N {
        stacks
            .create(&PostParams::default(), &stack_yaml(&format!("s{i}"), &body))
            .await
            .unwrap();
    }
    let _c = ControllerProcess::start(env, ns.name(), "many", &["--resync", "1h"]);
    let ready = wait_until(
        &format!("all {N} stacks Ready"),
        Duration::from_secs(120),
        || async {
            let list = stacks.list(&ListParams::default()).await.ok()?;
            let ready: Vec<String> = list
                .items
                .iter()
                .filter(|s| is_ready(s))
                .map(|s| s.name_any())
                .collect();
            (ready.len() == N).then_some(ready)
        },
    )
    .await;
    assert_eq!(ready.len(), N);
    let deployments = names(&Api::<Deployment>::namespaced(client.clone(), ns.name())).await;
    assert_eq!(deployments.len(), 3 * N, "{deployments:?}");
}
