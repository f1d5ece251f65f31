//! The `exec` method: a dump command's stdout, streamed straight into the chunker (never
//! held in memory or on disk), stored as one file. Restore verifies the whole stream into
//! a staging file first and only then starts the restore command with it on stdin, so a
//! corrupt snapshot never reaches the restore command.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use crate::error::{io_err, Error, Result};
use crate::manifest::{Entry, EntryKind};
use crate::methods::{CommandSpec, Finisher};
use crate::snapshot::{Input, Prepared};

/// Name of the single entry of an exec snapshot.
pub(crate) const ENTRY: &str = "stream";
/// Tail of stderr kept for error messages.
const STDERR_TAIL: usize = 4096;

fn command(spec: &CommandSpec) -> Command {
    let mut c = Command::new(&spec.program);
    c.args(&spec.args);
    c.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(d) = &spec.cwd {
        c.current_dir(d);
    }
    c
}

fn cmd_err(spec: &CommandSpec, reason: impl Into<String>) -> Error {
    Error::Command {
        command: spec.program.clone(),
        reason: reason.into(),
    }
}

/// Collects the tail of a child's stderr on a thread (so a chatty child never blocks).
fn stderr_tail(child: &mut Child) -> Option<JoinHandle<String>> {
    let mut err = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        String::from_utf8_lossy(&tail).trim().to_string()
    }))
}

fn wait(spec: &CommandSpec, mut child: Child, tail: Option<JoinHandle<String>>) -> Result<()> {
    let status = child
        .wait()
        .map_err(|e| cmd_err(spec, format!("wait: {e}")))?;
    let stderr = tail.and_then(|t| t.join().ok()).unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(cmd_err(
            spec,
            format!("exited with {status}; stderr: {stderr}"),
        ))
    }
}

/// The single entry of an exec snapshot, read from `stream`.
fn stream_prepared(stream: Box<dyn Read + Send>, total: u64) -> Prepared {
    let entry = Entry {
        path: ENTRY.into(),
        kind: EntryKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime_ns: None,
        size: 0,
        chunks: vec![],
        target: None,
        ctime_ns: None,
        inode: None,
        device: None,
    };
    Prepared {
        entries: vec![entry],
        inputs: vec![(0, Input::Stream(stream))],
        total,
    }
}

/// Starts the dump; the finisher waits for it (killing it if the stream was not consumed).
pub(crate) fn spawn_dump(spec: &CommandSpec) -> Result<(Prepared, Finisher)> {
    let mut child = command(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cmd_err(spec, format!("cannot start: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let tail = stderr_tail(&mut child);
    let prepared = stream_prepared(Box::new(stdout), 0);
    let spec = spec.clone();
    Ok((
        prepared,
        Box::new(move |ok| {
            if !ok {
                let _ = child.kill();
            }
            let waited = wait(&spec, child, tail);
            if ok {
                waited
            } else {
                Ok(())
            }
        }),
    ))
}

/// A dump already written to `file` (by a command run elsewhere), read as the stream. The
/// manifest is the one [`spawn_dump`] gives: a stream entry, whatever the file's metadata.
pub(crate) fn read_file(file: &Path) -> Result<Prepared> {
    let f = File::open(file).map_err(io_err("open", file))?;
    let size = f.metadata().map_err(io_err("stat", file))?.len();
    Ok(stream_prepared(Box::new(f), size))
}

/// Runs the restore command with `stream` on stdin.
pub(crate) fn run_restore(spec: &CommandSpec, stream: File) -> Result<()> {
    let mut child = command(spec)
        .stdin(Stdio::from(stream))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cmd_err(spec, format!("cannot start: {e}")))?;
    let tail = stderr_tail(&mut child);
    wait(spec, child, tail)
}
