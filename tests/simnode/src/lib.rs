//! A process node: plays the kubelet for one or more `Node` objects of a test cluster,
//! running each bound pod's containers as local processes, plus a local-directory PV
//! provisioner.
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), deployctl_simnode::SimNodeError> {
//! use deployctl_simnode::{NodeConfig, SimNode};
//! let cfg = NodeConfig::new(
//!     vec!["simnode-0".into()],
//!     "/tmp/state".into(),
//!     [("deployctl.dev/demo-app".to_owned(), "/work/target/debug/demo-app".into())].into(),
//!     "https://127.0.0.1:6443".into(),
//!     std::fs::read_to_string("/tmp/ca.pem").unwrap_or_default(),
//! )
//! // Pods may now run `127.0.0.1:5000/app:v1`, pulled over plain HTTP.
//! .with_insecure_registries(vec!["127.0.0.1:5000".into()]);
//! let node = SimNode::start(client, cfg).await?;
//! // ... pods scheduled to simnode-0 run as processes ...
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Images come two ways. A repository of [`NodeConfig::images`] (the executable map)
//! runs that local executable in a root made of the host's system dirs; nothing is pulled
//! for it, and its registry host (always [`RESERVED_REGISTRY`]) is never contacted. Every
//! other image is pulled as a kubelet with containerd would: from its registry (plain
//! HTTP for [`NodeConfig::insecure_registries`], HTTPS otherwise), by tag or digest, an
//! index resolved to its linux/amd64 manifest, every blob verified, layers unpacked once
//! into `state_dir/images/` per `imagePullPolicy`, with the `Pulling`/`Pulled`/`Failed`
//! events, `ErrImagePull`/`ImagePullBackOff`/`ErrImageNeverPull`, and
//! `imageID = <repository>@<digest>`. The container then runs in an overlay of the
//! image's root filesystem (writes private to the container, or a read-only root with
//! `readOnlyRootFilesystem`) with the image's Entrypoint, Cmd, Env, User and WorkingDir
//! under Kubernetes' rules. Images need no shell: the container's init stays outside its
//! root.
//!
//! How it works, by module:
//! - `node`: `Node` objects kept Ready, `Lease` heartbeats;
//! - `provisioner`: the `local-dir` StorageClass ([`STORAGE_CLASS`]) and its PVs;
//! - `kubelet` and `pod`: the pod watch and one state-machine worker per pod;
//! - `network`: a network namespace per pod, owned by a holder process, on a veth pair;
//! - `image`, `store`, `unpack`: references, pull policies and image configs (pure); the
//!   registry client and the content-addressed store; applying layers;
//! - `rootfs` and `volumes`: a private mount namespace and root per container;
//! - `runner`, `spawner`, `probe`, `status`, `env`, `backoff`: processes, probes, and the
//!   pure parts (status, environment, probe thresholds, back-off).
//!
//! Nothing outlives the process: every child is started by one dedicated thread under a
//! parent-death signal, container processes live in their own PID namespace, and network
//! namespaces, veths, routes and addresses vanish with their last process.
//!
//! Container output goes to `state_dir/pods/<namespace>_<pod>_<uid>/<container>.log`
//! (appended across restarts, kept after the pod is deleted); `kubectl logs` does not
//! work, as there is no kubelet API.

mod apiproxy;
mod backoff;
mod context;
mod env;
mod error;
mod image;
mod kubelet;
mod network;
mod node;
mod pod;
mod probe;
mod procfs;
mod provisioner;
mod quantity;
mod rootfs;
mod runner;
mod spawner;
mod status;
mod store;
mod unpack;
mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::SimNodeError;
pub use provisioner::{PROVISIONER, STORAGE_CLASS};

use crate::apiproxy::ApiProxy;
use crate::context::{Ctx, NodeHandle};
use crate::network::Sink;
use crate::spawner::Spawner;

/// The registry host of the workspace's executable-map images: never contacted, whether
/// or not the map names a given repository of it (a test may run before a binary is built).
pub const RESERVED_REGISTRY: &str = "deployctl.dev";

/// How long [`SimNode::shutdown`] waits for its tasks.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(40);

/// What the node plays and where it keeps its state.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Names of the `Node` objects to register (one pod network per name).
    pub node_names: Vec<String>,
    /// Where pod dirs (`pods/`, logs, volumes) and PV dirs (`pvs/`) go.
    pub state_dir: PathBuf,
    /// Image repository (`deployctl.dev/demo-app`, no tag) → executable to run. Such
    /// images are never pulled, and neither is anything else from their registry hosts
    /// (`deployctl.dev` is always one): other images are pulled from their registries.
    pub images: BTreeMap<String, PathBuf>,
    /// Registries (`host:port`, as in image references) pulled from over plain HTTP, as
    /// containerd's insecure registries (e.g. `127.0.0.1:5000`); every other registry is
    /// pulled from over HTTPS.
    pub insecure_registries: Vec<String>,
    /// The API server's URL; pods reach it through a relay on `10.96.0.1`.
    pub api_server_url: String,
    /// The cluster CA (PEM), served as `ca.crt` where `kube-root-ca.crt` is missing.
    pub ca_pem: String,
}

impl NodeConfig {
    /// All fields but [`NodeConfig::insecure_registries`] (none: every registry over
    /// HTTPS); see [`NodeConfig::with_insecure_registries`].
    pub fn new(
        node_names: Vec<String>,
        state_dir: PathBuf,
        images: BTreeMap<String, PathBuf>,
        api_server_url: String,
        ca_pem: String,
    ) -> Self {
        Self {
            node_names,
            state_dir,
            images,
            insecure_registries: Vec::new(),
            api_server_url,
            ca_pem,
        }
    }

    /// The same configuration pulling from `registries` (`host:port`) over plain HTTP.
    pub fn with_insecure_registries(mut self, registries: Vec<String>) -> Self {
        self.insecure_registries = registries;
        self
    }
}

/// A running simulated node.
pub struct SimNode {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sink: Option<Sink>,
    proxy: Option<ApiProxy>,
    spawner: Arc<Spawner>,
    cidrs: BTreeMap<String, String>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("cidrs", &self.cidrs)
            .field("sink", &self.sink)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

fn check_config(cfg: &NodeConfig) -> Result<(), SimNodeError> {
    if cfg.node_names.is_empty() {
        return Err(SimNodeError::Config("no node names".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in &cfg.node_names {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            return Err(SimNodeError::Config(format!("invalid node name {name:?}")));
        }
        if !seen.insert(name) {
            return Err(SimNodeError::Config(format!(
                "node name {name:?} given twice"
            )));
        }
    }
    for registry in &cfg.insecure_registries {
        let valid = !registry.is_empty()
            && !registry.contains('/')
            && registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            return Err(SimNodeError::Config(format!(
                "insecure registry {registry:?} must be a host[:port] as in image references"
            )));
        }
    }
    if !cfg.state_dir.is_absolute() {
        return Err(SimNodeError::Config(format!(
            "state_dir {} must be absolute",
            cfg.state_dir.display()
        )));
    }
    Ok(())
}

impl SimNode {
    /// Registers the nodes, builds their networks and starts the pod, heartbeat and
    /// provisioner tasks on the current runtime. Run it on a runtime that outlives the
    /// node (a multi-thread one is best: probes and processes are many small tasks).
    pub async fn start(client: kube::Client, cfg: NodeConfig) -> Result<SimNode, SimNodeError> {
        check_config(&cfg)?;
        for dir in ["pods", "pvs", "images"] {
            let path = cfg.state_dir.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(|e| SimNodeError::io(format!("creating {}", path.display()), e))?;
        }
        let spawner = Arc::new(Spawner::start(tokio::runtime::Handle::current())?);
        let nets = network::pick_node_nets(&spawner, &cfg.node_names).await?;
        let node_ips: Vec<_> = nets.iter().map(|n| n.node_ip()).collect();
        let cidrs: BTreeMap<String, String> =
            nets.iter().map(|n| (n.node.clone(), n.cidr())).collect();
        let sink = Sink::create(&spawner, &node_ips).await?;
        let mut node = SimNode {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
            sink: Some(sink),
            proxy: None,
            spawner: spawner.clone(),
            cidrs,
        };
        match node.start_tasks(client, cfg, nets).await {
            Ok(()) => Ok(node),
            Err(e) => {
                node.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_tasks(
        &mut self,
        client: kube::Client,
        cfg: NodeConfig,
        nets: Vec<network::NodeNet>,
    ) -> Result<(), SimNodeError> {
        let proxy = ApiProxy::start(&cfg.api_server_url).await?;
        let api_port = proxy.port;
        self.proxy = Some(proxy);
        let http = probe::http_client().map_err(SimNodeError::Config)?;
        // The executable map's registry hosts serve nothing else: never contacted.
        let reserved = cfg
            .images
            .keys()
            .filter_map(|repo| image::ImageRef::parse(repo).ok().map(|r| r.registry))
            .chain([RESERVED_REGISTRY.to_owned()])
            .collect();
        let store = store::ImageStore::open(
            cfg.state_dir.join("images"),
            cfg.insecure_registries.clone(),
            reserved,
        )
        .map_err(|e| SimNodeError::Config(format!("opening the image store: {e}")))?;
        let node_names = cfg.node_names.clone();
        let ctx = Arc::new(Ctx::new(
            client.clone(),
            self.spawner.clone(),
            cfg,
            api_port,
            http,
            Arc::new(store),
        ));
        let nodes: Vec<Arc<NodeHandle>> = nets
            .into_iter()
            .map(|net| Arc::new(NodeHandle::new(client.clone(), net)))
            .collect();
        let since = Timestamp::now();
        for n in &nodes {
            node::register(&client, n, since).await?;
        }
        provisioner::ensure_storage_class(&client).await?;
        let stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(node::heartbeat(
            client.clone(),
            nodes.clone(),
            since,
            stop.clone(),
        )));
        self.tasks.push(tokio::spawn(provisioner::run(
            client.clone(),
            node_names,
            ctx.pv_root(),
            stop.clone(),
        )));
        self.tasks
            .push(tokio::spawn(kubelet::run(ctx, nodes, stop)));
        Ok(())
    }

    /// Kills every pod process, removes the pods' veths and namespaces and the node's
    /// sink, and stops all tasks. Pod and Node objects stay in the API.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("simulated node tasks did not stop in time");
            for a in aborts {
                a.abort();
            }
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
        if let Some(sink) = self.sink.take() {
            sink.destroy().await;
        }
        self.spawner.stop();
    }

    /// The pod CIDR (`10.244.N.0/24`) of `node`, if it is one of this node's names.
    pub fn pod_cidr(&self, node: &str) -> Option<String> {
        self.cidrs.get(node).cloned()
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        // Without shutdown(): tasks stop on their own and killed children are reaped by
        // the runtime; the spawner thread's end makes the kernel kill the rest.
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig::new(
            vec!["simnode-0".into()],
            "/state".into(),
            BTreeMap::new(),
            "https://127.0.0.1:6443".into(),
            String::new(),
        )
    }

    #[test]
    fn insecure_registries_are_hosts_with_ports() {
        assert!(config().insecure_registries.is_empty(), "HTTPS unless told");
        let ok = config()
            .with_insecure_registries(vec!["127.0.0.1:5000".into(), "registry.local".into()]);
        assert_eq!(ok.insecure_registries, ["127.0.0.1:5000", "registry.local"]);
        assert!(check_config(&ok).is_ok());
        for bad in ["", "http://127.0.0.1:5000", "127.0.0.1:5000/repo", "a b"] {
            let err =
                check_config(&config().with_insecure_registries(vec![bad.into()])).expect_err(bad);
            assert!(err.to_string().contains("insecure registry"), "{err}");
        }
    }
}
