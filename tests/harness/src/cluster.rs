//! A throwaway Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler from `scripts/install-platform.sh`'s cache, on random loopback ports, each
//! in its own dir of one state dir, plus (optionally) the simulated node. Owns starting them
//! in order, waiting until the cluster can take pods, and tearing everything down.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, ListParams};

use crate::certs::{self, Pki};
use crate::error::{HarnessError, Result};
use crate::kubeconfig;
use crate::node::{self, NodeRuntime, NodeSpec};
use crate::process::{self, ManagedProcess, Reaper, POLL_INTERVAL};
use crate::registry::Registry;

/// The Kubernetes version the tests run on: the one `scripts/install-platform.sh` builds
/// from Go modules (`scripts/install-k8s-current.sh`), with etcd [`ETCD_VERSION`].
pub const KUBERNETES_VERSION: &str = "1.37.2";
/// The etcd built with it.
pub const ETCD_VERSION: &str = "3.7.3";

/// How a [`Cluster`] is started. `ClusterOptions { node_count: 1, ..Default::default() }`
/// is the usual form.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Simulated nodes to run (0: control plane only). Named `simnode-0`, `simnode-1`, ...
    pub node_count: usize,
    /// Images the node knows; `None` means [`node::workspace_images`].
    pub images: Option<BTreeMap<String, PathBuf>>,
    /// Where kube-apiserver, kube-controller-manager and kube-scheduler are; `None` means
    /// [`control_plane_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// The etcd executable; `None` means `etcd` on `PATH`.
    pub etcd: Option<PathBuf>,
    /// Parent of the `deployctl-test-<pid>-*` state dir; `None` means the system temp dir.
    pub state_parent: Option<PathBuf>,
    /// Where component logs are written so that they outlive the cluster (in a subdir named
    /// after the state dir); `None` keeps them in the state dir, removed on drop.
    pub log_dir: Option<PathBuf>,
    /// The API server's advertised address: not loopback (Endpoints reject it), and never
    /// dialled by anything (192.0.2.0/24 is reserved for documentation).
    pub advertise_address: Ipv4Addr,
    /// Deadline for the whole start.
    pub start_timeout: Duration,
    /// More kube-controller-manager flags (for example a higher `--kube-api-qps` for a
    /// benchmark with thousands of Deployments).
    pub controller_manager_args: Vec<String>,
    /// More kube-apiserver flags (for example an audit log for a benchmark that wants to
    /// know which client sends which requests).
    pub apiserver_args: Vec<String>,
    /// Start a container registry ([`Registry`], plain HTTP on loopback) that the
    /// simulated node pulls from as an insecure registry; see [`Cluster::registry`].
    pub registry: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            node_count: 0,
            images: None,
            bin_dir: None,
            etcd: None,
            state_parent: None,
            log_dir: None,
            advertise_address: Ipv4Addr::new(192, 0, 2, 1),
            start_timeout: Duration::from_secs(90),
            controller_manager_args: Vec::new(),
            apiserver_args: Vec::new(),
            registry: false,
        }
    }
}

/// The install scripts' cache: `$DEPLOYCTL_CACHE`, default `~/.cache/deployctl`.
fn cache_dir() -> PathBuf {
    std::env::var_os("DEPLOYCTL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache/deployctl")
        })
}

/// The Kubernetes version to test on: `$DEPLOYCTL_KUBERNETES` (the binaries of another
/// version put in `$DEPLOYCTL_CACHE/k8s-<version>/bin` by hand), default
/// [`KUBERNETES_VERSION`].
pub fn kubernetes_version() -> String {
    std::env::var("DEPLOYCTL_KUBERNETES")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| KUBERNETES_VERSION.to_string())
}

/// `$DEPLOYCTL_CACHE/k8s-<version>/bin` for [`kubernetes_version`].
pub fn control_plane_bin_dir() -> PathBuf {
    cache_dir()
        .join(format!("k8s-{}", kubernetes_version()))
        .join("bin")
}

/// The etcd to run: the one built with the control plane
/// (`$DEPLOYCTL_CACHE/etcd-3.7.3/bin/etcd`), else `etcd` on `PATH`.
fn default_etcd() -> PathBuf {
    let built = cache_dir()
        .join(format!("etcd-{ETCD_VERSION}"))
        .join("bin/etcd");
    if built.is_file() {
        return built;
    }
    find_on_path("etcd").unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// The minor version `kube-apiserver --version` reports (`Kubernetes v1.37.2` → 37).
fn minor_version(apiserver: &Path) -> Result<u32> {
    let out = std::process::Command::new(apiserver)
        .arg("--version")
        .output()
        .map_err(|e| HarnessError::io("running kube-apiserver --version", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("Kubernetes v")
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            HarnessError::io(
                "reading the Kubernetes version",
                std::io::Error::other(format!(
                    "{} --version printed {text:?}",
                    apiserver.display()
                )),
            )
        })
}

/// The `kubectl` to run in tests: the one built with the control plane
/// (`scripts/install-platform.sh`), else whichever `kubectl` is on `PATH` (e.g. with
/// `DEPLOYCTL_TEST_KUBECONFIG` pointing at another cluster).
pub fn kubectl_binary() -> PathBuf {
    let built = control_plane_bin_dir().join("kubectl");
    if built.is_file() {
        built
    } else {
        PathBuf::from("kubectl")
    }
}

#[derive(Debug)]
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    scheduler: PathBuf,
    /// Kubernetes' minor version: flags removed since 1.20 are left out from 1.24 on.
    minor: u32,
}

impl Binaries {
    fn locate(opts: &ClusterOptions) -> Result<Self> {
        let dir = opts.bin_dir.clone().unwrap_or_else(control_plane_bin_dir);
        let existing = |name: &str, path: PathBuf| {
            if path.is_file() {
                Ok(path)
            } else {
                Err(HarnessError::MissingBinary {
                    name: name.to_owned(),
                    path,
                })
            }
        };
        let etcd = match &opts.etcd {
            Some(path) => path.clone(),
            None => default_etcd(),
        };
        let apiserver = existing("kube-apiserver", dir.join("kube-apiserver"))?;
        Ok(Self {
            etcd: existing("etcd", etcd)?,
            minor: minor_version(&apiserver)?,
            apiserver,
            controller_manager: existing(
                "kube-controller-manager",
                dir.join("kube-controller-manager"),
            )?,
            scheduler: existing("kube-scheduler", dir.join("kube-scheduler"))?,
        })
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `n` distinct free TCP ports on 127.0.0.1. All listeners are held until every port is
/// picked, so the kernel cannot hand out the same one twice.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| HarnessError::io("picking free ports", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| HarnessError::io("picking free ports", e))
}

/// Controllers of kube-controller-manager that cannot work, or are not wanted, without
/// real nodes and a cloud: everything else, including `nodelifecycle` (which lifts the
/// `not-ready` taint from Ready simulated nodes), runs. (Newer versions no longer know
/// `cloud-node-lifecycle`: it runs in the cloud controller manager.)
fn controllers(minor: u32) -> String {
    let mut c = "*,-nodeipam,-attachdetach,-persistentvolume-expander,-csrsigning,\
-bootstrapsigner,-tokencleaner"
        .to_string();
    if minor < 24 {
        c.push_str(",-cloud-node-lifecycle");
    }
    c
}

/// `--port=0` (no insecure port) for a controller manager or scheduler that still has the
/// flag (gone since 1.24).
fn insecure_port_off(minor: u32) -> Option<String> {
    (minor < 24).then(|| "--port=0".to_string())
}

/// A running throwaway cluster. Dropping it stops every process and removes its state dir.
#[derive(Debug)]
pub struct Cluster {
    data_dir: PathBuf,
    /// Set when logs go outside the state dir; otherwise each is in its component's dir.
    log_dir: Option<PathBuf>,
    kubeconfig_path: PathBuf,
    kubeconfig_text: String,
    api_server_url: String,
    ca_pem: String,
    node_names: Vec<String>,
    /// etcd first, then kube-apiserver, kube-controller-manager, kube-scheduler.
    processes: Vec<ManagedProcess>,
    node: Option<NodeRuntime>,
    registry: Option<Registry>,
    reaper: Option<Reaper>,
    startup_time: Duration,
    /// Kubernetes' minor version.
    minor: u32,
}

impl Cluster {
    /// Starts a cluster and returns once it can take pods: `/readyz` answers 200, the
    /// `default` ServiceAccount of namespace `default` exists with its token, and every
    /// simulated node is Ready without the `not-ready` taint.
    ///
    /// On failure everything started so far is stopped; the error carries the tail of the
    /// failing component's log.
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts).await {
                // A port picked as free can be taken before the component binds it.
                Err(e) if e.is_port_conflict() && attempt < 3 => {
                    tracing::warn!(error = %e, "port conflict, retrying with new ports");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(opts: &ClusterOptions) -> Result<Cluster> {
        let started = Instant::now();
        let deadline = started + opts.start_timeout;
        let bins = Binaries::locate(opts)?;
        let parent = opts.state_parent.clone().unwrap_or_else(std::env::temp_dir);
        process::remove_stale_state_dirs(&parent);
        let data_dir = process::create_state_dir(&parent)?;
        let log_dir = opts
            .log_dir
            .as_ref()
            .map(|dir| dir.join(data_dir.file_name().unwrap_or_default()));
        // From here on, an early return drops `cluster`, which stops what was started.
        let mut cluster = Cluster {
            kubeconfig_path: data_dir.join("kubeconfig"),
            data_dir,
            log_dir,
            kubeconfig_text: String::new(),
            api_server_url: String::new(),
            ca_pem: String::new(),
            node_names: Vec::new(),
            processes: Vec::new(),
            node: None,
            registry: None,
            reaper: None,
            startup_time: Duration::ZERO,
            minor: 0,
        };
        cluster.reaper = Some(Reaper::start(&cluster.data_dir)?);
        if let Some(dir) = &cluster.log_dir {
            mkdir(dir)?;
        }

        let ports = free_ports(3)?;
        let (etcd_client, etcd_peer, apiserver_port) = (ports[0], ports[1], ports[2]);
        cluster.start_etcd(&bins.etcd, etcd_client, etcd_peer)?;

        let pki = Pki::generate(IpAddr::V4(opts.advertise_address))?;
        let files = pki.write(&cluster.data_dir.join("pki"))?;
        cluster.api_server_url = format!("https://127.0.0.1:{apiserver_port}");
        cluster.ca_pem = pki.ca_cert_pem.clone();
        cluster.kubeconfig_text = kubeconfig::render(
            &cluster.api_server_url,
            &pki.ca_cert_pem,
            &pki.admin.cert_pem,
            &pki.admin.key_pem,
        );
        certs::write_file(&cluster.kubeconfig_path, &cluster.kubeconfig_text, 0o600)?;

        cluster.minor = bins.minor;
        cluster.start_apiserver(
            &bins.apiserver,
            &files,
            etcd_client,
            apiserver_port,
            opts.advertise_address,
            &opts.apiserver_args,
        )?;
        let client = cluster.try_client().await?;
        cluster.wait_ready(&client, deadline).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "kube-apiserver ready");

        cluster.start_controller_manager(
            &bins.controller_manager,
            &pki,
            &files,
            &opts.controller_manager_args,
        )?;
        cluster.start_scheduler(&bins.scheduler, &pki)?;
        if opts.registry {
            let dir = cluster.data_dir.join("registry");
            let log = cluster
                .log_dir
                .as_deref()
                .unwrap_or(&dir)
                .join("docker-registry.log");
            mkdir(&dir)?;
            cluster.registry = Some(Registry::start(&dir, &log).await?);
        }
        // The node needs only the API server, so it registers while the controllers start.
        if opts.node_count > 0 {
            let names = node::default_node_names(opts.node_count);
            let spec = NodeSpec {
                node_names: names.clone(),
                state_dir: cluster.data_dir.join("node"),
                images: opts.images.clone().unwrap_or_else(node::workspace_images),
                api_server_url: cluster.api_server_url.clone(),
                ca_pem: cluster.ca_pem.clone(),
                insecure_registries: cluster
                    .registry
                    .iter()
                    .map(|r| r.host().to_owned())
                    .collect(),
            };
            mkdir(&spec.state_dir)?;
            cluster.node = Some(NodeRuntime::start(cluster.kubeconfig_path.clone(), spec).await?);
            cluster.node_names = names;
        }
        cluster
            .wait_default_service_account(&client, deadline)
            .await?;
        tracing::debug!(elapsed = ?started.elapsed(), "default ServiceAccount ready");
        if cluster.node.is_some() {
            cluster.wait_nodes_ready(&client, deadline).await?;
            tracing::debug!(elapsed = ?started.elapsed(), "simulated nodes ready");
        }
        cluster.startup_time = started.elapsed();
        Ok(cluster)
    }

    fn spawn(&mut self, name: &str, program: &Path, args: Vec<String>) -> Result<()> {
        let dir = self.data_dir.join(name);
        mkdir(&dir)?;
        let log = self
            .log_dir
            .as_deref()
            .unwrap_or(&dir)
            .join(format!("{name}.log"));
        let process = ManagedProcess::spawn(name, program, &args, &dir, &log)?;
        self.processes.push(process);
        Ok(())
    }

    fn start_etcd(&mut self, etcd: &Path, client_port: u16, peer_port: u16) -> Result<()> {
        let data = self.data_dir.join("etcd").join("data");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        self.spawn(
            "etcd",
            etcd,
            vec![
                "--name=default".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=default={peer}"),
                "--logger=zap".into(),
                "--log-outputs=stderr".into(),
            ],
        )
    }

    fn start_apiserver(
        &mut self,
        program: &Path,
        files: &certs::PkiFiles,
        etcd_port: u16,
        port: u16,
        advertise: Ipv4Addr,
        extra: &[String],
    ) -> Result<()> {
        let dir = self.data_dir.join("kube-apiserver");
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--advertise-address={advertise}"),
            // With a loopback bind address the reconciler would publish an endpoint
            // that pods cannot reach.
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--tls-cert-file={}", path(&files.serving_cert)),
            format!("--tls-private-key-file={}", path(&files.serving_key)),
            format!("--client-ca-file={}", path(&files.ca_cert)),
            format!("--service-account-key-file={}", path(&files.sa_public_key)),
            format!(
                "--service-account-signing-key-file={}",
                path(&files.sa_private_key)
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        if self.minor < 24 {
            // 1.20 still opens an unauthenticated port 8080 unless told not to; two
            // clusters would also collide on it. (The flag is gone since 1.24.)
            args.push("--insecure-port=0".into());
        }
        args.extend(extra.iter().cloned());
        self.spawn("kube-apiserver", program, args)
    }

    /// Writes a kubeconfig for a component's own identity into its dir.
    fn component_kubeconfig(&self, name: &str, identity: &certs::CertAndKey) -> Result<PathBuf> {
        let path = self.data_dir.join(name).join("kubeconfig");
        mkdir(&self.data_dir.join(name))?;
        let text = kubeconfig::render(
            &self.api_server_url,
            &self.ca_pem,
            &identity.cert_pem,
            &identity.key_pem,
        );
        certs::write_file(&path, &text, 0o600)?;
        Ok(path)
    }

    fn start_controller_manager(
        &mut self,
        program: &Path,
        pki: &Pki,
        files: &certs::PkiFiles,
        extra: &[String],
    ) -> Result<()> {
        let name = "kube-controller-manager";
        let kc = self
            .component_kubeconfig(name, &pki.controller_manager)?
            .display()
            .to_string();
        self.spawn(
            name,
            program,
            vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                format!(
                    "--service-account-private-key-file={}",
                    files.sa_private_key.display()
                ),
                format!("--root-ca-file={}", files.ca_cert.display()),
                "--use-service-account-credentials=true".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--controllers={}", controllers(self.minor)),
            ]
            .into_iter()
            .chain(insecure_port_off(self.minor))
            .chain(extra.iter().cloned())
            .collect(),
        )
    }

    fn start_scheduler(&mut self, program: &Path, pki: &Pki) -> Result<()> {
        let name = "kube-scheduler";
        let kc = self
            .component_kubeconfig(name, &pki.scheduler)?
            .display()
            .to_string();
        self.spawn(
            name,
            program,
            vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ]
            .into_iter()
            .chain(insecure_port_off(self.minor))
            .collect(),
        )
    }

    /// Fails if any component has exited.
    fn check_processes(&mut self) -> Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(ManagedProcess::check_running)?;
        match self.registry.as_mut() {
            Some(r) => r.check_running(),
            None => Ok(()),
        }
    }

    fn log_tail_of(&self, component: &str) -> Option<String> {
        self.processes
            .iter()
            .find(|p| p.name() == component)
            .map(|p| {
                format!(
                    "last lines of {}:\n{}",
                    p.log().display(),
                    process::log_tail(p.log(), 30)
                )
            })
    }

    async fn wait_ready(&mut self, client: &kube::Client, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_processes()?;
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| HarnessError::Thread(format!("building a request: {e}")))?;
            let last = match client.request_text(request).await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: "kube-apiserver /readyz to answer 200".into(),
                    waited: started.elapsed(),
                    detail: Some(format!(
                        "last answer: {last}\n{}",
                        self.log_tail_of("kube-apiserver").unwrap_or_default()
                    )),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kubernetes' minor version (37 for 1.37.2).
    pub fn minor_version(&self) -> u32 {
        self.minor
    }

    async fn wait_default_service_account(
        &mut self,
        client: &kube::Client,
        deadline: Instant,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_processes()?;
            // Before 1.24 pods are refused until the token Secret exists; since then
            // tokens come from the TokenRequest API.
            if service_account_ready(client, "default", self.minor < 24).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: "ServiceAccount default/default (and, before 1.24, its token)".into(),
                    waited: started.elapsed(),
                    detail: self.log_tail_of("kube-controller-manager"),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_nodes_ready(&mut self, client: &kube::Client, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        let api: Api<Node> = Api::all(client.clone());
        loop {
            self.check_processes()?;
            let nodes = api
                .list(&ListParams::default())
                .await
                .map_err(|e| HarnessError::kube("listing nodes", e))?;
            let ready: Vec<&str> = nodes
                .items
                .iter()
                .filter(|n| node_schedulable(n))
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            if self.node_names.iter().all(|n| ready.contains(&n.as_str())) {
                return Ok(());
            }
            let seen = format!("schedulable so far: {ready:?} of {:?}", self.node_names);
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: "the simulated nodes to be Ready without the not-ready taint".into(),
                    waited: started.elapsed(),
                    detail: Some(seen),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The admin kubeconfig (`O=system:masters`), usable by `kubectl`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig's text (certificates embedded).
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_text
    }

    /// `https://127.0.0.1:<port>`.
    pub fn api_server_url(&self) -> &str {
        &self.api_server_url
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The state dir (`<tmp>/deployctl-test-<pid>-*`) holding every component's dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `(component, log file)` of every control-plane process, and of the registry.
    pub fn component_logs(&self) -> Vec<(String, PathBuf)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_owned(), p.log().to_owned()))
            .chain(
                self.registry
                    .iter()
                    .map(|r| ("docker-registry".to_owned(), r.log().to_owned())),
            )
            .collect()
    }

    /// The container registry, when started with `registry: true`; the simulated node
    /// pulls from it over plain HTTP.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// Names of the simulated nodes (empty without a node).
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// Whether a simulated node runs.
    pub fn has_sim_node(&self) -> bool {
        self.node.is_some()
    }

    /// How long [`Cluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// `(component, pid)` of every control-plane process.
    pub fn component_pids(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_owned(), p.pid()))
            .collect()
    }

    /// A new admin client, built from the kubeconfig on the caller's runtime.
    pub async fn try_client(&self) -> Result<kube::Client> {
        let parsed = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_text).map_err(|e| {
            HarnessError::Kubeconfig {
                path: self.kubeconfig_path.clone(),
                message: e.to_string(),
            }
        })?;
        kubeconfig::client_from(parsed, &self.kubeconfig_path).await
    }

    /// A new admin client, built from the kubeconfig on the caller's runtime.
    ///
    /// # Panics
    /// If the kubeconfig the harness wrote cannot make a client, which is a harness bug;
    /// use [`Cluster::try_client`] to handle it.
    pub async fn client(&self) -> kube::Client {
        match self.try_client().await {
            Ok(client) => client,
            Err(e) => panic!("deployctl-harness: admin client for the test cluster: {e}"),
        }
    }

    /// Stops the node and every process and removes the state dir; what `Drop` does.
    fn teardown(&mut self) {
        if let Some(mut node) = self.node.take() {
            if let Err(e) = node.stop(node::SHUTDOWN_WAIT) {
                tracing::warn!(error = %e, "stopping the simulated node");
            }
        }
        if let Some(mut registry) = self.registry.take() {
            registry.stop();
        }
        // etcd last: an API server that loses etcd first retries and logs instead of
        // shutting down promptly.
        let first = self.processes.len().min(1);
        let (etcd, rest) = self.processes.split_at_mut(first);
        process::stop_all(rest, Duration::from_secs(3));
        process::stop_all(etcd, Duration::from_secs(3));
        if let Err(e) = process::remove_state_dir(&self.data_dir) {
            tracing::warn!(error = %e, "removing the state dir");
        }
        if let Some(mut reaper) = self.reaper.take() {
            reaper.stop();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether `node` is Ready and free of the `not-ready` taint, so the scheduler uses it.
fn node_schedulable(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
    ready && !tainted
}

/// Whether the `default` ServiceAccount of `namespace` exists and, when `need_token`
/// (clusters before 1.24), lists a token secret: until then the ServiceAccount admission
/// plugin of such clusters rejects every pod in the namespace.
pub(crate) async fn service_account_ready(
    client: &kube::Client,
    namespace: &str,
    need_token: bool,
) -> Result<bool> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let sa = api.get_opt("default").await.map_err(|e| {
        HarnessError::kube(format!("reading ServiceAccount {namespace}/default"), e)
    })?;
    Ok(match sa {
        None => false,
        Some(sa) => !need_token || sa.secrets.is_some_and(|s| !s.is_empty()),
    })
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| HarnessError::io(format!("creating {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).expect("ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4, "{ports:?}");
    }

    #[test]
    fn missing_binaries_are_reported_with_the_install_hint() {
        let opts = ClusterOptions {
            bin_dir: Some(PathBuf::from("/nonexistent")),
            etcd: Some(PathBuf::from("/bin/sh")),
            ..Default::default()
        };
        let err = Binaries::locate(&opts).expect_err("binaries must be missing");
        assert!(err.to_string().contains("install-platform.sh"), "{err}");
    }

    fn stub(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod stub");
    }

    #[tokio::test]
    async fn a_failed_start_reports_the_component_log_and_cleans_up() {
        let bins = tempfile::tempdir().expect("temp dir");
        let parent = tempfile::tempdir().expect("temp dir");
        stub(bins.path(), "etcd", "exec sleep 60");
        stub(
            bins.path(),
            "kube-apiserver",
            "[ \"$1\" = --version ] && { echo 'Kubernetes v1.37.2'; exit 0; }\n\
             echo starting; echo 'E0101 boom: invalid flag' >&2; exit 3",
        );
        stub(bins.path(), "kube-controller-manager", "exec sleep 60");
        stub(bins.path(), "kube-scheduler", "exec sleep 60");
        let err = Cluster::start(ClusterOptions {
            bin_dir: Some(bins.path().to_owned()),
            etcd: Some(bins.path().join("etcd")),
            state_parent: Some(parent.path().to_owned()),
            start_timeout: Duration::from_secs(20),
            ..Default::default()
        })
        .await
        .expect_err("the API server stub exits");
        let text = err.to_string();
        eprintln!("{text}");
        assert!(text.contains("kube-apiserver exited"), "{text}");
        assert!(text.contains("boom: invalid flag"), "{text}");
        let left: Vec<_> = std::fs::read_dir(parent.path())
            .expect("read parent")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "state dirs left: {left:?}");
    }

    #[test]
    fn bin_dir_follows_the_cache_layout() {
        assert!(control_plane_bin_dir().ends_with("k8s-1.37.2/bin"));
    }

    #[test]
    fn flags_removed_since_1_24_are_left_out() {
        assert!(controllers(37).ends_with("-tokencleaner"));
        assert!(controllers(20).ends_with("-cloud-node-lifecycle"));
        assert_eq!(insecure_port_off(37), None);
        assert_eq!(insecure_port_off(20).as_deref(), Some("--port=0"));
    }
}
