//! `deployctl-sandbox`: a throwaway cluster with the simulated node to try deployctl by
//! hand. Starts it (with `--registry`, also a container registry the node pulls from),
//! writes its kubeconfig to a known path, optionally applies manifests, and runs until
//! Ctrl-C or SIGTERM, then tears everything down.
//!
//! Once ready it prints a line starting with `running;`, then `registry=127.0.0.1:PORT; `
//! when `--registry` is given: `sed -n 's/^running;.*registry=\([^;]*\);.*/\1/p'` reads
//! the address.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use deployctl_harness::{apply_yaml, Cluster, ClusterOptions};

/// Run a throwaway Kubernetes 1.37 cluster with simulated nodes until interrupted.
#[derive(Debug, Parser)]
#[command(name = "deployctl-sandbox", version)]
struct Args {
    /// Where to write the admin kubeconfig.
    #[arg(
        long,
        env = "DEPLOYCTL_SANDBOX_KUBECONFIG",
        default_value = ".sandbox/kubeconfig"
    )]
    kubeconfig_out: PathBuf,

    /// Number of simulated nodes (0: control plane only).
    #[arg(long, default_value_t = 1)]
    nodes: usize,

    /// Dir in which the cluster's state dir is made (default: the system temp dir).
    #[arg(long, env = "DEPLOYCTL_SANDBOX_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// Dir where component logs are kept after the sandbox exits.
    #[arg(long)]
    log_dir: Option<PathBuf>,

    /// Also run a container registry (plain HTTP on a free loopback port) that the
    /// simulated node pulls from: push images to it with
    /// `skopeo copy --dest-tls-verify=false oci:DIR:TAG docker://127.0.0.1:PORT/REPO:TAG`
    /// and run them as `127.0.0.1:PORT/REPO:TAG`. Its address is printed on the ready and
    /// `running;` lines as `registry=127.0.0.1:PORT`.
    #[arg(long)]
    registry: bool,

    /// YAML file to server-side apply once the cluster is up (any kinds, many documents);
    /// may be repeated, applied in order.
    #[arg(long = "apply", value_name = "FILE")]
    apply: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "deployctl_harness=info,deployctl_simnode=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let manifests = args
        .apply
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))
                .map(|text| (path.clone(), text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let cluster = Cluster::start(ClusterOptions {
        node_count: args.nodes,
        state_parent: args.state_dir.clone(),
        log_dir: args.log_dir.clone(),
        registry: args.registry,
        ..Default::default()
    })
    .await
    .context("starting the sandbox cluster")?;

    let kubeconfig = absolute(&args.kubeconfig_out)?;
    if let Some(dir) = kubeconfig.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(&kubeconfig, cluster.kubeconfig_yaml())?;

    // `registry=HOST` is one `; `-separated field, the same on both lines, for scripts.
    let registry_field = cluster
        .registry()
        .map(|r| format!("registry={}; ", r.host()))
        .unwrap_or_default();
    println!(
        "sandbox ready in {:.1?}: API server {}, nodes {:?}{}",
        cluster.startup_time(),
        cluster.api_server_url(),
        cluster.node_names(),
        cluster
            .registry()
            .map(|r| format!(", registry={}", r.host()))
            .unwrap_or_default()
    );
    println!("state dir: {}", cluster.data_dir().display());
    println!("kubeconfig: {}", kubeconfig.display());
    println!();
    println!("    export KUBECONFIG={}", kubeconfig.display());
    println!("    kubectl get nodes");
    println!();

    let client = cluster.try_client().await?;
    for (path, text) in &manifests {
        let name = path.display().to_string();
        let applied = apply_yaml(&client, text, &name, "deployctl-sandbox", "default").await?;
        for object in applied {
            println!("applied {object} (from {name})");
        }
    }
    println!("running; {registry_field}Ctrl-C or SIGTERM stops and removes everything");

    wait_for_stop_signal().await?;
    println!("stopping");
    // Teardown blocks (it waits for processes); keep it off the runtime's worker.
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .context("tearing down")?;
    // The file would point at a cluster that no longer exists.
    let _ = std::fs::remove_file(&kubeconfig);
    println!("stopped");
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .context("reading the current dir")?
        .join(path))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
