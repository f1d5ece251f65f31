//! Wiring of the simulated node (crate `deployctl-simnode`) into a cluster: which images it
//! knows (the workspace's own executables), and the dedicated thread and tokio runtime it
//! runs on.
//!
//! Why its own thread and runtime: `Cluster::drop` must stop the node without `.await`;
//! if the node ran on the caller's runtime (often a current-thread one in
//! `#[tokio::test]`), blocking that runtime while waiting for the node's tasks would
//! deadlock. Its threads also live exactly as long as the node, which matters for any
//! child process it ties to its spawning thread with a parent-death signal.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{HarnessError, Result};

/// Image repositories the simulated node runs from the workspace's executables instead of
/// pulling them, and the executable each one runs (see `docs/platform-contract.md`).
pub const IMAGE_EXECUTABLES: [(&str, &str); 3] = [
    ("deployctl.dev/demo-app", "demo-app"),
    ("deployctl.dev/deployctl", "deployctl-controller"),
    ("deployctl.dev/cli", "deployctl"),
];

/// The `target/<profile>` dir this executable was built into: test binaries live in
/// `target/<profile>/deps/`, binaries and examples one level up or beside it.
pub fn target_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().map(Path::to_path_buf),
        _ => Some(dir.to_path_buf()),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Maps each image repository of [`IMAGE_EXECUTABLES`] to the workspace executable that
/// exists for it, looked up in this executable's `target/<profile>` dir, then in
/// `$CARGO_TARGET_DIR/<profile>`. Images whose executable is not built are left out (the
/// node then reports `ErrImagePull` for them, as a kubelet would).
pub fn workspace_images() -> BTreeMap<String, PathBuf> {
    let profile_dir = target_profile_dir();
    let profile = profile_dir
        .as_deref()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .filter(|p| matches!(*p, "debug" | "release"))
        .unwrap_or("debug")
        .to_owned();
    let mut candidates: Vec<PathBuf> = profile_dir.into_iter().collect();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join(&profile));
    }
    IMAGE_EXECUTABLES
        .iter()
        .filter_map(|(image, file)| {
            candidates
                .iter()
                .map(|dir| dir.join(file))
                .find(|p| is_executable(p))
                .map(|p| ((*image).to_owned(), p))
        })
        .collect()
}

/// How long the harness waits for the node to shut down: a little more than the node's
/// own 40 s limit for its tasks.
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_secs(45);

/// Default node names for `count` simulated nodes: `simnode-0`, `simnode-1`, ...
pub fn default_node_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("simnode-{i}")).collect()
}

/// What the node needs to start.
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    pub(crate) node_names: Vec<String>,
    pub(crate) state_dir: PathBuf,
    pub(crate) images: BTreeMap<String, PathBuf>,
    pub(crate) api_server_url: String,
    pub(crate) ca_pem: String,
    /// Registries the node pulls from over plain HTTP (the cluster's own registry).
    pub(crate) insecure_registries: Vec<String>,
}

/// The calls into `deployctl-simnode`, kept in one place so its API can change without
/// touching the cluster code.
mod backend {
    use super::NodeSpec;
    use crate::error::{HarnessError, Result};

    pub(super) type Node = deployctl_simnode::SimNode;

    pub(super) async fn start(client: kube::Client, spec: NodeSpec) -> Result<Node> {
        let config = deployctl_simnode::NodeConfig {
            node_names: spec.node_names,
            state_dir: spec.state_dir,
            images: spec.images,
            insecure_registries: spec.insecure_registries,
            api_server_url: spec.api_server_url,
            ca_pem: spec.ca_pem,
        };
        deployctl_simnode::SimNode::start(client, config)
            .await
            .map_err(|e| HarnessError::Node(format!("starting: {e}")))
    }

    pub(super) async fn shutdown(node: Node) -> Result<()> {
        node.shutdown().await;
        Ok(())
    }
}

/// A simulated node running on its own thread and runtime.
#[derive(Debug)]
pub(crate) struct NodeRuntime {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeRuntime {
    /// Starts the node with a client built from `kubeconfig` on the node's own runtime;
    /// returns once the node reported that it started (or failed to).
    pub(crate) async fn start(kubeconfig: PathBuf, spec: NodeSpec) -> Result<Self> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("deployctl-simnode".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("deployctl-simnode-rt")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ =
                            ready_tx.send(Err(HarnessError::io("building the node runtime", e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let node = match crate::kubeconfig::client(&kubeconfig).await {
                        Ok(client) => backend::start(client, spec).await,
                        Err(e) => Err(e),
                    };
                    match node {
                        Ok(node) => {
                            let _ = ready_tx.send(Ok(()));
                            // A dropped sender (the cluster went away without stop) also stops.
                            let _ = stop_rx.await;
                            let _ = done_tx.send(backend::shutdown(node).await);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| HarnessError::Thread(format!("starting the node thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop_tx),
                done: done_rx,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(HarnessError::Thread(
                    "the node thread ended before reporting".into(),
                ))
            }
        }
    }

    /// Shuts the node down, waiting up to `timeout`; blocks the calling thread.
    pub(crate) fn stop(&mut self, timeout: Duration) -> Result<()> {
        let Some(stop) = self.stop.take() else {
            return Ok(());
        };
        let _ = stop.send(());
        let result = match self.done.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                // Leave the thread detached: joining would block past the timeout. The
                // node's children still die with the process.
                return Err(HarnessError::Timeout {
                    what: "the simulated node to shut down".into(),
                    waited: timeout,
                    detail: None,
                });
            }
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Err(e) = self.stop(SHUTDOWN_WAIT) {
            tracing::warn!(error = %e, "simulated node did not stop cleanly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_is_target_profile() {
        let dir = target_profile_dir().expect("profile dir");
        // Unit-test binaries live in target/<profile>/deps.
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }

    #[test]
    fn images_map_only_existing_executables() {
        for (image, path) in workspace_images() {
            assert!(is_executable(&path), "{image} -> {}", path.display());
            assert!(image.starts_with("deployctl.dev/"));
        }
    }

    #[test]
    fn node_names_are_numbered() {
        assert_eq!(default_node_names(2), ["simnode-0", "simnode-1"]);
    }
}
