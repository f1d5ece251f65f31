//! Kill tests: the agent is SIGKILLed at chosen points of a snapshot and a restore.
//!
//! The test binary re-invokes itself (`child_entry`) with `KILL_TEST_ROLE` set; the engine's
//! debug-build pause points (`DEPLOYCTL_SNAPSHOT_TEST_PAUSE`) make the child print
//! `paused at <point>` and wait, and the parent SIGKILLs it there: no timing guesses.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::{fingerprint, make_tree, Rng, TEST_CHUNKS};
use deployctl_snapshot::testing::PAUSE_ENV;
use deployctl_snapshot::*;

const ROLE: &str = "KILL_TEST_ROLE";
const DIR: &str = "KILL_TEST_DIR";

fn open(dir: &Path) -> Repository {
    Repository::open(Arc::new(FsStore::new(dir.join("repo")).unwrap()), None).unwrap()
}

/// Runs in the child process only.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let repo = open(&dir);
    match role.as_str() {
        "snapshot" => {
            repo.snapshot(
                &Source::new("s", "c", "r2"),
                &Method::Files {
                    root: dir.join("data"),
                },
                &SnapshotOptions::default(),
                &NoProgress,
            )
            .unwrap();
        }
        "restore" => {
            let id: SnapshotId = std::env::var("KILL_TEST_SNAPSHOT")
                .unwrap()
                .parse()
                .unwrap();
            let opts = RestoreOptions {
                workers: Some(1),
                ..Default::default()
            };
            repo.restore(
                id,
                &Method::Files {
                    root: dir.join("live"),
                },
                &opts,
                &NoProgress,
            )
            .unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    panic!("child was not paused at {:?}", std::env::var(PAUSE_ENV));
}

/// Starts the child and SIGKILLs it once it reports being at `point`.
fn kill_at(dir: &Path, role: &str, point: &str, snapshot: Option<SnapshotId>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .env(PAUSE_ENV, point)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(id) = snapshot {
        cmd.env("KILL_TEST_SNAPSHOT", id.to_hex());
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let want = format!("paused at {point}");
    let mut seen = vec![];
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.trim().ends_with(&want) {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return;
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    panic!(
        "child never reached {point} (exit {status}); its output:\n{}",
        seen.join("\n")
    );
}

fn setup() -> (tempfile::TempDir, Repository, SnapshotId) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_tree(&data, 3);
    fs::write(data.join("bulk"), Rng(1).bytes(2 << 20)).unwrap();
    let repo = Repository::init(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        None,
        TEST_CHUNKS,
    )
    .unwrap();
    let first = repo
        .snapshot(
            &Source::new("s", "c", "r1"),
            &Method::Files { root: data.clone() },
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    (dir, repo, first.info.id)
}

#[test]
fn killed_mid_snapshot_leaves_no_snapshot_marked_complete() {
    for point in ["snapshot-ingesting", "snapshot-before-manifest"] {
        let (dir, repo, first) = setup();
        // New data, so the killed snapshot has chunks of its own to write.
        fs::write(dir.path().join("data/bulk"), Rng(2).bytes(2 << 20)).unwrap();
        kill_at(dir.path(), "snapshot", point, None);
        let listed: Vec<SnapshotId> = repo
            .list_snapshots()
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(
            listed,
            vec![first],
            "killed at {point}: only the earlier snapshot is complete"
        );
        repo.verify(first, &NoProgress).unwrap();

        // The next snapshot works, and gc (once the dead agent's lock is stale) removes the
        // orphaned chunks but keeps everything the complete snapshots use.
        let second = repo
            .snapshot(
                &Source::new("s", "c", "r3"),
                &Method::Files {
                    root: dir.path().join("data"),
                },
                &SnapshotOptions::default(),
                &NoProgress,
            )
            .unwrap();
        let gc = GcOptions {
            grace: std::time::Duration::ZERO,
            stale_lock_after: std::time::Duration::ZERO,
        };
        repo.gc(&gc).unwrap();
        let live = dir.path().join("live");
        repo.restore(
            second.info.id,
            &Method::Files { root: live.clone() },
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(fingerprint(&live), fingerprint(&dir.path().join("data")));
        repo.verify(first, &NoProgress).unwrap();
    }
}

#[test]
fn killed_mid_restore_leaves_live_data_intact() {
    for point in [
        "restore-staging",
        "restore-before-swap",
        "swap-moving-out",
        "swap-moving-in",
    ] {
        let (dir, repo, first) = setup();
        let live = dir.path().join("live");
        fs::create_dir_all(live.join("db")).unwrap();
        fs::write(live.join("db/current"), b"live state").unwrap();
        fs::write(live.join("other"), b"more live state").unwrap();
        let before = fingerprint(&live);
        kill_at(dir.path(), "restore", point, Some(first));
        if point.starts_with("restore-") {
            // Killed before the swap: the live entries were never touched.
            let now: Vec<_> = fingerprint(&live)
                .into_iter()
                .filter(|(k, _)| !k.starts_with(".deployctl-"))
                .collect();
            assert_eq!(
                now,
                before.clone().into_iter().collect::<Vec<_>>(),
                "killed at {point}"
            );
        }
        // The agent's next start (or next restore) rolls back or cleans up.
        recover_interrupted_restore(&live).unwrap();
        assert_eq!(
            fingerprint(&live),
            before,
            "killed at {point}, after recovery"
        );

        // And a restore then goes through.
        repo.restore(
            first,
            &Method::Files { root: live.clone() },
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(fingerprint(&live), fingerprint(&dir.path().join("data")));
    }
}

#[test]
fn chunk_bounds_used_by_kill_tests_are_valid() {
    TEST_CHUNKS.validate().unwrap();
}
