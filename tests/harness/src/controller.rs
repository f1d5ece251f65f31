//! Runs the `deployctl-controller` binary of this workspace for one test namespace, the
//! way an operator would run it out of cluster, and kills it (SIGKILL) when dropped.
//! Tests of the controller, the CLI and the end-to-end scenarios share it.

use crate::shared::SharedEnv;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the workspace's `deployctl-controller` binary next to this test binary.
///
/// # Panics
/// When it is not built, saying how to build it.
pub fn controller_binary() -> PathBuf {
    let path = crate::node::target_profile_dir()
        .map(|d| d.join("deployctl-controller"))
        .filter(|p| p.is_file());
    path.unwrap_or_else(|| {
        panic!("deployctl-controller is not built next to this test binary; run `cargo build --workspace --bins` first")
    })
}

/// A controller process watching one namespace.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Option<Child>,
    log: PathBuf,
    /// Address of its metrics server.
    pub metrics_addr: String,
    /// Identity in the Lease.
    pub identity: String,
}

impl ControllerProcess {
    /// Starts the controller for namespace `ns` with a short Lease (3 s) so hand-over
    /// tests are quick, and a 30 s resync unless `extra` sets one; `identity` names the
    /// replica; `extra` are more arguments.
    pub fn start(env: &SharedEnv, ns: &str, identity: &str, extra: &[&str]) -> Self {
        Self::start_binary(
            &controller_binary(),
            env.kubeconfig_path(),
            ns,
            identity,
            extra,
        )
    }

    /// Like [`ControllerProcess::start`] with an explicit binary and kubeconfig.
    pub fn start_binary(
        binary: &Path,
        kubeconfig: &Path,
        ns: &str,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join("deployctl-controller-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{ns}-{identity}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("controller log file");
        let metrics_addr = format!("127.0.0.1:{port}");
        let child = Command::new("setpriv")
            // Dies with the test process even if that is killed.
            .args(["--pdeathsig", "KILL", "--"])
            .arg(binary)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--namespace",
                ns,
                "--metrics-addr",
                &metrics_addr,
                // Short, so a test that kills the leader sees the next one take over within
                // seconds; long enough that one slow renewal on a busy machine is retried.
                "--lease-duration",
                "5s",
                "--identity",
                identity,
            ])
            .args(if extra.contains(&"--resync") {
                &[][..]
            } else {
                &["--resync", "30s"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info,deployctl_controller=debug")
            .stdout(Stdio::from(out.try_clone().expect("log fd")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("the controller binary starts");
        ControllerProcess {
            child: Some(child),
            log,
            metrics_addr,
            identity: identity.to_string(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to 20 s for the exit; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of controller {} log ({}):\n{}",
                self.identity,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
