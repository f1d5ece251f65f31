//! Shared helpers of the controller's tests on the real control plane: installing the
//! CRD, running the controller binary for one test namespace, and waiting for conditions
//! (by polling with a deadline, never by sleeping for a fixed time).

#![allow(dead_code)] // each test binary uses a different subset

use deployctl_api::ProductionStack;
use kube::api::Api;
use std::future::Future;
use std::time::{Duration, Instant};

/// Installs the CRDs and waits until they are served (shared with the CLI's tests).
pub use deployctl_harness::install_crds as install_crd;

/// Polls `check` every 100 ms until it returns `Some`, or panics naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the stack satisfies `pred`, returning the stack; on timeout panics with
/// the last status seen.
///
/// It watches the stack rather than polling it: a watch delivers every write, so a step
/// that lasts only a moment (an analysis that a faulty release fails within a second) is
/// still seen, however slow the machine is.
pub async fn wait_stack(
    api: &Api<ProductionStack>,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ProductionStack) -> bool,
) -> ProductionStack {
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config).default_backoff().boxed();
    let mut last: Option<ProductionStack> = None;
    let found = tokio::time::timeout(timeout, async {
        while let Some(event) = events.next().await {
            // Errors are retried by the watcher itself (it lists again); keep waiting.
            if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event {
                if pred(&s) {
                    return Some(s);
                }
                last = Some(s);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(s)) => s,
        _ => panic!(
            "timed out after {timeout:?} waiting for stack {name} to be {what}; last status:\n{}",
            last.and_then(|s| s.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap())
                .unwrap_or_else(|| "<none>".into())
        ),
    }
}

/// True when the stack is Ready on its current generation.
pub fn is_ready(s: &ProductionStack) -> bool {
    let Some(st) = &s.status else { return false };
    st.observed_generation == s.metadata.generation && st.is_true("Ready")
}

pub use deployctl_harness::ControllerProcess;

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A stack of `components`, each given as YAML mapping text.
pub fn stack_yaml(name: &str, body: &str) -> ProductionStack {
    serde_yaml_ng::from_str(&format!(
        "apiVersion: deployctl.dev/v1alpha1\nkind: ProductionStack\nmetadata: {{name: {name}}}\nspec:\n{body}"
    ))
    .expect("test stack parses")
}

/// A demo-app container listening on 8080 with a readiness probe.
pub fn demo_template(tag: &str, extra_env: &str) -> String {
    format!(
        "{{metadata: {{labels: {{app: demo}}}}, spec: {{terminationGracePeriodSeconds: 5, containers: [{{name: app, image: 'deployctl.dev/demo-app:{tag}', env: [{{name: DATA_DIR, value: /data}}{extra_env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}]}}}}"
    )
}

/// Three components: db (StatefulSet with a claim), cache and api (Deployments, api
/// depends on both).
pub fn three_tier(name: &str, api_tag: &str, retention: &str) -> ProductionStack {
    let db = demo_template("v1", "");
    let cache = demo_template("v1", "");
    let api = demo_template(api_tag, "");
    stack_yaml(
        name,
        &format!(
            "  volumeClaimRetention: {retention}
  components:
  - name: api
    replicas: 2
    dependsOn: [db, cache]
    template: {api}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    volumeClaims: [{{name: data, size: 10Mi}}]
  - name: cache
    template: {cache}
    volumeClaims: [{{name: data, size: 10Mi}}]
  - name: db
    kind: StatefulSet
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
    volumeClaims: [{{name: data, size: 10Mi}}]
"
        ),
    )
}
