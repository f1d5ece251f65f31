//! Corruption injected 1,200 times (seeded): every case is refused, the error names what
//! failed, and the live data is byte-for-byte unchanged.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{fingerprint, Rng, TEST_CHUNKS};
use deployctl_snapshot::*;
use deployctl_snapshot::{crypto, manifest};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CASES: usize = 1200;

fn small_tree(root: &Path) {
    let mut rng = Rng(77);
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    for (name, size) in [
        ("zero", 0),
        ("one", 1),
        ("sub/three-k", 3000),
        ("sub/deeper/nine-k", 9000),
        ("thirty-k", 30000),
    ] {
        fs::write(root.join(name), rng.bytes(size)).unwrap();
    }
    // Text compresses: chunks stored as zstd frames, alone and in packs, get damaged too.
    let text = |n: usize, seed: u64| {
        let mut r = Rng(seed);
        let words = ["stack", "rollback", "revision", "gate", "snapshot", "\n"];
        let mut out = String::new();
        while out.len() < n {
            out.push_str(words[r.below(words.len() as u64) as usize]);
            out.push(' ');
        }
        out.truncate(n);
        out
    };
    fs::write(root.join("sub/notes.txt"), text(900, 5)).unwrap();
    fs::write(root.join("log.txt"), text(40_000, 6)).unwrap();
    // A database: fixed page chunks (stored alone with these small test bounds; packed page
    // chunks restored in runs are damaged in tests/compression.rs).
    let db = rusqlite::Connection::open(root.join("sub/app.db")).unwrap();
    db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT);")
        .unwrap();
    for i in 0..60 {
        db.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![i, text(1000, 100 + i as u64)],
        )
        .unwrap();
    }
    drop(db);
    std::os::unix::fs::symlink("sub/three-k", root.join("link")).unwrap();
}

struct Fixture {
    store: Arc<MemStore>,
    pristine: BTreeMap<String, Vec<u8>>,
    repo: Repository,
    key: Option<MasterKey>,
    id: SnapshotId,
    manifest: Manifest,
}

impl Fixture {
    fn new(data: &Path, key: Option<MasterKey>) -> Self {
        let store = Arc::new(MemStore::new());
        let repo = Repository::init(store.clone(), key.as_ref(), TEST_CHUNKS).unwrap();
        let report = repo
            .snapshot(
                &Source::new("s", "c", "r"),
                &Method::Files {
                    root: data.to_path_buf(),
                },
                &SnapshotOptions::default(),
                &NoProgress,
            )
            .unwrap();
        let manifest = repo.load_manifest(report.info.id).unwrap();
        // The damage below lands on compressed chunks too, alone and in packs.
        let compressed: Vec<bool> = manifest
            .files()
            .flat_map(|e| &e.chunks)
            .filter(|c| c.zlen.is_some())
            .map(|c| c.pack.is_some())
            .collect();
        assert!(
            compressed.contains(&true) && compressed.contains(&false),
            "{compressed:?}"
        );
        let pristine = store.dump();
        Fixture {
            store,
            pristine,
            repo,
            key,
            id: report.info.id,
            manifest,
        }
    }

    fn chunks(&self) -> Vec<(String, manifest::ChunkRef)> {
        self.manifest
            .files()
            .flat_map(|e| e.chunks.iter().map(|c| (e.path.clone(), *c)))
            .collect()
    }

    /// The object holding a chunk and the chunk's byte range in it.
    fn locate(&self, c: &manifest::ChunkRef) -> (String, usize, usize) {
        let stored = c.zlen.unwrap_or(c.len) as usize
            + if self.key.is_some() {
                crypto::OVERHEAD
            } else {
                0
            };
        match c.pack {
            Some(p) => (p.object.to_hex(), p.offset as usize, stored),
            None => (c.id.to_hex(), 0, stored),
        }
    }

    /// Chunks stored in `object`.
    fn chunks_in(&self, object: &str) -> Vec<ChunkId> {
        self.chunks()
            .iter()
            .filter(|(_, c)| self.locate(c).0 == object)
            .map(|(_, c)| c.id)
            .collect()
    }
}

/// What a case must be refused with.
enum Expect {
    /// Exactly this chunk is named.
    Chunk(ChunkId),
    /// One of these chunks (all in one damaged pack) is named.
    InObject(Vec<ChunkId>),
    Category(&'static [&'static str]),
}

/// Whether damage to a plain repository's stored bytes leaves what they decode to as it
/// was: a few bits of a zstd frame (18 of the 12,464 of the fixture's manifest, in its
/// frame header and block encoding) change no decompressed byte, and chunks and manifests
/// are checked by their content, so such a flip is no corruption and the engine rightly
/// accepts it. Encrypted objects are sealed whole: any change is damage. (Found by a full
/// run in which case 896 flipped such a bit of a manifest and the restore, correctly,
/// succeeded.)
fn harmless(fx: &Fixture, before: &[u8], after: &[u8]) -> bool {
    if fx.key.is_some() || before == after {
        return before == after;
    }
    match (zstd::decode_all(before), zstd::decode_all(after)) {
        (Ok(a), Ok(b)) => a == b,
        // Not a zstd frame (a chunk stored as it is): every change is damage.
        _ => false,
    }
}

fn flip(bytes: &mut [u8], rng: &mut Rng) {
    if bytes.is_empty() {
        return;
    }
    let i = rng.below(bytes.len() as u64) as usize;
    bytes[i] ^= 1 << rng.below(8);
}

/// An authentic-looking manifest (plain repos: anyone can compute the id) that is unsafe.
fn forge_unsafe(m: &Manifest, rng: &mut Rng) -> Manifest {
    let mut m = m.clone();
    let files: Vec<usize> = (0..m.entries.len())
        .filter(|&i| m.entries[i].kind == EntryKind::File)
        .collect();
    let f = files[rng.below(files.len() as u64) as usize];
    match rng.below(9) {
        0 => m.entries[f].path = "../escaped".into(),
        1 => m.entries[f].path = "/etc/cron.d/evil".into(),
        2 => m.entries[f].path = format!("sub/../../{}", m.entries[f].path),
        3 => {
            let l = m
                .entries
                .iter()
                .position(|e| e.kind == EntryKind::Symlink)
                .unwrap();
            m.entries[l].target = Some(
                ["/etc/passwd", "../outside", "sub/../../x", "../../.."][rng.below(4) as usize]
                    .into(),
            );
        }
        4 => {
            // A file written through a symlinked parent.
            let mut e = m.entries[f].clone();
            e.path = "link/evil".into();
            m.entries.push(e);
            m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        }
        5 => {
            let dup = m.entries[f].clone();
            m.entries.insert(f, dup);
        }
        6 => m.entries[f].mode |= 0o170000,
        7 => {
            let last = m.entries.len() - 1;
            m.entries.swap(0, last);
        }
        _ => m.entries[f].path = ".deployctl-staging-x".into(),
    }
    m
}

fn edit_field(v: &mut Value, rng: &mut Rng) {
    let entries = v["entries"].as_array_mut().unwrap();
    let n = entries.len() as u64;
    let e = &mut entries[rng.below(n) as usize];
    match rng.below(6) {
        0 => e["mode"] = Value::from(0o777),
        1 => e["path"] = Value::from(format!("{}x", e["path"].as_str().unwrap())),
        2 => e["size"] = Value::from(e["size"].as_u64().unwrap_or(0) + 1),
        3 => v["meta"]["totalSize"] = Value::from(v["meta"]["totalSize"].as_u64().unwrap() + 1),
        4 => v["meta"]["source"]["revision"] = Value::from("forged"),
        _ => e["uid"] = Value::from(4242),
    }
}

fn run_case(
    fx: &Fixture,
    live: &Path,
    rng: &mut Rng,
    kinds: &mut BTreeMap<&'static str, usize>,
) -> Result<(), String> {
    fx.store.load(&fx.pristine);
    let chunks = fx.chunks();
    let cref = chunks[rng.below(chunks.len() as u64) as usize].1;
    let chunk = cref.id;
    let (object, start, stored) = fx.locate(&cref);
    let packed = cref.pack.is_some();
    let snap_name = fx.id.to_hex();
    let store: &dyn Store = &*fx.store;
    let mut target = fx.id;
    let mut repo = fx.repo.clone();
    let kind = rng.below(12);
    let (label, expect) = match kind {
        0 | 1 => {
            let original = store.get(ObjectKind::Chunk, &object).unwrap();
            let mut raw = original.clone();
            // Distinct bits inside this chunk's bytes (flipping one bit twice would undo
            // the damage), and bits that change what the chunk decodes to.
            loop {
                raw.clone_from(&original);
                let bits = (stored as u64 * 8).min(1 + rng.below(3));
                let mut chosen = std::collections::BTreeSet::new();
                while (chosen.len() as u64) < bits {
                    chosen.insert(rng.below(stored as u64 * 8));
                }
                for b in chosen {
                    raw[start + (b / 8) as usize] ^= 1 << (b % 8);
                }
                let span = start..start + stored;
                if !harmless(fx, &original[span.clone()], &raw[span]) {
                    break;
                }
            }
            store.put(ObjectKind::Chunk, &object, &raw).unwrap();
            ("flipped bits in a chunk", Expect::Chunk(chunk))
        }
        2 => {
            let mut raw = store.get(ObjectKind::Chunk, &object).unwrap();
            raw.truncate(start + rng.below(stored as u64) as usize);
            store.put(ObjectKind::Chunk, &object, &raw).unwrap();
            // In a pack, every chunk after the cut is damaged too.
            (
                "truncated chunk",
                if packed {
                    Expect::InObject(fx.chunks_in(&object))
                } else {
                    Expect::Chunk(chunk)
                },
            )
        }
        3 => {
            store.delete(ObjectKind::Chunk, &object).unwrap();
            (
                "missing chunk or pack",
                Expect::InObject(fx.chunks_in(&object)),
            )
        }
        4 => {
            let mut raw = store.get(ObjectKind::Chunk, &object).unwrap();
            let other = chunks.iter().find(|(_, c)| c.id != chunk).unwrap().1;
            let (other_object, other_start, other_len) = fx.locate(&other);
            let other_raw = store.get(ObjectKind::Chunk, &other_object).unwrap();
            let replacement = &other_raw[other_start..other_start + other_len];
            if packed {
                // Same-length bytes of another chunk (repeated) in place of this one's.
                for i in 0..stored {
                    raw[start + i] = replacement[i % replacement.len()] ^ (i == 0) as u8;
                }
            } else {
                raw = replacement.to_vec();
            }
            store.put(ObjectKind::Chunk, &object, &raw).unwrap();
            ("chunk replaced by another chunk", Expect::Chunk(chunk))
        }
        5 | 6 => {
            let original = store.get(ObjectKind::Snapshot, &snap_name).unwrap();
            let mut raw = original.clone();
            if kind == 5 {
                loop {
                    raw.clone_from(&original);
                    flip(&mut raw, rng);
                    if !harmless(fx, &original, &raw) {
                        break;
                    }
                }
            } else {
                loop {
                    raw.clone_from(&original);
                    raw.truncate(rng.below(raw.len() as u64) as usize);
                    if !harmless(fx, &original, &raw) {
                        break;
                    }
                }
            }
            store.put(ObjectKind::Snapshot, &snap_name, &raw).unwrap();
            (
                "flipped or truncated manifest",
                Expect::Category(&["manifest_corrupt"]),
            )
        }
        7 => {
            let mut v = serde_json::to_value(&fx.manifest).unwrap();
            edit_field(&mut v, rng);
            // Stored as the engine stores a manifest (compressed), so what is caught is the
            // edit, not the form.
            let edited = zstd::bulk::compress(&serde_json::to_vec(&v).unwrap(), 3).unwrap();
            store
                .put(ObjectKind::Snapshot, &snap_name, &edited)
                .unwrap();
            (
                "edited manifest field",
                Expect::Category(&["manifest_corrupt"]),
            )
        }
        8 if fx.key.is_none() => {
            let forged = forge_unsafe(&fx.manifest, rng);
            let bytes = forged.to_bytes();
            target = SnapshotId(Sha256::digest(&bytes).into());
            let stored = zstd::bulk::compress(&bytes, 3).unwrap();
            store
                .put(ObjectKind::Snapshot, &target.to_hex(), &stored)
                .unwrap();
            (
                "self-consistent unsafe manifest",
                Expect::Category(&["manifest_unsafe", "manifest_corrupt"]),
            )
        }
        8 | 9 => {
            let wrong = MasterKey::new(rng.bytes(32).try_into().unwrap());
            let opened = match (&fx.key, rng.below(2)) {
                (Some(_), 0) => Repository::open(fx.store.clone(), None),
                _ => Repository::open(fx.store.clone(), Some(&wrong)),
            };
            let e = match opened {
                Ok(_) => return Err("repository opened with a wrong key".into()),
                Err(e) => e,
            };
            if e.category() != "key" {
                return Err(format!("wrong key: expected a key error, got {e}"));
            }
            *kinds.entry("wrong key").or_default() += 1;
            return Ok(());
        }
        10 => {
            store.delete(ObjectKind::Snapshot, &snap_name).unwrap();
            (
                "incomplete snapshot (no manifest)",
                Expect::Category(&["snapshot_not_found"]),
            )
        }
        _ => {
            // Several chunks damaged at once, plus a config with a bad key check.
            for (_, c) in chunks.iter().filter(|(_, c)| c.id == chunk).chain(&chunks) {
                if c.id != chunk && rng.below(2) == 0 {
                    continue;
                }
                let (object, start, stored) = fx.locate(c);
                let mut raw = store.get(ObjectKind::Chunk, &object).unwrap();
                flip(&mut raw[start..start + stored], rng);
                store.put(ObjectKind::Chunk, &object, &raw).unwrap();
            }
            if fx.key.is_some() && rng.below(2) == 0 {
                let mut cfg: Value =
                    serde_json::from_slice(&store.get(ObjectKind::Config, "config").unwrap())
                        .unwrap();
                let check = cfg["keyCheck"].as_str().unwrap().to_string();
                cfg["keyCheck"] =
                    Value::from(format!("{}{}", &check[..10], "0".repeat(check.len() - 10)));
                store
                    .put(
                        ObjectKind::Config,
                        "config",
                        &serde_json::to_vec(&cfg).unwrap(),
                    )
                    .unwrap();
                match Repository::open(fx.store.clone(), fx.key.as_ref()) {
                    Err(Error::WrongKey) => {}
                    other => return Err(format!("tampered key check: {other:?}")),
                }
                *kinds.entry("tampered key check").or_default() += 1;
                return Ok(());
            }
            repo = Repository::open(fx.store.clone(), fx.key.as_ref()).unwrap();
            ("many chunks damaged", Expect::Category(&["chunk_corrupt"]))
        }
    };
    *kinds.entry(label).or_default() += 1;

    let err = match repo.restore(
        target,
        &Method::Files {
            root: live.to_path_buf(),
        },
        &RestoreOptions::default(),
        &NoProgress,
    ) {
        Ok(_) => return Err(format!("{label}: restore succeeded")),
        Err(e) => e,
    };
    if !err.is_integrity() {
        return Err(format!("{label}: not an integrity error: {err}"));
    }
    if !err.to_string().contains(&target.to_hex()) {
        return Err(format!("{label}: error does not name the snapshot: {err}"));
    }
    match expect {
        Expect::Chunk(_) | Expect::InObject(_) => {
            let allowed = match expect {
                Expect::Chunk(c) => vec![c],
                Expect::InObject(ids) => ids,
                Expect::Category(_) => unreachable!(),
            };
            let named = match &err {
                Error::ChunkCorrupt { chunk, file, .. }
                | Error::ChunkMissing { chunk, file, .. } => Some((*chunk, file.clone())),
                _ => None,
            };
            match named {
                Some((c, file)) if allowed.contains(&c) => {
                    let refs = fx
                        .manifest
                        .files()
                        .any(|e| e.path == file && e.chunks.iter().any(|r| r.id == c));
                    if !refs {
                        return Err(format!(
                            "{label}: error names file {file} which does not hold chunk {c}"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "{label}: expected one of chunks {allowed:?} to be named, got {err}"
                    ))
                }
            }
        }
        Expect::Category(cats) => {
            if !cats.contains(&err.category()) {
                return Err(format!(
                    "{label}: expected {cats:?}, got {} ({err})",
                    err.category()
                ));
            }
        }
    }
    // A restore drill finds the same damage without touching anything.
    if repo.verify(target, &NoProgress).is_ok() {
        return Err(format!("{label}: verify passed"));
    }
    Ok(())
}

#[test]
fn every_injected_corruption_is_refused_and_live_data_is_untouched() {
    let dir = common::fast_tempdir();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    small_tree(&data);
    fs::create_dir_all(live.join("state")).unwrap();
    fs::write(
        live.join("state/current"),
        b"the live data, which must survive",
    )
    .unwrap();
    fs::write(live.join("thirty-k"), Rng(5).bytes(2000)).unwrap();
    std::os::unix::fs::symlink("state/current", live.join("link")).unwrap();
    let live_before = fingerprint(&live);

    let fixtures = [
        Fixture::new(&data, None),
        Fixture::new(&data, Some(MasterKey::new([0x5a; 32]))),
    ];
    let mut rng = Rng(0xC0FFEE);
    let mut kinds = BTreeMap::new();
    let mut failures = vec![];
    for case in 0..CASES {
        let fx = &fixtures[case % 2];
        if let Err(msg) = run_case(fx, &live, &mut rng, &mut kinds) {
            failures.push(format!(
                "case {case} ({}): {msg}",
                if fx.key.is_some() {
                    "encrypted"
                } else {
                    "plain"
                }
            ));
        }
        let now = fingerprint(&live);
        if now != live_before {
            panic!("case {case}: live data changed ({failures:?})\nbefore: {live_before:#?}\nafter: {now:#?}");
        }
    }
    println!("cases by kind: {kinds:#?}");
    assert!(
        failures.is_empty(),
        "{} of {CASES} cases not refused properly:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(kinds.values().sum::<usize>(), CASES);

    // The pristine repositories still restore, so the refusals above were about the damage.
    for fx in &fixtures {
        fx.store.load(&fx.pristine);
        fx.repo
            .restore(
                fx.id,
                &Method::Files { root: live.clone() },
                &RestoreOptions::default(),
                &NoProgress,
            )
            .unwrap();
        assert_eq!(fingerprint(&live), fingerprint(&data));
    }
}

#[test]
fn damage_to_files_on_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    small_tree(&data);
    fs::create_dir_all(&live).unwrap();
    fs::write(live.join("keep"), b"live").unwrap();
    let before = fingerprint(&live);
    let store = Arc::new(FsStore::new(dir.path().join("repo")).unwrap());
    let repo = Repository::init(store.clone(), None, TEST_CHUNKS).unwrap();
    let s = repo
        .snapshot(
            &Source::default(),
            &Method::Files { root: data.clone() },
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let m = repo.load_manifest(s.info.id).unwrap();
    let mut rng = Rng(99);
    for round in 0..20 {
        // Chunks stored as objects of their own (packs are damaged in the test above).
        let all: Vec<ChunkId> = m
            .files()
            .flat_map(|e| e.chunks.iter().filter(|c| c.pack.is_none()).map(|c| c.id))
            .collect();
        let victim = all[rng.below(all.len() as u64) as usize];
        let path = store
            .object_path(ObjectKind::Chunk, &victim.to_hex())
            .unwrap();
        let original = fs::read(&path).unwrap();
        let mut bad = original.clone();
        if round % 2 == 0 {
            flip(&mut bad, &mut rng);
        } else {
            bad.truncate(bad.len() / 2);
        }
        fs::write(&path, &bad).unwrap();
        let err = repo
            .restore(
                s.info.id,
                &Method::Files { root: live.clone() },
                &RestoreOptions::default(),
                &NoProgress,
            )
            .unwrap_err();
        assert!(
            matches!(err, Error::ChunkCorrupt { chunk, .. } if chunk == victim),
            "{err}"
        );
        assert_eq!(fingerprint(&live), before);
        fs::write(&path, &original).unwrap();
    }
}
