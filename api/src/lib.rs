//! The `deployctl.dev/v1alpha1` API: the `ProductionStack` custom resource and the
//! vocabulary shared by the controller and the CLI (well-known labels, durations,
//! validation of what the OpenAPI schema cannot express).
//!
//! Types are defined once here; `deployctl-controller crdgen` prints the CRD YAML from
//! them, and CI fails when the checked-in `manifests/crds/` drifts from it.

pub mod canary;
pub mod conditions;
pub mod config;
pub mod data;
pub mod duration;
pub mod gates;
pub mod labels;
pub mod notifications;
pub mod operation;
pub mod stack;
pub mod status;
pub mod validation;
pub mod workload;

pub use canary::{Canary, CanaryAnalysis, CanaryPause, CanaryStep};
pub use config::{ConfigKind, ConfigVersion};
pub use data::*;
pub use duration::Duration;
pub use gates::*;
pub use notifications::*;
pub use operation::*;
pub use stack::*;
pub use status::*;
pub use workload::*;

/// The API group of every deployctl resource.
pub const GROUP: &str = "deployctl.dev";
/// The API version of this crate's types.
pub const VERSION: &str = "v1alpha1";
