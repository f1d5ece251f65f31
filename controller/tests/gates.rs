//! The Job and Prometheus gates against real peers: a smoke-test Job run on the simulated
//! node, and Debian's Prometheus 2.42 scraping the demo app's own /metrics at its pod IPs
//! (Debian builds Prometheus without Kubernetes service discovery, so the test keeps a
//! `file_sd` targets file up to date from the ready pods, as a sidecar would).

mod support;

use deployctl_api::{ProductionStack, RollbackTrigger, StackPhase};
use deployctl_harness::{require_sim_node, shared};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(150);

fn stack(release: &str, api_env: &str, gates: &str, analysis: &str) -> ProductionStack {
    let api = format!(
        "{{metadata: {{labels: {{app: demo}}}}, spec: {{terminationGracePeriodSeconds: 5, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}, {{name: RELEASE, value: '{release}'}}{api_env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}}}"
    );
    stack_yaml(
        "shop",
        &format!(
            "  rollout: {{analysis: {analysis}, progressDeadline: 60s}}
  components:
  - name: api
    replicas: 2
    template: {api}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    gates: {gates}
"
        ),
    )
}

async fn apply(stacks: &Api<ProductionStack>, s: &ProductionStack) {
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(s),
        )
        .await
        .unwrap();
}

fn on(s: &ProductionStack, phase: StackPhase, stable: i64) -> bool {
    let Some(st) = &s.status else { return false };
    st.phase == Some(phase)
        && st.stable_revision == Some(stable)
        && st.observed_generation == s.metadata.generation
}

#[tokio::test]
async fn a_smoke_test_job_gate_passes_on_exit_0_and_rolls_back_on_failure() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("job-gate").await;
    let _c = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let job = |code: u8| {
        format!(
            "[{{name: smoke, interval: 1s, job: {{timeout: 60s, template: {{spec: {{containers: [{{name: smoke, image: 'deployctl.dev/demo-app:v1', command: ['/bin/sh', '-c', 'echo smoke test; exit {code}']}}]}}}}}}}}]"
        )
    };
    apply(&stacks, &stack("1", "", &job(0), "1s")).await;
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        on(s, StackPhase::Healthy, 1)
    })
    .await;
    apply(&stacks, &stack("2", "", &job(0), "1s")).await;
    let s = wait_stack(&stacks, "shop", "Healthy on revision 2", T, |s| {
        on(s, StackPhase::Healthy, 2)
    })
    .await;
    assert!(s.status.is_some());
    apply(&stacks, &stack("3", "", &job(7), "1s")).await;
    let s = wait_stack(&stacks, "shop", "RolledBack to 2", T, |s| {
        on(s, StackPhase::RolledBack, 2)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.trigger, RollbackTrigger::Gate);
    assert!(
        last.reason.contains("Job") && last.reason.contains("failed"),
        "{}",
        last.reason
    );
}

/// Debian's Prometheus, scraping the ready demo-app pods of a namespace every second;
/// killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    targets: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A CA and a serving certificate for 127.0.0.1 signed by it, as PEM.
struct TestPki {
    ca: String,
    cert: String,
    key: String,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    TestPki {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// The bcrypt hash (cost 4) of `gate-test-password`, as Prometheus's web config wants it.
const PASSWORD_HASH: &str = "$2b$04$ywGoLpKk7O6BQxR98BX56eU/FJXDuXmCOQswp2N0yRsuMghOrJaA2";

impl Prometheus {
    fn start() -> Self {
        Self::start_with(None)
    }

    /// Serving HTTPS with `pki` and requiring basic auth (user `gate`) when given.
    fn start_with(pki: Option<&TestPki>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = deployctl_harness::controller::free_port();
        let targets = dir.path().join("targets.json");
        std::fs::write(&targets, "[]").unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
- job_name: demo
  file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]
",
            targets.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let mut web = Vec::new();
        if let Some(pki) = pki {
            std::fs::write(dir.path().join("tls.crt"), &pki.cert).unwrap();
            std::fs::write(dir.path().join("tls.key"), &pki.key).unwrap();
            std::fs::write(
                dir.path().join("web.yml"),
                format!(
                    "tls_server_config: {{cert_file: '{}', key_file: '{}'}}\nbasic_auth_users: {{gate: '{PASSWORD_HASH}'}}\n",
                    dir.path().join("tls.crt").display(),
                    dir.path().join("tls.key").display()
                ),
            )
            .unwrap();
            web.push(format!(
                "--web.config.file={}",
                dir.path().join("web.yml").display()
            ));
        }
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "/usr/bin/prometheus"])
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(&web)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus starts (Debian package `prometheus`)");
        let scheme = if pki.is_some() { "https" } else { "http" };
        Prometheus {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            targets,
            _dir: dir,
        }
    }

    /// Keeps the targets file listing the ready pods labelled app=demo, at their pod IPs.
    fn follow_pods(&self, client: kube::Client, ns: &str) -> tokio::task::JoinHandle<()> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, ns);
        let path = self.targets.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(list) = pods
                    .list(&kube::api::ListParams::default().labels("app=demo"))
                    .await
                {
                    // One target group per pod, labelled as a Kubernetes service discovery
                    // relabelling would: namespace, stack, component and revision.
                    let groups: Vec<serde_json::Value> = list
                        .items
                        .iter()
                        .filter_map(|p| {
                            let ip = p.status.as_ref()?.pod_ip.clone()?;
                            let l = p.metadata.labels.clone().unwrap_or_default();
                            let label = |k: &str| l.get(k).cloned().unwrap_or_default();
                            Some(serde_json::json!({
                                "targets": [format!("{ip}:8080")],
                                "labels": {
                                    "namespace": p.metadata.namespace.clone().unwrap_or_default(),
                                    "stack": label("deployctl.dev/stack"),
                                    "component": label("deployctl.dev/component"),
                                    "revision": label("deployctl.dev/revision"),
                                },
                            }))
                        })
                        .collect();
                    let json = serde_json::Value::Array(groups).to_string();
                    let tmp = path.with_extension("tmp");
                    if std::fs::write(&tmp, json).is_ok() {
                        let _ = std::fs::rename(&tmp, &path);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_prometheus_gate_reads_the_demo_apps_own_metrics() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("prom-gate").await;
    let prom = Prometheus::start();
    let _c = ControllerProcess::start(
        env,
        ns.name(),
        "c1",
        &["--gate-allowed-prometheus", &prom.url],
    );
    let follower = prom.follow_pods(client.clone(), ns.name());
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    // Traffic comes from an http gate that accepts 500s too; the Prometheus gate fails
    // when the scraped 5xx rate is not near zero.
    let gates = format!(
        "[{{name: traffic, interval: 200ms, http: {{path: /, port: http, expectedStatus: [200, 500]}}}},
          {{name: no-5xx, interval: 2s, failureLimit: 1, errorLimit: 30, prometheus: {{address: '{}', query: 'sum(rate(http_requests_total{{code=~\"5..\"}}[5s])) or vector(0)', condition: {{operator: '<', value: 0.5}}}}}}]",
        prom.url
    );
    apply(&stacks, &stack("1", "", &gates, "8s")).await;
    let s = wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        on(s, StackPhase::Healthy, 1)
    })
    .await;
    let g = s.status.unwrap().components[0].gates.clone();
    assert!(g.iter().any(|g| g.name == "no-5xx"), "{g:?}");

    apply(
        &stacks,
        &stack(
            "2",
            ", {name: FAULT_ERROR_RATE, value: '1.0'}",
            &gates,
            // Room for the new pods' targets to be followed and scraped twice on a busy
            // machine; the rollback ends the test as soon as the gate fails.
            "60s",
        ),
    )
    .await;
    let s = wait_stack(&stacks, "shop", "RolledBack to 1", T, |s| {
        on(s, StackPhase::RolledBack, 1)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert!(
        last.reason.contains("gate no-5xx failed"),
        "{}",
        last.reason
    );
    // The measured value is the scraped 5xx rate, not a made-up number.
    let up: serde_json::Value = reqwest::get(format!("{}/api/v1/query?query=up", prom.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !up["data"]["result"].as_array().unwrap().is_empty(),
        "Prometheus scraped the pods: {up}"
    );
    follower.abort();
}

/// Anyone who may edit a stack in one namespace must not be able to make the controller
/// request another namespace's pods or the cloud's metadata address. With no allow-list
/// (the default), a stack whose gates name either is Invalid, each named by its field, no
/// workload of it is created, and the other namespace's pod receives no request.
#[tokio::test]
async fn a_gate_cannot_reach_another_namespaces_pod_or_a_link_local_address() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("gate-proxy").await;
    let other = env.namespace("gate-victim").await;
    let _c = ControllerProcess::start(env, ns.name(), "c1", &[]);

    // A pod in another namespace, as another team's service would be.
    let pods: Api<Pod> = Api::namespaced(client.clone(), other.name());
    let victim: Pod = serde_yaml_ng::from_str(
        "metadata: {name: victim}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: 'deployctl.dev/demo-app:v1'
    env: [{name: DATA_DIR, value: /data}, {name: SEED_ITEMS, value: '3'}]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /readyz, port: http}, periodSeconds: 1}
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]",
    )
    .unwrap();
    pods.create(&Default::default(), &victim).await.unwrap();
    let ip = wait_until("the other namespace's pod to be ready", T, || async {
        let p = pods.get("victim").await.ok()?;
        let st = p.status?;
        let ready = st
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(st.pod_ip?)
    })
    .await;

    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let gates = format!(
        "[{{name: other-team, http: {{url: 'http://{ip}:8080/api/items', bodyContains: secret}}}},
          {{name: metadata, errorRate: {{url: 'http://169.254.169.254/latest/meta-data/'}}}},
          {{name: own-pods, http: {{path: /readyz, port: http}}}}]"
    );
    apply(&stacks, &stack("1", "", &gates, "2s")).await;
    let s = wait_stack(&stacks, "shop", "Invalid", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::Invalid)
    })
    .await;
    let message = s.status.unwrap().message.unwrap_or_default();
    for field in [
        "spec.components[0].gates[0].http.url",
        "spec.components[0].gates[1].errorRate.url",
    ] {
        assert!(message.contains(field), "{field} not named in: {message}");
    }
    assert!(
        !message.contains("gates[2]"),
        "the component's own pods are always allowed: {message}"
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns.name());
    assert!(
        deployments.get_opt("shop-api").await.unwrap().is_none(),
        "nothing of an invalid stack is applied"
    );
    // The other team's pod counts its requests by route: none reached /api/items.
    let metrics = reqwest::get(format!("http://{ip}:8080/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("path=\"/api/items\""),
        "the controller requested the other namespace's pod:\n{metrics}"
    );
}

/// A Prometheus as monitoring stacks run it: HTTPS with a private CA and basic auth. The
/// gate reads the credentials and the CA from a Secret, sends a tenant header, and its
/// query is templated with the stack, component and namespace: it passes only if all of
/// that reached Prometheus (the query counts the component's scraped pods, which exist
/// under those labels only). The Secret's content appears nowhere in the stack's status.
#[tokio::test]
async fn a_prometheus_gate_with_tls_basic_auth_and_a_templated_query() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("prom-auth").await;
    let pki = test_pki();
    let prom = Prometheus::start_with(Some(&pki));
    let _c = ControllerProcess::start(
        env,
        ns.name(),
        "c1",
        &["--gate-allowed-prometheus", &prom.url],
    );
    let follower = prom.follow_pods(client.clone(), ns.name());
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), ns.name());
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "prom-access"},
        "stringData": {"username": "gate", "password": "gate-test-password", "ca.crt": pki.ca},
    }))
    .unwrap();
    secrets.create(&Default::default(), &secret).await.unwrap();

    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let gates = format!(
        "[{{name: scraped, interval: 1s, failureLimit: 60, errorLimit: 60, prometheus: {{address: '{}', secretRef: {{name: prom-access}}, headers: [{{name: X-Scope-OrgID, value: shop}}], query: 'count(up{{namespace=\"{{{{ namespace }}}}\",stack=\"{{{{ stack }}}}\",component=\"{{{{component}}}}\"}} == 1)', condition: {{operator: '>=', value: 2}}}}}}]",
        prom.url
    );
    // Until Prometheus has scraped both new pods the count is 1, or there is none: the
    // limits let the gate wait for the scrapes rather than fail on the first measurement.
    apply(&stacks, &stack("1", "", &gates, "3s")).await;
    // The analysis writes every measurement into the status; the watch sees each write.
    let scraped = |s: &ProductionStack| {
        s.status
            .as_ref()?
            .components
            .first()?
            .gates
            .iter()
            .find(|g| g.name == "scraped")
            .cloned()
    };
    let s = wait_stack(&stacks, "shop", "the gate to pass a measurement", T, |s| {
        scraped(s).is_some_and(|g| g.successes >= 1)
    })
    .await;
    let gate = scraped(&s).unwrap();
    let value = gate.measurements.iter().rev().find_map(|m| m.value);
    assert_eq!(
        value,
        Some(2.0),
        "both pods counted under the templated labels: {gate:?}"
    );
    let s = wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        on(s, StackPhase::Healthy, 1)
    })
    .await;
    let status = s.status.unwrap();
    let text = serde_json::to_string(&status).unwrap();
    assert!(
        !text.contains("gate-test-password"),
        "the password leaked into status"
    );
    follower.abort();
}
