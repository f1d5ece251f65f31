//! Prometheus metrics: request counts and latencies per route template, the running version
//! and the number of items.
//!
//! The `path` label is the matched route template (`/api/items/{id}`), never the raw path,
//! and `method` is folded to a fixed set, so every label stays bounded.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Content type of the text exposition written by `prometheus-client` (OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Path label for requests that matched no route.
const UNMATCHED: &str = "unmatched";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    path: String,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type DurationHistograms = Family<PathLabels, Histogram, fn() -> Histogram>;

/// The registry and the metrics the app updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: DurationHistograms,
    in_flight: Family<PathLabels, Gauge<i64, AtomicI64>>,
    items: Gauge<i64, AtomicI64>,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 16 s: covers the latency fault and slow upstreams.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    /// Registers every metric; `version` is the running app version.
    pub fn new(version: u32) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status code",
            requests.clone(),
        );
        let durations: DurationHistograms =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by route template",
            durations.clone(),
        );
        let in_flight = Family::<PathLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served, by route template",
            in_flight.clone(),
        );
        let info = Family::<VersionLabels, Gauge<i64, AtomicI64>>::default();
        info.get_or_create(&VersionLabels {
            version: version.to_string(),
        })
        .set(1);
        registry.register(
            "demo_app_version_info",
            "Running application version (value is always 1)",
            info,
        );
        let items = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "demo_items",
            "Items in the database (0 in the proxy role)",
            items.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            in_flight,
            items,
        }
    }

    /// Sets the `demo_items` gauge.
    pub fn set_items(&self, n: i64) {
        self.items.set(n);
    }

    /// Records one answered request.
    pub fn observe(&self, method: &Method, path: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                path: path.to_owned(),
                code,
            })
            .inc();
        self.durations
            .get_or_create(&PathLabels {
                path: path.to_owned(),
            })
            .observe(seconds);
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Axum middleware recording every request; add it with `Router::layer` so the matched
/// route is known.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let labels = PathLabels { path: path.clone() };
    metrics.in_flight.get_or_create(&labels).inc();
    // Decrement even if the client goes away and this future is dropped mid-request.
    let _in_flight = InFlight(&metrics, labels);
    let resp = next.run(req).await;
    metrics.observe(
        &method,
        &path,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

struct InFlight<'a>(&'a Metrics, PathLabels);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.get_or_create(&self.1).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_metrics() {
        let m = Metrics::new(2);
        m.set_items(7);
        m.observe(&Method::GET, "/api/items/{id}", 200, 0.01);
        m.observe(&Method::from_bytes(b"BREW").unwrap(), UNMATCHED, 404, 0.001);
        let text = m.encode().unwrap();
        for want in [
            r#"http_requests_total{method="GET",path="/api/items/{id}",code="200"} 1"#,
            r#"http_requests_total{method="other",path="unmatched",code="404"} 1"#,
            r#"http_request_duration_seconds_count{path="/api/items/{id}"} 1"#,
            r#"demo_app_version_info{version="2"} 1"#,
            "demo_items 7",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
