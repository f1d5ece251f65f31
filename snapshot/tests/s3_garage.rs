//! The S3 store against a real S3 server: Garage, started on 127.0.0.1 random ports.
//!
//! Needs the `garage` binary: `$DEPLOYCTL_GARAGE_BIN` (scripts/test.sh sets it), else
//! `garage` on `PATH`. Without it these tests FAIL (never pass silently) and say how to
//! install it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fingerprint, make_tree, Rng, TEST_CHUNKS};
use deployctl_snapshot::*;

const INSTALL: &str = "scripts/install-test-tools.sh (it prints where it put garage)";

fn garage_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DEPLOYCTL_GARAGE_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "DEPLOYCTL_GARAGE_BIN={} is not a file; install garage with {INSTALL}",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("garage"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "the S3 store tests need a real S3 server and the `garage` binary was not found \
             (looked at $DEPLOYCTL_GARAGE_BIN and PATH). Install it once with {INSTALL}, \
             then set DEPLOYCTL_GARAGE_BIN to it (scripts/test.sh does both)"
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-node Garage with one bucket and one key; killed on drop.
struct Garage {
    bin: PathBuf,
    config: PathBuf,
    server: Child,
    endpoint: String,
    key_id: String,
    secret: String,
    bucket: String,
    _dir: tempfile::TempDir,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

impl Garage {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "garage {args:?} failed: {text}\nserver log: {}",
            self.log()
        );
        text
    }

    fn log(&self) -> String {
        fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    fn start() -> Garage {
        let bin = garage_binary();
        let dir = tempfile::tempdir().unwrap();
        let (rpc, s3) = (free_port(), free_port());
        let secret_hex = hex::encode(Rng(std::process::id() as u64 ^ 0x9e37_79b9).bytes(32));
        let config = dir.path().join("garage.toml");
        fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret_hex}\"\n\n[s3_api]\napi_bind_addr = \"127.0.0.1:{s3}\"\ns3_region = \"garage\"\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("server.log")).unwrap();
        let server = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut g = Garage {
            bin,
            config,
            server,
            endpoint: format!("http://127.0.0.1:{s3}"),
            key_id: String::new(),
            secret: String::new(),
            bucket: "deployctl-test".into(),
            _dir: dir,
        };
        // Poll until the node answers (it is ready in well under a second here).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !g.cli(&["status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "garage did not start: {}",
                g.log()
            );
            if let Some(status) = g.server.try_wait().unwrap() {
                panic!("garage server exited with {status}: {}", g.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = g
            .cli_ok(&["node", "id", "-q"])
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string();
        g.cli_ok(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.cli_ok(&["layout", "apply", "--version", "1"]);
        let key = g.cli_ok(&["key", "create", "deployctl-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        g.key_id = field("Key ID:");
        g.secret = field("Secret key:");
        g.cli_ok(&["bucket", "create", &g.bucket.clone()]);
        g.cli_ok(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &g.bucket.clone(),
            "--key",
            "deployctl-test",
        ]);
        g
    }

    fn store(&self, prefix: &str) -> Arc<S3Store> {
        let mut c = S3Config::new(
            &self.endpoint,
            &self.bucket,
            "garage",
            &self.key_id,
            &self.secret,
        );
        c.prefix = prefix.into();
        let store = Arc::new(S3Store::new(c).unwrap());
        // The new layout may take a moment to be served; poll until a listing succeeds.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = store.list(ObjectKind::Lock) {
            assert!(
                Instant::now() < deadline,
                "S3 API not ready: {e}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        store
    }
}

#[test]
fn s3_store_against_garage() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    make_tree(&data, 21);
    let key = MasterKey::new([0x42; 32]);
    let store = garage.store("deployctl/shop/db");
    let repo = Repository::init(store.clone(), Some(&key), TEST_CHUNKS).unwrap();
    let files = Method::Files { root: data.clone() };
    let first = repo
        .snapshot(
            &Source::new("shop", "db", "r1"),
            &files,
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(first.new_chunks > 10);

    // Reopen through a fresh client: everything comes back from the server.
    let repo = Repository::open(garage.store("deployctl/shop/db"), Some(&key)).unwrap();
    assert_eq!(
        repo.list_snapshots()
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        vec![first.info.id]
    );
    repo.verify(first.info.id, &NoProgress).unwrap();
    let target = Method::Files { root: live.clone() };
    repo.restore(
        first.info.id,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&live), fingerprint(&data));
    assert!(matches!(
        Repository::open(
            garage.store("deployctl/shop/db"),
            Some(&MasterKey::new([1; 32]))
        ),
        Err(Error::WrongKey)
    ));

    // Dedup across snapshots.
    fs::write(data.join("a/new-file"), b"one more file").unwrap();
    let second = repo
        .snapshot(
            &Source::new("shop", "db", "r2"),
            &files,
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(second.new_chunks <= 2, "{second:?}");

    // Damage on the server is refused and the live data stays as it was.
    let m = repo.load_manifest(second.info.id).unwrap();
    let victim = m
        .files()
        .flat_map(|e| e.chunks.iter())
        .filter(|c| c.pack.is_none())
        .last()
        .unwrap()
        .id;
    let good = store.get(ObjectKind::Chunk, &victim.to_hex()).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x01;
    store
        .put(ObjectKind::Chunk, &victim.to_hex(), &bad)
        .unwrap();
    let before = fingerprint(&live);
    let err = repo
        .restore(
            second.info.id,
            &target,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChunkCorrupt { chunk, .. } if *chunk == victim),
        "{err}"
    );
    store.delete(ObjectKind::Chunk, &victim.to_hex()).unwrap();
    let err = repo.verify(second.info.id, &NoProgress).unwrap_err();
    assert!(
        matches!(&err, Error::ChunkMissing { chunk, .. } if *chunk == victim),
        "{err}"
    );
    assert_eq!(fingerprint(&live), before);
    store
        .put(ObjectKind::Chunk, &victim.to_hex(), &good)
        .unwrap();
    repo.restore(
        second.info.id,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&live), fingerprint(&data));

    // Retention and gc over S3.
    repo.forget_by_policy(
        RetentionPolicy {
            keep_last: 1,
            keep_daily: 0,
        },
        chrono::Utc::now(),
        &[],
    )
    .unwrap();
    let gc = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        store.list(ObjectKind::Chunk).unwrap().len() as u64,
        gc.referenced_objects
    );
    repo.verify(second.info.id, &NoProgress).unwrap();
    assert!(
        store.list(ObjectKind::Lock).unwrap().is_empty(),
        "locks released"
    );

    // Bad credentials are an error from the server, not a silent success.
    let mut c = S3Config::new(
        &garage.endpoint,
        &garage.bucket,
        "garage",
        &garage.key_id,
        "wrong-secret",
    );
    c.prefix = "deployctl/shop/db".into();
    let err = Repository::open(Arc::new(S3Store::new(c).unwrap()), Some(&key)).unwrap_err();
    assert_eq!(err.category(), "store", "{err}");
}

#[test]
fn s3_listing_pages_through_more_than_a_thousand_objects() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let mut rng = Rng(8);
    // At least the chunker minimum each, so every file is its own object (smaller ones
    // would share packs).
    for i in 0..1100 {
        fs::write(data.join(format!("f{i:04}")), rng.bytes(1024 + i)).unwrap();
    }
    for i in 0..300 {
        fs::write(data.join(format!("tiny{i:04}")), rng.bytes(1 + i)).unwrap();
    }
    let store = garage.store("");
    let repo = Repository::init(store.clone(), None, TEST_CHUNKS).unwrap();
    let s = repo
        .snapshot(
            &Source::default(),
            &Method::Files { root: data.clone() },
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let objects = store.list(ObjectKind::Chunk).unwrap().len();
    assert!(
        (1101..1110).contains(&objects),
        "1100 chunk objects plus a few packs, got {objects}"
    );
    let gc = repo
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (gc.referenced_objects, gc.deleted_chunks),
        (objects as u64, 0)
    );
    assert!(gc.referenced_chunks >= 1400, "{gc:?}");
    let live = dir.path().join("live");
    repo.restore(
        s.info.id,
        &Method::Files { root: live.clone() },
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&live), fingerprint(&data));
}

/// The first snapshots of four components of one stack, encrypted, at once into a bucket
/// prefix with no repository yet. Garage ignores `If-None-Match`, so every agent's create
/// of the config lands; each writes the same bytes (the id is derived from the location
/// and the key), so every snapshot restores.
#[test]
fn first_encrypted_snapshots_in_parallel_on_s3_all_restore() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::new([0x17; 32]);
    for round in 0..3u64 {
        let prefix = format!("deployctl/race-{round}");
        let sources: Vec<PathBuf> = (0..4u64)
            .map(|i| {
                let d = dir.path().join(format!("data-{round}-{i}"));
                make_tree(&d, round * 10 + i);
                d
            })
            .collect();
        let barrier = std::sync::Barrier::new(sources.len());
        let ids: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = sources
                .iter()
                .enumerate()
                .map(|(i, data)| {
                    // Each agent its own client, as each is its own Job.
                    let store: Arc<dyn Store> = garage.store(&prefix);
                    let (key, barrier) = (&key, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let repo = Repository::open_or_init(store, Some(key)).unwrap();
                        repo.snapshot(
                            &Source::new("shop", format!("c{i}"), "1"),
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
        let repo = Repository::open(garage.store(&prefix), Some(&key)).unwrap();
        for (id, data) in ids.iter().zip(&sources) {
            let target = dir.path().join(format!("restored-{id}"));
            fs::create_dir_all(&target).unwrap();
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
