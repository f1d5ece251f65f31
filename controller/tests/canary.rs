//! Canary steps on the real control plane with the simulated node: a 4-replica api with
//! steps `[setWeight: 25, analysis, setWeight: 50, analysis]` goes through 1 then 2 canary
//! pods to the new template on its stable Deployment (its controller killed mid-canary,
//! the next one resuming at the same step); a bad release fails its gate at 25% and its
//! canary is removed while the old pods keep every request.

mod support;

use deployctl_api::{labels, ProductionStack, StackPhase};
use deployctl_harness::{require_sim_node, shared, TestNamespace, FAILOVER_LEASE};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(180);

const STEPS: &str = "{steps: [{setWeight: 25}, {analysis: {}}, {setWeight: 50}, {analysis: {}}]}";
const HTTP_GATE: &str =
    "[{name: http, interval: 500ms, failureLimit: 1, http: {path: /, port: http}}]";
const FAULTY: &str = ", {name: FAULT_ERROR_RATE, value: '1.0'}";

/// db (never changed by these tests), and api: 4 replicas with canary steps and `gates`.
fn stack(api_env: &str) -> ProductionStack {
    let tpl = |env: &str| {
        format!(
            "{{spec: {{terminationGracePeriodSeconds: 6, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}, {{name: SHUTDOWN_DELAY_MS, value: '3000'}}{env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}}}"
        )
    };
    stack_yaml(
        "shop",
        &format!(
            "  rollout: {{progressDeadline: 60s, rollbackDeadline: 60s, monitorInterval: 2s, analysis: 3s}}
  components:
  - name: db
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
  - name: api
    replicas: 4
    dependsOn: [db]
    template: {api}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    gates: {HTTP_GATE}
    canary: {STEPS}
",
            db = tpl(""),
            api = tpl(api_env),
        ),
    )
}

struct Env {
    client: Client,
    ns: TestNamespace,
    stacks: Api<ProductionStack>,
    controller: ControllerProcess,
}

async fn setup(prefix: &str) -> Env {
    let env = shared();
    let client = install_crd(env).await;
    let ns = env.namespace(prefix).await;
    // A short Lease, so a controller started after a kill takes over quickly.
    let controller = ControllerProcess::start(env, ns.name(), "c1", &FAILOVER_LEASE);
    Env {
        stacks: Api::namespaced(client.clone(), ns.name()),
        client,
        ns,
        controller,
    }
}

impl Env {
    async fn apply(&self, s: &ProductionStack) {
        self.stacks
            .patch(
                "shop",
                &kube::api::PatchParams::apply("tester").force(),
                &kube::api::Patch::Apply(s),
            )
            .await
            .unwrap();
    }

    async fn wait(&self, what: &str, pred: impl Fn(&ProductionStack) -> bool) -> ProductionStack {
        wait_stack(&self.stacks, "shop", what, T, pred).await
    }

    async fn healthy_on(&self, rev: i64) -> ProductionStack {
        self.wait(&format!("Healthy on revision {rev}"), |s| {
            is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(rev)
        })
        .await
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    /// The api's pods that are not being deleted, by name.
    async fn pods(&self, component: &str) -> BTreeMap<String, Pod> {
        Api::<Pod>::namespaced(self.client.clone(), self.ns.name())
            .list(&ListParams::default().labels(&format!(
                "{}=shop,{}={component}",
                labels::STACK,
                labels::COMPONENT
            )))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.metadata.name.clone().unwrap(), p))
            .collect()
    }
}

fn label<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn is_canary(p: &Pod) -> bool {
    label(p, labels::TRACK) == Some(labels::TRACK_CANARY)
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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
async fn a_good_release_goes_through_the_canary_steps_and_replaces_the_stable_pods() {
    require_sim_node!(shared());
    let mut e = setup("canary-good").await;
    e.apply(&stack("")).await;
    e.healthy_on(1).await;
    let db_before: BTreeSet<String> = e.pods("db").await.into_keys().collect();
    for p in e.pods("api").await.values() {
        assert_eq!(label(p, labels::REVISION), Some("1"), "{:?}", p.metadata);
    }

    e.apply(&stack(", {name: RELEASE, value: '2'}")).await;
    // Ready canary pods seen over time, and the canary status the stack reported then.
    let mut seen: Vec<usize> = vec![];
    let mut shown: BTreeSet<(i32, i32)> = BTreeSet::new();
    // Canary steps the status went through (counted from 1), in order.
    let mut steps: Vec<i32> = vec![];
    let mut killed = false;
    let deadline = std::time::Instant::now() + T;
    loop {
        let pods = e.pods("api").await;
        let canary = pods.values().filter(|p| is_canary(p) && ready(p)).count();
        if canary > 0 && seen.last() != Some(&canary) {
            seen.push(canary);
        }
        let s = e.stacks.get("shop").await.unwrap();
        let st = s.status.clone().unwrap_or_default();
        if let Some(c) = st
            .components
            .iter()
            .find(|c| c.name == "api")
            .and_then(|c| c.canary.clone())
        {
            shown.insert((c.weight, c.canary_replicas));
            if steps.last() != Some(&c.step) {
                steps.push(c.step);
            }
        }
        // The controller dies during the analysis at 25%; the next one resumes there.
        let at_first_analysis = st
            .rollout
            .as_ref()
            .and_then(|r| r.canary.as_ref())
            .is_some_and(|c| c.step == 1);
        if at_first_analysis && !killed {
            e.controller.kill();
            e.controller = ControllerProcess::start(shared(), e.ns.name(), "c2", &FAILOVER_LEASE);
            killed = true;
        }
        if is_ready(&s) && st.stable_revision == Some(2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revision 2 not Healthy after {T:?}; canary pods seen {seen:?}, status {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.windows(2).any(|w| w == [1, 2]),
        "the canary had 1 then 2 ready pods; saw {seen:?}"
    );
    assert!(
        shown.contains(&(25, 1)) && shown.contains(&(50, 2)),
        "status showed {shown:?}"
    );
    assert!(killed, "the controller was killed mid-canary");
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "the restarted controller went on from its step, never back: {steps:?}"
    );

    // The stable Deployment runs the new template with every replica; no canary is left.
    let stable = e.deployments().get("shop-api").await.unwrap();
    assert_eq!(stable.spec.as_ref().unwrap().replicas, Some(4));
    assert!(env_of(&stable).contains(&"RELEASE=2".to_string()));
    wait_until("the canary Deployment to be gone", T, || async {
        e.deployments()
            .get_opt("shop-api-canary")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    wait_until("4 api pods of revision 2 and no canary pod", T, || async {
        let pods = e.pods("api").await;
        (pods.len() == 4
            && pods
                .values()
                .all(|p| label(p, labels::REVISION) == Some("2") && !is_canary(p)))
        .then_some(())
    })
    .await;
    let s = e.stacks.get("shop").await.unwrap();
    let st = s.status.unwrap();
    assert!(st.components.iter().all(|c| c.canary.is_none()), "{st:?}");
    // db did not change in revision 2: its pods were never restarted by the new label.
    let db_after: BTreeSet<String> = e.pods("db").await.into_keys().collect();
    assert_eq!(db_before, db_after, "db's pods kept running");
}

/// What a client of the api's Service saw while a bad canary ran.
#[derive(Debug, Default)]
struct Seen {
    requests: usize,
    /// Requests that failed on a pod that is not a canary pod.
    stable_failures: Vec<String>,
    /// Requests that failed on a canary pod (expected: the release is bad).
    canary_failures: usize,
    /// Polls at which the Endpoints held no old (stable) pod.
    no_stable_endpoint: usize,
    /// Fewest ready stable pods seen.
    min_ready_stable: usize,
    /// Most canary pods seen at once.
    max_canary: usize,
}

/// Sends requests to `/` of the api's ready Endpoints until told to stop, telling
/// failures on canary pods from failures on stable pods.
async fn watch_traffic(
    client: Client,
    ns: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Seen {
    let eps: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(client, &ns);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut seen = Seen {
        min_ready_stable: usize::MAX,
        ..Default::default()
    };
    let mut i = 0usize;
    let selector = format!("{}=shop,{}=api", labels::STACK, labels::COMPONENT);
    while !*stop.borrow() {
        let pods = pods_api
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let canary_ips: BTreeSet<String> = pods
            .iter()
            .filter(|p| is_canary(p))
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        seen.max_canary = seen
            .max_canary
            .max(pods.iter().filter(|p| is_canary(p)).count());
        seen.min_ready_stable = seen
            .min_ready_stable
            .min(pods.iter().filter(|p| !is_canary(p) && ready(p)).count());
        let addrs: Vec<String> = eps
            .get("shop-api")
            .await
            .ok()
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .collect();
        if !addrs.iter().any(|a| !canary_ips.contains(a)) {
            seen.no_stable_endpoint += 1;
        }
        for _ in 0..4 {
            if addrs.is_empty() {
                break;
            }
            let ip = &addrs[i % addrs.len()];
            i += 1;
            seen.requests += 1;
            let url = format!("http://{ip}:8080/");
            let ok = matches!(http.get(&url).send().await, Ok(r) if r.status().is_success());
            if !ok {
                if canary_ips.contains(ip) {
                    seen.canary_failures += 1;
                } else {
                    seen.stable_failures.push(url);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test]
async fn a_bad_canary_fails_its_gate_at_25_percent_and_the_old_pods_keep_the_traffic() {
    require_sim_node!(shared());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = setup("canary-bad").await;
    e.apply(&stack("")).await;
    e.healthy_on(1).await;

    let (tx, rx) = tokio::sync::watch::channel(false);
    let traffic = tokio::spawn(watch_traffic(e.client.clone(), e.ns.name().to_string(), rx));
    e.apply(&stack(FAULTY)).await;
    let s = e
        .wait("RolledBack", |s| {
            s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack)
        })
        .await;
    let last = s.status.as_ref().unwrap().last_rollback.clone().unwrap();
    assert!(last.reason.contains("gate http failed"), "{}", last.reason);
    wait_until("the canary Deployment to be gone", T, || async {
        e.deployments()
            .get_opt("shop-api-canary")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    wait_until("4 ready api pods of revision 1", T, || async {
        let pods = e.pods("api").await;
        (pods.len() == 4
            && pods
                .values()
                .all(|p| ready(p) && label(p, labels::REVISION) == Some("1")))
        .then_some(())
    })
    .await;
    tx.send(true).unwrap();
    let seen = traffic.await.unwrap();
    let _ = &e.controller;

    let stable = e.deployments().get("shop-api").await.unwrap();
    assert_eq!(stable.spec.as_ref().unwrap().replicas, Some(4));
    assert!(
        !env_of(&stable)
            .iter()
            .any(|v| v.starts_with("FAULT_ERROR_RATE")),
        "the stable Deployment never ran the bad template"
    );
    assert!(seen.requests > 50, "{seen:?}");
    assert_eq!(
        seen.max_canary, 1,
        "the canary never went past 25%: {seen:?}"
    );
    assert!(
        seen.canary_failures > 0,
        "the canary pod was in the Service: {seen:?}"
    );
    assert!(
        seen.stable_failures.is_empty(),
        "requests to old pods failed: {seen:?}"
    );
    assert_eq!(
        seen.no_stable_endpoint, 0,
        "the Endpoints always held old pods: {seen:?}"
    );
    assert!(
        seen.min_ready_stable >= 3,
        "old pods stayed Ready: {seen:?}"
    );
}
