//! Rollback-speed benchmark (not a test): on a throwaway cluster with the simulated node,
//! a three-component stack (db: a StatefulSet keeping a SQLite database of `--data` bytes
//! on a claim, snapshotted with SQLite's online backup; cache; api depending on both) is
//! upgraded `--runs` times with a db release that migrates the data irreversibly and then
//! fails its gate (`--fail db`, the default), or with the sandbox's bad upgrade (`--fail
//! api`: db v2 migrates the data and passes, a new api fails its gate, and both are rolled
//! back, api first). Each time the controller rolls it back by itself, data included. The
//! bench measures the time from the decisive gate measurement to the stack running the
//! stable revision again on every component with the data restored and verified, splits
//! it into stop, restore and start, checks after every run that the database's logical
//! checksum equals the one taken before the upgrade, and then applies a good release so
//! the next run starts from Healthy.
//!
//! ```sh
//! cargo build --release -p deployctl-controller -p demo-app -p deployctl-benches
//! ./target/release/rollback --runs 20 --data 1GiB
//! ```
//!
//! Times come from one clock (everything runs on this machine): the decisive measurement
//! from the controller's log (the last failed gate measurement before the rollback; the
//! controller measures and decides in the same reconcile, and the `RollbackStarted` Event
//! follows within milliseconds), the steps from the `RestoreStarted` and `DataRestored`
//! Events, the end from a watch on the stack, stamped when each change arrives.

use anyhow::{bail, ensure, Context};
use clap::Parser;
use deployctl_api::{ComponentPhase, ProductionStack, RestorePhase, StackPhase, StackSnapshot};
use deployctl_benches::{parse_size, percentile};
use deployctl_harness::{Cluster, ClusterOptions, ControllerProcess};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NS: &str = "default";
const STACK: &str = "shop";
/// The claim the db's StatefulSet uses for its first replica.
const DB_CLAIM: &str = "data-shop-db-0";

#[derive(Parser, Debug)]
struct Args {
    /// Failing upgrades to roll back, one after the other on the same stack.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Size of the db's SQLite database: 1GiB, 256MiB, ...
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    data: u64,
    /// How long one step (a rollout, a rollback) may take before the bench gives up.
    #[arg(long, default_value = "15m", value_parser = parse_minutes)]
    step_timeout: Duration,
    /// Where the cluster's state dir (and so every volume: the database, the snapshot
    /// repository) is made; the system temp dir when unset. `/dev/shm` keeps the data in
    /// memory when the disk is short of space.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Which gate fails in the bad release: `db` (db v2 fails its own gate; db alone is
    /// rolled back) or `api` (the sandbox's bad upgrade: db v2 passes, api fails; both
    /// are rolled back, api first).
    #[arg(long, value_enum, default_value_t = Fail::Db)]
    fail: Fail,
}

fn parse_minutes(s: &str) -> Result<Duration, String> {
    s.strip_suffix('m')
        .and_then(|m| m.parse::<u64>().ok())
        .map(|m| Duration::from_secs(m * 60))
        .ok_or_else(|| format!("{s:?}: give minutes, e.g. 15m"))
}

/// A demo-app container listening on 8080 (`http`) with a readiness probe and /data
/// mounted from volume `data`.
fn pod_template(component: &str, tag: &str, env: &[(&str, &str)], grace: u32) -> serde_json::Value {
    let env: Vec<_> = env
        .iter()
        .map(|(n, v)| json!({"name": n, "value": v}))
        .collect();
    let mut spec = json!({
        "terminationGracePeriodSeconds": grace,
        "containers": [{
            "name": "app",
            "image": format!("deployctl.dev/demo-app:{tag}"),
            "env": env,
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }],
    });
    if component != "db" {
        spec["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    }
    json!({"metadata": {"labels": {"app": component}}, "spec": spec})
}

/// Which gate fails in the bad release.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// db v2 migrates the data and then fails every request: db's own gate fails, and db
    /// alone is rolled back (api, which depends on it, is not reached).
    Db,
    /// The sandbox's bad upgrade: db v2 migrates the data and passes its gate, then a new
    /// api fails every request: api's gate fails, and both are rolled back, api first,
    /// then db with its data.
    Api,
}

/// The bench stack. `release` goes into api's environment (a new revision each time);
/// `failing` makes db run version 2, which migrates the data to schema 2, and makes the
/// component `fail` names fail every request, so its http gate fails at its first
/// measurement.
fn stack(release: usize, failing: bool, fail: Fail) -> anyhow::Result<ProductionStack> {
    let (db_tag, db_env): (&str, &[(&str, &str)]) = match (failing, fail) {
        (true, Fail::Db) => ("v2", &[("DATA_DIR", "/data"), ("FAULT_ERROR_RATE", "1.0")]),
        (true, Fail::Api) => ("v2", &[("DATA_DIR", "/data")]),
        (false, _) => ("v1", &[("DATA_DIR", "/data")]),
    };
    let api_release = if failing && fail == Fail::Api {
        format!("{release}-bad")
    } else {
        release.to_string()
    };
    let mut api_env = vec![("DATA_DIR", "/data"), ("RELEASE", api_release.as_str())];
    if failing && fail == Fail::Api {
        api_env.push(("FAULT_ERROR_RATE", "1.0"));
    }
    // db: one item, not the list (the list is the whole database); api (its own small
    // database): the list.
    let http_gate = |path: &str| {
        json!([{"name": "http", "interval": "1s", "failureLimit": 1,
                "http": {"path": path, "port": "http"}}])
    };
    let mut api = json!({
        "name": "api",
        "dependsOn": ["db", "cache"],
        "template": pod_template("api", "v1", &api_env, 5),
    });
    if fail == Fail::Api {
        api["service"] = json!({"ports": [{"name": "http", "port": 8080}]});
        api["gates"] = http_gate("/api/items");
    }
    let value = json!({
        "apiVersion": "deployctl.dev/v1alpha1",
        "kind": "ProductionStack",
        "metadata": {"name": STACK},
        "spec": {
            // The migration of a large database takes a while: give it room.
            "rollout": {"analysis": "3s", "progressDeadline": "10m", "rollbackDeadline": "5m"},
            "components": [
                {
                    "name": "db",
                    "kind": "StatefulSet",
                    "service": {"ports": [{"name": "http", "port": 8080}]},
                    "volumeClaims": [{"name": "data", "size": "4Gi"}],
                    "data": {"volume": "data", "method": "Sqlite", "database": "app.db"},
                    "gates": http_gate("/api/items/1"),
                    "template": pod_template("db", db_tag, db_env, 30),
                },
                {
                    "name": "cache",
                    "template": pod_template("cache", "v1", &[("DATA_DIR", "/data")], 5),
                },
                api,
            ],
        },
    });
    Ok(serde_json::from_value(value)?)
}

/// Seconds since the epoch, for comparing the controller's Event times with ours.
fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn micros(t: &k8s_openapi::jiff::Timestamp) -> f64 {
    t.as_microsecond() as f64 / 1e6
}

/// The latest time each Event reason was observed on the stack. The controller's Event
/// recorder folds a repeated reason into a series on the first Event (its note and
/// `eventTime` stay the first's), so the latest occurrence is `series.lastObservedTime`.
async fn event_times(events: &Api<Event>) -> anyhow::Result<HashMap<String, f64>> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for e in events.list(&ListParams::default()).await?.items {
        let on_stack = e.regarding.as_ref().is_some_and(|r| {
            r.kind.as_deref() == Some("ProductionStack") && r.name.as_deref() == Some(STACK)
        });
        let (Some(reason), true) = (e.reason.clone(), on_stack) else {
            continue;
        };
        let at = e
            .series
            .as_ref()
            .map(|s| micros(&s.last_observed_time.0))
            .or_else(|| e.event_time.as_ref().map(|t| micros(&t.0)));
        if let Some(at) = at {
            let slot = out.entry(reason).or_insert(at);
            *slot = slot.max(at);
        }
    }
    Ok(out)
}

/// When the controller logged a failed gate measurement (from its JSON log), in seconds
/// since the epoch.
fn failed_measurements(log: &Path) -> anyhow::Result<Vec<f64>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading the controller log {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            // The line has two "message" keys (the event's and the measurement's), so
            // match the text rather than the parsed value.
            (line.contains(r#""message":"measured""#) && line.contains(r#""outcome":"Failure""#))
                .then_some(())?;
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let at: k8s_openapi::jiff::Timestamp = v["timestamp"].as_str()?.parse().ok()?;
            Some(micros(&at))
        })
        .collect())
}

/// The demo app's logical checksum of the database in `dir` (read-only; safe while the
/// db runs).
fn checksum(demo_app: &Path, dir: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(demo_app)
        .args(["checksum", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .context("running demo-app checksum")?;
    ensure!(
        out.status.success(),
        "demo-app checksum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// xorshift64*: reproducible, varied content without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "oak",
    "walnut",
    "steel",
    "linen",
    "cotton",
    "ceramic",
    "glass",
    "copper",
    "bamboo",
    "wool",
    "chair",
    "table",
    "lamp",
    "shelf",
    "rug",
    "mug",
    "kettle",
    "vase",
    "desk",
    "stool",
    "cabinet",
    "mirror",
    "blanket",
    "pillow",
    "basket",
    "small",
    "large",
    "round",
    "square",
    "vintage",
    "modern",
    "rustic",
    "handmade",
    "folding",
    "stackable",
    "adjustable",
    "matte",
    "glossy",
    "brushed",
    "natural",
    "black",
    "white",
    "grey",
    "green",
    "blue",
    "red",
    "ochre",
    "sand",
    "for",
    "with",
    "and",
    "two",
    "four",
    "drawers",
    "legs",
    "finish",
    "set",
    "pack",
    "outdoor",
    "kitchen",
    "bedroom",
    "office",
];

/// An item name of 120 to 200 characters: words, sizes and a reference, as a catalogue
/// would have (varied, so the snapshot engine cannot dedup it away).
fn item_name(rng: &mut Rng) -> String {
    let len = 120 + rng.below(81);
    let mut s = String::with_capacity(len + 24);
    while s.len() < len - 24 {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len())]);
        if rng.below(6) == 0 {
            s.push_str(&format!(
                " {}x{} cm",
                10 + rng.below(190),
                10 + rng.below(190)
            ));
        }
    }
    s.push_str(&format!(", ref {:016X}", rng.next()));
    s.truncate(200);
    s
}

/// Fills the schema-1 database `db` (made by `demo-app migrate`) with items until the
/// file holds `target` bytes. Returns the items written.
fn fill(db: &Path, target: u64) -> anyhow::Result<u64> {
    let mut conn = rusqlite::Connection::open(db)?;
    // Nothing else has the file open: skip the journal while bulk loading, then give it
    // back its WAL mode (the app sets it on open anyway).
    conn.query_row("PRAGMA journal_mode = OFF", [], |_| Ok(()))?;
    conn.execute_batch("PRAGMA synchronous = OFF;")?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut rows = 0u64;
    loop {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare("INSERT INTO items (name, price_cents) VALUES (?1, ?2)")?;
            for _ in 0..100_000 {
                insert.execute(rusqlite::params![
                    item_name(&mut rng),
                    rng.below(500_000) as i64
                ])?;
            }
        }
        tx.commit()?;
        rows += 100_000;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        if (pages * page_size) as u64 >= target {
            break;
        }
    }
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    Ok(rows)
}

/// One failing upgrade and its rollback, in seconds since the epoch unless named
/// otherwise.
#[derive(Debug)]
struct Run {
    applied: f64,
    /// The decisive (last failed) gate measurement.
    measured: f64,
    /// The `RollbackStarted` Event.
    decided: f64,
    seen_rolling_back: f64,
    restore_started: f64,
    data_restored: f64,
    complete_event: f64,
    settled: f64,
    /// `status.lastRollback.durationSeconds` (its start is in whole seconds).
    controller_seconds: f64,
    snapshot: String,
    snapshot_seconds: Option<i64>,
    /// The peer: the good release applied after the rollback, apply → Healthy (seconds).
    good_rollout: f64,
}

impl Run {
    fn total(&self) -> f64 {
        self.settled - self.measured
    }
    fn stop(&self) -> f64 {
        self.restore_started - self.measured
    }
    fn restore(&self) -> f64 {
        self.data_restored - self.restore_started
    }
    fn start(&self) -> f64 {
        self.settled - self.data_restored
    }
}

/// Watches the stack until `pred` holds; returns it and when it was seen. On timeout,
/// fails with the last status seen.
async fn watch_until(
    stacks: &Api<ProductionStack>,
    what: &str,
    timeout: Duration,
    mut on_each: impl FnMut(&ProductionStack, SystemTime),
    pred: impl Fn(&ProductionStack) -> bool,
) -> anyhow::Result<(ProductionStack, SystemTime)> {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={STACK}"));
    let mut events = watcher(stacks.clone(), cfg)
        .default_backoff()
        .applied_objects()
        .boxed();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, events.try_next()).await {
            Ok(Ok(Some(s))) => {
                let at = SystemTime::now();
                on_each(&s, at);
                if pred(&s) {
                    return Ok((s, at));
                }
                last = Some(s);
            }
            Ok(Ok(None)) => bail!("the watch on stack {STACK} ended"),
            Ok(Err(e)) => eprintln!("watch error (retrying): {e}"),
            Err(_) => bail!(
                "timed out after {timeout:?} waiting for {what}; last status:\n{}",
                last.and_then(|s| s.status)
                    .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                    .unwrap_or_else(|| "<none>".into())
            ),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply("deployctl-bench").force()
}

/// Healthy on its current revision, every component Available.
fn healthy(s: &ProductionStack) -> bool {
    let Some(st) = &s.status else { return false };
    st.observed_generation == s.metadata.generation
        && st.phase == Some(StackPhase::Healthy)
        && st.stable_revision.is_some()
        && st.stable_revision == st.current_revision
        && st.is_true("Ready")
}

/// Rolled back from a revision after `before`: no rollback in progress, every restore
/// done, every component Available on the stable revision. (A component carries the
/// revision that last changed it: the restored ones carry the stable revision, the others
/// may carry an older one.)
fn rolled_back(s: &ProductionStack, before: i64) -> bool {
    let Some(st) = &s.status else { return false };
    let (Some(last), Some(stable)) = (&st.last_rollback, st.stable_revision) else {
        return false;
    };
    st.rollback.is_none()
        && st.phase == Some(StackPhase::RolledBack)
        && last.from_revision > before
        && stable == last.to_revision
        && !last.restores.is_empty()
        && last
            .restores
            .iter()
            .all(|r| r.phase == RestorePhase::Restored)
        && st.components.len() == 3
        && st.components.iter().all(|c| {
            let restored = last.restores.iter().any(|r| r.component == c.name);
            c.phase == ComponentPhase::Available
                && c.ready_replicas >= 1
                && c.revision.is_some_and(|r| r <= stable)
                && (!restored || c.revision == Some(stable))
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Ctrl-C or SIGTERM drops the bench's future, and with it the controller and the
    // cluster (their Drop stops every process and removes the state dir, its mounts and
    // the node's network), as an error does.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = bench(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (Ctrl-C); cleaned up"),
        _ = term.recv() => bail!("terminated (SIGTERM); cleaned up"),
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let bin_dir = deployctl_harness::node::target_profile_dir().context("locating target/")?;
    let controller = bin_dir.join("deployctl-controller");
    let demo_app = bin_dir.join("demo-app");
    for b in [&controller, &demo_app] {
        ensure!(
            b.is_file(),
            "{} not found; build it next to this bench: `cargo build --release -p deployctl-controller -p demo-app -p deployctl-benches`",
            b.display()
        );
    }
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    println!(
        "machine: {} cores, load average {} at start; failing gate: {:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load(),
        args.fail
    );

    let t = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        node_count: 1,
        state_parent: args.state_dir.clone(),
        ..Default::default()
    })
    .await?;
    println!(
        "cluster ready in {:.1}s (state dir {})",
        t.elapsed().as_secs_f64(),
        cluster.data_dir().display()
    );
    let client = cluster.client().await;
    deployctl_harness::crds::apply_crds(&client, "deployctl-bench")
        .await
        .map_err(anyhow::Error::msg)?;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), NS);
    let snapshots: Api<StackSnapshot> = Api::namespaced(client.clone(), NS);

    // The db's claim is made first and its volume filled before the stack exists: a pod
    // that only creates the schema-1 database gets the volume provisioned, then the bench
    // writes the items straight into the file. The StatefulSet adopts the claim by name.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pvcs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": DB_CLAIM},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "4Gi"}}},
        }))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "create-db"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "migrate",
                    "image": "deployctl.dev/demo-app:v1",
                    "args": ["migrate", "--data-dir", "/data", "--app-version", "1"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": DB_CLAIM}}],
            },
        }))?,
    )
    .await?;
    let t = Instant::now();
    loop {
        let phase = pods
            .get("create-db")
            .await?
            .status
            .and_then(|s| s.phase)
            .unwrap_or_default();
        match phase.as_str() {
            "Succeeded" => break,
            "Failed" => bail!("the pod creating the database failed"),
            _ => {}
        }
        ensure!(
            t.elapsed() < Duration::from_secs(120),
            "the pod creating the database did not finish in 2 minutes (phase {phase:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pods.delete("create-db", &DeleteParams::default()).await?;
    let pv = pvcs
        .get(DB_CLAIM)
        .await?
        .spec
        .and_then(|s| s.volume_name)
        .context("the db claim is not bound")?;
    let dir = PathBuf::from(
        Api::<PersistentVolume>::all(client.clone())
            .get(&pv)
            .await?
            .spec
            .and_then(|s| s.local)
            .context("the db volume is not a local volume")?
            .path,
    );
    let t = Instant::now();
    let db_file = dir.join("app.db");
    let target = args.data;
    let items = tokio::task::spawn_blocking({
        let db_file = db_file.clone();
        move || fill(&db_file, target)
    })
    .await??;
    let size = std::fs::metadata(&db_file)?.len();
    println!(
        "database: {items} items, {:.2} GiB in {} (filled in {:.1}s)",
        size as f64 / (1u64 << 30) as f64,
        db_file.display(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let original = checksum(&demo_app, &dir)?;
    println!("checksum {original} ({:.1}s)", t.elapsed().as_secs_f64());

    // The harness names the controller's log after the namespace and identity and appends
    // to it: an identity of this process's own keeps the log this run's alone (the
    // decisive measurements are read from it) and other benches' logs alone.
    let identity = format!("rollback-bench-{}", std::process::id());
    let _controller = ControllerProcess::start_binary(
        &controller,
        cluster.kubeconfig_path(),
        NS,
        &identity,
        &["--log-format", "json"],
    );
    let controller_log = _controller.log_path().to_path_buf();
    println!("controller log: {}", controller_log.display());
    let t = Instant::now();
    stacks
        .patch(
            STACK,
            &apply_params(),
            &Patch::Apply(&stack(0, false, args.fail)?),
        )
        .await?;
    watch_until(
        &stacks,
        "Healthy (install)",
        args.step_timeout,
        |_, _| {},
        healthy,
    )
    .await?;
    println!("installed in {:.1}s", t.elapsed().as_secs_f64());
    let events: Api<Event> = Api::namespaced(client.clone(), NS);

    println!();
    println!("| run | decisive measurement → all Available on stable, data verified | controller's durationSeconds | stop | restore | start | apply → decisive measurement | pre-rollout snapshot | checksum | peer: next good release, apply → Healthy |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut runs: Vec<Run> = Vec::new();
    for i in 1..=args.runs {
        let before = stacks
            .get(STACK)
            .await?
            .status
            .and_then(|s| s.current_revision)
            .unwrap_or(0);
        let pre = checksum(&demo_app, &dir)?;
        ensure!(
            pre == original,
            "run {i}: the data changed between runs: checksum {pre}, expected {original}"
        );

        let applied = epoch(SystemTime::now());
        stacks
            .patch(
                STACK,
                &apply_params(),
                &Patch::Apply(&stack(i - 1, true, args.fail)?),
            )
            .await?;
        let mut seen_rolling_back = None;
        let (s, settled) = watch_until(
            &stacks,
            "the automatic rollback to finish",
            args.step_timeout,
            |s, at| {
                let rolling = s
                    .status
                    .as_ref()
                    .and_then(|st| st.rollback.as_ref())
                    .is_some_and(|r| r.from_revision > before);
                if rolling && seen_rolling_back.is_none() {
                    seen_rolling_back = Some(epoch(at));
                }
            },
            |s| rolled_back(s, before),
        )
        .await
        .with_context(|| format!("run {i}"))?;
        let settled = epoch(settled);
        let st = s.status.context("status")?;
        let last = st.last_rollback.context("lastRollback")?;

        // The data is the pre-upgrade data.
        let post = checksum(&demo_app, &dir)?;
        if post != pre {
            bail!(
                "run {i}: DATA NOT RESTORED: checksum after the rollback {post} differs from the one before the upgrade {pre} (lastRollback: {last:?})"
            );
        }

        let times = event_times(&events).await?;
        let at = |reason: &str| -> anyhow::Result<f64> {
            let t = *times
                .get(reason)
                .with_context(|| format!("run {i}: no {reason} Event"))?;
            ensure!(
                t >= applied,
                "run {i}: no {reason} Event since the upgrade was applied"
            );
            Ok(t)
        };
        let decided = at("RollbackStarted")?;
        let measured = failed_measurements(&controller_log)?
            .into_iter()
            .filter(|t| *t >= applied && *t <= decided)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
            .with_context(|| {
                format!(
                    "run {i}: no failed gate measurement in the controller log before the rollback"
                )
            })?;
        let snapshot = last.restores[0].snapshot.clone();
        let snap = snapshots.get(&snapshot).await?;
        let snapshot_seconds = snap.status.as_ref().and_then(|s| {
            Some(s.completed_at.as_ref()?.0.as_second() - s.started_at.as_ref()?.0.as_second())
        });
        let mut run = Run {
            applied,
            measured,
            decided,
            seen_rolling_back: seen_rolling_back.unwrap_or(settled),
            restore_started: at("RestoreStarted")?,
            data_restored: at("DataRestored")?,
            complete_event: at("RollbackComplete")?,
            settled,
            controller_seconds: last.duration_seconds,
            snapshot,
            snapshot_seconds,
            good_rollout: 0.0,
        };
        ensure!(
            run.measured <= run.decided
                && run.decided <= run.restore_started
                && run.restore_started <= run.data_restored
                && run.data_restored <= run.settled,
            "run {i}: Events out of order: {run:?}"
        );
        // A good release (a new revision) brings the stack back to Healthy.
        // Timed as the peer of the rollback: a forward rollout of the same stack (db's
        // pre-rollout snapshot, api rolled, its analysis), apply → Healthy.
        let good_applied = SystemTime::now();
        stacks
            .patch(
                STACK,
                &apply_params(),
                &Patch::Apply(&stack(i, false, args.fail)?),
            )
            .await?;
        let (_, good_healthy) = watch_until(
            &stacks,
            "Healthy on a good release",
            args.step_timeout,
            |_, _| {},
            |s| {
                healthy(s)
                    && s.status
                        .as_ref()
                        .and_then(|st| st.stable_revision)
                        .is_some_and(|r| r > before)
            },
        )
        .await
        .with_context(|| format!("run {i}: the good release after the rollback"))?;
        run.good_rollout = epoch(good_healthy) - epoch(good_applied);

        println!(
            "| {i} | {:.2}s | {:.3}s | {:.2}s | {:.2}s | {:.2}s | {:.1}s | {} | equal | {:.2}s |",
            run.total(),
            run.controller_seconds,
            run.stop(),
            run.restore(),
            run.start(),
            run.measured - run.applied,
            run.snapshot_seconds
                .map_or("?".to_string(), |s| format!("{s}s")),
            run.good_rollout,
        );
        if i == 1 {
            let sst = snap.status.unwrap_or_default();
            eprintln!(
                "   (run 1 restored {}: {} bytes, digest {}; after the decisive measurement: RollbackStarted Event {:.3}s, rollback seen in status {:.3}s, RollbackComplete Event {:.2}s)",
                run.snapshot,
                sst.size_bytes.unwrap_or(0),
                sst.digest.unwrap_or_default(),
                run.decided - run.measured,
                run.seen_rolling_back - run.measured,
                run.complete_event - run.measured,
            );
        }
        runs.push(run);
    }

    let secs = |f: fn(&Run) -> f64| {
        let mut v: Vec<Duration> = runs
            .iter()
            .map(|r| Duration::from_secs_f64(f(r).max(0.0)))
            .collect();
        v.sort();
        v
    };
    let total = secs(Run::total);
    println!();
    println!(
        "{} runs, {} of data, load average {} at the end",
        runs.len(),
        human_bytes(size),
        load()
    );
    println!("| time | p50 | p95 | max |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        (
            "rollback: decisive measurement → all Available on stable, data verified (watched)",
            total.clone(),
        ),
        (
            "rollback: controller's durationSeconds",
            secs(|r| r.controller_seconds),
        ),
        (
            "rollback split 1, stop: decisive measurement → db stopped, restore Job started",
            secs(Run::stop),
        ),
        (
            "rollback split 2, restore: the Job restores and verifies the data",
            secs(Run::restore),
        ),
        (
            "rollback split 3, start: data back → all Available",
            secs(Run::start),
        ),
        (
            "peer: a good release's rollout, apply → Healthy",
            secs(|r| r.good_rollout),
        ),
    ] {
        println!(
            "| {name} | {:.2}s | {:.2}s | {:.2}s |",
            percentile(&v, 50.0).as_secs_f64(),
            percentile(&v, 95.0).as_secs_f64(),
            v.last().copied().unwrap_or_default().as_secs_f64()
        );
    }
    let p95 = percentile(&total, 95.0).as_secs_f64();
    println!(
        "p95 {p95:.2}s: {:.1}x inside the 5-minute requirement, {:.1}x faster than Flagger's 10-minute default decision alone; target p95 < 30s: {}",
        300.0 / p95,
        600.0 / p95,
        if p95 < 30.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}
