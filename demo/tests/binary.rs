//! The built `demo-app` binary as a pod would run it: version from the image tag, env
//! switches, exit codes, SIGTERM, and the upgrade / rollback story told by `checksum`.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};

use common::{client, get, wait_ready, DEADLINE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_demo-app");

/// A command with a clean environment for the variables the app reads.
fn demo_app() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "APP_VERSION",
        "SIMNODE_IMAGE",
        "LISTEN_ADDR",
        "DATA_DIR",
        "SEED_ITEMS",
        "UPSTREAM_URL",
        "FAULT_ERROR_RATE",
        "FAULT_LATENCY_MS",
        "FAULT_CRASH_ON_START",
        "FAULT_NEVER_READY",
        "FAULT_CORRUPT_DATA",
        "FAULT_CRASH_AFTER_SECS",
    ] {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "info").kill_on_drop(true);
    c
}

async fn output(cmd: &mut Command) -> Output {
    timeout(DEADLINE, cmd.output())
        .await
        .expect("command finished within the deadline")
        .expect("command ran")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn checksum(dir: &Path) -> String {
    let out = output(demo_app().arg("checksum").arg("--data-dir").arg(dir)).await;
    assert!(
        out.status.success(),
        "checksum failed: {}",
        text(&out.stderr)
    );
    let sum = text(&out.stdout).trim().to_owned();
    assert_eq!(sum.len(), 64, "not a SHA-256: {sum:?}");
    sum
}

async fn migrate(dir: &Path, version: &str) -> Output {
    output(
        demo_app()
            .args([
                "migrate",
                "--seed",
                "3",
                "--app-version",
                version,
                "--data-dir",
            ])
            .arg(dir),
    )
    .await
}

/// A running `serve`, its base URL and everything it wrote to stderr so far.
struct Running {
    child: Child,
    base: String,
    stderr: Arc<Mutex<String>>,
    /// The task reading stderr: it ends at the pipe's end of file, after the last line.
    reader: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn demo-app");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = oneshot::channel();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = stderr.clone();
        // Keeps draining stderr for the life of the process so it never blocks on a pipe.
        let reader = tokio::spawn(async move {
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                    {
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(addr.to_owned());
                        }
                    }
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match timeout(DEADLINE, addr_rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!(
                "no 'listening' line from demo-app; stderr:\n{}",
                stderr.lock().unwrap()
            ),
        };
        Running {
            child,
            base: format!("http://{addr}"),
            stderr,
            reader,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn sigterm_and_wait(mut self) -> (i32, String) {
        let pid = self.child.id().expect("still running") as i32;
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
        let status = timeout(DEADLINE, self.child.wait())
            .await
            .expect("exited within the deadline after SIGTERM")
            .unwrap();
        // The process has exited, but its last lines may still be in the pipe: the log is
        // whole once the reader has seen the end of file.
        timeout(DEADLINE, &mut self.reader)
            .await
            .expect("stderr reaches its end once the process has exited")
            .expect("the stderr reader does not panic");
        (status.code().unwrap_or(-1), self.log())
    }
}

#[tokio::test]
async fn rollback_needs_the_data_restore() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");

    let out = migrate(&data, "1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v1_sum = checksum(&data).await;
    assert_eq!(checksum(&data).await, v1_sum, "checksum must be stable");
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::copy(data.join("app.db"), backup.join("app.db")).unwrap();

    // Upgrade: version 2 rewrites the data.
    let out = migrate(&data, "v2").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v2_sum = checksum(&data).await;
    assert_ne!(v2_sum, v1_sum, "the v2 migration must change the data");

    // Rolling back the binary alone fails, both for `migrate` and for `serve`.
    let out = migrate(&data, "1").await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("schema version 2") && err.contains("schema version 1"),
        "{err}"
    );
    let out = output(
        demo_app()
            .env("SIMNODE_IMAGE", "deployctl.dev/demo-app:v1")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data),
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("schema version 2"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        checksum(&data).await,
        v2_sum,
        "a refusal must not touch the data"
    );

    // Restoring the data makes version 1 work again, with the data as it was.
    std::fs::copy(backup.join("app.db"), data.join("app.db")).unwrap();
    assert_eq!(checksum(&data).await, v1_sum);
    let out = migrate(&data, "1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(checksum(&data).await, v1_sum);
}

#[tokio::test]
async fn serves_version_from_image_tag_and_stops_on_sigterm() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let run = Running::spawn(
        demo_app()
            .env("SIMNODE_IMAGE", "deployctl.dev/demo-app:v2")
            .env("SEED_ITEMS", "5")
            .env("DATA_DIR", dir.path()),
    )
    .await;
    wait_ready(&http, &run.base).await;
    let (status, body) = get(&http, &format!("{}/version", run.base)).await.unwrap();
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["version"], 2, "{body}");
    assert_eq!(info["schema_version"], 2, "{body}");
    assert_eq!(info["role"], "store", "{body}");
    let (_, items) = get(&http, &format!("{}/api/items", run.base))
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Vec<Value>>(&items).unwrap().len(), 5);
    let log = run.log();
    assert!(
        log.contains("demo-app starting") && log.contains("version=2") && log.contains("schema=2"),
        "{log}"
    );

    let (code, log) = run.sigterm_and_wait().await;
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("SIGTERM") && log.contains("database closed"),
        "{log}"
    );
    assert!(
        !dir.path().join("app.db-wal").exists(),
        "WAL left after SIGTERM"
    );
    checksum(dir.path()).await;
}

#[tokio::test]
async fn env_fault_switches_apply() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let run = Running::spawn(
        demo_app()
            .env("APP_VERSION", "1")
            .env("FAULT_NEVER_READY", "1")
            .env("FAULT_ERROR_RATE", "1.0")
            .env("FAULT_CRASH_ON_START", "false")
            .arg("--data-dir")
            .arg(dir.path()),
    )
    .await;
    let (_, faults) = get(&http, &format!("{}/admin/faults", run.base))
        .await
        .unwrap();
    let faults: Value = serde_json::from_str(&faults).unwrap();
    assert_eq!(faults["never_ready"], true, "{faults}");
    assert_eq!(faults["error_rate"], 1.0, "{faults}");
    assert_eq!(faults["crash_on_start"], false, "{faults}");
    assert_eq!(
        get(&http, &format!("{}/readyz", run.base)).await.unwrap().0,
        503
    );
    assert_eq!(
        get(&http, &format!("{}/healthz", run.base))
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        get(&http, &format!("{}/api/items", run.base))
            .await
            .unwrap()
            .0,
        500
    );
    let (code, log) = run.sigterm_and_wait().await;
    assert_eq!(code, 0, "{log}");
}

/// A SIGTERM as soon as the app says it listens (a pod deleted while it starts) is a
/// graceful shutdown, not a kill: the handler is in place before anything is served.
#[tokio::test]
async fn sigterm_right_after_start_is_a_graceful_shutdown() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let run = Running::spawn(demo_app().arg("--data-dir").arg(dir.path())).await;
        let (code, log) = run.sigterm_and_wait().await;
        assert_eq!(code, 0, "{log}");
        assert!(log.contains("shutting down gracefully"), "{log}");
    }
}

#[tokio::test]
async fn crash_faults_exit_with_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        demo_app()
            .env("FAULT_CRASH_ON_START", "true")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path()),
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("crash_on_start"),
        "{}",
        text(&out.stderr)
    );

    let out = output(
        demo_app()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--fault-crash-after-secs",
                "0",
                "--data-dir",
            ])
            .arg(dir.path()),
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("crash_after_secs"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn corrupt_data_fault_changes_the_checksum() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    assert!(migrate(dir.path(), "2").await.status.success());
    let before = checksum(dir.path()).await;
    let run = Running::spawn(
        demo_app()
            .env("FAULT_CORRUPT_DATA", "true")
            .env("APP_VERSION", "2")
            .arg("--data-dir")
            .arg(dir.path()),
    )
    .await;
    wait_ready(&http, &run.base).await;
    let (code, log) = run.sigterm_and_wait().await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("corrupt_data"), "{log}");
    assert_ne!(checksum(dir.path()).await, before);
}

#[tokio::test]
async fn bad_configuration_is_a_usage_error() {
    for args in [
        vec!["--app-version", "banana"],
        vec!["--fault-error-rate", "2"],
        vec!["--listen", "not-an-address"],
    ] {
        let out = output(demo_app().args(&args).args(["--data-dir", "/nonexistent"])).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn after_sigterm_it_drains_unready_but_serving_for_the_shutdown_delay() {
    let http = client();
    let dir = tempfile::tempdir().unwrap();
    let run = Running::spawn(
        demo_app()
            .env("DATA_DIR", dir.path())
            // Long enough that both requests below land inside it on a busy machine.
            .env("SHUTDOWN_DELAY_MS", "8000"),
    )
    .await;
    wait_ready(&http, &run.base).await;
    let pid = run.child.id().expect("running") as i32;
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
    let readyz = format!("{}/readyz", run.base);
    let (status, body) = common::eventually("/readyz to answer 503 after SIGTERM", || async {
        match get(&http, &readyz).await {
            Ok((503, body)) => Ok((503, body)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    let (status, _) = get(&http, &format!("{}/api/items", run.base))
        .await
        .unwrap();
    assert_eq!(status, 200, "still serving while draining");
    let (code, log) = run.sigterm_and_wait().await;
    assert_eq!(code, 0, "{log}");
}
