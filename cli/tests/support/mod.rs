//! Helpers of the CLI's tests on the real control plane: installing the CRDs, stacks in
//! YAML, running the `deployctl` binary as a user would, and waiting for conditions by
//! polling with a deadline (never a fixed sleep).

#![allow(dead_code)] // each test binary uses a different subset

use kube::Client;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// Field manager of the objects the tests apply.
pub const MANAGER: &str = "deployctl-cli-tests";

/// Installs the CRDs and waits until they are served (shared with the controller's tests).
pub use deployctl_harness::install_crds;

/// Polls `check` every 100 ms until it returns `Some`, or panics naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stack of two components with no pods (`replicas: 0`: Healthy without a node), `db`
/// and `api` depending on it, `api` running `demo-app:<api_tag>`; `extra` is appended
/// to the spec (indented by two spaces).
pub fn stack_yaml(name: &str, api_tag: &str, extra: &str) -> String {
    format!(
        "apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {{name: {name}}}
spec:
  components:
  - {{name: db, replicas: 0, template: {{spec: {{containers: [{{name: app, image: 'deployctl.dev/demo-app:v1'}}]}}}}}}
  - {{name: api, replicas: 0, dependsOn: [db], template: {{spec: {{containers: [{{name: app, image: 'deployctl.dev/demo-app:{api_tag}'}}]}}}}}}
{extra}"
    )
}

/// Server-side applies a stack.
pub async fn apply(client: &Client, ns: &str, yaml: &str) {
    deployctl_harness::apply_yaml(client, yaml, "stack.yaml", MANAGER, ns)
        .await
        .expect("stack applies");
}

/// What a run of the CLI produced.
#[derive(Debug)]
pub struct Output {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Panics with everything the run printed unless it exited with `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// The `deployctl` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_deployctl")
}

/// A `deployctl` command against `kubeconfig` in namespace `ns`, with a fixed width and
/// no colour, and no KUBECONFIG from the caller's environment.
pub fn command(kubeconfig: &Path, ns: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary());
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .env("COLUMNS", "200")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `deployctl` to the end.
pub async fn run(kubeconfig: &Path, ns: &str, args: &[&str]) -> Output {
    let out = command(kubeconfig, ns, args)
        .output()
        .await
        .expect("deployctl runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
