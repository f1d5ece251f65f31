//! Runs one container process and reports on it.
//!
//! Process tree of a container:
//!
//! ```text
//! setpriv --pdeathsig KILL          (exec'd away: sets the parent-death signal)
//!  └ nsenter --net --uts --ipc      (exec'd away: joins the pod's holder namespaces)
//!     └ unshare --pid --fork --kill-child=KILL --mount --propagation private
//!        └ sh setup-script          PID 1 of the container: builds the root, then
//!           └ sh -c INIT            exec: the mini init (host root), forwarding SIGTERM
//!              └ [setpriv] unshare --root --wd [--setuid]   (exec'd away)
//!                 └ the container's command, in the container's root
//! ```
//!
//! The `unshare` parent is the node's direct child: if the node dies it gets SIGKILL, its
//! `--kill-child` passes SIGKILL to PID 1, and the kernel then kills the whole PID
//! namespace. Graceful stop sends SIGTERM to PID 1 (the init forwards it); the hard stop
//! SIGKILLs the `unshare` parent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::error::{Result, SimNodeError};
use crate::procfs;
use crate::spawner::{ProcSpec, Spawner};

const NSENTER: &str = "/usr/bin/nsenter";
const UNSHARE: &str = "/usr/bin/unshare";
/// How long the setup script may take before the start counts as failed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug)]
pub(crate) struct Launch {
    /// The pod's namespace holder (`None` for `hostNetwork` pods).
    pub(crate) holder_pid: Option<u32>,
    pub(crate) script: PathBuf,
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log: PathBuf,
    /// The file the setup script creates right before it becomes the init (see
    /// [`crate::rootfs::RootSpec::started_marker`]); removed here before the start.
    pub(crate) started_marker: PathBuf,
}

/// What a container run reports to its pod worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunEvent {
    /// Setup finished: the container's command runs under the init, whose host pid this is.
    Started { pid1: u32, at: Timestamp },
    /// The run ended. `started` is false when it died during setup.
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        started: bool,
        at: Timestamp,
    },
}

/// How to stop a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGTERM to the init (forwarded to the command).
    Term,
    /// SIGKILL to the whole container.
    Kill,
}

/// The worker's handle on a running container.
#[derive(Debug, Clone)]
pub(crate) struct RunHandle {
    stop: mpsc::UnboundedSender<Stop>,
}

impl RunHandle {
    pub(crate) fn stop(&self, how: Stop) {
        let _ = self.stop.send(how);
    }
}

/// Starts the container; `report` receives its events, tagged by the caller's closure.
pub(crate) async fn start(
    spawner: &Spawner,
    launch: Launch,
    report: impl Fn(RunEvent) + Send + 'static,
) -> Result<RunHandle> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .map_err(|e| SimNodeError::io(format!("opening {}", launch.log.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| SimNodeError::io("duplicating the log descriptor", e))?;
    let mut args: Vec<String> = Vec::new();
    let program = match launch.holder_pid {
        Some(pid) => {
            args.extend([
                format!("--net=/proc/{pid}/ns/net"),
                format!("--uts=/proc/{pid}/ns/uts"),
                format!("--ipc=/proc/{pid}/ns/ipc"),
                "--".into(),
                UNSHARE.into(),
            ]);
            NSENTER
        }
        None => UNSHARE,
    };
    args.extend(
        [
            "--pid",
            "--fork",
            "--kill-child=KILL",
            "--mount",
            "--propagation",
            "private",
        ]
        .map(String::from),
    );
    if launch.holder_pid.is_none() {
        args.extend(["--uts".into(), "--ipc".into()]);
    }
    args.extend(["--".into(), "/bin/sh".into()]);
    args.push(launch.script.to_string_lossy().into_owned());
    args.extend(launch.argv);
    let spec = ProcSpec {
        program: program.into(),
        args: args.into_iter().map(Into::into).collect(),
        env: Some(launch.env),
        stdin: Stdio::null(),
        stdout: Stdio::from(log),
        stderr: Stdio::from(log2),
    };
    match std::fs::remove_file(&launch.started_marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SimNodeError::io("removing the start marker", e)),
    }
    let child = spawner.spawn(spec).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(supervise(child, launch.started_marker, rx, report));
    Ok(RunHandle { stop: tx })
}

/// The host pid of the container's PID 1: the only child of the `unshare` parent. It is
/// the same process before and after it `exec`s into the init.
fn find_pid1(wrapper: u32) -> Option<u32> {
    procfs::children_of(wrapper).into_iter().next()
}

/// Whether PID 1 has become the init: the setup script creates the marker file right
/// before its final `exec`, so even a command that exits at once is seen as started.
fn started(marker: &Path, wrapper: Option<u32>) -> Option<u32> {
    if !marker.exists() {
        return None;
    }
    Some(wrapper.and_then(find_pid1).unwrap_or(0))
}

async fn supervise(
    mut child: Child,
    marker: PathBuf,
    mut stop: mpsc::UnboundedReceiver<Stop>,
    report: impl Fn(RunEvent),
) {
    let wrapper = child.id();
    let spawned = Instant::now();
    let mut pid1: Option<u32> = None;
    let mut stop_open = true;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            status = child.wait() => {
                let (exit_code, signal) = match status {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        match (s.code(), s.signal()) {
                            (Some(c), _) => (c, None),
                            (None, Some(sig)) => (128 + sig, Some(sig)),
                            (None, None) => (128, None),
                        }
                    }
                    Err(_) => (128, None),
                };
                if pid1.is_none() && marker.exists() {
                    // Ran and exited between two polls.
                    pid1 = Some(0);
                    report(RunEvent::Started { pid1: 0, at: Timestamp::now() });
                }
                report(RunEvent::Exited { exit_code, signal, started: pid1.is_some(), at: Timestamp::now() });
                return;
            }
            how = stop.recv(), if stop_open => {
                match how {
                    Some(Stop::Term) => {
                        match pid1.filter(|p| *p > 0).and_then(|p| i32::try_from(p).ok()) {
                            Some(p) => { let _ = kill(Pid::from_raw(p), Signal::SIGTERM); }
                            // Still in setup: nothing to shut down gracefully.
                            None => { let _ = child.start_kill(); }
                        }
                    }
                    Some(Stop::Kill) => { let _ = child.start_kill(); }
                    None => {
                        // The worker is gone: never leave the process behind.
                        stop_open = false;
                        let _ = child.start_kill();
                    }
                }
            }
            _ = poll.tick(), if pid1.is_none() => {
                if let Some(p) = started(&marker, wrapper) {
                    pid1 = Some(p);
                    report(RunEvent::Started { pid1: p, at: Timestamp::now() });
                } else if spawned.elapsed() > SETUP_TIMEOUT {
                    let _ = child.start_kill();
                }
            }
        }
    }
}

/// Runs `argv` inside a running container (the namespaces, root and working dir of its
/// command, whose init is `pid1`, with `env`), for `exec` probes and hooks: `Ok(output)` on exit 0, `Err(message)` otherwise or after `timeout`.
pub(crate) async fn exec_in(
    spawner: &Spawner,
    pid1: u32,
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> std::result::Result<String, String> {
    if argv.is_empty() {
        return Err("exec probe has no command".into());
    }
    // The command's process, not the init: the init stays outside the container's root.
    let target = find_pid1(pid1).unwrap_or(pid1);
    let mut args: Vec<String> = vec![
        "-t".into(),
        target.to_string(),
        "-m".into(),
        "-u".into(),
        "-i".into(),
        "-n".into(),
        "-p".into(),
        "-r".into(),
        "-w".into(),
        "--".into(),
    ];
    args.extend(argv.iter().cloned());
    let mut spec = ProcSpec::new(NSENTER, args);
    spec.env = Some(env.to_vec());
    match spawner.run(spec, None, timeout).await {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(SimNodeError::Timeout { .. }) => {
            Err(format!("command {argv:?} timed out after {timeout:?}"))
        }
        Err(SimNodeError::Command { detail, .. }) => {
            Err(format!("command {argv:?} failed: {detail}"))
        }
        Err(e) => Err(e.to_string()),
    }
}
