//! Command-line and environment configuration of the controller: one clap struct, every
//! option with an `env` fallback so the chart can set it either way.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// deployctl controller: rolls ProductionStacks out in dependency order.
#[derive(Debug, Parser)]
#[command(name = "deployctl-controller", version, about)]
pub struct Args {
    /// What to run; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of `run`, also accepted without the subcommand.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the CustomResourceDefinitions as YAML (or write one file each).
    Crdgen {
        /// Write `<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Snapshot, restore, verify or prune a component's data (run by the controller's
    /// Jobs; prints one JSON result and writes it to the termination log).
    Agent(Box<crate::agent::command::AgentArgs>),
}

/// Options of the controller.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Kubeconfig file; in-cluster configuration or $KUBECONFIG when omitted.
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use.
    #[arg(long, env = "DEPLOYCTL_CONTEXT")]
    pub context: Option<String>,

    /// Watch only this namespace (all namespaces when omitted).
    #[arg(long, env = "DEPLOYCTL_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "DEPLOYCTL_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "DEPLOYCTL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Image of the snapshot agent's Jobs (`deployctl-controller agent ...`): the
    /// controller's own image, so agent and controller are the same build. The chart sets
    /// it to the image it deploys.
    #[arg(long, env = "DEPLOYCTL_AGENT_IMAGE", default_value = crate::context::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,

    /// CPU and memory of the snapshot agent's Jobs, as the JSON of a container's
    /// `resources` (a stack's `spec.snapshots.agentResources` takes its place). The chart
    /// sets it from `agent.resources`.
    #[arg(
        long,
        env = "DEPLOYCTL_AGENT_RESOURCES",
        default_value = crate::context::DEFAULT_AGENT_RESOURCES,
        value_parser = parse_resources
    )]
    pub agent_resources: k8s_openapi::api::core::v1::ResourceRequirements,

    /// Take a Lease before reconciling, so several replicas can run and only one writes.
    #[arg(long, env = "DEPLOYCTL_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "DEPLOYCTL_LEASE_NAME",
        default_value = "deployctl-controller"
    )]
    pub lease_name: String,

    /// Namespace of the leader-election Lease (the watched namespace, else the pod's
    /// namespace, else `default`).
    #[arg(long, env = "DEPLOYCTL_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a leader's Lease is valid without renewal; another replica takes over
    /// after it expires.
    #[arg(long, env = "DEPLOYCTL_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: deployctl_api::Duration,

    /// This replica's identity in the Lease (the pod name, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Namespace the controller runs in (for the Lease default).
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,

    /// URL prefixes that `http` and `errorRate` gates may name in `url` (repeat the flag,
    /// or separate with commas), e.g. `https://status.example.com/checks/`. A prefix covers
    /// its scheme, host and port and the paths below its path. Without any, gates reach
    /// only the component's own pods; a stack naming another URL is Invalid.
    #[arg(
        long = "gate-allowed-url-prefix",
        env = "DEPLOYCTL_GATE_ALLOWED_URL_PREFIXES",
        value_delimiter = ','
    )]
    pub gate_allowed_url_prefixes: Vec<String>,

    /// Prometheus servers (base URLs) that `prometheus` gates may name in `address`
    /// (repeat the flag, or separate with commas). Without any, a stack with a prometheus
    /// gate is Invalid.
    #[arg(
        long = "gate-allowed-prometheus",
        env = "DEPLOYCTL_GATE_ALLOWED_PROMETHEUS",
        value_delimiter = ','
    )]
    pub gate_allowed_prometheus: Vec<String>,

    /// URL prefixes that notification receivers (the `url` of a stack's notification
    /// Secret) must match (repeat the flag, or separate with commas), e.g.
    /// `https://hooks.slack.com/services/`. Matched as gates' URLs are. Without any, no
    /// notification is sent: each is refused with a `NotificationRefused` Event.
    #[arg(
        long = "notification-allowed-url-prefix",
        env = "DEPLOYCTL_NOTIFICATION_ALLOWED_URL_PREFIXES",
        value_delimiter = ','
    )]
    pub notification_allowed_url_prefixes: Vec<String>,

    /// How often a Healthy stack is re-checked even without a change.
    #[arg(long, env = "DEPLOYCTL_RESYNC", default_value = "5m")]
    pub resync: deployctl_api::Duration,

    /// Version the Secrets components reference with their revision (per-revision
    /// immutable copies), as ConfigMaps always are. Needs get/list/watch/create/patch on
    /// Secrets; `false` leaves Secret references as written, and the controller then
    /// reads no Secret at all.
    #[arg(long, env = "DEPLOYCTL_VERSION_SECRETS", default_value_t = true, action = clap::ArgAction::Set)]
    pub version_secrets: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl RunArgs {
    /// Namespace of the Lease.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| self.namespace.clone())
            .or_else(|| self.pod_namespace.clone())
            .unwrap_or_else(|| "default".into())
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// `--agent-resources`: a container's `resources` as JSON.
fn parse_resources(s: &str) -> Result<k8s_openapi::api::core::v1::ResourceRequirements, String> {
    serde_json::from_str(s).map_err(|e| {
        format!(
            "not the JSON of a container's resources ({e}); e.g. \
             {{\"requests\":{{\"cpu\":\"100m\",\"memory\":\"128Mi\"}},\"limits\":{{\"memory\":\"1Gi\"}}}}"
        )
    })
}
