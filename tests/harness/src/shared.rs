//! One cluster per test binary, shared by all its tests, and the throwaway namespaces that
//! keep those tests apart.
//!
//! The cluster is started on a dedicated OS thread that owns its own multi-thread tokio
//! runtime and lives until the process exits. So `shared()` may block from inside any
//! test's runtime without deadlocking it, and the cluster outlives every test's runtime.
//! It is never dropped: at process exit the kernel's parent-death signals stop its
//! processes and its reaper removes its state dir.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::cluster::{self, Cluster, ClusterOptions};
use crate::error::{HarnessError, Result};
use crate::kubeconfig;
use crate::process::POLL_INTERVAL;
use crate::registry::RegistryEndpoint;

/// Env var naming the kubeconfig of an existing cluster to test against instead of
/// starting one; tests that need the simulated node are then skipped.
pub const EXTERNAL_KUBECONFIG_ENV: &str = "DEPLOYCTL_TEST_KUBECONFIG";
/// Env var naming a dir where the shared cluster's component logs are kept.
pub const LOG_DIR_ENV: &str = "DEPLOYCTL_TEST_LOG_DIR";
/// Env var with the number of simulated nodes of the shared cluster (default 1).
pub const NODE_COUNT_ENV: &str = "DEPLOYCTL_TEST_NODES";
/// Label put on every namespace made by [`SharedEnv::namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "deployctl.dev/test-namespace";

/// The cluster shared by the tests of one binary.
#[derive(Debug)]
pub struct SharedEnv {
    kubeconfig: PathBuf,
    node_names: Vec<String>,
    has_sim_node: bool,
    /// Clusters before 1.24 make a token Secret per ServiceAccount and refuse pods until
    /// it exists.
    legacy_sa_tokens: bool,
    runtime: tokio::runtime::Handle,
    startup_time: Option<Duration>,
    registry: Option<RegistryEndpoint>,
    data_dir: Option<PathBuf>,
}

/// The shared cluster of this test binary, started on first use (a few seconds), or the
/// cluster named by `DEPLOYCTL_TEST_KUBECONFIG`. May be called from inside
/// `#[tokio::test]`.
///
/// # Panics
/// If the cluster cannot start; every later call panics with the same message, so each
/// test fails saying why.
pub fn shared() -> &'static SharedEnv {
    shared_env(false)
}

/// Like [`shared`], with a container registry the simulated node pulls from
/// ([`SharedEnv::registry`]). Call it from every test of a binary that needs the registry:
/// the first call of a binary decides how its shared cluster starts.
///
/// # Panics
/// As [`shared`]; also when this binary's cluster was started by [`shared`], without one.
pub fn shared_with_registry() -> &'static SharedEnv {
    let env = shared_env(true);
    if env.has_sim_node && env.registry.is_none() {
        panic!(
            "deployctl-harness: this test binary's shared cluster was started by shared(), \
             without a registry: call shared_with_registry() in each of its tests"
        );
    }
    env
}

fn shared_env(registry: bool) -> &'static SharedEnv {
    static SHARED: OnceLock<std::result::Result<SharedEnv, String>> = OnceLock::new();
    match SHARED.get_or_init(|| start_shared(registry).map_err(|e| e.to_string())) {
        Ok(env) => env,
        Err(message) => {
            panic!("deployctl-harness: the shared test cluster is unavailable: {message}")
        }
    }
}

fn start_shared(registry: bool) -> Result<SharedEnv> {
    let (tx, rx) = mpsc::channel::<Result<SharedEnv>>();
    std::thread::Builder::new()
        .name("deployctl-shared-env".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("deployctl-shared-rt")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(HarnessError::io("building the shared runtime", e)));
                    return;
                }
            };
            let handle = runtime.handle().clone();
            runtime.block_on(async move {
                match start_env(handle, registry).await {
                    Ok((env, cluster)) => {
                        let _ = tx.send(Ok(env));
                        // Keeps the cluster, and this runtime for namespace clean-up,
                        // until the process exits.
                        let _cluster = cluster;
                        std::future::pending::<()>().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| HarnessError::Thread(format!("starting the shared-env thread: {e}")))?;
    rx.recv()
        .map_err(|_| HarnessError::Thread("the shared-env thread ended before reporting".into()))?
}

async fn start_env(
    runtime: tokio::runtime::Handle,
    registry: bool,
) -> Result<(SharedEnv, Option<Cluster>)> {
    if let Some(path) = std::env::var_os(EXTERNAL_KUBECONFIG_ENV) {
        let path = PathBuf::from(path);
        let client = kubeconfig::client(&path).await?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| HarnessError::kube("reading the external cluster's version", e))?;
        eprintln!(
            "deployctl-harness: using the cluster of {} (Kubernetes {}); tests needing the \
             simulated node are skipped",
            path.display(),
            version.git_version
        );
        let env = SharedEnv {
            kubeconfig: path,
            node_names: Vec::new(),
            has_sim_node: false,
            legacy_sa_tokens: minor_version(&version.major, &version.minor) < Some((1, 24)),
            runtime,
            startup_time: None,
            registry: None,
            data_dir: None,
        };
        return Ok((env, None));
    }
    let node_count = match std::env::var(NODE_COUNT_ENV) {
        Ok(n) => n.parse().map_err(|_| {
            HarnessError::Thread(format!("{NODE_COUNT_ENV}={n} is not a number of nodes"))
        })?,
        Err(_) => 1,
    };
    let opts = ClusterOptions {
        node_count,
        log_dir: std::env::var_os(LOG_DIR_ENV).map(PathBuf::from),
        registry,
        ..Default::default()
    };
    let cluster = Cluster::start(opts).await?;
    eprintln!(
        "deployctl-harness: test cluster ready in {:.1?} (state dir {})",
        cluster.startup_time(),
        cluster.data_dir().display()
    );
    let env = SharedEnv {
        kubeconfig: cluster.kubeconfig_path().to_owned(),
        node_names: cluster.node_names().to_vec(),
        has_sim_node: cluster.has_sim_node(),
        legacy_sa_tokens: cluster.minor_version() < 24,
        runtime,
        startup_time: Some(cluster.startup_time()),
        registry: cluster.registry().map(|r| r.endpoint().clone()),
        data_dir: Some(cluster.data_dir().to_owned()),
    };
    Ok((env, Some(cluster)))
}

/// `(major, minor)` from the version endpoint's strings (`"1"`, `"20+"`).
fn minor_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    Some((digits(major)?, digits(minor)?))
}

impl SharedEnv {
    /// The admin kubeconfig, usable by `kubectl`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new admin client on the caller's runtime.
    ///
    /// # Panics
    /// If no client can be built from the kubeconfig.
    pub async fn client(&self) -> kube::Client {
        match kubeconfig::client(&self.kubeconfig).await {
            Ok(client) => client,
            Err(e) => panic!("deployctl-harness: client for the test cluster: {e}"),
        }
    }

    /// Whether the simulated node runs (false against an external cluster).
    pub fn has_sim_node(&self) -> bool {
        self.has_sim_node
    }

    /// Names of the simulated nodes (empty against an external cluster).
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// The registry of [`shared_with_registry`] (`None` from [`shared`], and against an
    /// external cluster).
    pub fn registry(&self) -> Option<&RegistryEndpoint> {
        self.registry.as_ref()
    }

    /// The shared cluster's state dir (`None` for an external cluster): the simulated
    /// node's state is in its `node/` subdir.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// How long the shared cluster took to start (`None` for an external cluster).
    pub fn startup_time(&self) -> Option<Duration> {
        self.startup_time
    }

    /// Creates a namespace named `<prefix>-<random>`, deleted when the returned value is
    /// dropped. Returns once pods can be created in it (its `default` ServiceAccount is
    /// ready).
    ///
    /// # Panics
    /// If the namespace cannot be created or does not become usable within 60 s.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        match self.try_namespace(prefix).await {
            Ok(ns) => ns,
            Err(e) => panic!("deployctl-harness: creating a test namespace: {e}"),
        }
    }

    /// Like [`SharedEnv::namespace`], returning errors instead of panicking.
    pub async fn try_namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let client = kubeconfig::client(&self.kubeconfig).await?;
        let api: Api<Namespace> = Api::all(client.clone());
        let name = namespace_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &namespace)
            .await
            .map_err(|e| HarnessError::kube(format!("creating namespace {name}"), e))?;
        // Owns the deletion from here on, even if the wait below fails.
        let ns = TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
            runtime: self.runtime.clone(),
        };
        let started = Instant::now();
        let timeout = Duration::from_secs(60);
        while !cluster::service_account_ready(&client, &ns.name, self.legacy_sa_tokens).await? {
            if started.elapsed() >= timeout {
                return Err(HarnessError::Timeout {
                    what: format!("ServiceAccount {}/default", ns.name),
                    waited: started.elapsed(),
                    detail: None,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(ns)
    }
}

/// `<prefix>-<6 random chars>`, made a valid DNS label.
fn namespace_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean.truncate(48);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "test" } else { clean };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let suffix: String = (0..6)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    format!("{clean}-{suffix}")
}

/// A namespace for one test; deleted (on the shared runtime, so `Drop` needs no async)
/// when dropped.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubeconfig: PathBuf,
    runtime: tokio::runtime::Handle,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (tx, rx) = mpsc::channel();
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        self.runtime.spawn(async move {
            let result = async {
                let client = kubeconfig::client(&kubeconfig).await?;
                let api: Api<Namespace> = Api::all(client);
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                    Err(e) => Err(HarnessError::kube(format!("deleting namespace {name}"), e)),
                }
            }
            .await;
            let _ = tx.send(result);
        });
        // Waits only for the API server to accept the deletion, not for finalisation, so
        // the last test's namespace is not lost at process exit. Blocking is safe: the
        // work runs on the shared runtime, not the caller's.
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("deployctl-harness: {e}"),
            Err(_) => eprintln!(
                "deployctl-harness: deleting namespace {} timed out",
                self.name
            ),
        }
    }
}

/// Skips the rest of a test, with a message, when the shared env has no simulated node
/// (i.e. it runs against `DEPLOYCTL_TEST_KUBECONFIG`). Use `require_sim_node!(env)` in a
/// test returning `()`, or `require_sim_node!(env, value)` to return `value`.
#[macro_export]
macro_rules! require_sim_node {
    ($env:expr) => {
        $crate::require_sim_node!($env, ())
    };
    ($env:expr, $ret:expr) => {
        if !$env.has_sim_node() {
            eprintln!("skipped: needs the simulated node");
            return $ret;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        let name = namespace_name("My_Test::Case");
        assert!(name.starts_with("my-test--case-"), "{name}");
        assert!(name.len() <= 63);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert!(namespace_name("---").starts_with("test-"));
        assert_ne!(namespace_name("x"), namespace_name("x"));
        assert!(namespace_name(&"a".repeat(100)).len() <= 63);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(minor_version("1", "20+"), Some((1, 20)));
        assert_eq!(minor_version("1", "x"), None);
    }
}
