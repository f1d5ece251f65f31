//! The data half of a rollback, on the controller's side: the `agent` subcommand that
//! snapshots, restores, verifies and prunes a component's data with the snapshot engine,
//! the Job that runs it next to the data, and the result it hands back.
//!
//! The work runs in a Job of the controller's own image rather than in the controller: it
//! needs the component's volume mounted (often ReadWriteOnce, so on the component's node),
//! root to read and restore files of any owner, and it may run for a long time. The agent
//! talks to no API server; its [`result::AgentResult`] travels back in the pod's
//! termination message.

pub mod command;
pub mod job;
pub mod result;

pub use job::{AgentOp, JobRequest, StoreLocation};
pub use result::{parse_termination_message, AgentResult};
