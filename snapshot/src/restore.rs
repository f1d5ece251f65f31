//! Restoring a snapshot: verify first, touch later.
//!
//! The manifest's digest is checked before anything is created. Files are then written into
//! a staging directory on the same file system as the live data, every chunk checked
//! against its id as it is written, the staging tree synced, and only then swapped into
//! place by renames ([`crate::swap`]). Any refusal before the swap leaves the live data
//! exactly as it was; the staging directory is removed.
//!
//! The work is shared by a few workers. Small files come first, in batches of one directory
//! each (creations in one directory serialize on its lock, so workers stay out of each
//! other's way), their chunks fetched with a few coalesced reads since they sit side by side
//! in packs. Then one worker syncs what is written so far while the others write the chunks
//! of large files at their offsets, starting their writeback as they go: the final sync is
//! left with little to do. No byte is written before its chunk is verified.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{io_err, Error, Result};
use crate::id::SnapshotId;
use crate::lock::{self, LockKind, DEFAULT_STALE_AFTER};
use crate::manifest::{ChunkRef, Entry, EntryKind, Manifest, RESERVED_PREFIX};
use crate::methods::{exec, random_tag, sqlite, Method};
use crate::progress::{Phase, Progress, SharedProgress};
use crate::repo::{Repository, StoredAt};
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

/// Small files restored by one job: consecutive single-chunk files of one directory, up to
/// this many files and bytes.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;
/// Writeback of a large file is started a window at a time (fewer, larger requests than
/// one per chunk).
const WRITEBACK_WINDOW: u64 = 8 << 20;
/// Packed chunks of a large file restored by one job, up to this many bytes.
const RUN_BYTES: u64 = 1 << 20;
/// Chunks of one pack closer together than this are fetched with one read.
const COALESCE_GAP: u64 = 64 << 10;

enum Job<'m> {
    /// Consecutive chunks `chunks` of a file of several chunks (created up front), the
    /// first at `offset`: one chunk stored alone, or a run of packed ones (a database's
    /// page chunks), fetched together.
    Run {
        entry: usize,
        offset: u64,
        chunks: Range<usize>,
    },
    /// Files of one chunk each, all in directory `dir` (relative; "" for the top):
    /// created, written and finished by the job.
    Files { dir: &'m str, entries: Vec<usize> },
    /// Syncs what is written so far, while the other workers go on.
    Flush,
}

/// A worker's reusable buffer.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    /// Per fetched chunk: (index into the batch, where its stored bytes are).
    items: Vec<(usize, StoredAt)>,
    /// Per batch file: where its verified plaintext is in `buf`.
    plain: Vec<Range<usize>>,
}

impl Scratch {
    /// Empties every buffer, keeping their allocations, for the next job.
    fn cleared(&mut self) -> &mut Self {
        self.buf.clear();
        self.items.clear();
        self.plain.clear();
        self
    }
}

fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
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
    // Opened before anything is written: `syncfs(2)` reports a writeback error only to
    // descriptors opened before it happened (see `sync_fs`).
    let staging_fs = File::open(staging).map_err(io_err("open", staging))?;
    let own = options.restore_ownership;
    let mut pieces = Vec::new();
    let mut batches = Vec::new();
    let mut batch: Option<(&str, Vec<usize>, u64)> = None;
    for (i, e) in m.entries.iter().enumerate() {
        match e.kind {
            // Owner-only until the end: children are still to be created inside.
            EntryKind::Dir => {
                let path = staging.join(&e.path);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io_err("mkdir", &path))?
            }
            EntryKind::Symlink => {
                let path = staging.join(&e.path);
                let target = e.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(io_err("symlink", &path))?;
                if own {
                    std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))
                        .map_err(io_err("chown", &path))?;
                }
            }
            EntryKind::File if e.chunks.len() == 1 => {
                let (dir, _) = split_parent(&e.path);
                let len = u64::from(e.chunks[0].len);
                match &mut batch {
                    Some((d, entries, bytes))
                        if *d == dir
                            && entries.len() < BATCH_FILES
                            && *bytes + len <= BATCH_BYTES =>
                    {
                        entries.push(i);
                        *bytes += len;
                    }
                    _ => {
                        if let Some((dir, entries, _)) = batch.take() {
                            batches.push(Job::Files { dir, entries });
                        }
                        batch = Some((dir, vec![i], len));
                    }
                }
            }
            EntryKind::File => {
                let path = staging.join(&e.path);
                // create_new: never write through something already there.
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
                f.set_len(e.size).map_err(io_err("truncate", &path))?;
                let (mut offset, mut k) = (0, 0);
                while k < e.chunks.len() {
                    // Packed chunks go in runs of up to RUN_BYTES: 65,536 page chunks of a
                    // 1 GiB database are then 512 jobs of a few reads each, not 65,536.
                    let (start, mut bytes) = (k, 0);
                    while k < e.chunks.len()
                        && (k == start
                            || (e.chunks[k].pack.is_some()
                                && e.chunks[start].pack.is_some()
                                && bytes + u64::from(e.chunks[k].len) <= RUN_BYTES))
                    {
                        bytes += u64::from(e.chunks[k].len);
                        k += 1;
                    }
                    pieces.push(Job::Run {
                        entry: i,
                        offset,
                        chunks: start..k,
                    });
                    offset += bytes;
                }
            }
        }
    }
    if let Some((dir, entries, _)) = batch.take() {
        batches.push(Job::Files { dir, entries });
    }
    // Small files first, then a sync of their data on one worker while the others write
    // the large files: the final sync then has little left to write.
    let flush = !batches.is_empty() && !pieces.is_empty();
    let jobs: Vec<Job> = batches
        .into_iter()
        .chain(flush.then_some(Job::Flush))
        .chain(pieces)
        .collect();

    let total = m.meta.total_size;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = options
        .workers
        .unwrap_or_else(|| repo.store.concurrency().max(cores))
        .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let shared = SharedProgress::new(progress, Phase::Restore, total);
    let run = |job: &Job, scratch: &mut Scratch| -> Result<()> {
        let bytes = match job {
            Job::Run {
                entry,
                offset,
                chunks,
            } => {
                let e = &m.entries[*entry];
                write_run(repo, id, e, staging, *offset, chunks.clone(), scratch)?
            }
            Job::Files { dir, entries } => {
                restore_files(repo, id, m, staging, dir, entries, own, scratch)?
            }
            Job::Flush => {
                sync_fs(&staging_fs, staging)?;
                0
            }
        };
        crate::testing::pause_point("restore-staging");
        shared.add(bytes);
        Ok(())
    };
    std::thread::scope(|s| {
        for _ in 0..workers.min(jobs.len().max(1)) {
            s.spawn(|| {
                let mut scratch = Scratch::default();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { return };
                    if let Err(e) = run(job, &mut scratch) {
                        failed.store(true, Ordering::Relaxed);
                        first_err.lock().expect("poisoned").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().expect("poisoned") {
        return Err(e);
    }
    shared.finish(shared.done());

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
    sync_fs(&staging_fs, staging)?;
    Ok(())
}

/// Makes everything written on the file system of `dir` durable (one `syncfs` rather than
/// an fsync per file: 10,000 small files would mean 10,000 cache flushes). `f` is a
/// descriptor of `dir` opened before the writes: since Linux 5.8 `syncfs` returns a
/// writeback error that happened after its descriptor was opened, so one opened here, at
/// the end, could miss an error from a page written back early.
fn sync_fs(f: &File, dir: &Path) -> Result<()> {
    nix::unistd::syncfs(f).map_err(|e| Error::Io {
        op: "sync",
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// Fetches, verifies and writes consecutive chunks of a file of several chunks, the first
/// at `offset`; returns the bytes written.
fn write_run(
    repo: &Repository,
    id: SnapshotId,
    e: &Entry,
    staging: &Path,
    offset: u64,
    chunks: Range<usize>,
    scratch: &mut Scratch,
) -> Result<u64> {
    let Scratch { buf, items, plain } = scratch.cleared();
    let run = &e.chunks[chunks];
    let mut offsets = Vec::with_capacity(run.len());
    let mut at = offset;
    for c in run {
        offsets.push(at);
        at += u64::from(c.len);
    }
    items.extend(run.iter().enumerate().map(|(k, c)| (k, repo.stored_at(c))));
    plain.resize(run.len(), 0..0);
    fetch_checked(
        repo,
        id,
        items,
        |k| (e.path.as_str(), offsets[k], &run[k]),
        buf,
        plain,
    )?;
    let path = staging.join(&e.path);
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("open", &path))?;
    for (k, range) in plain.iter().enumerate() {
        f.write_all_at(&buf[range.clone()], offsets[k])
            .map_err(io_err("write", &path))?;
    }
    let len = at - offset;
    // One window behind the run that crosses into the next, so that runs of that window
    // still in flight on other workers are mostly written by then; stragglers go with the
    // final sync.
    let w = WRITEBACK_WINDOW;
    let (w0, w1) = (offset / w, at / w);
    if w1 > w0 && w0 >= 1 {
        crate::store::fs::start_writeback(&f, (w0 - 1) * w, w);
    }
    if at == e.size {
        crate::store::fs::start_writeback(&f, w0.saturating_sub(1) * w, 0);
    }
    Ok(len)
}

/// Fetches the stored bytes of `items` (chunk index, where) with as few reads as possible,
/// neighbouring ranges of one pack with one read, and checks every chunk where it landed
/// (decrypting in place, decompressing to the end of `buf`). Then `plain[k]` is where chunk
/// `k`'s verified plaintext is in `buf`. `chunk(k)` gives the file, offset and reference of
/// chunk `k` (for errors). A chunk listed twice (equal files) is checked once.
fn fetch_checked<'m>(
    repo: &Repository,
    id: SnapshotId,
    items: &mut [(usize, StoredAt)],
    chunk: impl Fn(usize) -> (&'m str, u64, &'m ChunkRef),
    buf: &mut Vec<u8>,
    plain: &mut [Range<usize>],
) -> Result<()> {
    items.sort_by_key(|(_, at)| (at.object, at.offset));
    let mut i = 0;
    while i < items.len() {
        let (k0, first) = items[i];
        let mut end = first.offset + first.len;
        let mut j = i + 1;
        while j < items.len() && !first.whole {
            let (_, at) = items[j];
            let same = at == items[j - 1].1;
            let next_to =
                at.object == first.object && at.offset >= end && at.offset - end <= COALESCE_GAP;
            if !same && !next_to {
                break;
            }
            end = end.max(at.offset + at.len);
            j += 1;
        }
        let base = buf.len();
        match repo.fetch_stored(&first, end - first.offset, buf) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {
                let (path, offset, c) = chunk(k0);
                return Err(Repository::chunk_missing(id, path, offset, c));
            }
            Err(e) => return Err(e.into()),
        }
        let fetched = buf.len();
        for n in i..j {
            let (k, at) = items[n];
            let (path, offset, c) = chunk(k);
            if n > i && at == items[n - 1].1 && c == chunk(items[n - 1].0).2 {
                plain[k] = plain[items[n - 1].0].clone();
                continue;
            }
            let raw = if at.whole {
                base..fetched
            } else {
                let s = base + (at.offset - first.offset) as usize;
                s.min(fetched)..(s + at.len as usize).min(fetched)
            };
            plain[k] = repo.check_chunk(id, path, offset, c, buf, raw)?;
        }
        i = j;
    }
    Ok(())
}

/// Restores a batch of single-chunk files of directory `dir`: fetches their chunks with as
/// few reads as possible, verifies every one, then creates, writes and finishes the files.
/// Returns the bytes written.
#[allow(clippy::too_many_arguments)]
fn restore_files(
    repo: &Repository,
    id: SnapshotId,
    m: &Manifest,
    staging: &Path,
    dir: &str,
    entries: &[usize],
    own: bool,
    scratch: &mut Scratch,
) -> Result<u64> {
    let Scratch { buf, items, plain } = scratch.cleared();
    let chunk = |k: usize| {
        (
            m.entries[entries[k]].path.as_str(),
            0,
            &m.entries[entries[k]].chunks[0],
        )
    };
    items.extend((0..entries.len()).map(|k| (k, repo.stored_at(chunk(k).2))));
    plain.resize(entries.len(), 0..0);
    fetch_checked(repo, id, items, chunk, buf, plain)?;

    let dir_path = staging.join(dir);
    let dir_fd = File::open(&dir_path).map_err(io_err("open", &dir_path))?;
    let mut bytes = 0;
    for (k, &entry) in entries.iter().enumerate() {
        let e = &m.entries[entry];
        let (_, name) = split_parent(&e.path);
        let path = || staging.join(&e.path);
        // O_EXCL: never write through something already there.
        let fd = nix::fcntl::openat(
            &dir_fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|err| io_err("create", path())(err.into()))?;
        let mut f = File::from(fd);
        let data = &buf[plain[k].clone()];
        f.write_all(data)
            .map_err(|err| io_err("write", path())(err))?;
        finish_file(&f, e, &path(), own)?;
        bytes += data.len() as u64;
    }
    Ok(bytes)
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
            &self.store,
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
            Method::ExecFile { file } => {
                single_entry(&m, id, exec::ENTRY)?;
                // Staged beside the file, so the verified stream is renamed into place:
                // whoever waits for the file never sees a partial or unverified one.
                let dir = file
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                let staging = dir.join(&staging_name);
                stage(self, id, &m, &staging, options, progress)?;
                let staged = staging.join(exec::ENTRY);
                // Readable by the restore command, which may run as another user than
                // the agent (the stream's entry is recorded as root's, mode 0600).
                let renamed = fs::set_permissions(&staged, fs::Permissions::from_mode(0o644))
                    .map_err(io_err("chmod", &staged))
                    .and_then(|()| fs::rename(&staged, file).map_err(io_err("rename", file)))
                    .and_then(|()| {
                        File::open(dir)
                            .and_then(|d| d.sync_all())
                            .map_err(io_err("sync", dir))
                    });
                let _ = fs::remove_dir_all(&staging);
                renamed?;
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
