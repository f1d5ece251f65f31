//! The snapshot agent as its Job runs it: the built `deployctl-controller agent …` binary
//! as a process on temporary directories (no cluster). Every run's result is read both
//! from the last line of stdout and from the termination log, the way the controller
//! reads it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use deployctl_controller::agent::{parse_termination_message, AgentOp, AgentResult};
use deployctl_snapshot::testing::with_small_volume;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// One agent run: its result (checked to be the same on stdout and in the termination
/// log), exit code and stderr.
#[derive(Debug)]
struct Run {
    result: AgentResult,
    code: i32,
    stderr: String,
    stdout: String,
}

/// A store directory, a live data directory and a termination log in one temp dir.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn store(&self) -> String {
        format!(
            r#"{{"type":"filesystem","path":{}}}"#,
            serde_json::to_string(&self.path("store")).unwrap()
        )
    }

    /// Runs `agent <op> --store … --termination-log … <extra>` on the filesystem store.
    fn agent(&self, op: &str, extra: &[&str]) -> Run {
        self.agent_with(&self.store(), &[], op, extra)
    }

    /// Runs the agent on any store, with extra environment variables.
    fn agent_with(&self, store: &str, envs: &[(&str, &str)], op: &str, extra: &[&str]) -> Run {
        let log = self.path("termination-log");
        let _ = std::fs::remove_file(&log);
        let out = Command::new(env!("CARGO_BIN_EXE_deployctl-controller"))
            .args(["agent", op, "--store", store, "--termination-log"])
            .arg(&log)
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(envs.iter().copied())
            .output()
            .expect("run the agent");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let last = stdout.lines().last().unwrap_or_default();
        let result = parse_termination_message(last).unwrap_or_else(|e| {
            panic!("stdout's last line: {e}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        });
        let logged = std::fs::read_to_string(&log)
            .unwrap_or_else(|e| panic!("termination log: {e}\nstderr:\n{stderr}"));
        assert!(
            logged.len() < 4096,
            "termination log too long: {}",
            logged.len()
        );
        assert_eq!(
            parse_termination_message(&logged).unwrap(),
            result,
            "stdout and termination log disagree"
        );
        assert_eq!(result.operation.as_str(), op);
        Run {
            result,
            code: out.status.code().unwrap_or(-1),
            stderr,
            stdout,
        }
    }

    /// Like [`Env::agent`] and asserts success.
    fn ok(&self, op: &str, extra: &[&str]) -> AgentResult {
        let r = self.agent(op, extra);
        assert!(
            r.code == 0 && r.result.ok,
            "agent {op} failed (exit {}): {:?}\nstderr:\n{}",
            r.code,
            r.result,
            r.stderr
        );
        r.result
    }

    /// Like [`Env::agent`] and asserts failure with exit code 1.
    fn fails(&self, op: &str, extra: &[&str]) -> AgentResult {
        let r = self.agent(op, extra);
        assert!(
            r.code == 1 && !r.result.ok,
            "agent {op} should have failed (exit {}): {:?}\nstderr:\n{}",
            r.code,
            r.result,
            r.stderr
        );
        assert!(r.result.category.is_some(), "{:?}", r.result);
        r.result
    }
}

/// Deterministic bytes that do not compress or deduplicate.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every entry under `dir` (reserved engine names included): path → (mode, content).
fn tree(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(rel, (mode, vec![]));
                walk(root, &p, out);
            } else {
                out.insert(rel, (mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Chunk objects stored alone (named by the SHA-256 of their content, in a plain
/// repository), as opposed to packs of small chunks, which have random names.
fn standalone_chunks(store: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for d in std::fs::read_dir(store.join("objects")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if hex::encode(Sha256::digest(std::fs::read(&p).unwrap())) == name {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn files_data(env: &Env) -> PathBuf {
    let data = env.path("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("big.bin"), noise(3 << 20, 7)).unwrap();
    std::fs::write(data.join("sub/small.txt"), "hello").unwrap();
    std::fs::set_permissions(
        data.join("sub/small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    data
}

const FILES: &[&str] = &["--method", "files", "--stack", "shop", "--component", "db"];

fn snapshot_files(env: &Env, data: &Path, revision: &str) -> AgentResult {
    let data = data.to_str().unwrap();
    let mut args = vec!["--data", data, "--revision", revision];
    args.extend_from_slice(FILES);
    env.ok("snapshot", &args)
}

fn restore_files(env: &Env, data: &Path, digest: &str) -> Run {
    let data = data.to_str().unwrap();
    let mut args = vec!["--data", data, "--snapshot", digest];
    args.extend_from_slice(FILES);
    env.agent("restore", &args)
}

#[test]
fn files_snapshot_and_restore_round_trip() {
    let env = Env::new();
    let data = files_data(&env);
    let before = tree(&data);
    let snap = snapshot_files(&env, &data, "3");
    let digest = snap.digest.clone().unwrap();
    assert_eq!(digest.len(), 64);
    assert_eq!(snap.files, Some(2));
    assert_eq!(snap.size_bytes, Some((3 << 20) + 5));
    assert!(snap.new_bytes.unwrap() > 0);
    assert!(snap.chunks.unwrap() >= 2);
    assert!(snap.duration_seconds.is_some());

    // Same data again: nothing new is stored.
    let again = snapshot_files(&env, &data, "3");
    assert_eq!(again.new_bytes, Some(0), "{again:?}");

    std::fs::write(data.join("big.bin"), b"overwritten").unwrap();
    std::fs::write(data.join("extra"), b"written after the snapshot").unwrap();
    std::fs::remove_file(data.join("sub/small.txt")).unwrap();
    let r = restore_files(&env, &data, &digest);
    assert_eq!(r.code, 0, "{:?}\n{}", r.result, r.stderr);
    assert_eq!(r.result.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(r.result.files, Some(2));
    assert_eq!(
        tree(&data),
        before,
        "restored data differs from the snapshot"
    );
}

#[test]
fn sqlite_snapshot_of_an_open_database_restores_its_committed_state() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let db_path = data.join("app.db");
    let conn = Connection::open(&db_path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t (v) VALUES ('one'), ('two');",
    )
    .unwrap();
    // A writer mid-transaction while the snapshot runs: the copy has the committed rows only.
    conn.execute_batch("BEGIN; INSERT INTO t (v) VALUES ('uncommitted');")
        .unwrap();
    let d = data.to_str().unwrap();
    let sqlite = [
        "--data",
        d,
        "--method",
        "sqlite",
        "--database",
        "app.db",
        "--stack",
        "shop",
        "--component",
        "db",
    ];
    let mut args = sqlite.to_vec();
    args.extend(["--revision", "4"]);
    let snap = env.ok("snapshot", &args);
    conn.execute_batch(
        "COMMIT; UPDATE t SET v = 'changed' WHERE id = 1; DELETE FROM t WHERE id = 2;",
    )
    .unwrap();
    let rows = |c: &Connection| -> Vec<(i64, String)> {
        let mut s = c.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        rows(&conn),
        vec![(1, "changed".into()), (3, "uncommitted".into())]
    );
    // The writer is stopped before a restore.
    drop(conn);

    let mut args = sqlite.to_vec();
    let digest = snap.digest.clone().unwrap();
    args.extend(["--snapshot", &digest]);
    let restored = env.ok("restore", &args);
    assert_eq!(restored.digest, snap.digest);
    let conn = Connection::open(&db_path).unwrap();
    assert_eq!(rows(&conn), vec![(1, "one".into()), (2, "two".into())]);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn corrupt_chunk_fails_restore_and_verify_and_leaves_live_data_alone() {
    let env = Env::new();
    let data = files_data(&env);
    let snap = snapshot_files(&env, &data, "1");
    let digest = snap.digest.unwrap();
    let verified = env.ok("verify", &["--snapshot", &digest]);
    assert_eq!(verified.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(verified.files, Some(2));
    assert!(verified.chunks.unwrap() >= 2);

    let chunks = standalone_chunks(&env.path("store"));
    assert!(!chunks.is_empty(), "a 3 MiB file has chunks stored alone");
    let victim = &chunks[0];
    let chunk_id = victim.file_name().unwrap().to_str().unwrap().to_string();
    flip_byte(victim, 1000);

    // The live data has moved on since the snapshot; a refused restore must keep it.
    std::fs::write(data.join("big.bin"), b"newer data").unwrap();
    let before = tree(&data);
    let r = restore_files(&env, &data, &digest);
    assert_eq!(r.code, 1, "{:?}\n{}", r.result, r.stderr);
    let msg = r.result.message.clone().unwrap();
    for needle in [
        digest.as_str(),
        "big.bin",
        chunk_id.as_str(),
        "left as it was",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    assert_eq!(r.result.category.as_deref(), Some("chunk_corrupt"));
    assert!(r.result.is_corruption());
    assert_eq!(
        tree(&data),
        before,
        "live data changed by a refused restore"
    );

    let v = env.fails("verify", &["--snapshot", &digest]);
    let msg = v.message.clone().unwrap();
    for needle in [digest.as_str(), "big.bin", chunk_id.as_str()] {
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    assert!(v.is_corruption(), "{v:?}");
}

const EXEC: &[&str] = &["--method", "exec", "--stack", "shop", "--component", "db"];

/// The restore half of an Exec Job's pod as the kubelet runs it: the agent (an init
/// container) puts the verified stream in `stream`; only if it succeeds does the restore
/// command (the main container) run, reading it on stdin. Returns the agent's run and
/// whether the command ran.
fn exec_restore_pod(env: &Env, stream: &Path, digest: &str, restored: &Path) -> (Run, bool) {
    let stream_arg = stream.to_str().unwrap();
    let mut args = vec!["--stream", stream_arg, "--snapshot", digest];
    args.extend_from_slice(EXEC);
    let run = env.agent("restore", &args);
    if run.code != 0 {
        return (run, false);
    }
    let status = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("exec \"$@\" < {stream_arg}"),
            "sh",
            "cp",
            "/dev/stdin",
        ])
        .arg(restored)
        .status()
        .unwrap();
    assert!(status.success());
    (run, true)
}

#[test]
fn exec_stream_round_trip_and_a_corrupt_one_never_reaches_the_restore_command() {
    let env = Env::new();
    // What the dump container left in the pod's shared emptyDir.
    let dump = env.path("dump-side/dump");
    std::fs::create_dir_all(dump.parent().unwrap()).unwrap();
    let payload = noise(3 << 20, 11);
    std::fs::write(&dump, &payload).unwrap();
    let mut args = vec!["--stream", dump.to_str().unwrap(), "--revision", "4"];
    args.extend_from_slice(EXEC);
    let snap = env.ok("snapshot", &args);
    assert_eq!(snap.size_bytes, Some(payload.len() as u64));
    assert_eq!(snap.files, Some(1));
    let digest = snap.digest.unwrap();
    env.ok("verify", &["--snapshot", &digest]);

    let stream = env.path("restore-side/dump");
    let restored = env.path("restored");
    let (run, ran) = exec_restore_pod(&env, &stream, &digest, &restored);
    assert!(ran && run.result.ok, "{:?}\n{}", run.result, run.stderr);
    assert_eq!(std::fs::read(&restored).unwrap(), payload);
    let names: Vec<_> = std::fs::read_dir(stream.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["dump"], "only the verified stream, no staging left");

    // One flipped bit in a chunk: the agent refuses, no stream file appears, and the
    // restore command does not run.
    let chunks = standalone_chunks(&env.path("store"));
    assert!(!chunks.is_empty());
    let chunk_id = chunks[0].file_name().unwrap().to_str().unwrap().to_string();
    flip_byte(&chunks[0], 1000);
    let stream = env.path("restore-again/dump");
    let restored = env.path("restored-again");
    let (run, ran) = exec_restore_pod(&env, &stream, &digest, &restored);
    assert_eq!(run.code, 1, "{:?}\n{}", run.result, run.stderr);
    assert!(!ran, "the restore command ran on a corrupt snapshot");
    assert!(run.result.is_corruption(), "{:?}", run.result);
    let msg = run.result.message.clone().unwrap();
    for needle in [
        digest.as_str(),
        chunk_id.as_str(),
        "restore command was not run",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    assert!(!stream.exists() && !restored.exists());
    let leftovers: Vec<_> = std::fs::read_dir(stream.parent().unwrap())
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // A Files snapshot is not restored as a stream, and --stream is required.
    let data = files_data(&env);
    let files = snapshot_files(&env, &data, "1").digest.unwrap();
    let mut args = vec!["--stream", stream.to_str().unwrap(), "--snapshot", &files];
    args.extend_from_slice(EXEC);
    let r = env.fails("restore", &args);
    assert_eq!(r.category.as_deref(), Some("method_mismatch"), "{r:?}");
    let r = env.fails("snapshot", EXEC);
    assert_eq!(r.category.as_deref(), Some("usage"));
    assert!(r.message.unwrap().contains("--stream"));
}

#[test]
fn encrypted_repository_refuses_a_wrong_or_missing_key() {
    let env = Env::new();
    let data = files_data(&env);
    let key_hex = "5a".repeat(32);
    std::fs::write(env.path("key"), format!("{key_hex}\n")).unwrap();
    std::fs::write(env.path("wrong"), [9u8; 32]).unwrap();
    std::fs::write(env.path("short"), b"not a key").unwrap();
    let (key, wrong, short) = (env.path("key"), env.path("wrong"), env.path("short"));
    let (key, wrong, short) = (
        key.to_str().unwrap(),
        wrong.to_str().unwrap(),
        short.to_str().unwrap(),
    );
    let d = data.to_str().unwrap();
    let with_key = |k| {
        let mut a = vec!["--data", d, "--key-file", k];
        a.extend_from_slice(FILES);
        a
    };

    let snap = env.ok("snapshot", &with_key(key));
    let digest = snap.digest.unwrap();
    // Ids are keyed: no object is named by the SHA-256 of its content.
    assert!(standalone_chunks(&env.path("store")).is_empty());

    let r = env.agent("snapshot", &with_key(wrong));
    assert_eq!(r.code, 1);
    assert!(
        r.result.message.as_deref().unwrap().contains("wrong key"),
        "{:?}",
        r.result
    );
    assert_eq!(r.result.category.as_deref(), Some("key"));
    assert!(!r.stdout.contains(&key_hex) && !r.stderr.contains(&key_hex));

    let mut restore = with_key(wrong);
    restore.extend(["--snapshot", &digest]);
    let before = tree(&data);
    let r = env.fails("restore", &restore);
    let msg = r.message.unwrap();
    assert!(
        msg.contains("wrong key") && msg.contains("left as it was"),
        "{msg}"
    );
    assert_eq!(tree(&data), before);

    let v = env.fails("verify", &["--snapshot", &digest]);
    assert!(v.message.unwrap().contains("no key was given"));
    let v = env.fails("verify", &["--snapshot", &digest, "--key-file", short]);
    assert!(v
        .message
        .unwrap()
        .contains("neither 32 bytes nor 64 hex digits"));

    let v = env.ok("verify", &["--snapshot", &digest, "--key-file", key]);
    assert_eq!(v.files, Some(2));
}

#[test]
fn restore_refuses_a_snapshot_of_another_component() {
    let env = Env::new();
    let data = files_data(&env);
    let digest = snapshot_files(&env, &data, "1").digest.unwrap();
    let d = data.to_str().unwrap();
    let r = env.fails(
        "restore",
        &[
            "--data",
            d,
            "--snapshot",
            &digest,
            "--stack",
            "shop",
            "--component",
            "web",
        ],
    );
    assert_eq!(r.category.as_deref(), Some("source_mismatch"));
    assert!(r.message.unwrap().contains("shop/db, not shop/web"));
}

#[test]
fn prune_keeps_the_newest_snapshots_of_its_component_only() {
    let env = Env::new();
    let data = files_data(&env);
    let mut digests = vec![];
    for i in 0..4 {
        std::fs::write(data.join("sub/small.txt"), format!("version {i}")).unwrap();
        digests.push(snapshot_files(&env, &data, &i.to_string()).digest.unwrap());
    }
    let d = data.to_str().unwrap();
    let other = env.ok(
        "snapshot",
        &[
            "--data",
            d,
            "--method",
            "files",
            "--stack",
            "shop",
            "--component",
            "web",
        ],
    );

    let refused = env.fails(
        "prune",
        &["--stack", "shop", "--component", "db", "--keep-last", "0"],
    );
    assert_eq!(refused.category.as_deref(), Some("usage"));

    let p = env.ok(
        "prune",
        &["--stack", "shop", "--component", "db", "--keep-last", "2"],
    );
    let msg = p.message.unwrap();
    assert!(
        msg.contains("kept 2 and forgot 2 snapshots of shop/db"),
        "{msg}"
    );

    for (i, digest) in digests.iter().enumerate() {
        let r = env.agent("verify", &["--snapshot", digest]);
        if i < 2 {
            assert_eq!(
                r.code, 1,
                "snapshot {i} should be forgotten: {:?}",
                r.result
            );
            assert_eq!(r.result.category.as_deref(), Some("snapshot_not_found"));
        } else {
            assert_eq!(r.code, 0, "snapshot {i} should be kept: {:?}", r.result);
        }
    }
    env.ok("verify", &["--snapshot", other.digest.as_deref().unwrap()]);
}

#[test]
fn prune_forgets_exactly_the_named_snapshots_and_nothing_taken_meanwhile() {
    let env = Env::new();
    let data = files_data(&env);
    let mut digests = vec![];
    for i in 0..3 {
        std::fs::write(data.join("sub/small.txt"), format!("version {i}")).unwrap();
        digests.push(snapshot_files(&env, &data, &i.to_string()).digest.unwrap());
    }
    // The controller decided to forget the first one; then, before the prune ran, a new
    // snapshot was taken. Only the named one goes; a digest already gone is skipped.
    std::fs::write(
        data.join("sub/small.txt"),
        "taken while the prune was decided",
    )
    .unwrap();
    let late = snapshot_files(&env, &data, "3").digest.unwrap();
    let gone = "0".repeat(64);
    let p = env.ok(
        "prune",
        &[
            "--stack",
            "shop",
            "--component",
            "db",
            "--forget",
            &digests[0],
            "--forget",
            &gone,
        ],
    );
    let msg = p.message.unwrap();
    assert!(
        msg.contains("kept 3 and forgot 1 snapshots of shop/db"),
        "{msg}"
    );
    let r = env.agent("verify", &["--snapshot", &digests[0]]);
    assert_eq!(r.result.category.as_deref(), Some("snapshot_not_found"));
    for d in digests[1..].iter().chain([&late]) {
        env.ok("verify", &["--snapshot", d]);
    }
}

#[test]
fn s3_credentials_and_signed_urls_never_reach_the_output() {
    let env = Env::new();
    let data = files_data(&env);
    let (access, secret) = ("AKIDAGENTTEST123", "agent-test-secret-456");
    // Nothing listens on port 9 (discard): every request fails and is reported.
    let store = r#"{"type":"s3","endpoint":"http://127.0.0.1:9","bucket":"snaps","region":"r"}"#;
    let r = env.agent_with(
        store,
        &[
            ("DEPLOYCTL_S3_ACCESS_KEY_ID", access),
            ("DEPLOYCTL_S3_SECRET_ACCESS_KEY", secret),
        ],
        "snapshot",
        &[
            "--data",
            data.to_str().unwrap(),
            "--stack",
            "shop",
            "--component",
            "db",
        ],
    );
    assert_eq!(r.code, 1, "{:?}", r.result);
    assert_eq!(r.result.category.as_deref(), Some("store"));
    let log = std::fs::read_to_string(env.path("termination-log")).unwrap();
    for text in [&r.stdout, &r.stderr, &log] {
        for leak in [access, secret, "X-Amz-Signature", "X-Amz-Credential"] {
            assert!(!text.contains(leak), "{leak} in output: {text}");
        }
    }
}

#[test]
fn bad_invocations_are_reported_as_results() {
    let env = Env::new();
    let r = env.fails("restore", &["--data", "/nonexistent", "--stack", "shop"]);
    assert_eq!(r.category.as_deref(), Some("usage"));
    assert!(r.message.unwrap().contains("--snapshot"));
    let r = env.fails(
        "snapshot",
        &[
            "--data",
            "/tmp",
            "--method",
            "sqlite",
            "--database",
            "../x.db",
            "--stack",
            "s",
            "--component",
            "c",
        ],
    );
    assert!(r.message.unwrap().contains("without .."));
    // Verify on a store that was never initialized does not create one.
    let r = env.fails("verify", &["--snapshot", &"ab".repeat(32)]);
    assert_eq!(r.category.as_deref(), Some("config"));
    assert!(!env.path("store/config").exists());
    assert_eq!(AgentOp::Verify.as_str(), "verify");
}

#[test]
fn a_store_that_fills_up_mid_snapshot_fails_with_no_space_and_loses_nothing() {
    let env = Env::new();
    let data = files_data(&env);
    with_small_volume(&env.path("store"), 5 << 20, || {
        let first = snapshot_files(&env, &data, "1");
        let digest = first.digest.clone().unwrap();
        // The measurement a capacity check uses: the volume and the room left on it.
        assert!(first.total_bytes.is_some_and(|t| t <= 5 << 20), "{first:?}");
        assert!(
            first.available_bytes.is_some_and(|a| a < 2 << 20),
            "{first:?}"
        );

        std::fs::write(data.join("more.bin"), noise(4 << 20, 8)).unwrap();
        let before = tree(&data);
        let args = [
            "--data",
            data.to_str().unwrap(),
            "--revision",
            "2",
            "--method",
            "files",
            "--stack",
            "shop",
            "--component",
            "db",
        ];
        let failed = env.fails("snapshot", &args);
        assert_eq!(failed.category.as_deref(), Some("no_space"), "{failed:?}");
        let msg = failed.message.clone().unwrap();
        assert!(msg.contains("No space left on device"), "{msg}");
        assert!(!failed.is_corruption());
        assert_eq!(tree(&data), before, "the data snapshotted is only read");

        // The repository is consistent: the first snapshot is whole and restores.
        env.ok("verify", &["--snapshot", &digest]);
        let restored = env.path("restored");
        std::fs::create_dir_all(&restored).unwrap();
        let r = restore_files(&env, &restored, &digest);
        assert_eq!(r.code, 0, "{:?}\n{}", r.result, r.stderr);
        std::fs::remove_file(data.join("more.bin")).unwrap();
        assert_eq!(tree(&restored), tree(&data));
    });
}
