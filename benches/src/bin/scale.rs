//! Scale benchmark of the controller (not a test): creates N stacks of three components on
//! a local control plane, waits until all are Healthy, then changes one component of a
//! sample of stacks at a steady rate and measures the time from each spec change to the
//! changed child applied. Reports the controller's resident memory per stack and the
//! latency percentiles.
//!
//! `cargo run --release -p deployctl-benches --bin scale -- --stacks 100 --stacks 1000`

use anyhow::Context;
use clap::Parser;
use deployctl_api::{labels, ProductionStack};
use deployctl_benches::{percentile, rss_bytes};
use deployctl_harness::{Cluster, ClusterOptions, ControllerProcess};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Numbers of stacks to measure, each on a fresh cluster (repeatable).
    #[arg(long = "stacks", default_values_t = vec![100usize, 1000])]
    stacks: Vec<usize>,
    /// Spec changes to time per run.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Spec changes per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The controller's `--resync` (how often a Healthy stack is re-checked); the
    /// default is the controller's own.
    #[arg(long, default_value = "5m")]
    resync: String,
    /// kube-controller-manager's `--kube-api-qps`, burst twice that. Its default (20,
    /// burst 30) makes the Deployment controller, not deployctl, the bound on how fast
    /// thousands of stacks come up.
    #[arg(long)]
    kcm_qps: Option<u32>,
    /// Also print the API server's mean request latencies by verb and resource, and
    /// etcd's by operation, over the whole run (where the time went).
    #[arg(long)]
    server_metrics: bool,
    /// Also record every read (GET, LIST, WATCH) the API server serves in an audit log,
    /// and print how many each client (user agent) sent, by verb and resource: who sends
    /// the requests. (The API server's own metrics count kube-controller-manager's
    /// metadata GETs of each stack as LISTs on 1.20; the audit log names them right.)
    #[arg(long)]
    audit_reads: bool,
    /// The controller binary (a release build measures what users run).
    #[arg(long, default_value = "target/release/deployctl-controller")]
    controller: PathBuf,
}

fn stack(name: &str, release: u32) -> ProductionStack {
    let c = |env: &str| {
        format!("{{spec: {{containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: RELEASE, value: '{env}'}}]}}]}}}}")
    };
    serde_yaml_ng::from_str(&format!(
        "apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {{name: {name}}}
spec:
  components:
  - {{name: db, replicas: 0, template: {db}}}
  - {{name: cache, replicas: 0, template: {db}}}
  - {{name: api, replicas: 0, dependsOn: [db, cache], template: {api}}}
",
        db = c("1"),
        api = c(&release.to_string()),
    ))
    .expect("bench stack parses")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.controller.exists(),
        "{} not found; run `cargo build --release -p deployctl-controller` first",
        args.controller.display()
    );
    println!("| stacks | time to all Healthy | controller RSS | RSS per stack | change→applied p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.stacks {
        run(n, &args)
            .await
            .with_context(|| format!("run with {n} stacks"))?;
    }
    Ok(())
}

async fn run(n: usize, args: &Args) -> anyhow::Result<()> {
    // The audit log's dir, only when asked for; removed when the run ends.
    let audit = args.audit_reads.then(tempfile::tempdir).transpose()?;
    let audit_log = audit.as_ref().map(|d| d.path().join("audit.log"));
    let cluster = Cluster::start(ClusterOptions {
        apiserver_args: match (&audit, &audit_log) {
            (Some(dir), Some(log)) => audit_args(dir.path(), log)?,
            _ => vec![],
        },
        controller_manager_args: args
            .kcm_qps
            .map(|q| {
                vec![
                    format!("--kube-api-qps={q}"),
                    format!("--kube-api-burst={}", q * 2),
                ]
            })
            .unwrap_or_default(),
        ..Default::default()
    })
    .await?;
    let client = cluster.client().await;
    deployctl_harness::crds::apply_crds(&client, "bench")
        .await
        .map_err(anyhow::Error::msg)?;
    let ns = "bench";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns);
    let controller = ControllerProcess::start_binary(
        &args.controller,
        cluster.kubeconfig_path(),
        ns,
        "bench",
        &["--log-format", "json", "--resync", &args.resync],
    );
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let stacks = stacks.clone();
            async move {
                stacks
                    .create(&PostParams::default(), &stack(&format!("s{i}"), 1))
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    // Counted from a watch: polling a list of a thousand stacks would itself load the
    // API server the controller is measured against.
    let mut healthy: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut events = watcher(stacks.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    while healthy.len() < n {
        let left = Duration::from_secs(1800).saturating_sub(started.elapsed());
        let ev = tokio::time::timeout(left, events.next())
            .await
            .map_err(|_| anyhow::anyhow!("only {}/{n} Healthy after 30 min", healthy.len()))?
            .context("the stack watch ended")??;
        if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = ev {
            let is_healthy = s
                .status
                .as_ref()
                .is_some_and(|st| st.stable_revision == Some(1) && st.is_true("Ready"));
            if is_healthy {
                healthy.insert(s.name_any());
            }
        }
    }
    drop(events);
    let all_healthy = started.elapsed();
    let rss = rss_bytes(controller.pid()).unwrap_or(0);

    // Time spec changes to the api Deployment carrying the new revision annotation.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn(async move {
        let mut events = watcher(deployments, watcher::Config::default()).boxed();
        while let Some(Ok(ev)) = events.next().await {
            if let watcher::Event::Apply(d) = ev {
                if d.annotations().get(labels::REVISION).map(String::as_str) == Some("2") {
                    let _ = tx.send((d.name_any(), Instant::now()));
                }
            }
        }
    });
    let changes = args.changes.min(n);
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    for i in 0..changes {
        let name = format!("s{}", i * n / changes);
        let patch = serde_json::json!({"spec": {"components": [
            serde_json::to_value(&stack(&name, 1).spec.components[0])?,
            serde_json::to_value(&stack(&name, 1).spec.components[1])?,
            serde_json::to_value(&stack(&name, 2).spec.components[2])?,
        ]}});
        sent.insert(format!("{name}-api"), Instant::now());
        stacks
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tokio::time::sleep(gap).await;
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while latencies.len() < changes && Instant::now() < deadline {
        if let Ok(Some((name, at))) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
        {
            if let Some(t0) = sent.remove(&name) {
                latencies.push(at.duration_since(t0));
            }
        }
    }
    watch.abort();
    anyhow::ensure!(
        latencies.len() == changes,
        "only {} of {changes} changes were applied",
        latencies.len()
    );
    latencies.sort();
    let rss_after = rss_bytes(controller.pid()).unwrap_or(rss).max(rss);
    println!(
        "| {n} | {:.1}s | {:.1} MiB | {:.1} KiB | {}ms | {}ms | {}ms |",
        all_healthy.as_secs_f64(),
        rss_after as f64 / 1048576.0,
        rss_after as f64 / 1024.0 / n as f64,
        percentile(&latencies, 50.0).as_millis(),
        percentile(&latencies, 99.0).as_millis(),
        latencies.last().map(|d| d.as_millis()).unwrap_or(0),
    );
    if args.server_metrics {
        print_server_latencies(&client).await?;
    }
    if let Some(log) = &audit_log {
        print_reads_by_client(log)?;
    }
    drop(controller);
    drop(cluster);
    Ok(())
}

/// kube-apiserver flags that log every read (metadata only) to `log`, in JSON.
fn audit_args(dir: &std::path::Path, log: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  verbs: [list, watch, get]
- level: None
",
    )?;
    Ok(vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", log.display()),
        "--audit-log-format=json".into(),
        // Written as they happen: the log is read while the cluster still runs.
        "--audit-log-mode=blocking".into(),
    ])
}

/// Counts the audit log's reads by client, verb and resource, to stderr (the busiest
/// 20). A WATCH is logged when it ends, so watches still open are not counted.
fn print_reads_by_client(log: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).with_context(|| format!("{}", log.display()))?;
    let mut counts: HashMap<(String, String, String, String), usize> = HashMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        // "kube-controller-manager/v1.20.2 (linux/amd64) kubernetes/.../garbage-collector":
        // the program and, for kube-controller-manager, which of its controllers.
        let agent = field(&e["userAgent"]);
        let program = agent.split('/').next().unwrap_or("-").to_string();
        let part = agent.rsplit('/').next().unwrap_or("-").to_string();
        let client = if part == program {
            program
        } else {
            format!("{program} ({part})")
        };
        *counts
            .entry((
                client,
                field(&e["user"]["username"]),
                field(&e["verb"]),
                field(&e["objectRef"]["resource"]),
            ))
            .or_default() += 1;
    }
    let mut rows: Vec<_> = counts.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    eprintln!("reads over the run, by client (user agent), user, verb and resource:");
    for ((client, user, verb, resource), n) in rows.iter().take(20) {
        eprintln!("  {n:>7}  {verb:<5} {resource:<24} {client}  [{user}]");
    }
    Ok(())
}

/// Mean latencies from the API server's /metrics: requests by verb and resource (the
/// busiest 15), and etcd operations, to stderr.
async fn print_server_latencies(client: &kube::Client) -> anyhow::Result<()> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    // (sum, count) per series of the two histograms.
    let mut series: HashMap<String, (f64, f64)> = HashMap::new();
    for line in text.lines() {
        for (metric, keys) in [
            (
                "apiserver_request_duration_seconds",
                &["verb", "resource"][..],
            ),
            ("etcd_request_duration_seconds", &["operation", "type"][..]),
        ] {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            let (is_sum, rest) = if let Some(r) = rest.strip_prefix("_sum{") {
                (true, r)
            } else if let Some(r) = rest.strip_prefix("_count{") {
                (false, r)
            } else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let key = format!(
                "{metric} {}",
                keys.iter().map(|k| label(k)).collect::<Vec<_>>().join(" ")
            );
            let e = series.entry(key).or_default();
            let v: f64 = value.trim().parse().unwrap_or(0.0);
            if is_sum {
                e.0 += v;
            } else {
                e.1 += v;
            }
        }
    }
    let mut rows: Vec<(String, f64, f64)> = series
        .into_iter()
        .filter(|(k, (_, n))| *n > 0.0 && !k.contains(" WATCH") && !k.contains(" CONNECT"))
        .map(|(k, (sum, n))| (k, n, sum / n))
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("server-side mean latencies over the run (requests, mean):");
    for (k, n, mean) in rows.iter().take(25) {
        eprintln!("  {k:<70} {n:>8.0} {:>8.1} ms", mean * 1000.0);
    }
    Ok(())
}
