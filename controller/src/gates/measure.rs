//! Taking one measurement of a gate: readiness of the component's pods, HTTP checks and
//! error rates against every ready pod at its pod IP (or a URL), a PromQL query, or a
//! smoke-test Job. Transport errors are retried with exponential backoff (`backon`) and,
//! if they persist, reported as a measurement *error*, not a failure.

use crate::reconcile::build::selector_labels;
use backon::{ExponentialBuilder, Retryable};
use deployctl_api::{
    child_name, labels, Component, Gate, HttpMethod, HttpTarget, Measurement, MeasurementOutcome,
    ProductionStack,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Credentials for a Prometheus API, from a gate's Secret.
enum Credentials {
    Bearer(String),
    Basic(String, String),
}

/// What a Prometheus gate's Secret gives a query.
#[derive(Default)]
struct PrometheusAccess {
    credentials: Option<Credentials>,
    ca: Option<Vec<u8>>,
}

/// Transport retries per request before the measurement counts as an error.
pub const RETRIES: usize = 3;

/// Takes measurements; shares one HTTP client (connection reuse) across reconciles.
#[derive(Clone)]
pub struct Measurer {
    client: Client,
    http: reqwest::Client,
    policy: super::policy::GatePolicy,
}

/// Where a gate's measurement is aimed.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The stack.
    pub stack: &'a ProductionStack,
    /// The component, or None for a stack-wide gate.
    pub component: Option<&'a Component>,
    /// Every component of the revision (stack-wide readiness checks them all).
    pub components: &'a [Component],
    /// Revision under analysis (names Job runs).
    pub revision: i64,
    /// Measurements already taken of this gate in this analysis (names Job runs).
    pub attempt: i32,
    /// Identifies this analysis (or monitoring period), so a Job run's name is never
    /// reused by a later analysis of the same revision (a retry, a re-promotion).
    pub epoch: i64,
    /// During a canary: only the pods labelled with this revision (the new pods) are
    /// measured, not the stable ones beside them.
    pub pods_of_revision: Option<i64>,
}

impl std::fmt::Debug for Measurer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measurer").finish_non_exhaustive()
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn outcome(o: MeasurementOutcome, value: Option<f64>, message: impl Into<String>) -> Measurement {
    Measurement {
        at: now(),
        outcome: o,
        value,
        message: Some(message.into()),
    }
}

impl Measurer {
    /// A measurer using `client` for pods and Jobs, sending gate requests only where
    /// `policy` allows.
    pub fn new(client: Client, policy: super::policy::GatePolicy) -> Self {
        // reqwest is built without a default TLS provider: the workspace uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .no_proxy()
            .redirect(policy.redirects())
            .build()
            .expect("an HTTP client with default settings builds");
        Measurer {
            client,
            http,
            policy,
        }
    }

    /// Takes one measurement. `None` means none is available yet (a Job still running).
    pub async fn measure(&self, s: Subject<'_>, gate: &Gate) -> Option<Measurement> {
        let result = if let Some(r) = &gate.readiness {
            Some(self.readiness(s, r.max_restarts.unwrap_or(0)).await)
        } else if let Some(h) = &gate.http {
            Some(self.http(s, gate, h).await)
        } else if let Some(e) = &gate.error_rate {
            Some(self.error_rate(s, e).await)
        } else if let Some(p) = &gate.prometheus {
            Some(self.prometheus(s, p).await)
        } else if let Some(j) = &gate.job {
            self.job(s, gate, j).await
        } else {
            Some(outcome(
                MeasurementOutcome::Error,
                None,
                "the gate declares no check",
            ))
        };
        if let Some(m) = &result {
            tracing::debug!(gate = %gate.name, outcome = ?m.outcome, message = ?m.message, "measured");
        }
        result
    }

    async fn pods(&self, s: Subject<'_>) -> Result<Vec<Pod>, kube::Error> {
        let ns = s.stack.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let comps: Vec<&Component> = match s.component {
            Some(c) => vec![c],
            None => s.components.iter().collect(),
        };
        let mut out = Vec::new();
        for c in comps {
            let mut sel = selector_labels(&s.stack.name_any(), &c.name);
            if let Some(r) = s.pods_of_revision {
                sel.insert(deployctl_api::labels::REVISION.to_string(), r.to_string());
            }
            let sel = sel
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            out.extend(
                api.list(&ListParams::default().labels(&sel))
                    .await?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none()),
            );
        }
        Ok(out)
    }

    async fn readiness(&self, s: Subject<'_>, max_restarts: i32) -> Measurement {
        let pods = match self.pods(s).await {
            Ok(p) => p,
            Err(e) => {
                return outcome(
                    MeasurementOutcome::Error,
                    None,
                    format!("listing pods: {}", crate::error::kube_message(&e)),
                )
            }
        };
        if pods.is_empty() {
            return outcome(MeasurementOutcome::Failure, Some(0.0), "no pods");
        }
        let mut restarts = 0;
        let mut not_ready = Vec::new();
        for p in &pods {
            let st = p.status.clone().unwrap_or_default();
            restarts += st
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum::<i32>();
            if !is_ready(p) {
                not_ready.push(p.name_any());
            }
        }
        if !not_ready.is_empty() {
            outcome(
                MeasurementOutcome::Failure,
                Some((pods.len() - not_ready.len()) as f64),
                format!(
                    "{} of {} pods not ready: {}",
                    not_ready.len(),
                    pods.len(),
                    not_ready.join(", ")
                ),
            )
        } else if restarts > max_restarts {
            outcome(
                MeasurementOutcome::Failure,
                Some(restarts as f64),
                format!("{restarts} container restarts (at most {max_restarts} allowed)"),
            )
        } else {
            outcome(
                MeasurementOutcome::Success,
                Some(pods.len() as f64),
                format!("{} pods ready", pods.len()),
            )
        }
    }

    /// URLs to check: the gate's URL, or every ready pod at its pod IP.
    async fn targets(&self, s: Subject<'_>, t: &HttpTarget) -> Result<Vec<String>, String> {
        let path = t.path.clone().unwrap_or_else(|| "/".into());
        if let Some(url) = &t.url {
            // Refused at validation already; checked again here so that no path (a
            // rollback going on under an invalid spec) sends it anyway.
            if !self.policy.allows_url(url) {
                return Err(format!(
                    "{url} is not on the controller's list of gate targets"
                ));
            }
            return Ok(vec![url.clone()]);
        }
        let pods = self
            .pods(s)
            .await
            .map_err(|e| format!("listing pods: {}", crate::error::kube_message(&e)))?;
        let mut urls = Vec::new();
        for p in pods.iter().filter(|p| is_ready(p)) {
            let Some(ip) = p.status.as_ref().and_then(|st| st.pod_ip.clone()) else {
                continue;
            };
            let port = resolve_port(p, t.port.as_ref(), s.component).ok_or_else(|| {
                "no port: set the gate's port or give the component a Service".to_string()
            })?;
            urls.push(format!("http://{ip}:{port}{path}"));
        }
        if urls.is_empty() {
            return Err("no ready pod to send requests to".into());
        }
        Ok(urls)
    }

    async fn request(
        &self,
        url: &str,
        t: &HttpTarget,
    ) -> Result<(u16, String, Duration), reqwest::Error> {
        let timeout =
            crate::gates::analysis::duration_or(t.timeout.as_ref(), Duration::from_secs(2));
        let method = match t.method.unwrap_or_default() {
            HttpMethod::GET => reqwest::Method::GET,
            HttpMethod::HEAD => reqwest::Method::HEAD,
            HttpMethod::POST => reqwest::Method::POST,
        };
        let send = || async {
            let started = Instant::now();
            let resp = self
                .http
                .request(method.clone(), url)
                .timeout(timeout)
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, body, started.elapsed()))
        };
        send.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_times(RETRIES),
        )
        .when(|e: &reqwest::Error| e.is_connect() || e.is_timeout() || e.is_request())
        .await
    }

    async fn http(&self, s: Subject<'_>, gate: &Gate, h: &deployctl_api::HttpGate) -> Measurement {
        let urls = match self.targets(s, &h.target).await {
            Ok(u) => u,
            Err(e) => return outcome(MeasurementOutcome::Error, None, e),
        };
        let mut latencies = Vec::new();
        let mut errors = Vec::new();
        let mut failures = Vec::new();
        for url in &urls {
            match self.request(url, &h.target).await {
                Err(e) => errors.push(format!("{url}: {}", error_text(&e))),
                Ok((code, body, took)) => {
                    latencies.push(took);
                    let code_ok = if h.expected_status.is_empty() {
                        (200..300).contains(&code)
                    } else {
                        h.expected_status.contains(&(code as i32))
                    };
                    if !code_ok {
                        failures.push(format!("{url} answered {code}"));
                    } else if let Some(want) = &h.body_contains {
                        if !body.contains(want.as_str()) {
                            failures.push(format!("{url}: body does not contain {want:?}"));
                        }
                    }
                }
            }
        }
        if latencies.is_empty() {
            return outcome(MeasurementOutcome::Error, None, errors.join("; "));
        }
        let pct = h.latency.as_ref().and_then(|l| l.percentile).unwrap_or(95);
        let p = percentile(&mut latencies, pct);
        if !failures.is_empty() {
            return outcome(
                MeasurementOutcome::Failure,
                Some(p.as_secs_f64()),
                failures.join("; "),
            );
        }
        if let Some(bound) = &h.latency {
            let max =
                crate::gates::analysis::duration_or(Some(&bound.max), Duration::from_millis(200));
            if p > max {
                return outcome(
                    MeasurementOutcome::Failure,
                    Some(p.as_secs_f64()),
                    format!(
                        "p{pct} latency {}ms is over {}ms",
                        p.as_millis(),
                        max.as_millis()
                    ),
                );
            }
        }
        let _ = gate;
        outcome(
            MeasurementOutcome::Success,
            Some(p.as_secs_f64()),
            format!(
                "{} pod(s) answered, p{pct} {}ms{}",
                urls.len() - errors.len(),
                p.as_millis(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; {} unreachable", errors.len())
                }
            ),
        )
    }

    async fn error_rate(&self, s: Subject<'_>, e: &deployctl_api::ErrorRateGate) -> Measurement {
        let urls = match self.targets(s, &e.target).await {
            Ok(u) => u,
            Err(msg) => return outcome(MeasurementOutcome::Error, None, msg),
        };
        let n = e.requests.unwrap_or(10).max(1) as usize;
        let threshold = e.threshold_percent.unwrap_or(50) as f64 / 100.0;
        let (mut failed, mut answered) = (0usize, 0usize);
        let mut last_error = String::new();
        for i in 0..n {
            let url = &urls[i % urls.len()];
            match self.request(url, &e.target).await {
                Ok((code, _, _)) => {
                    answered += 1;
                    if code >= 500 {
                        failed += 1;
                    }
                }
                Err(err) => {
                    failed += 1;
                    last_error = error_text(&err);
                }
            }
        }
        if answered == 0 {
            return outcome(
                MeasurementOutcome::Error,
                None,
                format!("no request was answered: {last_error}"),
            );
        }
        let ratio = failed as f64 / n as f64;
        let msg = format!(
            "{failed} of {n} requests failed ({:.0}%, threshold {:.0}%)",
            ratio * 100.0,
            threshold * 100.0
        );
        if ratio >= threshold {
            outcome(MeasurementOutcome::Failure, Some(ratio), msg)
        } else {
            outcome(MeasurementOutcome::Success, Some(ratio), msg)
        }
    }

    async fn prometheus(&self, s: Subject<'_>, p: &deployctl_api::PrometheusGate) -> Measurement {
        let timeout =
            crate::gates::analysis::duration_or(p.timeout.as_ref(), Duration::from_secs(5));
        let url = format!("{}/api/v1/query", p.address.trim_end_matches('/'));
        if !self.policy.allows_prometheus(&url) {
            return outcome(
                MeasurementOutcome::Error,
                None,
                format!(
                    "{} is not on the controller's list of Prometheus servers",
                    p.address
                ),
            );
        }
        let namespace = s.stack.namespace().unwrap_or_default();
        let stack = s.stack.name_any();
        let vars = deployctl_api::QueryVars {
            namespace: &namespace,
            stack: &stack,
            component: s.component.map(|c| c.name.as_str()).unwrap_or_default(),
            revision: s.revision,
        };
        let promql = match deployctl_api::render_query(&p.query, Some(vars)) {
            Ok(q) => q,
            Err(e) => return outcome(MeasurementOutcome::Error, None, e),
        };
        let access = match &p.secret_ref {
            Some(r) => match self.prometheus_access(&namespace, &r.name).await {
                Ok(a) => a,
                Err(e) => return outcome(MeasurementOutcome::Error, None, e),
            },
            None => PrometheusAccess::default(),
        };
        let http = match &access.ca {
            Some(pem) => match self.client_trusting(pem) {
                Ok(c) => c,
                Err(e) => {
                    return outcome(
                        MeasurementOutcome::Error,
                        None,
                        format!(
                            "Secret {}: ca.crt: {e}",
                            p.secret_ref
                                .as_ref()
                                .map(|r| r.name.as_str())
                                .unwrap_or_default()
                        ),
                    )
                }
            },
            None => self.http.clone(),
        };
        let query = || async {
            let mut req = http
                .get(&url)
                .query(&[("query", promql.as_str())])
                .timeout(timeout);
            for h in &p.headers {
                req = req.header(h.name.as_str(), h.value.as_str());
            }
            req = match &access.credentials {
                Some(Credentials::Bearer(token)) => req.bearer_auth(token),
                Some(Credentials::Basic(user, password)) => req.basic_auth(user, Some(password)),
                None => req,
            };
            req.send()
                .await?
                .error_for_status()?
                .json::<serde_json::Value>()
                .await
        };
        let body = match query
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_times(RETRIES),
            )
            .await
        {
            Ok(b) => b,
            Err(e) => {
                return outcome(
                    MeasurementOutcome::Error,
                    None,
                    format!("querying {url}: {}", error_text(&e)),
                )
            }
        };
        match prometheus_value(&body) {
            Ok(v) => {
                let ok = p.condition.holds(v);
                outcome(
                    if ok {
                        MeasurementOutcome::Success
                    } else {
                        MeasurementOutcome::Failure
                    },
                    Some(v),
                    // The query as sent, placeholders filled: what a person pastes into
                    // Prometheus to see the same number.
                    format!(
                        "{promql} = {v} ({} {:?} {})",
                        if ok { "holds:" } else { "fails:" },
                        p.condition.operator,
                        p.condition.value
                    ),
                )
            }
            Err(e) => outcome(MeasurementOutcome::Error, None, e),
        }
    }

    /// What a Prometheus gate's Secret holds. Its content goes only into the request,
    /// never into a message: errors name the Secret and the key.
    async fn prometheus_access(&self, ns: &str, name: &str) -> Result<PrometheusAccess, String> {
        use k8s_openapi::api::core::v1::Secret;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let secret = match api.get(name).await {
            Ok(s) => s,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(format!("Secret {name} (secretRef) not found in namespace {ns}"))
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(format!(
                    "the controller may not read Secret {name} (secretRef): grant it get on secrets in {ns}"
                ))
            }
            Err(e) => return Err(format!("reading Secret {name}: {e}")),
        };
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| -> Result<Option<String>, String> {
            data.get(key)
                .map(|v| {
                    String::from_utf8(v.0.clone())
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                        .map_err(|_| format!("Secret {name}: key {key} is not UTF-8 text"))
                })
                .transpose()
        };
        let credentials = match (text("token")?, text("username")?, text("password")?) {
            (Some(t), None, None) => Some(Credentials::Bearer(t)),
            (None, Some(u), Some(p)) => Some(Credentials::Basic(u, p)),
            (None, None, None) => None,
            _ => {
                return Err(format!(
                    "Secret {name}: set either key token, or keys username and password"
                ))
            }
        };
        let ca = data.get("ca.crt").map(|v| v.0.clone());
        if credentials.is_none() && ca.is_none() {
            return Err(format!(
                "Secret {name} has none of the keys token, username and password, ca.crt"
            ));
        }
        Ok(PrometheusAccess { credentials, ca })
    }

    /// A client like the shared one that also trusts the CAs of `pem`.
    fn client_trusting(&self, pem: &[u8]) -> Result<reqwest::Client, String> {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
        if certs.is_empty() {
            return Err("no PEM certificate in it".into());
        }
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(self.policy.redirects());
        for c in certs {
            b = b.add_root_certificate(c);
        }
        b.build().map_err(|e| e.to_string())
    }

    async fn job(
        &self,
        s: Subject<'_>,
        gate: &Gate,
        j: &deployctl_api::JobGate,
    ) -> Option<Measurement> {
        let ns = s.stack.namespace().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let owner = s.component.map(|c| c.name.as_str()).unwrap_or("stack");
        let name = job_name(
            &s.stack.name_any(),
            owner,
            &gate.name,
            s.revision,
            &format!("{}-{}", s.epoch, s.attempt),
        );
        let timeout =
            crate::gates::analysis::duration_or(j.timeout.as_ref(), Duration::from_secs(300));
        let existing = match api.get_opt(&name).await {
            Ok(e) => e,
            Err(e) => {
                return Some(outcome(
                    MeasurementOutcome::Error,
                    None,
                    format!("reading Job {name}: {}", crate::error::kube_message(&e)),
                ))
            }
        };
        let Some(job) = existing else {
            let mut template = j.template.clone();
            template
                .spec
                .get_or_insert_with(Default::default)
                .restart_policy = Some("Never".into());
            let job = Job {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (labels::STACK.to_string(), s.stack.name_any()),
                        (
                            labels::MANAGED_BY.to_string(),
                            labels::MANAGED_BY_VALUE.to_string(),
                        ),
                        ("deployctl.dev/gate".to_string(), gate.name.clone()),
                    ])),
                    owner_references: crate::reconcile::build::owner_ref(s.stack).map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(JobSpec {
                    backoff_limit: Some(0),
                    active_deadline_seconds: Some(timeout.as_secs().max(1) as i64),
                    template,
                    ..Default::default()
                }),
                status: None,
            };
            return match api.create(&PostParams::default(), &job).await {
                Ok(_) => None,
                Err(kube::Error::Api(e)) if e.code == 409 => None,
                Err(e) => Some(outcome(
                    MeasurementOutcome::Error,
                    None,
                    format!("creating Job {name}: {}", crate::error::kube_message(&e)),
                )),
            };
        };
        let st = job.status.clone().unwrap_or_default();
        let decided = if st.succeeded.unwrap_or(0) > 0 {
            Some(outcome(
                MeasurementOutcome::Success,
                Some(0.0),
                format!("Job {name} succeeded"),
            ))
        } else if st.failed.unwrap_or(0) > 0 {
            let why = st
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Failed")
                .and_then(|c| c.message.clone().or(c.reason.clone()))
                .unwrap_or_else(|| "a pod exited non-zero".into());
            Some(outcome(
                MeasurementOutcome::Failure,
                Some(1.0),
                format!("Job {name} failed: {why}"),
            ))
        } else {
            None
        };
        if decided.is_some() {
            let _ = api.delete(&name, &DeleteParams::background()).await;
        }
        decided
    }
}

fn error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Resolves a gate's port on a pod: a number, a container port name, else the component
/// Service's first target port, else the first container port.
pub fn resolve_port(
    p: &Pod,
    port: Option<&IntOrString>,
    component: Option<&Component>,
) -> Option<i32> {
    let container_ports: Vec<_> = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    let by_name = |n: &str| {
        container_ports
            .iter()
            .find(|cp| cp.name.as_deref() == Some(n))
            .map(|cp| cp.container_port)
    };
    match port {
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(n)) => by_name(n),
        None => component
            .and_then(|c| c.service.as_ref())
            .and_then(|s| s.ports.first())
            .and_then(|sp| match &sp.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(n)) => by_name(n),
                None => Some(sp.port),
            })
            .or_else(|| container_ports.first().map(|cp| cp.container_port)),
    }
}

/// The number in a Prometheus instant-query answer (a scalar, or a one-element vector).
pub fn prometheus_value(body: &serde_json::Value) -> Result<f64, String> {
    if body["status"] != "success" {
        return Err(format!(
            "Prometheus answered {}",
            body["error"].as_str().unwrap_or("an error")
        ));
    }
    let data = &body["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([one]) => &one["value"],
            Some([]) => return Err("the query returned no data".into()),
            Some(many) => {
                return Err(format!(
                    "the query returned {} series; aggregate it to one (e.g. sum(...))",
                    many.len()
                ))
            }
            None => return Err("malformed vector".into()),
        },
        other => {
            return Err(format!(
                "unsupported result type {other:?}; use a scalar or a one-element vector"
            ))
        }
    };
    sample[1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("the query's value is not a number: {}", sample[1]))
}

/// The name of one Job run: readable, within 63 characters, unique per attempt.
pub fn job_name(stack: &str, owner: &str, gate: &str, revision: i64, run: &str) -> String {
    let full = format!("{stack}-{owner}-{gate}-r{revision}-{run}");
    if full.len() <= 63 {
        return full;
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(full.as_bytes()));
    format!("{}-{}", &full[..50].trim_end_matches('-'), &h[..10])
}

/// p-th percentile (nearest rank) of `v`.
pub fn percentile(v: &mut [Duration], p: i32) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((p.clamp(1, 100) as f64 / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Name of a component's workload, for messages.
pub fn workload_name(stack: &ProductionStack, c: &Component) -> String {
    child_name(&stack.name_any(), &c.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_prometheus_scalars_and_single_vectors() {
        let v = json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"0.25"]}]}});
        assert_eq!(prometheus_value(&v), Ok(0.25));
        let s = json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"3"]}});
        assert_eq!(prometheus_value(&s), Ok(3.0));
        let empty = json!({"status":"success","data":{"resultType":"vector","result":[]}});
        assert!(prometheus_value(&empty).unwrap_err().contains("no data"));
        let two = json!({"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}});
        assert!(prometheus_value(&two).unwrap_err().contains("aggregate"));
        let nan = json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"NaN"]}});
        assert!(prometheus_value(&nan).is_err());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 95), Duration::from_millis(95));
        assert_eq!(percentile(&mut v, 100), Duration::from_millis(100));
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(percentile(&mut one, 95), Duration::from_millis(7));
    }

    #[test]
    fn job_names_fit_and_stay_unique() {
        assert_eq!(
            job_name("shop", "api", "smoke", 3, "17-0"),
            "shop-api-smoke-r3-17-0"
        );
        let long = job_name(&"s".repeat(40), &"c".repeat(40), "smoke", 3, "17-1");
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            job_name(&"s".repeat(40), &"c".repeat(40), "smoke", 3, "17-2")
        );
        assert_ne!(
            long,
            job_name(&"s".repeat(40), &"c".repeat(40), "smoke", 3, "18-1")
        );
    }

    #[test]
    fn resolves_named_and_default_ports() {
        let pod: Pod = serde_yaml_ng::from_str(
            "spec: {containers: [{name: a, ports: [{name: http, containerPort: 8080}, {name: admin, containerPort: 9000}]}]}",
        )
        .unwrap();
        assert_eq!(
            resolve_port(&pod, Some(&IntOrString::String("admin".into())), None),
            Some(9000)
        );
        assert_eq!(
            resolve_port(&pod, Some(&IntOrString::Int(1234)), None),
            Some(1234)
        );
        assert_eq!(resolve_port(&pod, None, None), Some(8080));
        let c: Component = serde_yaml_ng::from_str(
            "{name: api, template: {}, service: {ports: [{port: 80, targetPort: admin}]}}",
        )
        .unwrap();
        assert_eq!(resolve_port(&pod, None, Some(&c)), Some(9000));
        assert_eq!(
            resolve_port(&pod, Some(&IntOrString::String("nope".into())), None),
            None
        );
    }
}
