//! Notifications on the real control plane: a receiver on loopback that fails the first
//! attempts gets a bad release's rollout and rollback news exactly once each, as
//! CloudEvents with the Secret's token; a namespace's Slack Secret serves a stack without
//! `spec.notifications`; a receiver off the administrator's list gets nothing; the URL
//! and token appear nowhere but in the requests.

mod support;

use deployctl_api::{ProductionStack, StackPhase};
use deployctl_harness::{require_sim_node, shared};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(150);
const TOKEN: &str = "sentinel-notify-token-Qx81Zr";
/// A secret part of the receiver's URL, as a Slack webhook's path is.
const URL_SECRET: &str = "sentinel-hook-path-Tn5Wd2";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
    answered: u16,
}

/// An HTTP receiver on loopback answering 503 to the first two attempts of each body
/// (a retry sends the same body) and 200 from the third.
#[derive(Clone)]
struct Receiver {
    base: String,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log = got.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head, body) = loop {
                        let Ok(n) = conn.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if rest.len() >= len {
                            break (head.to_string(), rest[..len].to_string());
                        }
                    };
                    let mut lines = head.lines();
                    let path = lines
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or_default()
                        .to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                        .collect();
                    let answered = {
                        let mut log = log.lock().unwrap();
                        let before = log.iter().filter(|r| r.body == body).count();
                        let answered = if before < 2 { 503 } else { 200 };
                        log.push(Request {
                            path,
                            headers,
                            body,
                            answered,
                        });
                        answered
                    };
                    let reason = if answered == 200 {
                        "OK"
                    } else {
                        "Service Unavailable"
                    };
                    let _ = conn
                        .write_all(
                            format!("HTTP/1.1 {answered} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Receiver { base, got }
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// The bodies answered 200 at `path`, parsed.
    fn accepted(&self, path: &str) -> Vec<Value> {
        self.requests(path)
            .into_iter()
            .filter(|r| r.answered == 200)
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }
}

/// A demo-app component `web` (no data) with `gates`.
fn stack(name: &str, env: &str, gates: &str, extra: &str) -> ProductionStack {
    let tpl = format!(
        "{{spec: {{terminationGracePeriodSeconds: 5, containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, value: /data}}{env}], ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: /data}}]}}], volumes: [{{name: data, emptyDir: {{}}}}]}}}}"
    );
    stack_yaml(
        name,
        &format!(
            "  rollout: {{progressDeadline: 30s, rollbackDeadline: 60s, analysis: 3s, monitorInterval: 2s}}
{extra}  components:
  - name: web
    template: {tpl}
    service: {{ports: [{{name: http, port: 80, targetPort: http}}]}}
    gates: {gates}
"
        ),
    )
}

const HTTP_GATE: &str =
    "[{name: http, interval: 500ms, failureLimit: 1, http: {path: /, port: http}}]";
const FAULTY: &str = ", {name: FAULT_ERROR_RATE, value: '1.0'}";

async fn secret(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    api.create(&PostParams::default(), &s).await.unwrap();
}

fn events_of(events: &[Event], stack: &str, reason: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(stack) && e.reason.as_deref() == Some(reason)
        })
        .map(|e| e.message.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn notifications_are_retried_sent_once_and_refused_off_the_list() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("notify").await;
    let receiver = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    let allowed = format!("{}/", receiver.base);
    let controller = ControllerProcess::start(
        env,
        ns.name(),
        "c1",
        &["--notification-allowed-url-prefix", &allowed],
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let ce_path = format!("/ce/{URL_SECRET}");
    secret(
        &secrets,
        "hook",
        &[
            ("url", &format!("{}{ce_path}", receiver.base)),
            ("token", TOKEN),
        ],
    )
    .await;
    secret(
        &secrets,
        "deployctl-notifications",
        &[
            ("url", &format!("{}/slack/{URL_SECRET}", receiver.base)),
            ("format", "Slack"),
        ],
    )
    .await;
    secret(
        &secrets,
        "offlist",
        &[
            ("url", &format!("{}/{URL_SECRET}", elsewhere.base)),
            ("token", TOKEN),
        ],
    )
    .await;

    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let apply = |s: ProductionStack| {
        let stacks = stacks.clone();
        async move {
            stacks
                .patch(
                    &s.metadata.name.clone().unwrap(),
                    &PatchParams::apply("tester").force(),
                    &Patch::Apply(&s),
                )
                .await
                .unwrap();
        }
    };
    let ce = "  notifications: {secretRef: {name: hook}, format: CloudEvents}\n";
    apply(stack("shop", "", HTTP_GATE, ce)).await;
    apply(stack("depot", "", "[]", "")).await;
    apply(stack(
        "stray",
        "",
        "[]",
        "  notifications: {secretRef: {name: offlist}}\n",
    ))
    .await;
    for name in ["shop", "depot", "stray"] {
        wait_stack(&stacks, name, "Healthy", T, is_ready).await;
    }

    // A bad release of shop: its gate fails and it rolls back to revision 1.
    apply(stack("shop", FAULTY, HTTP_GATE, ce)).await;
    wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack)
    })
    .await;

    let events_api = Api::<Event>::namespaced(client.clone(), ns.name());
    let want = [
        "dev.deployctl.rollout.started",
        "dev.deployctl.rollout.failed",
        "dev.deployctl.rollback.started",
        "dev.deployctl.rollback.done",
    ];
    let of_revision_2 = || {
        receiver
            .accepted(&ce_path)
            .into_iter()
            .filter(|v| v["data"]["revision"] == 2)
            .collect::<Vec<_>>()
    };
    wait_until("the bad release's four notifications", T, || async {
        let got = of_revision_2();
        want.iter()
            .all(|t| got.iter().any(|v| v["type"] == *t))
            .then_some(())
    })
    .await;
    // Count once every delivery of shop has ended: each ends in one Event, and shop has
    // six (revision 1 started and promoted, revision 2's four).
    wait_until("every delivery of shop to end", T, || async {
        let events = events_api.list(&ListParams::default()).await.ok()?.items;
        (events_of(&events, "shop", "NotificationSent").len()
            + events_of(&events, "shop", "NotificationFailed").len()
            >= 6)
            .then_some(())
    })
    .await;
    let got = of_revision_2();
    let types: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, want, "each once, in order: {got:#?}");
    for v in &got {
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(
            v["source"],
            format!(
                "/apis/deployctl.dev/v1alpha1/namespaces/{}/productionstacks/shop",
                ns.name()
            )
        );
        assert_eq!(
            (v["subject"].as_str(), v["data"]["stack"].as_str()),
            (Some("shop"), Some("shop"))
        );
        assert_eq!(v["data"]["stableRevision"], 1);
        let id = v["id"].as_str().unwrap();
        let attempts: Vec<u16> = receiver
            .requests(&ce_path)
            .into_iter()
            .filter(|r| r.body.contains(id))
            .map(|r| r.answered)
            .collect();
        assert_eq!(
            attempts,
            [503, 503, 200],
            "retried until accepted, then not again: {v}"
        );
    }
    let accepted_ids: Vec<String> = receiver
        .accepted(&ce_path)
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::BTreeSet<_> = accepted_ids.iter().collect();
    assert_eq!(
        unique.len(),
        accepted_ids.len(),
        "an id accepted twice: {accepted_ids:?}"
    );
    for r in receiver.requests(&ce_path) {
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some(&*format!("Bearer {TOKEN}"))
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/cloudevents+json")
        );
    }

    // depot has no spec.notifications: the namespace's Slack Secret.
    let slack_path = format!("/slack/{URL_SECRET}");
    let slack = wait_until("depot's Slack messages", T, || async {
        let got = receiver.accepted(&slack_path);
        (got.len() >= 2).then_some(got)
    })
    .await;
    let texts: Vec<&str> = slack.iter().map(|v| v["text"].as_str().unwrap()).collect();
    let depot = format!("{}/depot", ns.name());
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&format!("Rollout started: {depot}"))),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&format!("Rollout promoted: {depot}"))),
        "{texts:?}"
    );
    assert!(slack.iter().all(|v| v["blocks"].is_array()));
    assert!(
        receiver
            .requests(&slack_path)
            .iter()
            .all(|r| !r.headers.contains_key("authorization")),
        "no token in the namespace's Secret, no Authorization"
    );
    assert!(
        !slack.iter().any(|v| v.to_string().contains("/shop")),
        "shop's notifications go to its own receiver only"
    );

    // stray's receiver is off the list: refused, nothing sent.
    let events = wait_until("NotificationRefused on stray", T, || async {
        let events = events_api.list(&ListParams::default()).await.ok()?.items;
        (!events_of(&events, "stray", "NotificationRefused").is_empty()).then_some(events)
    })
    .await;
    let refused = events_of(&events, "stray", "NotificationRefused");
    assert!(refused[0].contains("Secret offlist"), "{refused:?}");
    assert!(
        refused[0].contains("notifications.allowedUrlPrefixes"),
        "{refused:?}"
    );
    assert!(
        elsewhere.got.lock().unwrap().is_empty(),
        "the off-list receiver got a request"
    );

    let events = wait_until("shop's NotificationSent Events", T, || async {
        let events = events_api.list(&ListParams::default()).await.ok()?.items;
        (events_of(&events, "shop", "NotificationSent").len() >= 6).then_some(events)
    })
    .await;
    let sent = events_of(&events, "shop", "NotificationSent");
    assert!(
        sent.iter()
            .all(|m| m.contains("Secret hook") && m.contains("status 200 after 3 attempt(s)")),
        "{sent:#?}"
    );
    assert!(events_of(&events, "shop", "NotificationFailed").is_empty());

    let (_, metrics) = http_get(&controller.metrics_addr, "/metrics")
        .await
        .unwrap();
    let count = |format: &str, outcome: &str| -> f64 {
        let prefix =
            format!(r#"deployctl_notifications_total{{format="{format}",outcome="{outcome}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert!(count("CloudEvents", "sent") >= 6.0, "{metrics}");
    assert!(count("Slack", "sent") >= 2.0, "{metrics}");
    assert!(count("CloudEvents", "refused") >= 2.0, "{metrics}");
    assert_eq!(count("CloudEvents", "failed"), 0.0);

    // The URL's secret part and the token: only in the requests.
    let places = [
        ("the controller's log", controller.log()),
        ("Events", serde_json::to_string(&events).unwrap()),
        (
            "ProductionStacks",
            serde_json::to_string(&stacks.list(&ListParams::default()).await.unwrap().items)
                .unwrap(),
        ),
        ("metrics", metrics.clone()),
    ];
    for (what, text) in places {
        for s in [TOKEN, URL_SECRET] {
            assert!(!text.contains(s), "{s} leaked into {what}");
        }
    }
}
