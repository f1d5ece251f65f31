//! The node's error type: what can stop [`crate::SimNode::start`] and what the internal
//! steps report. Pod-level failures never surface here; they become pod status, as on a
//! kubelet.

use std::time::Duration;

/// Why the simulated node could not start, or why one of its steps failed.
#[derive(Debug, thiserror::Error)]
pub enum SimNodeError {
    /// A call to the API server failed.
    #[error("{what}: {source}")]
    Kube {
        /// What the node was doing.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A local file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the node was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper command (`ip`, `nsenter`, ...) exited unsuccessfully.
    #[error("{what}: {detail}")]
    Command {
        /// The command line, shortened.
        what: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// Something did not happen in time.
    #[error("{what} did not happen within {waited:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the node waited.
        waited: Duration,
    },
    /// No unused /24 in 10.244.0.0/16 was left for a node.
    #[error("no unused /24 left in 10.244.0.0/16 for node {0}")]
    NoPodCidr(String),
    /// All 253 pod addresses of a node's /24 are in use.
    #[error("node {0} has no free pod IP left")]
    NoPodIp(String),
    /// The configuration cannot work.
    #[error("invalid node configuration: {0}")]
    Config(String),
}

impl SimNodeError {
    pub(crate) fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub(crate) type Result<T, E = SimNodeError> = std::result::Result<T, E>;
