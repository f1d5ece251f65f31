//! Restoring a snapshot: verify first, touch later.
//!
//! The manifest's digest is checked before anything is created. Files are then written into
//! a staging directory on the same file system as the live data, every chunk checked
//! against its id as it is written, the staging tree synced, and only then swapped into
//! place by renames ([`crate::swap`]). Any refusal before the swap leaves the live data
//! exactly as it was; the staging directory is removed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{io_err, Error, Result};
use crate::id::SnapshotId;
use crate::lock::{self, LockKind, DEFAULT_STALE_AFTER};
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest, RESERVED_PREFIX};
use crate::methods::{exec, random_tag, sqlite, Method};
use crate::progress::{Phase, Progress, ProgressUpdate, REPORT_EVERY};
use crate::repo::Repository;
use crate::swap;

/// Tuning for [`Repository::restore`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Fetch-verify-write threads; default: the store's preferred concurrency, at least the
    /// number of cores.
    pub workers: Option<usize>,
    /// Where an `exec` snapshot's stream is staged before the restore command runs;
    /// default: the system temp directory.
    pub scratch_dir: Option<PathBuf>,
    /// Restore owners (uid/gid); default: only when running as root, the only case where
    /// `chown` to another user can succeed.
    pub restore_ownership: bool,
    /// Locks older than this are treated as abandoned.
    pub stale_lock_after: Duration,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            workers: None,
            scratch_dir: None,
            restore_ownership: nix::unistd::geteuid().is_root(),
            stale_lock_after: DEFAULT_STALE_AFTER,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The snapshot restored.
    pub snapshot: SnapshotId,
    /// Regular files written.
    pub files: u64,
    /// Bytes written (every one verified).
    pub bytes: u64,
    /// Chunk references verified.
    pub chunks: u64,
    /// Wall time.
    pub duration: Duration,
}

struct Job {
    entry: usize,
    offset: u64,
    chunk: ChunkRef,
    single: bool,
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Sets mtime, mode and (optionally) owner through an open handle.
fn finish_file(f: &File, e: &Entry, path: &Path, ownership: bool) -> Result<()> {
    if let Some(ns) = e.mtime_ns {
        f.set_modified(system_time(ns))
            .map_err(io_err("set mtime", path))?;
    }
    if ownership {
        std::os::unix::fs::fchown(f, Some(e.uid), Some(e.gid)).map_err(io_err("chown", path))?;
    }
    // After chown, which clears setuid/setgid bits.
    f.set_permissions(fs::Permissions::from_mode(e.mode))
        .map_err(io_err("chmod", path))?;
    Ok(())
}

/// Writes `m` into `staging` (which must not exist), verifying every chunk.
fn materialize(
    repo: &Repository,
    id: SnapshotId,
    m: &Manifest,
    staging: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<()> {
    fs::create_dir(staging).map_err(io_err("create staging directory", staging))?;
    let own = options.restore_ownership;
    let mut jobs = Vec::new();
    for (i, e) in m.entries.iter().enumerate() {
        let path = staging.join(&e.path);
        match e.kind {
            // Owner-only until the end: children are still to be created inside.
            EntryKind::Dir => fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(io_err("mkdir", &path))?,
            EntryKind::Symlink => {
                let target = e.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(io_err("symlink", &path))?;
                if own {
                    std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
                        .map_err(io_err("chown", &path))?;
                }
            }
            EntryKind::File => {
                if e.chunks.len() != 1 {
                    // create_new: never write through something already there.
                    let f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .map_err(io_err("create", &path))?;
                    f.set_len(e.size).map_err(io_err("truncate", &path))?;
                }
                let mut offset = 0;
                for c in &e.chunks {
                    jobs.push(Job {
                        entry: i,
                        offset,
                        chunk: *c,
                        single: e.chunks.len() == 1,
                    });
                    offset += u64::from(c.len);
                }
            }
        }
    }

    let total = m.meta.total_size;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = options
        .workers
        .unwrap_or_else(|| repo.store.concurrency().max(cores))
        .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let done = AtomicU64::new(0);
    let reported = Mutex::new(0u64);
    let run = |job: &Job| -> Result<()> {
        let e = &m.entries[job.entry];
        let path = staging.join(&e.path);
        let data = repo.read_chunk(id, &e.path, job.offset, &job.chunk)?;
        if job.single {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("create", &path))?;
            f.write_all(&data).map_err(io_err("write", &path))?;
            crate::store::fs::start_writeback(&f, 0, 0);
            finish_file(&f, e, &path, own)?;
        } else {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            f.write_all_at(&data, job.offset)
                .map_err(io_err("write", &path))?;
            crate::store::fs::start_writeback(&f, job.offset, data.len() as u64);
        }
        let now = done.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
        crate::testing::pause_point("restore-staging");
        if let Ok(mut last) = reported.try_lock() {
            if now - *last >= REPORT_EVERY {
                *last = now;
                progress.update(ProgressUpdate {
                    phase: Phase::Restore,
                    done_bytes: now,
                    total_bytes: total,
                });
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        for _ in 0..workers.min(jobs.len().max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { return };
                if let Err(e) = run(job) {
                    failed.store(true, Ordering::Relaxed);
                    first_err.lock().expect("poisoned").get_or_insert(e);
                    return;
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().expect("poisoned") {
        return Err(e);
    }
    progress.update(ProgressUpdate {
        phase: Phase::Restore,
        done_bytes: done.load(Ordering::Relaxed),
        total_bytes: total,
    });

    for e in m
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.chunks.len() != 1)
    {
        let path = staging.join(&e.path);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        finish_file(&f, e, &path, own)?;
    }
    // Deepest first, so setting a parent's mtime comes after its children are final.
    for e in m.entries.iter().rev().filter(|e| e.kind == EntryKind::Dir) {
        let path = staging.join(&e.path);
        let f = File::open(&path).map_err(io_err("open", &path))?;
        finish_file(&f, e, &path, own)?;
    }
    let dir = File::open(staging).map_err(io_err("open", staging))?;
    nix::unistd::syncfs(&dir).map_err(|e| Error::Io {
        op: "sync",
        path: staging.to_path_buf(),
        source: e.into(),
    })?;
    Ok(())
}

/// Materializes into `staging`, removing it again on any failure.
fn stage(
    repo: &Repository,
    id: SnapshotId,
    m: &Manifest,
    staging: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<()> {
    let r = materialize(repo, id, m, staging, options, progress);
    if r.is_err() {
        let _ = fs::remove_dir_all(staging);
    }
    r
}

fn single_entry<'a>(m: &'a Manifest, id: SnapshotId, name: &str) -> Result<&'a Entry> {
    match m.entries.as_slice() {
        [e] if e.path == name && e.kind == EntryKind::File => Ok(e),
        _ => Err(Error::ManifestCorrupt {
            snapshot: id,
            reason: format!("expected a single file entry {name:?}"),
        }),
    }
}

fn live_names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut out = vec![];
    for item in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let name = item.map_err(io_err("read directory", dir))?.file_name();
        if !name.to_string_lossy().starts_with(RESERVED_PREFIX) {
            out.push(name);
        }
    }
    Ok(out)
}

impl Repository {
    /// Restores snapshot `id` into the live data described by `method`, which must be the
    /// method the snapshot was taken with. The caller stops the data's writers first.
    pub fn restore(
        &self,
        id: SnapshotId,
        method: &Method,
        options: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let started = Instant::now();
        let _lock = lock::acquire(
            &*self.store,
            LockKind::Shared,
            "restore",
            options.stale_lock_after,
        )?;
        let m = self.load_manifest(id)?;
        if m.meta.method != method.kind() {
            return Err(Error::MethodMismatch {
                snapshot: id,
                recorded: m.meta.method.as_str().into(),
                requested: method.kind().as_str().into(),
            });
        }
        let staging_name = format!("{RESERVED_PREFIX}staging-{}", random_tag());
        match method {
            Method::Files { root } => {
                fs::create_dir_all(root).map_err(io_err("create", root))?;
                swap::recover(root)?;
                let staging = root.join(&staging_name);
                stage(self, id, &m, &staging, options, progress)?;
                crate::testing::pause_point("restore-before-swap");
                let out = live_names(root)?;
                let incoming = live_names(&staging)?;
                swap::swap_in(root, &staging_name, &out, &incoming)?;
            }
            Method::Sqlite { path } => {
                single_entry(&m, id, sqlite::ENTRY)?;
                let name = path.file_name().ok_or_else(|| Error::Unsupported {
                    path: path.clone(),
                    reason: "not a file path".into(),
                })?;
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                swap::recover(dir)?;
                let staging = dir.join(&staging_name);
                stage(self, id, &m, &staging, options, progress)?;
                let staged = staging.join(name);
                if let Err(e) = fs::rename(staging.join(sqlite::ENTRY), &staged) {
                    let _ = fs::remove_dir_all(&staging);
                    return Err(io_err("rename", staged)(e));
                }
                let out: Vec<_> = sqlite::companions(path)
                    .into_iter()
                    .map(std::ffi::OsString::from)
                    .filter(|n| dir.join(n).symlink_metadata().is_ok())
                    .collect();
                swap::swap_in(dir, &staging_name, &out, &[name.to_os_string()])?;
            }
            Method::Exec { restore, .. } => {
                single_entry(&m, id, exec::ENTRY)?;
                let scratch = options
                    .scratch_dir
                    .clone()
                    .unwrap_or_else(std::env::temp_dir);
                let staging = scratch.join(&staging_name);
                stage(self, id, &m, &staging, options, progress)?;
                let stream = staging.join(exec::ENTRY);
                let result = File::open(&stream)
                    .map_err(io_err("open", &stream))
                    .and_then(|f| exec::run_restore(restore, f));
                let _ = fs::remove_dir_all(&staging);
                result?;
            }
        }
        Ok(RestoreReport {
            snapshot: id,
            files: m.meta.file_count,
            bytes: m.meta.total_size,
            chunks: m.meta.chunk_count,
            duration: started.elapsed(),
        })
    }
}
