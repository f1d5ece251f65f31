//! Child processes of the harness: spawning them so that they cannot outlive the test
//! process, stopping them, the reaper that removes a state dir when the process goes away,
//! and the removal of state dirs left by earlier runs that died.
//!
//! Why a spawner thread: every child is started through `setpriv --pdeathsig`, and the
//! kernel delivers that signal when the *thread* that forked the child exits, not the
//! process. Tokio's blocking threads exit when idle and `cargo test` ends a test's thread
//! after the test, so children are forked by one thread that lives as long as the process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{HarnessError, Result};

/// Prefix of every state dir the harness creates; `scripts/check-leftovers.sh` and the
/// stale-dir sweep look for it.
pub const STATE_DIR_PREFIX: &str = "deployctl-test-";

/// How often conditions are re-checked while polling.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

fn spawner() -> Result<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    // Only the sender that wins the race is kept; a losing thread sees its channel close
    // at once and exits, having spawned nothing.
    std::thread::Builder::new()
        .name("deployctl-spawner".into())
        .spawn(move || {
            for mut request in rx {
                let _ = request.reply.send(request.command.spawn());
            }
        })
        .map_err(|e| HarnessError::Thread(format!("starting the spawner thread: {e}")))?;
    Ok(SPAWNER.get_or_init(|| tx))
}

/// Spawns `command` from the long-lived spawner thread.
fn spawn_from_spawner(command: Command) -> std::io::Result<Child> {
    let tx = spawner().map_err(std::io::Error::other)?;
    let (reply, result) = mpsc::channel();
    tx.send(SpawnRequest { command, reply })
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
}

/// Wraps `program args` so that the kernel sends `signal` to it when the harness goes away.
fn tied_command(signal: &str, program: &Path, args: &[String]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--pdeathsig={signal}"))
        .arg("--")
        .arg(program)
        .args(args)
        // Own process group: a Ctrl-C in the sandbox's terminal must reach the harness,
        // which tears down in order, not every component at once.
        .process_group(0)
        .stdin(Stdio::null());
    command
}

/// A running child process with its log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `program args` in `cwd`, stdout and stderr appended to `log`, killed by the
    /// kernel if the harness process dies.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        cwd: &Path,
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log)
            .map_err(|e| HarnessError::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io(format!("opening {}", log.display()), e))?;
        let mut command = tied_command("KILL", program, args);
        command.current_dir(cwd).stdout(out).stderr(err);
        let child = spawn_from_spawner(command)
            .map_err(|e| HarnessError::io(format!("starting {name} ({})", program.display()), e))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            exited: None,
        })
    }

    /// The component name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (the same after `setpriv` execs the program).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited (and been reaped).
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// An error describing this process's exit, with the tail of its log.
    pub(crate) fn exited_error(&mut self) -> HarnessError {
        let status = self
            .exit_status()
            .map_or_else(|| "still running".to_owned(), |s| s.to_string());
        HarnessError::ComponentExited {
            component: self.name.clone(),
            status,
            log: self.log.clone(),
            log_tail: log_tail(&self.log, 30),
        }
    }

    /// Fails with the log tail if the process has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(_) => Err(self.exited_error()),
        }
    }

    fn signal(&self, signal: Signal) {
        if self.exited.is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // ESRCH only means it is already gone, which is the goal.
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }
}

/// Stops all processes together: SIGTERM, up to `grace` for them to exit, then SIGKILL.
/// Every process is reaped before this returns, so no zombie or pid is left behind.
pub(crate) fn stop_all(processes: &mut [ManagedProcess], grace: Duration) {
    for p in processes.iter_mut() {
        if p.exit_status().is_none() {
            p.signal(Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && processes.iter_mut().any(|p| p.exit_status().is_none()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in processes.iter_mut() {
        if p.exit_status().is_none() {
            p.signal(Signal::SIGKILL);
            p.exited = p.child.wait().ok();
        }
    }
}

/// The last `lines` lines of a log file (at most the last 64 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The shell program of the reaper. `$1` is the state dir. On SIGTERM (sent by the kernel
/// when the harness process dies, or by [`Reaper::stop`]) it kills what still runs from
/// inside the dir, detaches mounts below it (so `rm` cannot reach through a bind mount)
/// and removes it.
const REAPER_SCRIPT: &str = r#"
dir=$1
cleanup() {
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    case "$(readlink "$p/cwd" 2>/dev/null)" in
      "$dir"|"$dir"/*) kill -KILL "${p#/proc/}" 2>/dev/null ;;
    esac
  done
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  i=0
  while [ -e "$dir" ] && [ $i -lt 50 ]; do
    rm -rf --one-file-system "$dir" 2>/dev/null || sleep 0.1
    i=$((i + 1))
  done
}
trap 'kill $pid 2>/dev/null; cleanup; exit 0' TERM INT HUP
while :; do
  setpriv --pdeathsig=KILL -- sleep 3600 &
  pid=$!
  wait $pid
done
"#;

/// A tiny `sh` child that removes a state dir when the harness process goes away, even
/// by SIGKILL: `Drop` cannot run then, but the kernel still sends the reaper its
/// parent-death signal.
#[derive(Debug)]
pub(crate) struct Reaper {
    process: Option<ManagedProcess>,
}

impl Reaper {
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        let mut command = tied_command(
            "TERM",
            Path::new("sh"),
            &[
                "-c".into(),
                REAPER_SCRIPT.into(),
                "deployctl-reaper".into(),
                dir.display().to_string(),
            ],
        );
        // The reaper must not keep the state dir busy.
        command
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_from_spawner(command)
            .map_err(|e| HarnessError::io("starting the state-dir reaper", e))?;
        Ok(Self {
            process: Some(ManagedProcess {
                name: "reaper".into(),
                child,
                log: PathBuf::new(),
                exited: None,
            }),
        })
    }

    /// Stops the reaper (which then finds the dir already removed, or removes it).
    pub(crate) fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            stop_all(&mut [p], Duration::from_secs(5));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Detaches every mount at or below `dir`, deepest first, so removing `dir` cannot reach
/// into what is mounted there.
pub(crate) fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort();
    for mount in mounts.iter().rev() {
        let _ = nix::mount::umount2(mount.as_path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes a state dir: first what is mounted below it, then the files.
pub(crate) fn remove_state_dir(dir: &Path) -> Result<()> {
    unmount_below(dir);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HarnessError::io(format!("removing {}", dir.display()), e)),
    }
}

/// Removes `deployctl-test-<pid>-*` dirs under `parent` whose process is gone: the
/// remains of runs that died before their reaper could act (e.g. a reboot, or the reaper
/// itself killed).
pub(crate) fn remove_stale_state_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(STATE_DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            if let Err(e) = remove_state_dir(&path) {
                tracing::warn!(error = %e, "could not remove a stale state dir");
            }
        }
    }
}

/// Creates a fresh `deployctl-test-<pid>-<random>` dir under `parent`.
pub(crate) fn create_state_dir(parent: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(parent)
        .map_err(|e| HarnessError::io(format!("creating {}", parent.display()), e))?;
    let dir = tempfile::Builder::new()
        .prefix(&format!("{STATE_DIR_PREFIX}{}-", std::process::id()))
        .tempdir_in(parent)
        .map_err(|e| HarnessError::io(format!("creating a state dir in {}", parent.display()), e))?
        .keep();
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write log");
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert!(log_tail(&dir.path().join("missing"), 2).contains("no log"));
    }

    #[test]
    fn stale_dirs_of_dead_pids_are_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().expect("temp dir");
        // Pid 2^22 + 1 is above the kernel's pid_max ceiling, so it is never alive.
        let dead = parent.path().join(format!("{STATE_DIR_PREFIX}4194305-abc"));
        let mine = parent
            .path()
            .join(format!("{STATE_DIR_PREFIX}{}-abc", std::process::id()));
        let other = parent.path().join("unrelated-4194305");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir_all(d.join("sub")).expect("create dir");
        }
        remove_stale_state_dirs(parent.path());
        assert!(!dead.exists());
        assert!(mine.exists());
        assert!(other.exists());
    }

    #[test]
    fn spawned_process_is_stopped_and_reaped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut p = ManagedProcess::spawn(
            "sleeper",
            Path::new("sleep"),
            &["30".into()],
            dir.path(),
            &dir.path().join("sleep.log"),
        )
        .expect("spawn sleep");
        let pid = p.pid();
        assert!(p.check_running().is_ok());
        stop_all(std::slice::from_mut(&mut p), Duration::from_secs(2));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn reaper_removes_its_dir_when_stopped() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = create_state_dir(parent.path()).expect("state dir");
        std::fs::write(dir.join("f"), "x").expect("write");
        let mut reaper = Reaper::start(&dir).expect("reaper");
        let deadline = Instant::now() + Duration::from_secs(30);
        // The trap is only installed once sh has parsed the script; until its sleep child
        // exists a TERM could kill sh without cleanup.
        while !has_child(reaper.process.as_ref().map(|p| p.pid())) {
            assert!(
                Instant::now() < deadline,
                "the reaper's shell never started"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
        reaper.stop();
        assert!(!dir.exists(), "reaper left {}", dir.display());
    }

    fn has_child(pid: Option<u32>) -> bool {
        let Some(pid) = pid else { return false };
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false)
    }
}
