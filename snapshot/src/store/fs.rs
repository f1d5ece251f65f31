//! A repository in a directory, typically on a PersistentVolume:
//! `config`, `objects/ab/abcdef…`, `snapshots/<id>`, `locks/<name>`.
//!
//! Every object is written to `.tmp-*` in its final directory and renamed into place, so a
//! reader (or a crash) never sees half an object under its real name. Durability differs
//! by kind, and why:
//!
//! - config, snapshot and lock objects are small and rare: each is fsynced, renamed and its
//!   directory fsynced before `put` returns.
//! - chunk and pack objects are many (a 1 GiB volume makes about a thousand) and an fsync
//!   each would cost seconds; instead [`Store::sync`] issues one `syncfs(2)` before the engine writes a
//!   manifest. A chunk renamed but not yet synced when the machine crashed may come back
//!   empty; that is safe because the engine only trusts ("dedups against") chunks listed in
//!   a complete manifest, and a manifest is only written after the sync.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{object_key, ObjectInfo, ObjectKind, Store, StoreError};

/// A repository directory.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
    /// Open handles of recently read objects: restoring 10,000 small files reads 10,000
    /// chunks out of a few packs, and an `open` per chunk costs more than the read.
    handles: Arc<Mutex<HashMap<String, Arc<File>>>>,
    /// The repository directory, opened when the store was: `syncfs(2)` reports a
    /// writeback error only to descriptors opened before it happened, so [`Store::sync`]
    /// uses this one rather than a descriptor opened at the end, which would miss an error
    /// from a chunk written back early in a long snapshot.
    root_handle: Arc<File>,
}

/// Handles kept open at most.
const OPEN_HANDLES: usize = 64;

fn io(key: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let key = key.into();
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound { key }
        } else {
            StoreError::Io { key, source }
        }
    }
}

/// A temporary name unique across processes and threads: a random per-process prefix plus
/// a counter (one getrandom per process, not per object).
fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("system random number generator failed");
        hex::encode(b)
    });
    format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl FsStore {
    /// Opens (creating if needed) the repository directory layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let key = root.display().to_string();
        for sub in ["snapshots", "locks"] {
            fs::create_dir_all(root.join(sub)).map_err(io(key.clone()))?;
        }
        // All 256 fan-out directories up front, so writing a chunk never needs a mkdir.
        for b in 0..=255u8 {
            fs::create_dir_all(root.join("objects").join(format!("{b:02x}")))
                .map_err(io(key.clone()))?;
        }
        let root_handle = Arc::new(File::open(&root).map_err(io(key))?);
        Ok(FsStore {
            root,
            handles: Arc::default(),
            root_handle,
        })
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of an object (for tests that damage objects on purpose).
    pub fn object_path(&self, kind: ObjectKind, name: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join(object_key(kind, name)?))
    }

    fn forget_handle(&self, key: &str) {
        self.handles.lock().expect("poisoned").remove(key);
    }

    fn dirs(&self, kind: ObjectKind) -> Vec<PathBuf> {
        match kind {
            ObjectKind::Config => vec![self.root.clone()],
            ObjectKind::Chunk => (0..=255u8)
                .map(|b| self.root.join("objects").join(format!("{b:02x}")))
                .collect(),
            ObjectKind::Snapshot => vec![self.root.join("snapshots")],
            ObjectKind::Lock => vec![self.root.join("locks")],
        }
    }
}

/// Starts writing `len` bytes at `offset` (0: to the end) to disk without waiting.
///
/// A snapshot or restore writes about 1 GiB, well under the kernel's background writeback
/// threshold on a machine with a lot of memory, so without this nothing would reach the disk
/// until the final `syncfs`, which would then wait for all of it. Linux starts an
/// asynchronous writeback of the range on `POSIX_FADV_DONTNEED` (and drops the pages once
/// clean: they are not read again). A hint only: errors are ignored.
pub(crate) fn start_writeback(f: &File, offset: u64, len: u64) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let _ = posix_fadvise(
        f,
        offset as i64,
        len as i64,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Hard-links `tmp` to `path` unless `path` exists, then removes `tmp`; whether it linked.
/// link(2) fails when the name exists, so of several writers exactly one creates it.
fn link_if_absent(tmp: &Path, path: &Path) -> io::Result<bool> {
    let created = match fs::hard_link(tmp, path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    fs::remove_file(tmp)?;
    Ok(created)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FsStore {
    /// Writes `data` to a temporary file next to the object (synced when `durable`,
    /// else only started on its way to disk), then lets `place` move it into place;
    /// `place`'s answer is returned. The temporary is removed on any failure.
    fn write_via_temporary(
        &self,
        kind: ObjectKind,
        name: &str,
        data: &[u8],
        durable: bool,
        place: impl FnOnce(&Path, &Path) -> io::Result<bool>,
    ) -> Result<bool, StoreError> {
        let key = object_key(kind, name)?;
        self.forget_handle(&key);
        let path = self.root.join(&key);
        let dir = path
            .parent()
            .expect("object keys have a directory")
            .to_path_buf();
        let tmp = dir.join(format!(".tmp-{}", random_suffix()));
        let write = || -> io::Result<bool> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            if durable {
                f.sync_all()?;
            } else {
                start_writeback(&f, 0, 0);
            }
            drop(f);
            let placed = place(&tmp, &path)?;
            if durable {
                fsync_dir(&dir)?;
            }
            Ok(placed)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            StoreError::Io { key, source: e }
        })
    }
}

impl Store for FsStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        if kind == ObjectKind::Chunk {
            // Content-addressed: a chunk that exists already holds these bytes, and is
            // never replaced by a new write (which a later writeback error could tear).
            return self
                .write_via_temporary(kind, name, data, false, link_if_absent)
                .map(drop);
        }
        self.write_via_temporary(kind, name, data, true, |tmp, path| {
            fs::rename(tmp, path).map(|()| true)
        })
        .map(drop)
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool, StoreError> {
        // Hard-linked into place: link(2) fails when the name exists, so of several
        // writers exactly one creates it, and the object is whole whenever it is visible.
        self.write_via_temporary(kind, name, data, true, link_if_absent)
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let key = object_key(kind, name)?;
        fs::read(self.root.join(&key)).map_err(io(key))
    }

    fn get_into(&self, kind: ObjectKind, name: &str, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let key = object_key(kind, name)?;
        // read_to_end fills the spare capacity without zeroing it first.
        File::open(self.root.join(&key))
            .and_then(|mut f| f.read_to_end(out))
            .map(drop)
            .map_err(io(key))
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.get_range_into(kind, name, offset, len, &mut out)?;
        Ok(out)
    }

    fn get_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let key = object_key(kind, name)?;
        let cached = self.handles.lock().expect("poisoned").get(&key).cloned();
        let f = match cached {
            Some(f) => f,
            None => {
                let f = Arc::new(File::open(self.root.join(&key)).map_err(io(key.clone()))?);
                let mut handles = self.handles.lock().expect("poisoned");
                if handles.len() >= OPEN_HANDLES {
                    handles.clear();
                }
                handles.insert(key.clone(), f.clone());
                f
            }
        };
        let start = out.len();
        out.resize(start + len as usize, 0);
        let mut got = 0;
        let result = loop {
            if got == len as usize {
                break Ok(());
            }
            match f.read_at(&mut out[start + got..], offset + got as u64) {
                Ok(0) => break Ok(()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(io(key)(e)),
            }
        };
        out.truncate(start + got);
        result
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = vec![];
        for dir in self.dirs(kind) {
            let entries = fs::read_dir(&dir).map_err(io(dir.display().to_string()))?;
            for entry in entries {
                let entry = entry.map_err(io(dir.display().to_string()))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.starts_with('.') || (kind == ObjectKind::Config && name != "config") {
                    continue;
                }
                let meta = match entry.metadata() {
                    Ok(m) if m.is_file() => m,
                    Ok(_) => continue,
                    // Deleted between readdir and stat: not an object any more.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(name)(e)),
                };
                out.push(ObjectInfo {
                    name,
                    size: meta.len(),
                    modified: meta.modified().ok(),
                });
            }
        }
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        let key = object_key(kind, name)?;
        self.forget_handle(&key);
        match fs::remove_file(self.root.join(&key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { key, source: e }),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        nix::unistd::syncfs(&*self.root_handle).map_err(|e| StoreError::Io {
            key: self.root.display().to_string(),
            source: io::Error::from(e),
        })
    }

    fn remove_stale_temporaries(&self, older_than: Duration) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let mut removed = 0;
        let mut dirs = self.dirs(ObjectKind::Chunk);
        dirs.extend([
            self.root.clone(),
            self.root.join("snapshots"),
            self.root.join("locks"),
        ]);
        for dir in dirs {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| now.duration_since(t).unwrap_or_default() >= older_than)
                    .unwrap_or(false);
                if old && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    fn space(&self) -> Result<Option<super::Space>, StoreError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| StoreError::Io {
            key: self.root.display().to_string(),
            source: e.into(),
        })?;
        let frag = st.fragment_size() as u64;
        Ok(Some(super::Space {
            total_bytes: st.blocks() as u64 * frag,
            available_bytes: st.blocks_available() as u64 * frag,
        }))
    }

    fn concurrency(&self) -> usize {
        // Writes are page-cache copies plus a rename; a few threads hide the syscall latency.
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_chunk_is_never_overwritten_but_snapshots_and_config_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().join("repo")).unwrap();
        let name = "ab".repeat(32);
        s.put(ObjectKind::Chunk, &name, b"first").unwrap();
        s.put(ObjectKind::Chunk, &name, b"second").unwrap();
        assert_eq!(s.get(ObjectKind::Chunk, &name).unwrap(), b"first");
        assert!(s.put_new(ObjectKind::Config, "config", b"one").unwrap());
        assert!(!s.put_new(ObjectKind::Config, "config", b"two").unwrap());
        assert_eq!(s.get(ObjectKind::Config, "config").unwrap(), b"one");
        s.put(ObjectKind::Lock, "l", b"a").unwrap();
        s.put(ObjectKind::Lock, "l", b"b").unwrap();
        assert_eq!(
            s.get(ObjectKind::Lock, "l").unwrap(),
            b"b",
            "locks are rewritten"
        );
        let leftovers = std::fs::read_dir(dir.path().join("repo/objects/ab"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0, "no temporary left behind");
    }

    #[test]
    fn objects_of_many_sizes_read_back_whole_and_in_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().join("repo")).unwrap();
        let mut x = 7u32;
        for (i, len) in [0, 4095, 65535, 65536, 65537, 20 * 4096, 300_001]
            .into_iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            let name = format!("{i:02x}").repeat(32);
            s.put(ObjectKind::Chunk, &name, &data).unwrap();
            assert_eq!(
                s.get(ObjectKind::Chunk, &name).unwrap(),
                data,
                "{len} bytes"
            );
            assert_eq!(
                s.get_range(ObjectKind::Chunk, &name, 1000, 70_000).unwrap(),
                data[len.min(1000)..len.min(71_000)],
                "{len} bytes"
            );
        }
    }

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().join("repo")).unwrap();
        let id = "cd".repeat(32);
        s.put(ObjectKind::Chunk, &id, b"data").unwrap();
        s.put(ObjectKind::Snapshot, &id, b"manifest").unwrap();
        assert_eq!(s.get(ObjectKind::Chunk, &id).unwrap(), b"data");
        let listed = s.list(ObjectKind::Chunk).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, id);
        assert_eq!(listed[0].size, 4);
        s.sync().unwrap();
        s.delete(ObjectKind::Chunk, &id).unwrap();
        s.delete(ObjectKind::Chunk, &id).unwrap();
        assert!(s.get(ObjectKind::Chunk, &id).unwrap_err().is_not_found());
        fs::write(s.root().join("snapshots/.tmp-x"), b"half").unwrap();
        assert!(s
            .list(ObjectKind::Snapshot)
            .unwrap()
            .iter()
            .all(|o| !o.name.starts_with('.')));
        assert_eq!(s.remove_stale_temporaries(Duration::ZERO).unwrap(), 1);
    }
}
