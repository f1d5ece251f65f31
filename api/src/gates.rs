//! Health gates: what must stay true while a component (or the whole stack) is analysed
//! after a rollout, and what a measurement found.

use crate::duration::Duration;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most gates of one component, and of the stack.
pub const MAX_GATES: usize = 32;

/// A CEL rule as the CRD carries it under `x-kubernetes-validations`.
#[derive(Debug, Serialize)]
pub(crate) struct CelRule {
    pub(crate) rule: &'static str,
    pub(crate) message: &'static str,
}

/// The rule on both lists of gates (a component's and the stack's): status keeps the
/// analysis of each gate under its name.
pub(crate) const UNIQUE_GATE_NAMES: CelRule = CelRule {
    rule: "self.all(g, self.exists_one(h, h.name == g.name))",
    message: "gate names must be unique: rename the repeated gates[].name",
};

/// A check that a new revision must pass before the rollout goes on. Exactly one of
/// `readiness`, `http`, `errorRate`, `prometheus` or `job` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.readiness) ? 1 : 0) + (has(self.http) ? 1 : 0) + (has(self.errorRate) ? 1 : 0) + (has(self.prometheus) ? 1 : 0) + (has(self.job) ? 1 : 0) == 1",
    "message": "a gate checks exactly one thing: set one of readiness, http, errorRate, prometheus or job"
}]))]
pub struct Gate {
    /// Name of the gate, unique within its component (or the stack).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Time between two measurements. Defaults to `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,

    /// Consecutive successful measurements needed, at the end of the analysis window, for
    /// the gate to pass. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub success_threshold: Option<i32>,

    /// Failed measurements tolerated; one more fails the gate (and rolls the stack back
    /// when `spec.rollout.autoRollback` is on). Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failure_limit: Option<i32>,

    /// Measurements that could not be taken (connection refused, timeout) tolerated; one
    /// more makes the gate Inconclusive, which pauses the rollout for a person to decide.
    /// Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub error_limit: Option<i32>,

    /// Checks the workload's own readiness: all pods ready, no restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ReadinessGate>,

    /// Sends HTTP requests to every ready pod of the new revision, or to a URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGate>,

    /// Fails when the ratio of failed HTTP requests over the window reaches a threshold
    /// (a circuit breaker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateGate>,

    /// Evaluates a PromQL query against a Prometheus HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,

    /// Runs a Job (a smoke test); a measurement succeeds when it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobGate>,
}

/// Readiness of the workload itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessGate {
    /// Container restarts tolerated across the component's pods during analysis.
    /// Defaults to 0: a restart fails the measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_restarts: Option<i32>,
}

/// Where an HTTP-based gate sends its requests, and how.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpTarget {
    /// A full URL (in a real cluster, e.g. the Service's DNS name). When unset, every
    /// ready pod of the component is checked at its pod IP, found through the Service's
    /// Endpoints (at a canary's `analysis` step only the new pods, label
    /// `deployctl.dev/revision`). A URL must be under a prefix the cluster administrator
    /// allows (chart value `gates.allowedUrlPrefixes`); any other makes the stack Invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Path of the request. Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// Port on the pods, by number or container port name. Defaults to the Service's
    /// first target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,

    /// HTTP method. Defaults to `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,

    /// Time after which a request counts as an error. Defaults to `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// HTTP methods a gate may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpMethod {
    /// GET.
    #[default]
    GET,
    /// HEAD.
    HEAD,
    /// POST (no body).
    POST,
}

/// An HTTP check.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGate {
    /// Where to send requests.
    #[serde(flatten)]
    pub target: HttpTarget,

    /// Status codes that count as success. Defaults to any 2xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_status: Vec<i32>,

    /// A substring the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,

    /// A bound on latency over the analysis window, e.g. p95 under 200ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyBound>,
}

/// A latency percentile bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyBound {
    /// Percentile, 1 to 100. Defaults to 95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percentile: Option<i32>,
    /// Largest allowed latency at that percentile.
    pub max: Duration,
}

/// A circuit breaker on the ratio of failed requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRateGate {
    /// Where to send requests.
    #[serde(flatten)]
    pub target: HttpTarget,

    /// Requests sent per measurement (spread over the pods). Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub requests: Option<i32>,

    /// Failure ratio, as a percentage, at which a measurement fails. Defaults to 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub threshold_percent: Option<i32>,
}

/// A PromQL check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGate {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`. It
    /// must be one the cluster administrator allows (chart value
    /// `gates.allowedPrometheusAddresses`); any other makes the stack Invalid.
    pub address: String,
    /// A PromQL instant query that returns one number (a scalar or a one-element vector).
    /// `{{ namespace }}`, `{{ stack }}`, `{{ component }}` (empty for a stack's gate) and
    /// `{{ revision }}` (the revision under analysis) are replaced before it is sent, so a
    /// query can select the new revision's pods by their `deployctl.dev/revision` label,
    /// e.g. `sum(rate(http_requests_total{namespace="{{ namespace }}",revision="{{ revision }}",code=~"5.."}[1m]))`.
    pub query: String,
    /// What the number must satisfy.
    pub condition: Comparison,
    /// Time after which a query counts as an error. Defaults to `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// A Secret in the stack's namespace with what the Prometheus API needs: key `token`
    /// (sent as `Authorization: Bearer`), or keys `username` and `password` (basic auth),
    /// and optionally `ca.crt`, a PEM bundle of the CAs that sign an `https` address's
    /// certificate (in addition to the system's). The controller reads it at each query;
    /// its content never appears in status, Events or logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretName>,
    /// More request headers, e.g. `X-Scope-OrgID` for a Mimir, Cortex or Thanos tenant.
    /// Credentials belong in `secretRef`, not here: `Authorization` is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeader>,
}

/// A Secret named in the stack's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// An HTTP request header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
// The usual spellings only: a case-insensitive match costs more than the API server's
// budget allows at this depth; validation.rs refuses every spelling.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.name != 'Authorization' && self.name != 'authorization' && self.name != 'AUTHORIZATION'",
    "message": "credentials go in secretRef (key token, or username and password), not in headers: remove the Authorization header"
}]))]
pub struct HttpHeader {
    /// Header name, e.g. `X-Scope-OrgID`.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// Header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Names a Prometheus gate's query may use as `{{ name }}`.
pub const QUERY_PLACEHOLDERS: [&str; 4] = ["namespace", "stack", "component", "revision"];

/// What a Prometheus gate's query placeholders stand for.
#[derive(Clone, Copy, Debug)]
pub struct QueryVars<'a> {
    /// The stack's namespace.
    pub namespace: &'a str,
    /// The stack's name.
    pub stack: &'a str,
    /// The component, empty for a stack's gate.
    pub component: &'a str,
    /// The revision under analysis.
    pub revision: i64,
}

/// The query with its `{{ name }}` placeholders replaced (spaces inside the braces are
/// optional). An unknown name is an error naming it, so a typo is not sent as PromQL.
pub fn render_query(query: &str, vars: Option<QueryVars<'_>>) -> Result<String, String> {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("a {{ without its }}: close it, e.g. {{ namespace }}".into());
        };
        let name = after[..end].trim();
        let value = match (name, vars) {
            (n, _) if !QUERY_PLACEHOLDERS.contains(&n) => {
                return Err(format!(
                    "unknown placeholder {{{{ {name} }}}}: use one of {}",
                    QUERY_PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{{ {p} }}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            (_, None) => String::new(),
            ("namespace", Some(v)) => v.namespace.to_string(),
            ("stack", Some(v)) => v.stack.to_string(),
            ("component", Some(v)) => v.component.to_string(),
            (_, Some(v)) => v.revision.to_string(),
        };
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A comparison of a measured number with a bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// `<`, `<=`, `>`, `>=` or `==`.
    pub operator: ComparisonOperator,
    /// The bound.
    pub value: f64,
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ComparisonOperator {
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Equal.
    #[serde(rename = "==")]
    Eq,
}

impl Comparison {
    /// Whether `v` satisfies the comparison.
    pub fn holds(&self, v: f64) -> bool {
        match self.operator {
            ComparisonOperator::Lt => v < self.value,
            ComparisonOperator::Le => v <= self.value,
            ComparisonOperator::Gt => v > self.value,
            ComparisonOperator::Ge => v >= self.value,
            ComparisonOperator::Eq => (v - self.value).abs() < f64::EPSILON,
        }
    }
}

/// A Job run as a test; one run is one measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobGate {
    /// The pod template of the Job (its `restartPolicy` is set to `Never`).
    pub template: PodTemplateSpec,
    /// How long one run may take. Defaults to `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Where a gate is in its analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum GatePhase {
    /// Measuring.
    #[default]
    Running,
    /// Passed for this rollout.
    Passed,
    /// More failures than `failureLimit`.
    Failed,
    /// More measurement errors than `errorLimit`: a person must decide.
    Inconclusive,
}

impl GatePhase {
    /// The phase as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            GatePhase::Running => "Running",
            GatePhase::Passed => "Passed",
            GatePhase::Failed => "Failed",
            GatePhase::Inconclusive => "Inconclusive",
        }
    }
}

/// The outcome of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MeasurementOutcome {
    /// The check held.
    Success,
    /// The check did not hold.
    Failure,
    /// The check could not be made (unreachable, timeout).
    Error,
}

/// One measurement, kept in status for people and the CLI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// When it was taken.
    pub at: Time,
    /// What it found.
    pub outcome: MeasurementOutcome,
    /// The measured value, when there is one (a ratio, a latency in seconds, a query result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Details for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Analysis state of one gate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// Gate name.
    pub name: String,
    /// Where it is.
    pub phase: GatePhase,
    /// Successful measurements so far.
    #[serde(default)]
    pub successes: i32,
    /// Failed measurements so far.
    #[serde(default)]
    pub failures: i32,
    /// Measurements that could not be taken so far.
    #[serde(default)]
    pub errors: i32,
    /// Successes in a row, up to the last measurement.
    #[serde(default)]
    pub consecutive_successes: i32,
    /// Failures in a row, up to the last measurement (errors neither count nor break it).
    #[serde(default)]
    pub consecutive_failures: i32,
    /// The last few measurements, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<Measurement>,
    /// Why it is in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_gets_the_stack_component_and_revision() {
        let vars = QueryVars {
            namespace: "shop-prod",
            stack: "shop",
            component: "api",
            revision: 7,
        };
        assert_eq!(
            render_query(
                r#"sum(up{namespace="{{ namespace }}",stack="{{stack}}",component="{{  component }}",revision="{{ revision }}"})"#,
                Some(vars)
            )
            .unwrap(),
            r#"sum(up{namespace="shop-prod",stack="shop",component="api",revision="7"})"#
        );
        assert_eq!(render_query("vector(1)", Some(vars)).unwrap(), "vector(1)");
        let err = render_query("up{ns=\"{{ namespce }}\"}", Some(vars)).unwrap_err();
        assert!(
            err.contains("namespce") && err.contains("{{ namespace }}"),
            "{err}"
        );
        assert!(render_query("up{{ revision", None).is_err());
    }
}
