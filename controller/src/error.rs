//! The controller's error type, with a bounded `category()` for metric labels and Events
//! (never object names or error strings in labels).

use thiserror::Error;

/// Everything that can go wrong in a reconcile.
#[derive(Debug, Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),

    /// Another field manager owns a field deployctl wants to set; deployctl never forces
    /// over other managers.
    #[error("field conflict applying {kind} {name}: {message}; the field is owned by another manager (kubectl edit, an HPA?), remove it there or from the stack spec")]
    Conflict {
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The API server's message.
        message: String,
    },

    /// The API server refused a child object as invalid (e.g. an immutable field changed).
    #[error("{kind} {name} refused by the API server: {message}")]
    ChildInvalid {
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The API server's message.
        message: String,
    },

    /// Two different component sets hashed to the same revision name.
    #[error("revision hash collision on ControllerRevision {0}")]
    RevisionCollision(String),

    /// A ControllerRevision could not be decoded.
    #[error("ControllerRevision {name} is unreadable: {message}")]
    BadRevision {
        /// Name of the ControllerRevision.
        name: String,
        /// What is wrong.
        message: String,
    },

    /// (De)serialization of an object failed.
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),

    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),

    /// The object has no namespace or name (cannot happen for a namespaced resource).
    #[error("object is missing {0}")]
    MissingMetadata(&'static str),
}

/// A kube error as one line for people: the API server's own message for API errors,
/// rather than the Debug dump of the whole Status.
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

impl Error {
    /// A bounded category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::Conflict { .. } => "field_conflict",
            Error::ChildInvalid { .. } => "child_invalid",
            Error::RevisionCollision(_) | Error::BadRevision { .. } => "revision",
            Error::Serde(_) => "serialization",
            Error::Finalizer(_) => "finalizer",
            Error::MissingMetadata(_) => "metadata",
        }
    }

    /// Categories, for pre-registering metric series.
    pub const CATEGORIES: [&'static str; 12] = [
        "conflict",
        "forbidden",
        "not_found",
        "invalid",
        "api",
        "transport",
        "field_conflict",
        "child_invalid",
        "revision",
        "serialization",
        "finalizer",
        "metadata",
    ];
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
