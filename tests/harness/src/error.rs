//! The harness's one error type: what can go wrong while starting, using or stopping a
//! throwaway cluster, with enough context (paths, component log tails) to act on it.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can fail in the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A control-plane binary is not installed.
    #[error(
        "{name} not found at {}: run scripts/install-platform.sh (or set DEPLOYCTL_CACHE)",
        path.display()
    )]
    MissingBinary {
        /// The component, e.g. `kube-apiserver`.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// A tool the harness runs (not one of the control plane) is not installed.
    #[error("{name} not found: {hint}")]
    MissingTool {
        /// The program, e.g. `skopeo`.
        name: String,
        /// How to install it.
        hint: String,
    },

    /// The test registry refused or failed an operation.
    #[error("registry: {0}")]
    Registry(String),

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Making a certificate or key failed.
    #[error("generating {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// The kubeconfig could not be read, written or turned into a client configuration.
    #[error("kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },

    /// A call to the API server failed.
    #[error("{context}: {source}")]
    Kube {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },

    /// A component exited while the harness still needed it.
    #[error("{component} exited ({status}); last lines of {}:\n{log_tail}", log.display())]
    ComponentExited {
        /// The component, e.g. `etcd`.
        component: String,
        /// How it exited.
        status: String,
        /// Its log file (removed with the state dir unless logs are kept).
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },

    /// A condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}{}", detail.as_deref().map(|d| format!("\n{d}")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// Extra context, e.g. the tail of the log of the component that should have done it.
        detail: Option<String>,
    },

    /// The simulated node failed to start or stop.
    #[error("simulated node: {0}")]
    Node(String),

    /// A harness thread could not be started or went away.
    #[error("harness thread: {0}")]
    Thread(String),

    /// A manifest given to [`crate::apply`] could not be applied.
    #[error("applying {source_name}: {message}")]
    Apply {
        /// The file (or other source) of the manifest.
        source_name: String,
        /// What was wrong.
        message: String,
    },
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }

    /// True when a component died because a port picked as free was taken meanwhile; the
    /// start is then worth retrying with new ports.
    pub(crate) fn is_port_conflict(&self) -> bool {
        matches!(self, Self::ComponentExited { log_tail, .. }
            if log_tail.contains("address already in use"))
    }
}

/// Short for `Result<T, HarnessError>`.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
