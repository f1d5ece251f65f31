//! Test harness of deployctl: throwaway Kubernetes 1.37 control planes (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler built by
//! `scripts/install-platform.sh`) with the simulated node of `deployctl-simnode`, one shared
//! cluster per test binary with a namespace per test, and server-side apply of YAML files.
//!
//! ```no_run
//! # async fn example() {
//! let env = deployctl_harness::shared();
//! let ns = env.namespace("my-test").await;
//! let client = env.client().await;
//! # let _ = (ns, client);
//! # }
//! ```
//!
//! Nothing outlives the test process: every child is tied to it by a parent-death signal
//! and a reaper removes the state dir (see [`process`]). `scripts/check-leftovers.sh`
//! verifies that after a run.

pub mod apply;
mod certs;
pub mod cluster;
pub mod controller;
pub mod crds;
pub mod error;
pub mod kubeconfig;
pub mod node;
pub mod process;
pub mod registry;
pub mod shared;
pub mod volumes;
pub mod wait;

pub use apply::apply_yaml;
pub use cluster::{
    control_plane_bin_dir, kubectl_binary, kubernetes_version, Cluster, ClusterOptions,
    KUBERNETES_VERSION,
};
pub use controller::{ControllerProcess, FAILOVER_LEASE};
pub use crds::install_crds;
pub use error::HarnessError;
pub use node::workspace_images;
pub use registry::{Registry, RegistryEndpoint};
pub use shared::{shared, shared_with_registry, SharedEnv, TestNamespace};
pub use volumes::{claim_dir, files_under};
pub use wait::wait_for;
