//! Notifications: news of a stack's rollouts, rollbacks and snapshots sent to a webhook
//! (CloudEvents, Slack or Microsoft Teams), configured by `spec.notifications` or the
//! namespace's Secret `deployctl-notifications`. What to send is decided by the pure
//! [`kinds::notices`] and [`payload`] builders; this module reads the Secret, checks the
//! administrator's allow-list and delivers on the side, never holding up a reconcile.
//! The receiver's URL and token go only into the request: Events, logs and metrics name
//! the Secret.

pub mod kinds;
pub mod payload;

use crate::context::Context;
use crate::gates::policy::{parse_prefixes, within, PolicyError};
use backon::{BackoffBuilder, ExponentialBuilder};
use deployctl_api::{NotificationFormat, ProductionStack, NAMESPACE_SECRET};
use k8s_openapi::api::core::v1::Secret;
use kinds::Notice;
use kube::{Api, ResourceExt};
use payload::Addressed;
use reqwest::Url;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most attempts at one delivery.
pub const MAX_ATTEMPTS: usize = 5;
/// The longest `Retry-After` honoured; a longer one falls back to the backoff.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// How many recent notification ids are remembered, so an Event re-planned after a
/// failed reconcile is not sent twice.
const RECENT: usize = 1024;

/// Where notifications may be sent: the administrator's list of URL prefixes
/// (`--notification-allowed-url-prefix`), matched as gates' URLs are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotificationPolicy {
    prefixes: Vec<Url>,
}

impl NotificationPolicy {
    /// The list from the controller's flag.
    pub fn new(prefixes: &[String]) -> Result<Self, PolicyError> {
        Ok(NotificationPolicy {
            prefixes: parse_prefixes("--notification-allowed-url-prefix", prefixes)?,
        })
    }

    /// Whether a notification may be sent to `url`.
    pub fn allows(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| self.prefixes.iter().any(|p| within(p, &u)))
    }
}

/// Sends notifications: the HTTP client (no proxy, no redirects), the allow-list, the
/// backoff and the ids recently sent.
#[derive(Clone, Debug)]
pub struct Notifier {
    http: reqwest::Client,
    policy: NotificationPolicy,
    first_retry: Duration,
    recent: Arc<Mutex<VecDeque<String>>>,
    /// One queue per stack: its deliveries go out one after the other, in the order they
    /// were decided, so a receiver never hears "rollback done" before "started".
    queues: Arc<Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<Batch>>>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new(NotificationPolicy::default())
    }
}

impl Notifier {
    /// A notifier sending only where `policy` allows.
    pub fn new(policy: NotificationPolicy) -> Self {
        Notifier {
            // A redirect is not followed: the allow-list was checked for the first URL only.
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a plain HTTP client builds"),
            policy,
            first_retry: Duration::from_secs(1),
            recent: Arc::default(),
            queues: Arc::default(),
        }
    }

    /// Queues `batch` behind the earlier deliveries about the stack `key`; the queue's
    /// task is started with its first batch.
    fn enqueue(&self, key: &str, batch: Batch) {
        let mut queues = self.queues.lock().expect("not poisoned");
        let batch = match queues.get(key) {
            Some(q) => match q.send(batch) {
                Ok(()) => return,
                // Its task ended (it never does unless the runtime shuts down): a new one.
                Err(returned) => returned.0,
            },
            None => batch,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Batch>();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                b.await;
            }
        });
        let _ = tx.send(batch);
        queues.insert(key.to_string(), tx);
    }

    /// Whether `id` is new; remembers it.
    fn first_time(&self, id: &str) -> bool {
        let mut recent = self.recent.lock().expect("not poisoned");
        if recent.iter().any(|r| r == id) {
            return false;
        }
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(id.to_string());
        true
    }
}

/// The deliveries of one decision.
type Batch = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Where a stack's notifications go, read from its Secret.
struct Receiver {
    /// The Secret's name, the only thing Events and logs say about the receiver.
    secret: String,
    url: String,
    token: Option<String>,
    format: NotificationFormat,
}

/// Why a stack's receiver could not be read; the message names the Secret, never its
/// content.
struct Unusable(String);

/// Sends `notices` about `stack` on the side: the reconcile does not wait for it.
pub fn dispatch(
    ctx: &Context,
    stack: &ProductionStack,
    generation: Option<i64>,
    notices: Vec<Notice>,
) {
    if notices.is_empty() {
        return;
    }
    let (ctx, stack) = (ctx.clone(), stack.clone());
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ns = stack.namespace().unwrap_or_default();
    let name = stack.name_any();
    let key = format!("{ns}/{name}");
    ctx.notifier.clone().enqueue(
        &key,
        Box::pin(send(ctx, stack, ns, name, generation, time, notices)),
    );
}

/// Sends one decision's notices about `stack`: reads its receiver, checks the allow-list,
/// delivers each notice and records how it went.
async fn send(
    ctx: Context,
    stack: ProductionStack,
    ns: String,
    name: String,
    generation: Option<i64>,
    time: String,
    notices: Vec<Notice>,
) {
    let uid = stack.uid().unwrap_or_default();
    let wanted: Vec<Notice> = match &stack.spec.notifications {
        Some(n) => notices.into_iter().filter(|x| n.wants(x.event)).collect(),
        None => notices,
    };
    if wanted.is_empty() {
        return;
    }
    let receiver = match receiver(&ctx, &stack, &ns).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(Unusable(why)) => {
            let format = stack
                .spec
                .notifications
                .as_ref()
                .and_then(|n| n.format)
                .unwrap_or_default();
            for _ in &wanted {
                ctx.metrics.notification(format, "failed");
            }
            ctx.event(
                &stack,
                true,
                "NotificationFailed",
                format!("{why}: nothing was sent"),
            )
            .await;
            return;
        }
    };
    if !ctx.notifier.policy.allows(&receiver.url) {
        for _ in &wanted {
            ctx.metrics.notification(receiver.format, "refused");
        }
        tracing::warn!(namespace = %ns, stack = %name, secret = %receiver.secret, "notification refused: the receiver is not on the allow-list");
        ctx.event(
                &stack,
                true,
                "NotificationRefused",
                format!(
                    "The url of Secret {} is not on the controller's list of notification receivers: nothing was sent; ask the cluster administrator to allow its prefix (chart value notifications.allowedUrlPrefixes)",
                    receiver.secret
                ),
            )
            .await;
        return;
    }
    for notice in wanted {
        let a = Addressed::new(&ns, &name, &uid, generation, time.clone(), notice);
        if !ctx.notifier.first_time(&a.id) {
            continue;
        }
        let (content_type, body) = payload::body(receiver.format, &a);
        let d = deliver(
            &ctx.notifier,
            &receiver.url,
            receiver.token.as_deref(),
            content_type,
            &body,
        )
        .await;
        let what = format!("{:?}", a.notice.event);
        let format = receiver.format.as_str();
        let secret = &receiver.secret;
        let status = d
            .status
            .map_or_else(|| "no response".to_string(), |s| format!("status {s}"));
        if d.sent {
            ctx.metrics.notification(receiver.format, "sent");
            tracing::info!(namespace = %ns, stack = %name, event = %what, attempts = d.attempts, %status, "notification sent");
            ctx.event(
                    &stack,
                    false,
                    "NotificationSent",
                    format!(
                        "Sent {what} ({format}, id {}) to the receiver of Secret {secret}: {status} after {} attempt(s)",
                        a.id, d.attempts
                    ),
                )
                .await;
        } else {
            ctx.metrics.notification(receiver.format, "failed");
            tracing::warn!(namespace = %ns, stack = %name, event = %what, attempts = d.attempts, %status, error = d.error, "notification failed");
            ctx.event(
                    &stack,
                    true,
                    "NotificationFailed",
                    format!(
                        "Could not send {what} ({format}, id {}) to the receiver of Secret {secret} in {} attempt(s): {status}{}",
                        a.id,
                        d.attempts,
                        if d.error.is_empty() { String::new() } else { format!(" ({})", d.error) }
                    ),
                )
                .await;
        }
    }
}

/// The stack's receiver: its `spec.notifications` Secret, else the namespace's
/// `deployctl-notifications` when it exists, else none.
async fn receiver(
    ctx: &Context,
    stack: &ProductionStack,
    ns: &str,
) -> Result<Option<Receiver>, Unusable> {
    let (name, field, format) = match &stack.spec.notifications {
        Some(n) => (
            n.secret_ref.name.as_str(),
            "spec.notifications.secretRef",
            n.format,
        ),
        None => (
            NAMESPACE_SECRET,
            "the namespace's notification Secret",
            None,
        ),
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) if stack.spec.notifications.is_none() => return Ok(None),
        Ok(None) => {
            return Err(Unusable(format!(
                "Secret {name} ({field}) not found in namespace {ns}"
            )))
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(Unusable(format!(
            "the controller may not read Secret {name} ({field}): grant it get on secrets in {ns}"
        )))
        }
        Err(e) => {
            return Err(Unusable(format!(
                "reading Secret {name} ({field}): {}",
                crate::error::kube_message(&e)
            )))
        }
    };
    parse_secret(name, &secret, format).map(Some)
}

/// The receiver a Secret describes: `url`, optional `token`, optional `format` (used
/// when the stack names none).
fn parse_secret(
    name: &str,
    secret: &Secret,
    format: Option<NotificationFormat>,
) -> Result<Receiver, Unusable> {
    let text = |key: &str| -> Result<Option<String>, Unusable> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key).map(|v| v.0.clone()))
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key).map(|v| v.clone().into_bytes()))
            });
        bytes
            .map(|b| {
                String::from_utf8(b)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| Unusable(format!("Secret {name}: key {key} is not UTF-8 text")))
            })
            .transpose()
    };
    let url = text("url")?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Unusable(format!("Secret {name} has no key url")))?;
    let token = text("token")?.filter(|t| !t.is_empty());
    let format = match (format, text("format")?) {
        (Some(f), _) => f,
        (None, None) => NotificationFormat::default(),
        (None, Some(f)) => NotificationFormat::parse(&f).ok_or_else(|| {
            Unusable(format!(
                "Secret {name}: key format must be CloudEvents, Slack or Teams"
            ))
        })?,
    };
    Ok(Receiver {
        secret: name.to_string(),
        url,
        token,
        format,
    })
}

/// What became of one delivery.
#[derive(Debug, PartialEq)]
struct Delivery {
    sent: bool,
    attempts: usize,
    /// The last response's status code.
    status: Option<u16>,
    /// Why the last attempt failed without a response (a bounded phrase, no URL).
    error: &'static str,
}

/// POSTs `body` to `url`, retrying connection errors, 5xx and 429 with exponential
/// backoff (honouring a short `Retry-After`), not other answers, at most
/// [`MAX_ATTEMPTS`] times.
async fn deliver(
    n: &Notifier,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &serde_json::Value,
) -> Delivery {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(n.first_retry)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(MAX_ATTEMPTS - 1)
        .build();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut req = n
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let (status, error, retry_after) = match req.send().await {
            Ok(r) => {
                let retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .filter(|d| *d <= MAX_RETRY_AFTER);
                (Some(r.status()), "", retry_after)
            }
            Err(e) if e.is_timeout() => (None, "timed out", None),
            Err(e) if e.is_connect() => (None, "could not connect", None),
            Err(_) => (None, "the request failed", None),
        };
        let retry = match status {
            Some(s) if s.is_success() => {
                return Delivery {
                    sent: true,
                    attempts,
                    status: Some(s.as_u16()),
                    error: "",
                }
            }
            Some(s) => s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS,
            None => true,
        };
        let next = if retry { delays.next() } else { None };
        let Some(delay) = next else {
            return Delivery {
                sent: false,
                attempts,
                status: status.map(|s| s.as_u16()),
                error: if status.is_some_and(|s| s.is_redirection()) {
                    "redirects are not followed"
                } else {
                    error
                },
            };
        };
        tokio::time::sleep(retry_after.unwrap_or(delay)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server on loopback answering request i with `answers[i]` (the last one
    /// repeated); returns its base URL, the requests' heads and a counter.
    async fn server(
        answers: Vec<&'static str>,
    ) -> (String, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(vec![]));
        let (counter, heads) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let i = counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 65536];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
                let status = answers[i.min(answers.len() - 1)];
                let response =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        (url, seen, hits)
    }

    fn quick() -> Notifier {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Notifier {
            first_retry: Duration::from_millis(10),
            ..Notifier::default()
        }
    }

    #[tokio::test]
    async fn retries_5xx_and_429_then_sends_with_the_token() {
        let (url, heads, hits) = server(vec![
            "503 Service Unavailable",
            "429 Too Many Requests\r\nRetry-After: 0",
            "200 OK",
        ])
        .await;
        let d = deliver(
            &quick(),
            &format!("{url}/hook"),
            Some("s3cret"),
            "application/cloudevents+json",
            &serde_json::json!({"a": 1}),
        )
        .await;
        assert_eq!(
            d,
            Delivery {
                sent: true,
                attempts: 3,
                status: Some(200),
                error: ""
            }
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        let head = heads.lock().unwrap()[2].to_lowercase();
        assert!(head.starts_with("post /hook "), "{head}");
        assert!(head.contains("authorization: bearer s3cret"), "{head}");
        assert!(
            head.contains("content-type: application/cloudevents+json"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried_and_attempts_are_bounded() {
        let (url, _, hits) = server(vec!["400 Bad Request"]).await;
        let d = deliver(
            &quick(),
            &url,
            None,
            "application/json",
            &serde_json::json!({}),
        )
        .await;
        assert_eq!((d.sent, d.attempts, d.status), (false, 1, Some(400)));
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        let (url, _, hits) = server(vec!["500 Internal Server Error"]).await;
        let d = deliver(
            &quick(),
            &url,
            None,
            "application/json",
            &serde_json::json!({}),
        )
        .await;
        assert_eq!(
            (d.sent, d.attempts, d.status),
            (false, MAX_ATTEMPTS, Some(500))
        );
        assert_eq!(hits.load(Ordering::SeqCst), MAX_ATTEMPTS);

        // Nothing listening: connection errors are retried, and say so without the URL.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let d = deliver(
            &quick(),
            &closed,
            None,
            "application/json",
            &serde_json::json!({}),
        )
        .await;
        assert_eq!(
            (d.sent, d.attempts, d.status, d.error),
            (false, MAX_ATTEMPTS, None, "could not connect")
        );
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let (elsewhere, _, elsewhere_hits) = server(vec!["200 OK"]).await;
        let location: &'static str =
            Box::leak(format!("302 Found\r\nLocation: {elsewhere}/").into_boxed_str());
        let (url, _, _) = server(vec![location]).await;
        let d = deliver(
            &quick(),
            &url,
            None,
            "application/json",
            &serde_json::json!({}),
        )
        .await;
        assert_eq!((d.sent, d.attempts, d.status), (false, 1, Some(302)));
        assert_eq!(d.error, "redirects are not followed");
        assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_allow_list_matches_as_the_gates_does() {
        let p = NotificationPolicy::new(&["https://hooks.slack.com/services/".into()]).unwrap();
        assert!(p.allows("https://hooks.slack.com/services/T0/B0/xyz"));
        assert!(!p.allows("https://hooks.slack.com/servicesX"));
        assert!(!p.allows("http://169.254.169.254/latest/meta-data/"));
        assert!(!NotificationPolicy::default().allows("https://hooks.slack.com/services/x"));
        let err = NotificationPolicy::new(&["ftp://x/".into()]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--notification-allowed-url-prefix"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_gives_url_token_and_format() {
        let secret = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let r = parse_secret(
            "hook",
            &secret(&[("url", "http://x/\n"), ("token", "t"), ("format", "slack")]),
            None,
        )
        .ok()
        .unwrap();
        assert_eq!(
            (r.url.as_str(), r.token.as_deref(), r.format),
            ("http://x/", Some("t"), NotificationFormat::Slack)
        );
        let r = parse_secret(
            "hook",
            &secret(&[("url", "http://x/"), ("format", "Slack")]),
            Some(NotificationFormat::Teams),
        )
        .ok()
        .unwrap();
        assert_eq!(
            r.format,
            NotificationFormat::Teams,
            "the stack's format wins"
        );
        let r = parse_secret("hook", &secret(&[("url", "http://x/")]), None)
            .ok()
            .unwrap();
        assert_eq!((r.token, r.format), (None, NotificationFormat::CloudEvents));
        for (pairs, want) in [
            (vec![("token", "t")], "Secret hook has no key url"),
            (
                vec![("url", "http://x/"), ("format", "xml")],
                "key format must be",
            ),
        ] {
            let Err(Unusable(why)) = parse_secret("hook", &secret(&pairs), None) else {
                panic!("{pairs:?} accepted");
            };
            assert!(why.contains(want), "{why}");
            assert!(!why.contains("http://x/"), "the URL leaked: {why}");
        }
    }

    #[test]
    fn an_id_is_sent_once() {
        let n = Notifier::default();
        assert!(n.first_time("a"));
        assert!(!n.first_time("a"));
        assert!(n.first_time("b"));
    }
}
