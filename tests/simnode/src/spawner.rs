//! Starts every child process of the node — namespace holders, containers, probes, `ip`
//! commands — from one dedicated thread, each wrapped in `setpriv --pdeathsig KILL`.
//!
//! Why a thread of its own: the kernel sends the parent-death signal when the *thread*
//! that forked the child exits, not the process. Tokio's blocking-pool threads come and
//! go, and the caller's runtime may be torn down before the node; this thread lives
//! exactly as long as the [`Spawner`], so children die with the node and, if the process
//! is killed, with the process. `unsafe` is forbidden in the workspace, so `setpriv` sets
//! the signal instead of a `pre_exec` hook.

use std::ffi::OsString;
use std::process::{Output, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::error::{Result, SimNodeError};

/// `setpriv` from util-linux: sets the parent-death signal, then execs the real program.
const SETPRIV: &str = "/usr/bin/setpriv";

/// One process to start.
#[derive(Debug)]
pub(crate) struct ProcSpec {
    /// Absolute path of the program (no `PATH` lookup happens before `setpriv`).
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    /// The complete environment; `None` inherits the node's.
    pub(crate) env: Option<Vec<(String, String)>>,
    pub(crate) stdin: Stdio,
    pub(crate) stdout: Stdio,
    pub(crate) stderr: Stdio,
}

impl ProcSpec {
    /// A program with arguments, inheriting the environment, all stdio discarded.
    pub(crate) fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: None,
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }

    /// The command line, for messages.
    pub(crate) fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        if s.len() > 200 {
            s.truncate(200);
            s.push_str("...");
        }
        s
    }
}

struct Request {
    spec: ProcSpec,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// Handle to the spawner thread. Dropping it ends the thread, which kills (by parent-death
/// signal) every child still running.
#[derive(Debug)]
pub(crate) struct Spawner {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Spawner {
    /// Starts the thread; children are registered with the runtime of `handle` (tokio's
    /// child reaper needs a runtime context at spawn time).
    pub(crate) fn start(handle: tokio::runtime::Handle) -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("simnode-spawner".into())
            .spawn(move || {
                let _runtime = handle.enter();
                while let Ok(Request { spec, reply }) = rx.recv() {
                    let mut cmd = Command::new(SETPRIV);
                    cmd.arg("--pdeathsig")
                        .arg("KILL")
                        .arg("--")
                        .arg(&spec.program)
                        .args(&spec.args)
                        .stdin(spec.stdin)
                        .stdout(spec.stdout)
                        .stderr(spec.stderr)
                        .kill_on_drop(true);
                    if let Some(env) = spec.env {
                        cmd.env_clear().envs(env);
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map_err(|e| SimNodeError::io("starting the spawner thread", e))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Starts `spec` from the spawner thread.
    pub(crate) async fn spawn(&self, spec: ProcSpec) -> Result<Child> {
        let what = spec.display();
        let (reply, rx) = oneshot::channel();
        let sent = {
            let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_ref()
                .map(|tx| tx.send(Request { spec, reply }).is_ok())
                .unwrap_or(false)
        };
        let stopped = || SimNodeError::Config("the node is shutting down".into());
        if !sent {
            return Err(stopped());
        }
        rx.await
            .map_err(|_| stopped())?
            .map_err(|e| SimNodeError::io(format!("starting {what}"), e))
    }

    /// Runs `spec` to completion with stdout and stderr captured, feeding `stdin`; kills
    /// it after `timeout`. Fails unless it exits 0.
    pub(crate) async fn run(
        &self,
        mut spec: ProcSpec,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output> {
        let what = spec.display();
        spec.stdin = if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        spec.stdout = Stdio::piped();
        spec.stderr = Stdio::piped();
        let mut child = self.spawn(spec).await?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)
                .await
                .map_err(|e| SimNodeError::io(format!("writing to {what}"), e))?;
            drop(pipe);
        }
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| SimNodeError::Timeout {
                what: format!("{what} to finish"),
                waited: timeout,
            })?
            .map_err(|e| SimNodeError::io(format!("waiting for {what}"), e))?;
        if !output.status.success() {
            return Err(SimNodeError::Command {
                what,
                detail: format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        Ok(output)
    }

    /// Ends the thread and waits for it. Children still running get their parent-death
    /// signal; callers kill and reap them first.
    pub(crate) fn stop(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.stop();
    }
}
