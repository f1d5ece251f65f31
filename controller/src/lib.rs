//! The deployctl controller: reconciles `ProductionStack` resources, rolling their
//! components out in dependency order and keeping a revision history.
//!
//! `main.rs` only parses arguments; [`run`] wires the pieces: the API client, the metrics
//! server, leader election and the kube-runtime `Controller`.

pub mod agent;
pub mod args;
pub mod cache;
pub mod context;
pub mod crdgen;
pub mod error;
pub mod events;
pub mod gates;
pub mod leader;
pub mod metrics;
pub mod notifications;
pub mod reconcile;
pub mod server;

use anyhow::Context as _;
use args::{LogFormat, RunArgs};
use deployctl_api::{labels, ConfigKind, ProductionStack, StackOperation, StackSnapshot};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Config};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

/// Sets up logging once for the process.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,tower=warn,hyper=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// A client from `--kubeconfig`/`--context`, else the in-cluster or default config.
pub async fn client(args: &RunArgs) -> anyhow::Result<Client> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &options).await?
        }
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// Runs the controller until SIGTERM/SIGINT (exit 0) or until leadership is lost (error).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = client(&args).await?;
    let identity = args.identity();
    let resync = args.resync.parse().context("--resync")?;
    let gate_policy = gates::policy::GatePolicy::new(
        &args.gate_allowed_url_prefixes,
        &args.gate_allowed_prometheus,
    )?;
    let notification_policy =
        notifications::NotificationPolicy::new(&args.notification_allowed_url_prefixes)?;
    let lease_duration = args.lease_duration.parse().context("--lease-duration")?;

    let stacks: Api<ProductionStack> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    wait_for_crd(&stacks).await?;

    let metrics = Arc::new(metrics::Metrics::default());
    let health = Arc::new(server::Health::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    let server = {
        let mut rx = shutdown_rx.clone();
        tokio::spawn(server::serve(
            args.metrics_addr,
            metrics.clone(),
            health.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ))
    };

    let elector = args.leader_elect.then(|| {
        leader::LeaderElector::new(
            client.clone(),
            &args.lease_namespace(),
            &args.lease_name,
            &identity,
            lease_duration,
        )
    });
    // A standby replica is ready: it serves metrics and waits for the Lease.
    health.ready.store(true, Ordering::Relaxed);
    if let Some(e) = &elector {
        tracing::info!(identity, "waiting for the leader Lease");
        if !e.acquire(&mut shutdown_rx.clone()).await {
            let _ = server.await;
            return Ok(());
        }
    }
    metrics.set_leader(true);

    let (stop_tx, stop_rx) = watch::channel(false);
    let lost = {
        let elector = elector.clone();
        let mut rx = shutdown_rx.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let kept = match &elector {
                Some(e) => e.keep(&mut rx).await,
                None => {
                    let _ = rx.wait_for(|s| *s).await;
                    true
                }
            };
            let _ = stop_tx.send(true);
            !kept
        })
    };

    let children = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let (deployments, statefulsets): (Api<Deployment>, Api<StatefulSet>) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let operations: Api<StackOperation> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        match &args.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
    let revisions: Api<ControllerRevision> = match &args.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // What reconciles read, cached (see `cache`): the revisions, and the workloads and
    // operations, whose feeds also wake the stacks they belong to.
    let (triggers, woken) = cache::triggers();
    let (rev_store, rev_writer) = reflector::store();
    let (deploy_store, deploy_writer) = reflector::store();
    let (sts_store, sts_writer) = reflector::store();
    let (ops_store, ops_writer) = reflector::store();
    let (hpa_store, hpa_writer) = reflector::store();
    let feeds = vec![
        cache::feed(
            revisions,
            watcher::Config::default().labels(labels::REVISION_HASH),
            rev_writer,
            cache::keep,
            cache::owning_stack,
            None,
        ),
        cache::feed(
            deployments,
            children.clone(),
            deploy_writer,
            cache::trim_deployment,
            cache::owning_stack,
            Some(triggers.clone()),
        ),
        cache::feed(
            statefulsets,
            children.clone(),
            sts_writer,
            cache::trim_statefulset,
            cache::owning_stack,
            Some(triggers.clone()),
        ),
        cache::feed(
            operations,
            watcher::Config::default(),
            ops_writer,
            cache::keep,
            cache::operation_stack,
            Some(triggers),
        ),
        // No wake-ups: an HPA acts through the workload's count, whose change wakes the
        // stack, and the apply reads the store whenever it writes a workload.
        cache::feed(
            hpas,
            watcher::Config::default(),
            hpa_writer,
            cache::keep,
            |_| None,
            None,
        ),
    ];
    let caches = cache::Caches {
        revisions: rev_store,
        deployments: deploy_store,
        statefulsets: sts_store,
        operations: ops_store,
        hpas: hpa_store,
    };
    // Before the stores hold their first lists, a missing workload would look deleted.
    {
        let mut stop = stop_rx.clone();
        tokio::select! {
            ready = caches.ready() => anyhow::ensure!(ready, "the controller's caches stopped before their first list"),
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    let versioned = reconcile::resolve::Versioned {
        secrets: args.version_secrets,
    };
    let ctx = Arc::new(
        context::Context::new(client.clone(), metrics.clone(), &identity, resync)
            .with_agent_image(args.agent_image.clone())
            .with_agent_resources(args.agent_resources.clone())
            .with_gate_policy(gate_policy)
            .with_notification_policy(notification_policy)
            .with_caches(caches)
            .with_versioned(versioned),
    );
    let (snapshots, jobs): (Api<StackSnapshot>, Api<Job>) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let mut stop = stop_rx.clone();
    tracing::info!(namespace = ?args.namespace, "controller started");
    let controller = Controller::new(stacks, watcher::Config::default());
    // With Secret versioning off the controller reads no Secret, not even their names.
    // Metadata only: the content is read by the reconcile that needs it.
    let (configmaps, secrets): (
        Api<PartialObjectMeta<ConfigMap>>,
        Api<PartialObjectMeta<Secret>>,
    ) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // deployctl's own config copies are immutable and never referenced by a spec.
    let not_copies =
        watcher::Config::default().labels(&format!("!{}", deployctl_api::config::SOURCE_LABEL));
    // A stack with `templateFrom` may read config its spec does not name (the referenced
    // template's): any change in its namespace wakes it.
    let refers = move |kind: ConfigKind| {
        move |s: &ProductionStack, name: &str| {
            s.spec.components.iter().any(|c| c.template_from.is_some())
                || reconcile::resolve::referenced(&s.spec.components, versioned)
                    .contains(&(kind, name.to_string()))
        }
    };
    let secret_changes = versioned.secrets.then(|| {
        reference_wakeups(
            secrets,
            not_copies.clone(),
            refers(ConfigKind::Secret),
            controller.store(),
        )
    });
    let config_changes = futures::stream::select(
        reference_wakeups(
            configmaps,
            not_copies,
            refers(ConfigKind::ConfigMap),
            controller.store(),
        ),
        futures::stream::iter(secret_changes).flatten(),
    );
    // Workloads that `templateFrom` names (never deployctl's own).
    let (ref_deployments, ref_statefulsets): (
        Api<PartialObjectMeta<Deployment>>,
        Api<PartialObjectMeta<StatefulSet>>,
    ) = match &args.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let not_ours = watcher::Config::default().labels(&format!(
        "{}!={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let takes_from = |kind: deployctl_api::WorkloadKind| {
        move |s: &ProductionStack, name: &str| {
            reconcile::resolve::templates_from(&s.spec.components)
                .contains(&(kind, name.to_string()))
        }
    };
    let workload_changes = futures::stream::select(
        reference_wakeups(
            ref_deployments,
            not_ours.clone(),
            takes_from(deployctl_api::WorkloadKind::Deployment),
            controller.store(),
        ),
        reference_wakeups(
            ref_statefulsets,
            not_ours,
            takes_from(deployctl_api::WorkloadKind::StatefulSet),
            controller.store(),
        ),
    );
    controller
        // Workloads and StackOperations: from the cache feeds, after the stores have them.
        .reconcile_on(woken)
        // A referenced ConfigMap or Secret changed (or appeared): a new revision, or the
        // end of a Stalled wait for it.
        .reconcile_on(config_changes)
        // A workload a `templateFrom` names changed (or appeared).
        .reconcile_on(workload_changes)
        // Agent and gate Jobs: a finished one moves its stack on at once.
        .owns(jobs, children)
        // A StackSnapshot (a person's, or one of ours changing phase) wakes its stack.
        .watches(snapshots, watcher::Config::default(), |s: StackSnapshot| {
            let ns = s.metadata.namespace.clone()?;
            Some(ObjectRef::<ProductionStack>::new(&s.spec.stack).within(&ns))
        })
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            // error_policy already logged failures with their category.
            if let Ok((obj, _)) = res {
                tracing::debug!(stack = %obj.name, "reconciled");
            }
        })
        .await;

    for f in feeds {
        f.abort();
    }
    let lost_leadership = lost.await.unwrap_or(false);
    metrics.set_leader(false);
    if lost_leadership {
        anyhow::bail!("lost the leader Lease; exiting so that a fresh start re-joins the election");
    }
    if let Some(e) = &elector {
        e.release().await;
    }
    let _ = server.await;
    Ok(())
}

/// The stacks to wake when an object they reference (a ConfigMap, a Secret, a workload
/// `templateFrom` names) changes: those in its namespace for which `refers` says so.
/// Metadata only: the content is read by the reconcile, and a Secret's never sits in the
/// controller's memory longer than that.
fn reference_wakeups<K>(
    api: Api<PartialObjectMeta<K>>,
    config: watcher::Config,
    refers: impl Fn(&ProductionStack, &str) -> bool + Send + 'static,
    stacks: reflector::Store<ProductionStack>,
) -> impl futures::Stream<Item = ObjectRef<ProductionStack>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    watcher(api, config)
        .default_backoff()
        .touched_objects()
        .filter_map(|r| async move { r.ok() })
        .flat_map(move |meta| {
            let ns = meta.metadata.namespace.clone();
            let name = meta.metadata.name.clone().unwrap_or_default();
            let woken: Vec<ObjectRef<ProductionStack>> = stacks
                .state()
                .iter()
                .filter(|s| s.metadata.namespace == ns && refers(s, &name))
                .map(|s| ObjectRef::from_obj(&**s))
                .collect();
            futures::stream::iter(woken)
        })
}

/// Waits (up to a minute) until ProductionStacks are served: a controller started together
/// with its CRDs (a sandbox, a fresh install) must not exit because it came up first.
async fn wait_for_crd(stacks: &Api<ProductionStack>) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut logged = false;
    loop {
        match stacks.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 && std::time::Instant::now() < deadline => {
                if !logged {
                    tracing::warn!("ProductionStacks are not served yet; waiting for the CRD (kubectl apply --server-side -f manifests/crds/)");
                    logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!(
                "cannot list ProductionStacks: {}; is the CRD installed? kubectl apply --server-side -f manifests/crds/",
                error::kube_message(&e)
            ),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
