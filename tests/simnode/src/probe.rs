//! Startup, readiness and liveness probes of one container run: `httpGet` and
//! `tcpSocket` from the root namespace to the pod IP (named ports resolved), `exec` inside
//! the container. The threshold logic ([`Tracker`]) is pure; [`run`] drives the timing and
//! reports only changes to the pod worker.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::time::Instant;

use crate::runner;
use crate::spawner::Spawner;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    /// As in a kubelet's event messages (`Readiness probe failed: ...`).
    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Readiness => "Readiness",
            Self::Liveness => "Liveness",
        }
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Http {
        https: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
    /// Cannot run here; every attempt fails with this message.
    Invalid(String),
}

/// A probe with its timing, API defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeSpec {
    pub(crate) action: Action,
    pub(crate) initial_delay: Duration,
    pub(crate) period: Duration,
    pub(crate) timeout: Duration,
    pub(crate) success_threshold: u32,
    pub(crate) failure_threshold: u32,
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(
        v.and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(default),
    )
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|s| u32::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(default)
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
pub(crate) fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port number {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| {
                    format!(
                        "couldn't find port {name:?} in container {:?}",
                        container.name
                    )
                })
        }
    }
}

impl ProbeSpec {
    /// From the API object; unusable probes become [`Action::Invalid`] (they fail, as a
    /// kubelet's would).
    pub(crate) fn from_api(probe: &Probe, container: &Container) -> Self {
        let action = if let Some(h) = &probe.http_get {
            match resolve_port(&h.port, container) {
                Ok(port) => Action::Http {
                    https: h
                        .scheme
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case("https")),
                    host: h.host.clone().filter(|s| !s.is_empty()),
                    port,
                    path: h.path.clone().unwrap_or_else(|| "/".into()),
                    headers: h
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|hd| (hd.name.clone(), hd.value.clone()))
                        .collect(),
                },
                Err(e) => Action::Invalid(e),
            }
        } else if let Some(t) = &probe.tcp_socket {
            match resolve_port(&t.port, container) {
                Ok(port) => Action::Tcp {
                    host: t.host.clone().filter(|s| !s.is_empty()),
                    port,
                },
                Err(e) => Action::Invalid(e),
            }
        } else if let Some(e) = &probe.exec {
            Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            }
        } else {
            Action::Invalid("probe type not supported by the simulated node".into())
        };
        Self {
            action,
            initial_delay: Duration::from_secs(
                probe
                    .initial_delay_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
            ),
            period: secs(probe.period_seconds, 10),
            timeout: secs(probe.timeout_seconds, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Consecutive-result thresholds of one probe.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    state: Option<bool>,
}

impl Tracker {
    pub(crate) fn new(spec: &ProbeSpec) -> Self {
        Self {
            success_threshold: spec.success_threshold,
            failure_threshold: spec.failure_threshold,
            successes: 0,
            failures: 0,
            state: None,
        }
    }

    /// Records one result; returns the new state when a threshold flips it.
    pub(crate) fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.success_threshold && self.state != Some(true) {
                self.state = Some(true);
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure_threshold && self.state != Some(false) {
                self.state = Some(false);
                return Some(false);
            }
        }
        None
    }

    /// Consecutive failures so far.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

/// What probing reports to the pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeReport {
    /// The startup probe succeeded (only sent when there is one).
    Started,
    /// The startup or liveness probe reached its failure threshold: restart.
    Failed { kind: ProbeKind, message: String },
    /// Readiness changed.
    Ready(bool),
    /// First failure of a streak, for an `Unhealthy` event.
    Unhealthy { kind: ProbeKind, message: String },
}

/// The container's probes (absent ones are `None`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeSet {
    pub(crate) startup: Option<ProbeSpec>,
    pub(crate) readiness: Option<ProbeSpec>,
    pub(crate) liveness: Option<ProbeSpec>,
}

impl ProbeSet {
    pub(crate) fn of(container: &Container) -> Self {
        let f = |p: &Option<Probe>| p.as_ref().map(|p| ProbeSpec::from_api(p, container));
        Self {
            startup: f(&container.startup_probe),
            readiness: f(&container.readiness_probe),
            liveness: f(&container.liveness_probe),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.startup.is_none() && self.readiness.is_none() && self.liveness.is_none()
    }
}

/// Where probes go.
#[derive(Debug, Clone)]
pub(crate) struct ProbeTarget {
    pub(crate) pod_ip: Option<Ipv4Addr>,
    /// Host pid of the container's PID 1 (for `exec`).
    pub(crate) pid1: u32,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) spawner: Arc<Spawner>,
    pub(crate) http: reqwest::Client,
}

/// Traffic may only go to pods or loopback: anything else is refused, never sent.
fn allowed_host(host: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("probe host {host:?} is not an IP address (no DNS on the simulated node)")
    })?;
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || (v4.octets()[0] == 10 && v4.octets()[1] == 244),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    if ok {
        Ok(ip)
    } else {
        Err(format!(
            "probe host {host} is outside the simulated cluster network (10.244.0.0/16 or loopback)"
        ))
    }
}

fn target_ip(host: &Option<String>, pod_ip: Option<Ipv4Addr>) -> Result<IpAddr, String> {
    match host {
        Some(h) => allowed_host(h),
        None => pod_ip
            .map(IpAddr::V4)
            .ok_or_else(|| "the pod has no IP yet".to_owned()),
    }
}

/// One probe attempt: `Ok(())` on success, else the failure message.
pub(crate) async fn execute(spec: &ProbeSpec, target: &ProbeTarget) -> Result<(), String> {
    match &spec.action {
        Action::Invalid(message) => Err(message.clone()),
        Action::Tcp { host, port } => {
            let addr = SocketAddr::new(target_ip(host, target.pod_ip)?, *port);
            match tokio::time::timeout(spec.timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let ip = target_ip(host, target.pod_ip)?;
            let scheme = if *https { "https" } else { "http" };
            let path = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            };
            let url = format!("{scheme}://{}{path}", SocketAddr::new(ip, *port));
            let mut request = target
                .http
                .get(&url)
                .timeout(spec.timeout)
                .header("User-Agent", "kube-probe/1.37");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if (200..400).contains(&status) {
                        Ok(())
                    } else {
                        Err(format!("HTTP probe failed with statuscode: {status}"))
                    }
                }
                Err(e) if e.is_timeout() => Err(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
                Err(e) => Err(format!("Get \"{url}\": {}", error_chain(&e))),
            }
        }
        Action::Exec { command } => runner::exec_in(
            &target.spawner,
            target.pid1,
            command,
            &target.env,
            spec.timeout,
        )
        .await
        .map(drop),
    }
}

/// Runs a lifecycle hook (`preStop`): the same actions as probes, plus `sleep`; gives up
/// after `timeout`.
pub(crate) async fn run_hook(
    handler: &LifecycleHandler,
    container: &Container,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        let wanted = Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0));
        tokio::time::sleep(wanted.min(timeout)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        ..Default::default()
    };
    let mut spec = ProbeSpec::from_api(&probe, container);
    spec.timeout = timeout;
    execute(&spec, target).await
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Runs `spec` every period from `start + initialDelay`, feeding results to `on_result`
/// until it returns false.
async fn every(
    kind: ProbeKind,
    spec: &ProbeSpec,
    target: &ProbeTarget,
    start: Instant,
    report: &(dyn Fn(ProbeReport) + Send + Sync),
    mut on_result: impl FnMut(bool) -> Option<ProbeReport>,
) {
    let mut next = start + spec.initial_delay;
    let mut tracker_failures = 0u32;
    loop {
        tokio::time::sleep_until(next).await;
        next += spec.period;
        let result = execute(spec, target).await;
        if let Err(message) = &result {
            tracker_failures += 1;
            if tracker_failures == 1 {
                report(ProbeReport::Unhealthy {
                    kind,
                    message: message.clone(),
                });
            }
        } else {
            tracker_failures = 0;
        }
        let failure_message = result.as_ref().err().cloned();
        if let Some(r) = on_result(result.is_ok()) {
            let stop = matches!(r, ProbeReport::Failed { .. } | ProbeReport::Started);
            let r = match (r, failure_message) {
                (ProbeReport::Failed { kind, .. }, Some(message)) => {
                    ProbeReport::Failed { kind, message }
                }
                (r, _) => r,
            };
            report(r);
            if stop {
                return;
            }
        }
        // Do not pile up missed periods after a slow attempt.
        let now = Instant::now();
        if next < now {
            next = now;
        }
    }
}

/// Probes one container run from `start` (its start time) until the task is aborted.
pub(crate) async fn run(
    set: ProbeSet,
    target: ProbeTarget,
    start: Instant,
    report: Arc<dyn Fn(ProbeReport) + Send + Sync>,
) {
    if let Some(spec) = &set.startup {
        let mut tracker = Tracker::new(spec);
        let mut failed = false;
        every(
            ProbeKind::Startup,
            spec,
            &target,
            start,
            &*report,
            |ok| match tracker.record(ok) {
                Some(true) => Some(ProbeReport::Started),
                Some(false) => {
                    failed = true;
                    Some(ProbeReport::Failed {
                        kind: ProbeKind::Startup,
                        message: String::new(),
                    })
                }
                None => None,
            },
        )
        .await;
        if failed {
            return;
        }
    }
    let readiness = async {
        if let Some(spec) = &set.readiness {
            let mut tracker = Tracker::new(spec);
            every(ProbeKind::Readiness, spec, &target, start, &*report, |ok| {
                tracker.record(ok).map(ProbeReport::Ready)
            })
            .await;
        }
    };
    let liveness = async {
        if let Some(spec) = &set.liveness {
            let mut tracker = Tracker::new(spec);
            every(
                ProbeKind::Liveness,
                spec,
                &target,
                start,
                &*report,
                |ok| match tracker.record(ok) {
                    Some(false) => Some(ProbeReport::Failed {
                        kind: ProbeKind::Liveness,
                        message: String::new(),
                    }),
                    _ => None,
                },
            )
            .await;
        }
    };
    futures::join!(readiness, liveness);
}

/// The reqwest client for HTTP(S) probes: no proxies (probes never leave the machine), no
/// certificate checks (a kubelet does not verify probe targets either).
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::AcceptAny(provider)))
        .with_no_client_auth();
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::limited(10))
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

mod tls {
    //! A verifier that accepts any server certificate (signatures are still checked).

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub(super) struct AcceptAny(pub(super) Arc<CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::Invalid(String::new()),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_flip_state_once() {
        let mut t = Tracker::new(&spec(2, 3));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.failures(), 2);
        assert_eq!(t.record(true), None, "a success resets the failure streak");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
    }

    #[test]
    fn reads_api_probes_with_defaults_and_named_ports() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
            "livenessProbe": {"tcpSocket": {"port": 9090}, "failureThreshold": 1},
            "startupProbe": {"httpGet": {"port": "nope"}}
        }))
        .expect("container");
        let set = ProbeSet::of(&container);
        let readiness = set.readiness.expect("readiness");
        assert_eq!(
            readiness.action,
            Action::Http {
                https: false,
                host: None,
                port: 8080,
                path: "/readyz".into(),
                headers: vec![]
            }
        );
        assert_eq!(readiness.period, Duration::from_secs(2));
        assert_eq!(readiness.timeout, Duration::from_secs(1));
        assert_eq!(readiness.failure_threshold, 3);
        let liveness = set.liveness.expect("liveness");
        assert_eq!(
            liveness.action,
            Action::Tcp {
                host: None,
                port: 9090
            }
        );
        assert_eq!(liveness.failure_threshold, 1);
        assert!(
            matches!(set.startup.expect("startup").action, Action::Invalid(m) if m.contains("nope"))
        );
    }

    #[test]
    fn probes_never_leave_the_cluster_network() {
        assert!(allowed_host("10.244.3.7").is_ok());
        assert!(allowed_host("127.0.0.1").is_ok());
        assert!(allowed_host("192.0.2.1").is_err());
        assert!(allowed_host("example.com").is_err());
        assert!(target_ip(&None, None).is_err());
    }
}
