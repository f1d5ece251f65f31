//! Round trips through every method and store kind, dedup, retention and gc.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{fingerprint, make_tree, repo, Rng};
use deployctl_snapshot::*;

fn files(root: &Path) -> Method {
    Method::Files {
        root: root.to_path_buf(),
    }
}

fn src() -> Source {
    Source::new("shop", "db", "r1")
}

fn round_trip(store: Arc<dyn Store>, key: Option<MasterKey>) {
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    make_tree(&data, 42);
    let repo = repo(store, key.as_ref());
    let report = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(
        report.reused_chunks > 0,
        "duplicate files share chunks: {report:?}"
    );
    assert_eq!(report.info.meta.method, MethodKind::Files);
    assert_eq!(report.info.meta.source, src());

    // Restore over a live directory holding other data: its contents are replaced.
    fs::create_dir_all(live.join("stale/dir")).unwrap();
    fs::write(live.join("stale/dir/old"), b"old").unwrap();
    fs::write(live.join("f0-0.bin"), b"not empty").unwrap();
    let restored = repo
        .restore(
            report.info.id,
            &files(&live),
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(restored.bytes, report.info.meta.total_size);
    assert_eq!(fingerprint(&data), fingerprint(&live));
    let verify = repo.verify(report.info.id, &NoProgress).unwrap();
    assert_eq!(verify.bytes, report.new_bytes);

    // A second snapshot of unchanged data writes nothing new.
    let again = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(again.new_chunks, 0, "{again:?}");
    assert_eq!(repo.list_snapshots().unwrap().len(), 2);
}

#[test]
fn files_round_trip_fs_store_plain() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        None,
    );
}

#[test]
fn files_round_trip_fs_store_encrypted() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        Some(MasterKey::new([9; 32])),
    );
}

#[test]
fn files_round_trip_mem_store_encrypted() {
    round_trip(Arc::new(MemStore::new()), Some(MasterKey::new([3; 32])));
}

/// Default chunk sizes on a disk: files of several chunks, chunks stored alone and packs
/// of many small files, plain and encrypted.
#[test]
fn default_chunk_sizes_round_trip_on_disk() {
    for key in [None, Some(MasterKey::new([3; 32]))] {
        let dir = tempfile::tempdir().unwrap();
        let (data, live) = (dir.path().join("data"), dir.path().join("live"));
        let mut rng = Rng(0xD1);
        fs::create_dir_all(data.join("d")).unwrap();
        fs::write(data.join("big"), rng.bytes(3 * 1024 * 1024 + 777)).unwrap();
        fs::write(data.join("aligned"), rng.bytes(2 * 1024 * 1024)).unwrap();
        fs::write(data.join("d/one-chunk"), rng.bytes(300 * 1024 + 5)).unwrap();
        for i in 0..50 {
            fs::write(data.join(format!("d/s{i}")), rng.bytes(i * 997)).unwrap();
        }
        let store = Arc::new(FsStore::new(dir.path().join("repo")).unwrap());
        let repo = Repository::init(store, key.as_ref(), ChunkerParams::default()).unwrap();
        let report = repo
            .snapshot(
                &src(),
                &files(&data),
                &SnapshotOptions::default(),
                &NoProgress,
            )
            .unwrap();
        repo.verify(report.info.id, &NoProgress).unwrap();
        fs::create_dir_all(&live).unwrap();
        fs::write(live.join("big"), b"old").unwrap();
        repo.restore(
            report.info.id,
            &files(&live),
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(
            fingerprint(&data),
            fingerprint(&live),
            "encrypted: {}",
            key.is_some()
        );
    }
}

#[test]
fn owners_are_restored_as_root() {
    if !nix::unistd::geteuid().is_root() {
        return; // chown to another user needs root; the CI machine runs as root
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    fs::create_dir_all(data.join("d")).unwrap();
    fs::write(data.join("d/owned"), b"x").unwrap();
    std::os::unix::fs::chown(data.join("d/owned"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(data.join("d"), Some(1000), Some(1000)).unwrap();
    let repo = repo(Arc::new(MemStore::new()), None);
    let s = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    repo.restore(
        s.info.id,
        &files(&live),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&data), fingerprint(&live));
}

#[test]
fn encrypted_objects_reveal_neither_content_nor_plain_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let secret = b"the secret plaintext ".repeat(100);
    fs::write(data.join("f"), &secret).unwrap();
    let store = Arc::new(MemStore::new());
    let repo = repo(store.clone(), Some(&MasterKey::new([5; 32])));
    repo.snapshot(
        &src(),
        &files(&data),
        &SnapshotOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let plain_id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&secret));
    for (key, bytes) in store.dump() {
        assert!(!key.contains(&plain_id), "{key} is the plain hash");
        assert!(
            !bytes.windows(21).any(|w| w == b"the secret plaintext "),
            "{key} holds plaintext"
        );
    }
}

#[test]
fn wrong_missing_or_unexpected_key_is_refused() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    repo(store.clone(), Some(&MasterKey::new([1; 32])));
    assert_eq!(
        Repository::open(store.clone(), Some(&MasterKey::new([2; 32])))
            .unwrap_err()
            .category(),
        "key"
    );
    assert!(matches!(
        Repository::open(store.clone(), None),
        Err(Error::KeyRequired)
    ));
    assert!(Repository::open(store, Some(&MasterKey::new([1; 32]))).is_ok());
    let plain: Arc<dyn Store> = Arc::new(MemStore::new());
    repo(plain.clone(), None);
    assert!(matches!(
        Repository::open(plain, Some(&MasterKey::new([1; 32]))),
        Err(Error::KeyNotExpected)
    ));
    let empty: Arc<dyn Store> = Arc::new(MemStore::new());
    assert!(matches!(
        Repository::open(empty, None),
        Err(Error::NotInitialized)
    ));
}

#[test]
fn dedup_after_one_percent_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let mut rng = Rng(7);
    let mut big = rng.bytes(8 << 20);
    fs::write(data.join("big"), &big).unwrap();
    for i in 0..100 {
        fs::write(data.join(format!("small{i}")), rng.bytes(1000 + i * 37)).unwrap();
    }
    let repo = repo(Arc::new(MemStore::new()), None);
    let first = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let total = first.info.meta.total_size;
    // 1% of the data: one contiguous 84 KB region rewritten in the big file.
    let change = (total / 100) as usize;
    let at = 3 << 20;
    big[at..at + change].copy_from_slice(&rng.bytes(change));
    fs::write(data.join("big"), &big).unwrap();
    let second = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let pct_bytes = 100.0 * second.new_bytes as f64 / total as f64;
    let pct_chunks = 100.0 * second.new_chunks as f64 / second.info.meta.chunk_count as f64;
    println!("1% change: new bytes {pct_bytes:.2}%, new chunks {pct_chunks:.2}%");
    assert!(
        pct_bytes < 2.0 && pct_chunks < 2.5,
        "wrote {pct_bytes:.2}% bytes, {pct_chunks:.2}% chunks: {second:?}"
    );
    assert!(second.new_bytes >= change as u64);
}

#[test]
fn progress_reaches_total() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), Rng(3).bytes(40 << 20)).unwrap();
    let repo = repo(Arc::new(MemStore::new()), None);
    let seen = Mutex::new(vec![]);
    let record = |u: ProgressUpdate| seen.lock().unwrap().push(u);
    let s = repo
        .snapshot(&src(), &files(&data), &SnapshotOptions::default(), &record)
        .unwrap();
    let updates = seen.lock().unwrap().clone();
    assert!(updates.len() >= 3, "{updates:?}");
    assert!(updates
        .windows(2)
        .all(|w| w[0].done_bytes <= w[1].done_bytes));
    let last = updates.last().unwrap();
    assert_eq!((last.done_bytes, last.total_bytes), (40 << 20, 40 << 20));
    let restored = AtomicU64::new(0);
    let record = |u: ProgressUpdate| restored.store(u.done_bytes, Ordering::Relaxed);
    repo.restore(
        s.info.id,
        &files(&dir.path().join("live")),
        &RestoreOptions::default(),
        &record,
    )
    .unwrap();
    assert_eq!(restored.load(Ordering::Relaxed), 40 << 20);
}

#[test]
fn sqlite_backup_of_a_database_under_writes_restores_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let setup = rusqlite::Connection::open(&db).unwrap();
    setup.pragma_update(None, "journal_mode", "WAL").unwrap();
    setup.execute_batch("CREATE TABLE ledger(id INTEGER PRIMARY KEY, amount INTEGER NOT NULL); CREATE TABLE meta(rows INTEGER); INSERT INTO meta VALUES (0);").unwrap();
    drop(setup);
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let repo = repo(Arc::new(MemStore::new()), None);
    let method = Method::Sqlite { path: db.clone() };
    let snap = std::thread::scope(|s| {
        s.spawn(|| {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Each transaction keeps the invariant: sum(amount) = 0, rows = count(*).
                c.execute_batch(&format!(
                    "BEGIN IMMEDIATE; INSERT INTO ledger(amount) VALUES ({i}); INSERT INTO ledger(amount) VALUES (-{i}); UPDATE meta SET rows = rows + 2; COMMIT;"
                ))
                .unwrap();
                committed.store(i as u64, Ordering::Relaxed);
            }
        });
        // Stops the writer even if the snapshot panics, so the scope can end.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        while committed.load(Ordering::Relaxed) < 200 {
            std::thread::yield_now();
        }
        let before = committed.load(Ordering::Relaxed);
        let snap = repo
            .snapshot(&src(), &method, &SnapshotOptions::default(), &NoProgress)
            .unwrap();
        let during = committed.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        println!("{during} transactions committed during the snapshot");
        snap
    });
    assert_eq!(snap.info.meta.method, MethodKind::Sqlite);
    assert!(
        fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".deployctl-")),
        "backup copy removed"
    );

    // Restore over the live file with stale WAL/SHM beside it.
    fs::write(
        dir.path().join("app.db-wal"),
        b"stale wal that must not be replayed",
    )
    .unwrap();
    fs::write(dir.path().join("app.db-shm"), b"stale shm").unwrap();
    repo.restore(
        snap.info.id,
        &method,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(
        !dir.path().join("app.db-shm").exists()
            || fs::read(dir.path().join("app.db-shm")).unwrap() != b"stale shm"
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let (sum, count, rows): (i64, i64, i64) = c
        .query_row("SELECT (SELECT coalesce(sum(amount),0) FROM ledger), (SELECT count(*) FROM ledger), (SELECT rows FROM meta)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    assert_eq!(sum, 0);
    assert_eq!(count, rows);
    assert!(count >= 400, "{count} rows");
}

#[test]
fn exec_round_trip_with_sh() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    let payload = Rng(11).bytes(3 << 20);
    fs::write(&input, &payload).unwrap();
    let method = Method::Exec {
        dump: CommandSpec::shell(format!("cat '{}'", input.display())),
        restore: CommandSpec::shell(format!("cat > '{}'", output.display())),
    };
    let repo = repo(Arc::new(MemStore::new()), Some(&MasterKey::new([4; 32])));
    let s = repo
        .snapshot(&src(), &method, &SnapshotOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(s.info.meta.total_size, payload.len() as u64);
    let opts = RestoreOptions {
        scratch_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    repo.restore(s.info.id, &method, &opts, &NoProgress)
        .unwrap();
    assert_eq!(fs::read(&output).unwrap(), payload);
    assert!(
        fs::read_dir(dir.path()).unwrap().count() == 2,
        "staging removed"
    );

    // A failing dump leaves no snapshot.
    let failing = Method::Exec {
        dump: CommandSpec::shell("echo partial; echo boom >&2; exit 3"),
        restore: CommandSpec::shell("cat"),
    };
    let err = repo
        .snapshot(&src(), &failing, &SnapshotOptions::default(), &NoProgress)
        .unwrap_err();
    assert_eq!(err.category(), "command");
    assert!(err.to_string().contains("boom"), "{err}");
    assert_eq!(repo.list_snapshots().unwrap().len(), 1);

    // A failing restore command is reported.
    let bad_restore = Method::Exec {
        dump: CommandSpec::shell("true"),
        restore: CommandSpec::shell("exit 4"),
    };
    let err = repo
        .restore(s.info.id, &bad_restore, &opts, &NoProgress)
        .unwrap_err();
    assert_eq!(err.category(), "command");
}

#[test]
fn exec_file_reads_and_writes_the_exec_stream() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("dump");
    let payload = Rng(12).bytes(2 << 20);
    fs::write(&dump, &payload).unwrap();
    let repo = repo(Arc::new(MemStore::new()), None);
    let from_file = Method::ExecFile { file: dump.clone() };
    let s = repo
        .snapshot(&src(), &from_file, &SnapshotOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(s.info.meta.method, MethodKind::Exec);
    assert_eq!(s.info.meta.total_size, payload.len() as u64);

    // The same snapshot as the engine's own exec method takes of the same bytes.
    let by_command = Method::Exec {
        dump: CommandSpec::shell(format!("cat '{}'", dump.display())),
        restore: CommandSpec::shell("cat >/dev/null"),
    };
    let again = repo
        .snapshot(
            &src(),
            &by_command,
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(again.new_bytes, 0, "{again:?}");

    // Restore writes the verified stream to the file, leaving nothing else behind.
    let out_dir = dir.path().join("out");
    let out = out_dir.join("dump");
    repo.restore(
        s.info.id,
        &Method::ExecFile { file: out.clone() },
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fs::read(&out).unwrap(), payload);
    let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o644,
        "readable by a restore command running as another user"
    );
    let names: Vec<_> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dump"], "staging removed");

    // A missing dump file is an error, not an empty snapshot.
    let err = repo
        .snapshot(
            &src(),
            &Method::ExecFile {
                file: dir.path().join("none"),
            },
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(err.to_string().contains("none"), "{err}");
}

#[test]
fn restoring_with_another_method_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_tree(&data, 1);
    let repo = repo(Arc::new(MemStore::new()), None);
    let s = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let err = repo
        .restore(
            s.info.id,
            &Method::Sqlite {
                path: dir.path().join("x.db"),
            },
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert_eq!(err.category(), "method_mismatch");
}

#[test]
fn escaping_symlinks_and_device_files_are_not_snapshotted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("abs")).unwrap();
    let repo = repo(Arc::new(MemStore::new()), None);
    let err = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert_eq!(err.category(), "unsupported");
    assert!(repo.list_snapshots().unwrap().is_empty());
}

#[test]
fn retention_then_gc_frees_only_unreferenced_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let store = Arc::new(FsStore::new(dir.path().join("repo")).unwrap());
    let repo = repo(store.clone(), None);
    let mut rng = Rng(5);
    let mut ids = vec![];
    for _ in 0..3 {
        fs::write(data.join("f"), rng.bytes(300_000)).unwrap();
        ids.push(
            repo.snapshot(
                &src(),
                &files(&data),
                &SnapshotOptions::default(),
                &NoProgress,
            )
            .unwrap()
            .info
            .id,
        );
    }
    let before = store.list(ObjectKind::Chunk).unwrap().len();
    // Young chunks survive the default grace period.
    let plan = repo
        .forget_by_policy(
            RetentionPolicy {
                keep_last: 1,
                keep_daily: 0,
            },
            chrono::Utc::now(),
            &[ids[0]],
        )
        .unwrap();
    assert_eq!(plan.forget, vec![ids[1]]);
    let gc = repo.gc(&GcOptions::default()).unwrap();
    assert_eq!(
        (gc.deleted_chunks, gc.kept_young as usize),
        (0, before - gc.referenced_chunks as usize)
    );
    let gc = repo
        .gc(&GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert!(gc.deleted_chunks > 0);
    assert_eq!(
        store.list(ObjectKind::Chunk).unwrap().len() as u64,
        gc.referenced_chunks
    );
    for id in [ids[0], ids[2]] {
        repo.verify(id, &NoProgress).unwrap();
    }
    assert_eq!(
        repo.verify(ids[1], &NoProgress).unwrap_err().category(),
        "snapshot_not_found"
    );
}

#[test]
fn restore_keeps_modes_of_read_only_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(data.join("ro/inner")).unwrap();
    fs::write(data.join("ro/inner/f"), b"x").unwrap();
    fs::set_permissions(data.join("ro/inner"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(data.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
    let repo = repo(Arc::new(MemStore::new()), None);
    let s = repo
        .snapshot(
            &src(),
            &files(&data),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let live = dir.path().join("live");
    repo.restore(
        s.info.id,
        &files(&live),
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&data), fingerprint(&live));
}

/// Two (here eight) agents take the first snapshots of different components of one stack
/// at once, into a repository none of them finds: each tries to create it, one config
/// wins, and every snapshot, encrypted, restores.
#[test]
fn first_snapshots_in_parallel_share_one_repository_and_all_restore() {
    for round in 0..10u64 {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Store> = Arc::new(FsStore::new(dir.path().join("repo")).unwrap());
        // Every other round on a store that cannot refuse a second create, as S3 servers
        // that ignore `If-None-Match` (Garage): every agent's config write lands.
        let store: Arc<dyn Store> = if round % 2 == 1 {
            Arc::new(Misbehaving::overwriting(fs))
        } else {
            fs
        };
        let key = MasterKey::new([7; 32]);
        let sources: Vec<PathBuf> = (0..8u64)
            .map(|i| {
                let d = dir.path().join(format!("data-{i}"));
                make_tree(&d, round * 100 + i);
                d
            })
            .collect();
        let barrier = std::sync::Barrier::new(sources.len());
        let ids: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = sources
                .iter()
                .enumerate()
                .map(|(i, data)| {
                    let (store, key, barrier) = (store.clone(), &key, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let repo = Repository::open_or_init(store, Some(key)).unwrap();
                        let source = Source::new("shop", format!("c{i}"), "1");
                        repo.snapshot(
                            &source,
                            &Method::Files { root: data.clone() },
                            &SnapshotOptions::default(),
                            &NoProgress,
                        )
                        .unwrap()
                        .info
                        .id
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let repo = Repository::open(store, Some(&key)).unwrap();
        for (id, data) in ids.iter().zip(&sources) {
            let target = dir.path().join(format!("restored-{id}"));
            std::fs::create_dir_all(&target).unwrap();
            repo.restore(
                *id,
                &Method::Files {
                    root: target.clone(),
                },
                &RestoreOptions::default(),
                &NoProgress,
            )
            .unwrap_or_else(|e| panic!("round {round}: snapshot {id} does not restore: {e}"));
            assert_eq!(fingerprint(&target), fingerprint(data));
        }
    }
}

/// A store that misbehaves as real ones do: its "create only" may overwrite (an S3
/// server that ignores `If-None-Match`), and its first read of the config may answer "not
/// found" (a store read just before another agent created the repository).
#[derive(Debug)]
struct Misbehaving {
    inner: Arc<dyn Store>,
    overwrites_on_create: bool,
    stale: std::sync::atomic::AtomicBool,
}

impl Misbehaving {
    fn overwriting(inner: Arc<dyn Store>) -> Self {
        Misbehaving {
            inner,
            overwrites_on_create: true,
            stale: false.into(),
        }
    }

    fn stale_first_read(inner: Arc<dyn Store>) -> Self {
        Misbehaving {
            inner,
            overwrites_on_create: false,
            stale: true.into(),
        }
    }
}

impl Store for Misbehaving {
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.inner.put(kind, name, data)
    }
    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool, StoreError> {
        if self.overwrites_on_create {
            return self.inner.put(kind, name, data).map(|()| true);
        }
        self.inner.put_new(kind, name, data)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        if kind == ObjectKind::Config && self.stale.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::NotFound {
                key: "config".into(),
            });
        }
        self.inner.get(kind, name)
    }
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        self.inner.delete(kind, name)
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }
}

#[test]
fn an_agent_that_loses_the_race_to_create_the_repository_opens_the_winners() {
    for inner in [
        Arc::new(MemStore::new()) as Arc<dyn Store>,
        Arc::new(FsStore::new(tempfile::tempdir().unwrap().keep().join("repo")).unwrap()),
    ] {
        let key = MasterKey::new([4; 32]);
        let winner = Repository::open_or_init(inner.clone(), Some(&key)).unwrap();
        let config = inner.get(ObjectKind::Config, "config").unwrap();
        let loser: Arc<dyn Store> = Arc::new(Misbehaving::stale_first_read(inner.clone()));
        let repo = Repository::open_or_init(loser, Some(&key)).unwrap();
        assert_eq!(
            inner.get(ObjectKind::Config, "config").unwrap(),
            config,
            "the loser did not overwrite the winner's config"
        );
        assert!(repo.is_encrypted() && winner.is_encrypted());
    }
}
