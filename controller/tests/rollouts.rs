//! Gated rollouts and automatic rollback on the real control plane, driving the demo app
//! in real processes on the simulated node: good and bad upgrades, deadlines, operations,
//! flapping, inconclusive and late-reachable gates, and zero downtime.

mod support;

use deployctl_api::{
    GatePhase, OperationAction, OperationPhase, ProductionStack, RollbackTrigger, StackOperation,
    StackOperationSpec, StackPhase,
};
use deployctl_harness::{require_sim_node, shared, SharedEnv, TestNamespace, FAILOVER_LEASE};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(120);

/// A two-component stack: db, and api (2 replicas) that depends on it and has `gates`.
/// `api_env` is YAML list items appended to api's env; `policy` goes into spec.rollout.
fn stack(api_env: &str, gates: &str, policy: &str) -> ProductionStack {
    stack_draining(api_env, gates, policy, 1500)
}

/// [`stack`], with pods that keep serving for `drain_ms` after SIGTERM while they are
/// taken out of the Endpoints.
fn stack_draining(api_env: &str, gates: &str, policy: &str, drain_ms: u64) -> ProductionStack {
    let grace = drain_ms / 1000 + 5;
    let tpl = |env: &str| {
        format!(
            "{{spec: {{terminationGracePeriodSeconds: {grace}, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}, {{name: SHUTDOWN_DELAY_MS, value: '{drain_ms}'}}{env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}}}"
        )
    };
    stack_yaml(
        "shop",
        &format!(
            "  rollout: {{progressDeadline: 30s, rollbackDeadline: 60s, monitorInterval: 2s{analysis}{policy}}}
  components:
  - name: db
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
  - name: api
    replicas: 2
    dependsOn: [db]
    template: {api}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    gates: {gates}
",
            db = tpl(""),
            api = tpl(api_env),
            // A test may set its own analysis window in `policy`.
            analysis = if policy.contains("analysis") { "" } else { ", analysis: 3s" },
        ),
    )
}

const HTTP_GATE: &str =
    "[{name: http, interval: 500ms, failureLimit: 1, http: {path: /, port: http}}]";
const ERROR_RATE_GATE: &str =
    "[{name: errors, interval: 500ms, errorRate: {path: /api/items, port: http, requests: 10, thresholdPercent: 50}}]";

struct Env {
    env: &'static SharedEnv,
    client: Client,
    ns: TestNamespace,
    stacks: Api<ProductionStack>,
    ops: Api<StackOperation>,
    controller: ControllerProcess,
}

async fn setup(prefix: &str) -> Env {
    setup_with(prefix, &[]).await
}

/// Like [`setup`], with more arguments for the controller.
async fn setup_with(prefix: &str, controller_args: &[&str]) -> Env {
    let env = shared();
    let client = install_crd(env).await;
    let ns = env.namespace(prefix).await;
    let controller = ControllerProcess::start(env, ns.name(), "c1", controller_args);
    Env {
        env,
        stacks: Api::namespaced(client.clone(), ns.name()),
        ops: Api::namespaced(client.clone(), ns.name()),
        client,
        ns,
        controller,
    }
}

impl Env {
    /// Applies the stack as a person or a GitOps tool would: server-side apply.
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

    async fn operation(&self, action: OperationAction, to: Option<i64>) -> StackOperation {
        let op = StackOperation {
            metadata: ObjectMeta {
                generate_name: Some(format!("shop-{}-", action.as_str().to_lowercase())),
                ..Default::default()
            },
            spec: StackOperationSpec {
                stack: "shop".into(),
                action,
                to_revision: to,
                snapshot: None,
                reason: Some("test".into()),
                requested_by: Some("tester".into()),
            },
            status: None,
        };
        let created = self.ops.create(&PostParams::default(), &op).await.unwrap();
        let name = created.metadata.name.clone().unwrap();
        wait_until(&format!("operation {name} to be acted on"), T, || async {
            let o = self.ops.get(&name).await.ok()?;
            o.status.as_ref()?.phase?;
            Some(o)
        })
        .await
    }

    async fn api_image_env(&self) -> Vec<String> {
        let d = Api::<Deployment>::namespaced(self.client.clone(), self.ns.name())
            .get("shop-api")
            .await
            .unwrap();
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{}={}", e.name, e.value.unwrap_or_default()))
            .collect()
    }
}

fn phase(s: &ProductionStack) -> Option<StackPhase> {
    s.status.as_ref().and_then(|st| st.phase)
}

const FAULTY: &str = ", {name: FAULT_ERROR_RATE, value: '1.0'}";

#[tokio::test]
async fn good_to_bad_rolls_back_by_itself_and_holds_the_stable_revision() {
    require_sim_node!(shared());
    let e = setup("good-bad").await;
    e.apply(&stack("", HTTP_GATE, "")).await;
    e.healthy_on(1).await;
    e.apply(&stack(", {name: RELEASE, value: '2'}", HTTP_GATE, ""))
        .await;
    e.healthy_on(2).await;

    e.apply(&stack(FAULTY, HTTP_GATE, "")).await;
    let s = e
        .wait("RolledBack", |s| phase(s) == Some(StackPhase::RolledBack))
        .await;
    let st = s.status.unwrap();
    let last = st.last_rollback.clone().unwrap();
    assert_eq!((last.from_revision, last.to_revision), (3, 2));
    assert_eq!(last.trigger, RollbackTrigger::Gate);
    assert!(last.within_deadline, "{last:?}");
    assert!(last.reason.contains("gate http failed"), "{}", last.reason);
    assert_eq!(st.stable_revision, Some(2));
    assert_eq!(
        st.current_revision,
        Some(3),
        "the spec (git) still names revision 3"
    );
    assert_eq!(st.hold.as_ref().map(|h| h.held_back), Some(3));
    assert_eq!(st.condition("Stalled").unwrap().reason, "RolledBack");
    let env = e.api_image_env().await;
    assert!(
        env.contains(&"RELEASE=2".to_string()),
        "api runs revision 2 again: {env:?}"
    );
    assert!(
        !env.iter().any(|v| v.starts_with("FAULT_ERROR_RATE")),
        "{env:?}"
    );
    // The spec was never rewritten.
    let spec_env = format!(
        "{:?}",
        e.stacks.get("shop").await.unwrap().spec.components[1].template
    );
    assert!(spec_env.contains("FAULT_ERROR_RATE"));

    // Bad to good: a fixed spec rolls forward.
    e.apply(&stack(", {name: RELEASE, value: '4'}", HTTP_GATE, ""))
        .await;
    let s = e.healthy_on(4).await;
    assert!(s.status.unwrap().hold.is_none());
}

#[tokio::test]
async fn bad_to_bad_and_a_circuit_breaker_gate() {
    require_sim_node!(shared());
    let e = setup("bad-bad").await;
    e.apply(&stack("", ERROR_RATE_GATE, "")).await;
    e.healthy_on(1).await;
    e.apply(&stack(FAULTY, ERROR_RATE_GATE, "")).await;
    e.wait("RolledBack from 2", |s| {
        s.status
            .as_ref()
            .and_then(|st| st.last_rollback.as_ref())
            .map(|r| r.from_revision)
            == Some(2)
            && phase(s) == Some(StackPhase::RolledBack)
    })
    .await;
    e.apply(&stack(
        &format!("{FAULTY}, {{name: RELEASE, value: '3'}}"),
        ERROR_RATE_GATE,
        "",
    ))
    .await;
    let s = e
        .wait("RolledBack from 3", |s| {
            s.status
                .as_ref()
                .and_then(|st| st.last_rollback.as_ref())
                .map(|r| r.from_revision)
                == Some(3)
                && phase(s) == Some(StackPhase::RolledBack)
        })
        .await;
    let st = s.status.unwrap();
    assert_eq!(st.stable_revision, Some(1));
    assert!(st.last_rollback.unwrap().reason.contains("requests failed"));
}

#[tokio::test]
async fn a_missed_progress_deadline_rolls_back() {
    require_sim_node!(shared());
    let e = setup("deadline").await;
    e.apply(&stack("", "[]", "")).await;
    e.healthy_on(1).await;
    let mut broken = stack("", "[]", "");
    // Long enough for the new pods to be scheduled and report their pull error on a
    // loaded machine, so the rollback's reason can name it.
    broken.spec.rollout.progress_deadline = Some("15s".into());
    broken.spec.components[1]
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some("deployctl.dev/no-such-image:v1".into());
    e.apply(&broken).await;
    let s = e
        .wait("RolledBack", |s| phase(s) == Some(StackPhase::RolledBack))
        .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.trigger, RollbackTrigger::ProgressDeadline);
    assert!(
        last.reason.contains("ImagePull") || last.reason.contains("ErrImagePull"),
        "{}",
        last.reason
    );
}

#[tokio::test]
async fn pause_resume_abort_retry_promote_and_rollback_to_a_named_revision() {
    require_sim_node!(shared());
    let e = setup("operations").await;
    // A long analysis window keeps the rollout in progress while operations arrive.
    let slow = ", analysis: 10m";
    e.apply(&stack("", HTTP_GATE, "")).await;
    e.healthy_on(1).await;

    let op = e.operation(OperationAction::Pause, None).await;
    assert_eq!(op.status.unwrap().phase, Some(OperationPhase::Succeeded));
    e.apply(&stack(", {name: RELEASE, value: '2'}", HTTP_GATE, slow))
        .await;
    let s = e
        .wait("Paused", |s| phase(s) == Some(StackPhase::Paused))
        .await;
    assert!(s
        .status
        .unwrap()
        .message
        .unwrap()
        .contains("paused by tester"));
    e.operation(OperationAction::Resume, None).await;
    e.wait("analysing api", |s| {
        s.status
            .as_ref()
            .and_then(|st| st.rollout.as_ref())
            .and_then(|r| r.step)
            == Some(deployctl_api::RolloutStep::Analysing)
    })
    .await;

    let op = e.operation(OperationAction::Abort, None).await;
    assert_eq!(op.status.as_ref().unwrap().target_revision, Some(1));
    let s = e
        .wait("RolledBack", |s| phase(s) == Some(StackPhase::RolledBack))
        .await;
    assert_eq!(
        s.status.unwrap().last_rollback.unwrap().operation,
        op.metadata.name
    );

    e.operation(OperationAction::Retry, None).await;
    e.wait("analysing revision 2 again", |s| {
        s.status
            .as_ref()
            .and_then(|st| st.rollout.as_ref())
            .map(|r| (r.revision, r.step))
            == Some((2, Some(deployctl_api::RolloutStep::Analysing)))
    })
    .await;
    let op = e.operation(OperationAction::Promote, None).await;
    assert_eq!(op.status.unwrap().phase, Some(OperationPhase::Succeeded));
    e.healthy_on(2).await;

    let op = e.operation(OperationAction::Rollback, Some(1)).await;
    assert_eq!(op.status.as_ref().unwrap().target_revision, Some(1));
    let s = e
        .wait("RolledBack to 1", |s| {
            phase(s) == Some(StackPhase::RolledBack)
        })
        .await;
    let st = s.status.unwrap();
    assert_eq!(st.stable_revision, Some(1));
    assert!(!e.api_image_env().await.contains(&"RELEASE=2".to_string()));

    let refused = e.operation(OperationAction::Rollback, Some(42)).await;
    let rs = refused.status.unwrap();
    assert_eq!(rs.phase, Some(OperationPhase::Failed));
    assert!(rs.message.unwrap().contains("not in the history"));
}

#[tokio::test]
async fn a_flapping_gate_fails_the_rollout() {
    require_sim_node!(shared());
    let e = setup("flapping").await;
    e.apply(&stack("", "[]", "")).await;
    e.healthy_on(1).await;
    // Half the requests fail: the gate alternates, and its failures add up past the limit.
    let gate = "[{name: http, interval: 300ms, failureLimit: 2, http: {path: /, port: http}}]";
    e.apply(&stack(
        ", {name: FAULT_ERROR_RATE, value: '0.5'}",
        gate,
        ", analysis: 20s",
    ))
    .await;
    let s = e
        .wait("RolledBack", |s| phase(s) == Some(StackPhase::RolledBack))
        .await;
    assert!(s
        .status
        .unwrap()
        .last_rollback
        .unwrap()
        .reason
        .contains("3 failed measurements"));
}

#[tokio::test]
async fn an_unreachable_gate_is_inconclusive_and_pauses_then_a_late_target_passes() {
    require_sim_node!(shared());
    // A URL gate whose target does not listen yet. Its port is bound now, without
    // listening, so connections are refused and no other process can take it meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = reserved.local_addr().unwrap().port();
    // The administrator allows that target (gates reach only the pods otherwise).
    let allowed = format!("http://127.0.0.1:{port}/");
    let e = setup_with("inconclusive", &["--gate-allowed-url-prefix", &allowed]).await;
    e.apply(&stack("", "[]", "")).await;
    e.healthy_on(1).await;
    let gate = format!(
        "[{{name: smoke, interval: 300ms, errorLimit: 3, http: {{url: 'http://127.0.0.1:{port}/ok'}}}}]"
    );
    e.apply(&stack(", {name: RELEASE, value: '2'}", &gate, ""))
        .await;
    let s = e
        .wait("Paused (Inconclusive)", |s| {
            phase(s) == Some(StackPhase::Paused)
        })
        .await;
    let st = s.status.unwrap();
    assert_eq!(st.condition("Ready").unwrap().reason, "Inconclusive");
    let g = &st
        .components
        .iter()
        .find(|c| c.name == "api")
        .unwrap()
        .gates[0];
    assert_eq!(g.phase, GatePhase::Inconclusive);
    assert!(g.errors > 3);
    assert!(
        st.rollback.is_none() && st.last_rollback.is_none(),
        "never rolled back by itself"
    );

    // The target comes up; a person resumes; the gate is measured again and passes.
    let server = reserved.listen(64).unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = server.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    e.operation(OperationAction::Resume, None).await;
    e.healthy_on(2).await;
}

/// Sends steady requests to the api's ready Endpoints (refreshed each time) and counts
/// failures, until told to stop.
async fn steady_client(
    client: Client,
    ns: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, usize, Vec<String>) {
    let eps: Api<Endpoints> = Api::namespaced(client, &ns);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (mut ok, mut failed, mut errors) = (0, 0, vec![]);
    let mut i = 0usize;
    while !*stop.borrow() {
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
        if addrs.is_empty() {
            errors.push("no ready endpoint".into());
            failed += 1;
        } else {
            let url = format!("http://{}:8080/healthz", addrs[i % addrs.len()]);
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => ok += 1,
                Ok(r) => {
                    failed += 1;
                    errors.push(format!("{url}: {}", r.status()));
                }
                Err(err) => {
                    failed += 1;
                    errors.push(format!("{url}: {err}"));
                }
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed, errors)
}

#[tokio::test]
async fn no_request_fails_during_a_good_rollout_or_an_automatic_rollback() {
    require_sim_node!(shared());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = setup("zero-downtime").await;
    // A stopping pod serves on until kube-controller-manager has taken it out of the
    // Endpoints, which on a busy machine can take seconds: what a production app's
    // preStop delay is for.
    let drain_ms = 5000;
    e.apply(&stack_draining("", "[]", "", drain_ms)).await;
    e.healthy_on(1).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let client = tokio::spawn(steady_client(e.client.clone(), e.ns.name().to_string(), rx));
    e.apply(&stack_draining(
        ", {name: RELEASE, value: '2'}",
        "[]",
        "",
        drain_ms,
    ))
    .await;
    e.healthy_on(2).await;
    // A bad revision whose /healthz still answers but whose gate fails on /.
    e.apply(&stack_draining(FAULTY, HTTP_GATE, "", drain_ms))
        .await;
    e.wait("RolledBack", |s| phase(s) == Some(StackPhase::RolledBack))
        .await;
    tx.send(true).unwrap();
    let (ok, failed, errors) = client.await.unwrap();
    assert!(ok > 50, "the client made {ok} requests");
    assert_eq!(
        failed,
        0,
        "{failed} requests failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    let _ = (&e.env, &e.controller);
}

/// Where in a rollout or rollback the controller is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// A component was applied and is coming up.
    Progressing,
    /// A component's gates are being analysed.
    Analysing,
    /// A rollback is in progress.
    RollingBack,
}

fn at_step(s: &ProductionStack, k: KillAt) -> bool {
    let Some(st) = &s.status else { return false };
    match k {
        KillAt::Progressing => {
            st.rollout.as_ref().and_then(|r| r.step)
                == Some(deployctl_api::RolloutStep::Progressing)
        }
        KillAt::Analysing => {
            st.rollout.as_ref().and_then(|r| r.step) == Some(deployctl_api::RolloutStep::Analysing)
        }
        KillAt::RollingBack => st.rollback.is_some(),
    }
}

#[tokio::test]
async fn the_controller_killed_at_each_step_of_a_rollout_and_a_rollback_still_converges() {
    require_sim_node!(shared());
    // About failover: a killed controller keeps its Lease until it expires.
    let mut e = setup_with("crash-matrix", &FAILOVER_LEASE).await;
    e.apply(&stack("", HTTP_GATE, "")).await;
    e.healthy_on(1).await;
    let cases = [
        // (release, faulty, kill at, expected end)
        ("2", false, KillAt::Progressing, StackPhase::Healthy),
        ("3", false, KillAt::Analysing, StackPhase::Healthy),
        ("4", true, KillAt::Analysing, StackPhase::RolledBack),
        ("5", true, KillAt::RollingBack, StackPhase::RolledBack),
    ];
    let mut revision = 1;
    for (i, (release, faulty, kill_at, end)) in cases.into_iter().enumerate() {
        revision += 1;
        let env = format!(
            ", {{name: RELEASE, value: '{release}'}}{}",
            if faulty { FAULTY } else { "" }
        );
        e.apply(&stack(&env, HTTP_GATE, "")).await;
        e.wait(&format!("{kill_at:?} on revision {revision}"), |s| {
            at_step(s, kill_at)
        })
        .await;
        e.controller.kill();
        e.controller = ControllerProcess::start(
            e.env,
            e.ns.name(),
            &format!("after-kill-{i}"),
            &FAILOVER_LEASE,
        );
        let s = e
            .wait(&format!("{end:?} after the kill at {kill_at:?}"), |s| {
                let st = s.status.as_ref();
                phase(s) == Some(end)
                    && st.and_then(|st| st.current_revision) == Some(revision)
                    && st.and_then(|st| st.observed_generation) == s.metadata.generation
            })
            .await;
        let st = s.status.unwrap();
        if faulty {
            let last = st.last_rollback.clone().unwrap();
            assert_eq!(last.from_revision, revision, "case {i}: {last:?}");
        } else {
            assert_eq!(st.stable_revision, Some(revision), "case {i}");
        }
        // Nothing duplicated: one ControllerRevision per spec, two workloads, one
        // Service each.
        let revs = Api::<k8s_openapi::api::apps::v1::ControllerRevision>::namespaced(
            e.client.clone(),
            e.ns.name(),
        )
        .list(&kube::api::ListParams::default().labels(deployctl_api::labels::REVISION_HASH))
        .await
        .unwrap();
        assert_eq!(
            revs.items.len() as i64,
            revision,
            "case {i}: one revision per distinct spec"
        );
        let deps = Api::<Deployment>::namespaced(e.client.clone(), e.ns.name())
            .list(&Default::default())
            .await
            .unwrap();
        assert_eq!(deps.items.len(), 2, "case {i}");
    }
}
