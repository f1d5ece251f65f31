//! Runs the `deployctl-controller` binary of this workspace for one test namespace, the
//! way an operator would run it out of cluster, restarts it when it exits on its own (as
//! the kubelet restarts a pod's container), and kills it (SIGKILL) when dropped.
//! Tests of the controller, the CLI and the end-to-end scenarios share it.

use crate::shared::SharedEnv;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// The Lease of tests about failover (a killed leader, a crash and a restart): short, so the
/// next replica takes over within seconds. Every other test runs with the chart's default
/// (15 s): a slow disk write on a busy machine must not cost the leader its Lease.
pub const FAILOVER_LEASE: [&str; 2] = ["--lease-duration", "5s"];

/// Back-off between restarts of a controller that exited on its own, as the kubelet's
/// (doubling, capped; reset after a run this long).
const RESTART_BACKOFF_START: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(16);
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(60);

/// A controller process watching one namespace, restarted like a pod's container: when it
/// exits on its own (it exits on purpose when it loses its Lease), it is started again after
/// a back-off, and the restart is written to its log. [`ControllerProcess::kill`] and
/// [`ControllerProcess::terminate`] stop it for good.
#[derive(Debug)]
pub struct ControllerProcess {
    state: Arc<Mutex<Supervised>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
    /// Address of its metrics server.
    pub metrics_addr: String,
    /// Identity in the Lease.
    pub identity: String,
}

#[derive(Debug)]
struct Supervised {
    child: Option<Child>,
    /// Set by kill/terminate: no more restarts.
    stopped: bool,
    /// How many times it was restarted after exiting on its own.
    restarts: u32,
}

impl ControllerProcess {
    /// Starts the controller for namespace `ns` with the default Lease and a 30 s resync
    /// unless `extra` sets one; `identity` names the replica; `extra` are more arguments
    /// ([`FAILOVER_LEASE`] for tests about failover).
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
        let metrics_addr = format!("127.0.0.1:{port}");
        let mut command = Command::new("setpriv");
        command
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
                "--identity",
                identity,
            ])
            .args(if extra.contains(&"--resync") {
                &[][..]
            } else {
                &["--resync", "30s"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info,deployctl_controller=debug");
        let child = spawn_logged(&mut command, &log);
        let state = Arc::new(Mutex::new(Supervised {
            child: Some(child),
            stopped: false,
            restarts: 0,
        }));
        let supervisor = {
            let state = Arc::clone(&state);
            let log = log.clone();
            std::thread::spawn(move || supervise(&state, &mut command, &log))
        };
        ControllerProcess {
            state,
            supervisor: Some(supervisor),
            log,
            metrics_addr,
            identity: identity.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Supervised> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process id (of the current run), 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.lock().child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// How many times the process exited on its own and was started again.
    pub fn restarts(&self) -> u32 {
        self.lock().restarts
    }

    /// SIGKILL, as a crash or an OOM kill would; not restarted.
    pub fn kill(&mut self) {
        let child = {
            let mut st = self.lock();
            st.stopped = true;
            st.child.take()
        };
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_supervisor();
    }

    /// SIGTERM, then waits up to 20 s for the exit; returns the exit status. Not restarted.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let child = {
            let mut st = self.lock();
            st.stopped = true;
            st.child.take()
        };
        self.join_supervisor();
        let mut c = child?;
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

    fn join_supervisor(&mut self) {
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }

    /// Whether the process runs now (between an exit and its restart, it does not).
    pub fn running(&mut self) -> bool {
        self.lock()
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The log so far (every run's, restarts noted).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Path of the log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// Starts `command` with its output appended to `log`.
fn spawn_logged(command: &mut Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("controller log file");
    command
        .stdout(Stdio::from(out.try_clone().expect("log fd")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("the controller binary starts")
}

fn note(log: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(log) {
        let _ = writeln!(f, "harness: {line}");
    }
}

/// Restarts the process whenever it exits on its own, until it is stopped.
fn supervise(state: &Mutex<Supervised>, command: &mut Command, log: &Path) {
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    let mut backoff = RESTART_BACKOFF_START;
    let mut started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let status = {
            let mut st = lock();
            if st.stopped {
                return;
            }
            match st.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            }
        };
        if started.elapsed() >= RESTART_BACKOFF_RESET {
            backoff = RESTART_BACKOFF_START;
        }
        note(
            log,
            &format!(
                "the controller exited ({status}); restarting it in {}s, as the kubelet would",
                backoff.as_secs()
            ),
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if lock().stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut st = lock();
        if st.stopped {
            return;
        }
        st.child = Some(spawn_logged(command, log));
        st.restarts += 1;
        started = Instant::now();
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
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
