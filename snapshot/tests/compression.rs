//! Format 2: compressed chunks and manifests, page chunks for databases.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{fingerprint, Rng};
use deployctl_snapshot::*;
use sha2::{Digest, Sha256};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Words, like logs or JSON: compresses about threefold.
fn text(rng: &mut Rng, n: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "order",
        "customer",
        "shipped",
        "paid",
        "rollback",
        "revision",
        "{\"id\":",
        "}\n",
        "status",
        "delivered",
        "returned",
        "stack",
    ];
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
        out.extend_from_slice(format!(" {} ", rng.below(100_000)).as_bytes());
    }
    out.truncate(n);
    out
}

fn snapshot(repo: &Repository, method: &Method) -> SnapshotReport {
    repo.snapshot(
        &Source::new("shop", "db", "r"),
        method,
        &SnapshotOptions::default(),
        &NoProgress,
    )
    .unwrap()
}

fn compressible_data_is_stored_compressed_and_restores(key: Option<MasterKey>) {
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    fs::create_dir_all(data.join("logs")).unwrap();
    let mut rng = Rng(11);
    fs::write(data.join("logs/big.log"), text(&mut rng, 3 << 20)).unwrap();
    for i in 0..50 {
        fs::write(
            data.join(format!("logs/small-{i}.json")),
            text(&mut rng, 3000),
        )
        .unwrap();
    }
    // Random bytes do not compress: stored as they are.
    fs::write(data.join("random.bin"), rng.bytes(1 << 20)).unwrap();
    let store = Arc::new(FsStore::new(dir.path().join("repo")).unwrap());
    let repo = Repository::open_or_init(store.clone(), key.as_ref()).unwrap();
    assert_eq!(repo.format(), 2);
    let files = Method::Files { root: data.clone() };
    let r = snapshot(&repo, &files);
    let text_bytes = (3 << 20) + 50 * 3000;
    assert!(
        r.stored_bytes < (1 << 20) + text_bytes / 2,
        "text is stored compressed: {r:?}"
    );

    let m = repo.load_manifest(r.info.id).unwrap();
    let chunks_of = |name: &str| m.files().find(|e| e.path == name).unwrap().chunks.clone();
    let big = chunks_of("logs/big.log");
    assert!(
        big.iter().all(|c| c.zlen.is_some_and(|z| z < c.len / 2)),
        "{big:?}"
    );
    assert!(chunks_of("logs/small-7.json")[0].pack.is_some());
    assert!(chunks_of("logs/small-7.json")[0].zlen.is_some());
    let random = chunks_of("random.bin");
    assert!(random.iter().all(|c| c.zlen.is_none()), "{random:?}");
    if key.is_none() {
        // On disk: a zstd frame whose content hashes to the id, and random bytes as they are
        // (`sha256sum` checks them by hand).
        let c = big[0];
        let raw = fs::read(
            store
                .object_path(ObjectKind::Chunk, &c.id.to_hex())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(raw[..4], ZSTD_MAGIC);
        assert_eq!(raw.len(), c.zlen.unwrap() as usize);
        let plain = zstd::bulk::decompress(&raw, c.len as usize).unwrap();
        assert_eq!(Sha256::digest(&plain)[..], c.id.0[..]);
        let c = random[0];
        let raw = fs::read(
            store
                .object_path(ObjectKind::Chunk, &c.id.to_hex())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(Sha256::digest(&raw)[..], c.id.0[..]);
        // The manifest too is a zstd frame of the JSON its id is the digest of.
        let stored = fs::read(dir.path().join("repo/snapshots").join(r.info.id.to_hex())).unwrap();
        assert_eq!(stored[..4], ZSTD_MAGIC);
        let json = zstd::stream::decode_all(&stored[..]).unwrap();
        assert_eq!(Sha256::digest(&json)[..], r.info.id.0[..]);
    }

    let verified = repo.verify(r.info.id, &NoProgress).unwrap();
    assert_eq!(verified.bytes, r.new_bytes);
    repo.restore(
        r.info.id,
        &Method::Files { root: live.clone() },
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&live), fingerprint(&data));
    // Unchanged data is not compressed or stored again.
    let again = snapshot(&repo, &files);
    assert_eq!((again.new_chunks, again.stored_bytes), (0, 0), "{again:?}");
}

#[test]
fn compressible_data_is_stored_compressed_and_restores_plain() {
    compressible_data_is_stored_compressed_and_restores(None);
}

#[test]
fn compressible_data_is_stored_compressed_and_restores_encrypted() {
    compressible_data_is_stored_compressed_and_restores(Some(MasterKey::new([7; 32])));
}

/// A database of ~1 KB text rows, about `rows` KB.
fn make_db(path: &Path, rows: u64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT, body TEXT);
         CREATE INDEX orders_status ON orders (status);",
    )
    .unwrap();
    let mut rng = Rng(3);
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        let body = String::from_utf8(text(&mut rng, 1000)).unwrap();
        tx.execute(
            "INSERT INTO orders VALUES (?1, 'new', ?2)",
            rusqlite::params![i as i64, body],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Updates 1% of the rows, chosen at random, in place.
fn update_one_percent(path: &Path, rows: u64) {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut rng = Rng(4);
    let tx = c.unchecked_transaction().unwrap();
    for _ in 0..rows / 100 {
        let body = String::from_utf8(text(&mut rng, 1000)).unwrap();
        tx.execute(
            "UPDATE orders SET status = 'paid', body = ?1 WHERE id = ?2",
            rusqlite::params![body, rng.below(rows) as i64],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn db_digest(path: &Path) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut q = c
        .prepare("SELECT id, status, body FROM orders ORDER BY id")
        .unwrap();
    let mut h = Sha256::new();
    let mut rows = q.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        h.update(r.get::<_, i64>(0).unwrap().to_le_bytes());
        h.update(r.get::<_, String>(1).unwrap());
        h.update(r.get::<_, String>(2).unwrap());
    }
    hex::encode(h.finalize())
}

/// The whole point of page chunks: after 1% of the rows change, a snapshot stores a small
/// share of the database again, with either method that reads a database file.
fn a_database_after_a_one_percent_update_stores_a_small_share_again(via_files: bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let db = data.join("shop.db");
    let rows = 8000;
    make_db(&db, rows);
    let repo = Repository::open_or_init(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        None,
    )
    .unwrap();
    let method = if via_files {
        Method::Files { root: data.clone() }
    } else {
        Method::Sqlite { path: db.clone() }
    };
    let full = snapshot(&repo, &method);
    let m = repo.load_manifest(full.info.id).unwrap();
    let chunks = &m.files().next().unwrap().chunks;
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.len == DEFAULT_PAGE_CHUNK),
        "cut into page chunks"
    );
    update_one_percent(&db, rows);
    let before = db_digest(&db);
    let incremental = snapshot(&repo, &method);
    assert!(
        incremental.stored_bytes * 4 <= full.stored_bytes,
        "the 1% update stored {} of the full snapshot's {} bytes again",
        incremental.stored_bytes,
        full.stored_bytes
    );

    // And it restores to the updated database.
    let back = dir.path().join("back");
    fs::create_dir_all(&back).unwrap();
    let restored_db = back.join("shop.db");
    let target = if via_files {
        Method::Files { root: back.clone() }
    } else {
        Method::Sqlite {
            path: restored_db.clone(),
        }
    };
    if !via_files {
        fs::write(&restored_db, b"").unwrap();
    }
    repo.restore(
        incremental.info.id,
        &target,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(db_digest(&restored_db), before);
}

#[test]
fn a_database_after_a_one_percent_update_stores_a_small_share_again_sqlite_method() {
    a_database_after_a_one_percent_update_stores_a_small_share_again(false);
}

#[test]
fn a_database_after_a_one_percent_update_stores_a_small_share_again_files_method() {
    a_database_after_a_one_percent_update_stores_a_small_share_again(true);
}

#[test]
fn a_repository_of_a_newer_format_is_refused_with_what_to_do() {
    let store = Arc::new(MemStore::new());
    store
        .put(
            ObjectKind::Config,
            "config",
            br#"{"format":3,"repoId":"x","chunker":{"min":1024,"avg":4096,"max":16384},"encryption":"none"}"#,
        )
        .unwrap();
    let e = Repository::open(store, None).unwrap_err();
    assert_eq!(e.category(), "config");
    assert!(e.to_string().contains("upgrade the agent"), "{e}");
}

#[test]
fn a_damaged_page_chunk_inside_a_pack_is_named_and_never_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    fs::create_dir_all(&data).unwrap();
    make_db(&data.join("shop.db"), 2000);
    let store = Arc::new(FsStore::new(dir.path().join("repo")).unwrap());
    let repo = Repository::open_or_init(store.clone(), None).unwrap();
    let s = snapshot(&repo, &Method::Files { root: data.clone() });
    let m = repo.load_manifest(s.info.id).unwrap();
    let chunks = &m.files().next().unwrap().chunks;
    assert!(chunks.len() > 100 && chunks.iter().all(|c| c.pack.is_some()));
    // Damage one page chunk in the middle of its pack (its neighbours are fetched with it).
    let k = chunks.len() / 2;
    let victim = chunks[k];
    let pack = victim.pack.unwrap();
    let path = store
        .object_path(ObjectKind::Chunk, &pack.object.to_hex())
        .unwrap();
    let mut raw = fs::read(&path).unwrap();
    let at = pack.offset as usize + victim.zlen.unwrap_or(victim.len) as usize / 2;
    raw[at] ^= 0x40;
    fs::write(&path, &raw).unwrap();

    fs::create_dir_all(&live).unwrap();
    fs::write(live.join("shop.db"), b"live").unwrap();
    let before = fingerprint(&live);
    for e in [
        repo.restore(
            s.info.id,
            &Method::Files { root: live.clone() },
            &RestoreOptions::default(),
            &NoProgress,
        )
        .map(|_| ())
        .unwrap_err(),
        repo.verify(s.info.id, &NoProgress).map(|_| ()).unwrap_err(),
    ] {
        match e {
            Error::ChunkCorrupt {
                chunk,
                offset,
                ref file,
                ..
            } => {
                assert_eq!(chunk, victim.id, "{e}");
                assert_eq!(offset, k as u64 * u64::from(DEFAULT_PAGE_CHUNK), "{e}");
                assert_eq!(file, "shop.db");
            }
            other => panic!("expected a corrupt chunk, got {other}"),
        }
    }
    assert_eq!(fingerprint(&live), before, "live data untouched");
}
