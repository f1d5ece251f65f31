//! Helpers shared by the integration tests: seeded random data, trees, tree fingerprints.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use deployctl_snapshot::{ChunkerParams, MasterKey, Repository, Store};
use sha2::{Digest, Sha256};

/// Small chunks so small test data still makes many chunks.
pub const TEST_CHUNKS: ChunkerParams = ChunkerParams {
    min: 1024,
    avg: 4096,
    max: 16384,
};

/// xorshift64*: seeded and fast; tests print the seed on failure.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A tree with files of many sizes, empty files and dirs, nested dirs, symlinks and modes.
pub fn make_tree(root: &Path, seed: u64) {
    let mut rng = Rng(seed | 1);
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    let sizes = [
        0usize, 1, 100, 1023, 1024, 1025, 4096, 16384, 16385, 50_000, 200_000,
    ];
    for (i, size) in sizes.iter().enumerate() {
        let dir = ["", "a", "a/b", "a/b/c"][i % 4];
        let p = root.join(dir).join(format!("f{i}-{size}.bin"));
        fs::write(&p, rng.bytes(*size)).unwrap();
    }
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("a/script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("a/script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("a/b/readonly"), b"ro").unwrap();
    fs::set_permissions(root.join("a/b/readonly"), fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(root.join("a/b/c"), fs::Permissions::from_mode(0o750)).unwrap();
    // Repeated content across files exercises dedup inside one snapshot.
    let shared = rng.bytes(40_000);
    fs::write(root.join("dup1"), &shared).unwrap();
    fs::write(root.join("a/dup2"), &shared).unwrap();
    std::os::unix::fs::symlink("a/script.sh", root.join("link-to-script")).unwrap();
    std::os::unix::fs::symlink("../dup1", root.join("a/up-link")).unwrap();
    std::os::unix::fs::symlink("missing-target", root.join("dangling")).unwrap();
}

/// A fingerprint of everything under `root` (not `root` itself): path, type, mode, owner,
/// mtime, content hash, link target.
pub fn fingerprint(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut items: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        items.sort();
        for p in items {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let common = format!(
                "mode={:o} uid={} gid={}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            );
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("link -> {}", fs::read_link(&p).unwrap().display()),
                );
            } else if m.is_dir() {
                out.insert(
                    rel,
                    format!("dir {common} mtime={}.{}", m.mtime(), m.mtime_nsec()),
                );
                walk(root, &p, out);
            } else {
                let hash = hex::encode(Sha256::digest(fs::read(&p).unwrap()));
                out.insert(
                    rel,
                    format!(
                        "file {common} mtime={}.{} size={} sha256={hash}",
                        m.mtime(),
                        m.mtime_nsec(),
                        m.len()
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub fn repo(store: Arc<dyn Store>, key: Option<&MasterKey>) -> Repository {
    Repository::init(store, key, TEST_CHUNKS).unwrap()
}

/// A temporary directory on tmpfs when there is one (tests that churn many small files).
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}
