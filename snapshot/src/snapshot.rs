//! Taking a snapshot: read, chunk, hash, store, then write the manifest last.
//!
//! The pipeline runs on scoped threads: readers cut inputs into chunks, workers hash
//! (and seal) each chunk and store the new ones, and the calling thread collects chunk
//! references in order, reports progress and checks the lock is still held. Channels are
//! bounded, so memory stays at a few chunks per thread whatever the input size. The manifest is
//! written only after every chunk is stored and the store is synced: an agent killed at
//! any earlier point leaves no snapshot marked complete.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use crossbeam_channel::{bounded, unbounded};

use crate::chunker::{Chunk, ChunkBuffers, Chunker, ChunkerParams};
use crate::compress::ChunkCompressor;
use crate::error::{io_err, Error, Result};
use crate::id::ChunkId;
use crate::lock::{self, LockGuard, LockKind, DEFAULT_STALE_AFTER};
use crate::manifest::PackLoc;
use crate::manifest::{
    ChunkRef, Entry, EntryKind, Manifest, MethodKind, SnapshotInfo, SnapshotMeta, Source,
};
use crate::methods::{self, Method};
use crate::progress::{Phase, Progress, ProgressUpdate, REPORT_EVERY};
use crate::repo::{Repository, SnapshotListing};

/// Files changed less than this before the previous snapshot started are read again even
/// if their times look unchanged (see [`Entry::unchanged_since`]): a coarse clock tick is
/// at most 10 ms, and the rest allows for a file system on another machine (NFS) whose
/// clock is slightly ahead.
pub const RACY_MARGIN: Duration = Duration::from_secs(1);

/// Tuning for [`Repository::snapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Hash-and-store threads; default: the store's preferred concurrency, at least the
    /// number of cores.
    pub workers: Option<usize>,
    /// Locks older than this are treated as abandoned.
    pub stale_lock_after: Duration,
    /// Read every file, even those the previous snapshot of the same data shows unchanged
    /// (same size, mtime, ctime, inode and device), which are otherwise not read again. For file
    /// systems whose ctime or inode numbers cannot be trusted.
    pub read_unchanged_files: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            workers: None,
            stale_lock_after: DEFAULT_STALE_AFTER,
            read_unchanged_files: false,
        }
    }
}

/// What a snapshot did.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    /// The new snapshot.
    pub info: SnapshotInfo,
    /// Chunks written by this snapshot.
    pub new_chunks: u64,
    /// Plaintext bytes of those chunks.
    pub new_bytes: u64,
    /// Bytes they take in the store (with encryption overhead).
    pub stored_bytes: u64,
    /// Chunk references satisfied by chunks already stored.
    pub reused_chunks: u64,
    /// Files not read because the previous snapshot of the same data shows them unchanged.
    pub unchanged_files: u64,
    /// Wall time.
    pub duration: Duration,
}

/// Where a file's bytes come from.
pub(crate) enum Input {
    /// A file to open.
    Path(PathBuf),
    /// A stream (a dump command's stdout).
    Stream(Box<dyn Read + Send>),
}

/// What a method hands to the pipeline.
pub(crate) struct Prepared {
    /// Entries sorted by path; files have no chunks yet.
    pub entries: Vec<Entry>,
    /// One input per file entry, by entry index.
    pub inputs: Vec<(usize, Input)>,
    /// Expected bytes (0 when unknown).
    pub total: u64,
}

#[derive(Debug, Default)]
struct IngestStats {
    new_chunks: u64,
    new_bytes: u64,
    stored_bytes: u64,
    reused_chunks: u64,
}

enum Msg {
    Chunk {
        input: usize,
        seq: usize,
        cref: ChunkRef,
        stored: Option<u64>,
    },
    Finished {
        input: usize,
        count: usize,
    },
    Failed(Error),
}

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The page size of a SQLite database from its header (bytes 16-17, big-endian; 1 means
/// 65536), or `None` if `header` is not the start of one.
pub(crate) fn sqlite_page_size(header: &[u8]) -> Option<u32> {
    if header.len() < 18 || &header[..16] != SQLITE_MAGIC {
        return None;
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let size = if raw == 1 { 65536 } else { raw };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

/// Reads into `buf` until it is full or the source ends; returns the bytes read.
fn read_full(source: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Cuts one input into chunks and hands them to `emit` (which returns false to stop);
/// returns how many were emitted.
///
/// A page-structured file (a SQLite database, recognised by its header) is cut into fixed
/// runs of whole pages, `page_chunk` bytes or one page if pages are larger: its pages are
/// updated in place and never shift, so fixed cuts put each update in one small chunk, where
/// content-defined cuts of 1 MiB on average would rewrite a whole megabyte around every
/// changed row.
fn read_input(
    input: Input,
    params: ChunkerParams,
    page_chunk: Option<u32>,
    buffers: &mut ChunkBuffers,
    mut emit: impl FnMut(usize, Chunk, bool) -> bool,
) -> std::io::Result<usize> {
    let mut source: Box<dyn Read + Send> = match input {
        Input::Path(p) => Box::new(std::fs::File::open(p)?),
        Input::Stream(s) => s,
    };
    if let Some(page_chunk) = page_chunk {
        let mut header = vec![0u8; 100];
        let n = read_full(&mut source, &mut header)?;
        header.truncate(n);
        if let Some(page) = sqlite_page_size(&header) {
            let size = page_chunk.max(page) as usize;
            let mut first = header;
            first.resize(size, 0);
            let mut filled = n;
            let mut seq = 0;
            loop {
                let mut chunk = if seq == 0 {
                    std::mem::take(&mut first)
                } else {
                    filled = 0;
                    vec![0u8; size]
                };
                filled += read_full(&mut source, &mut chunk[filled..])?;
                if filled == 0 {
                    return Ok(seq);
                }
                chunk.truncate(filled);
                if !emit(seq, Chunk::owned(chunk), true) {
                    return Ok(seq);
                }
                seq += 1;
                if filled < size {
                    return Ok(seq);
                }
            }
        }
        // Not page-structured: the header goes first into the content-defined chunker.
        source = Box::new(std::io::Cursor::new(header).chain(source));
    }
    let mut chunker = Chunker::with_buffers(source, params, std::mem::take(buffers));
    let mut seq = 0;
    let result = loop {
        match chunker.next_chunk() {
            Ok(Some(data)) => {
                if !emit(seq, data, false) {
                    break Ok(seq);
                }
                seq += 1;
            }
            Ok(None) => break Ok(seq),
            Err(e) => break Err(e),
        }
    };
    *buffers = chunker.into_buffers();
    result
}

/// Packs are written once they reach this size.
const PACK_TARGET: usize = 8 * 1024 * 1024;

/// One worker's pack being filled.
#[derive(Default)]
struct PackBuffer {
    name: Option<ChunkId>,
    buf: Vec<u8>,
}

impl PackBuffer {
    /// Appends a stored chunk; returns where it will be.
    fn append(&mut self, stored: &[u8]) -> PackLoc {
        let object = *self.name.get_or_insert_with(|| {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).expect("system random number generator failed");
            ChunkId(b)
        });
        let loc = PackLoc {
            object,
            offset: self.buf.len() as u64,
        };
        self.buf.extend_from_slice(stored);
        loc
    }

    /// Writes the pack, if any, and starts a new one.
    fn flush(&mut self, repo: &Repository) -> Result<()> {
        if let Some(name) = self.name.take() {
            repo.store
                .put(crate::store::ObjectKind::Chunk, &name.to_hex(), &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// What the snapshot knows about a chunk id.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// Stored, by an earlier snapshot or by this one: reuse the reference.
    Stored(ChunkRef),
    /// Being compressed and stored by another worker right now.
    InFlight,
}

/// Chunks known to this snapshot, shared by its workers.
struct SeenChunks {
    map: Mutex<HashMap<ChunkId, Seen>>,
    /// Signalled whenever an in-flight chunk is stored (or given up).
    stored: Condvar,
}

/// One worker's reusable state: its pack, compressor and sealing buffer.
struct Worker<'r> {
    repo: &'r Repository,
    pack: PackBuffer,
    compressor: Option<ChunkCompressor>,
    /// For page chunks, at the repository's page level.
    page_compressor: Option<ChunkCompressor>,
    sealed: Vec<u8>,
}

impl<'r> Worker<'r> {
    fn new(repo: &'r Repository) -> Self {
        Worker {
            repo,
            pack: PackBuffer::default(),
            compressor: repo.compression().map(|c| ChunkCompressor::new(c.level)),
            page_compressor: repo
                .compression()
                .map(|c| ChunkCompressor::new(c.page_level)),
            sealed: Vec::new(),
        }
    }

    /// Hashes one chunk and stores it unless an equal chunk is already stored. Returns its
    /// reference and, if this call stored it, its stored size.
    ///
    /// The map is looked up before compressing, so the unchanged chunks of an incremental
    /// snapshot cost a hash and nothing else. A chunk another worker is storing right now
    /// (two equal files) is waited for, never stored twice: compression runs outside the
    /// lock, and the wait is one chunk's compression at most.
    fn store_piece(
        &mut self,
        seen: &SeenChunks,
        data: &[u8],
        paged: bool,
        small_below: u32,
    ) -> Result<(ChunkRef, Option<u64>)> {
        let id = self.repo.chunk_id(data);
        {
            let mut map = seen.map.lock().expect("poisoned");
            loop {
                match map.get(&id) {
                    Some(Seen::Stored(c)) => return Ok((*c, None)),
                    Some(Seen::InFlight) => map = seen.stored.wait(map).expect("poisoned"),
                    None => {
                        map.insert(id, Seen::InFlight);
                        break;
                    }
                }
            }
        }
        let result = self.encode_and_store(id, data, paged, small_below);
        let mut map = seen.map.lock().expect("poisoned");
        match &result {
            Ok((cref, _)) => map.insert(id, Seen::Stored(*cref)),
            // A waiter then stores it itself (or the snapshot is being cancelled anyway).
            Err(_) => map.remove(&id),
        };
        drop(map);
        seen.stored.notify_all();
        result
    }

    fn encode_and_store(
        &mut self,
        id: ChunkId,
        data: &[u8],
        paged: bool,
        small_below: u32,
    ) -> Result<(ChunkRef, Option<u64>)> {
        let repo = self.repo;
        let len = data.len() as u32;
        // Compress, then seal: ids and `len` stay those of the plaintext.
        let compressor = if paged {
            self.page_compressor.as_mut()
        } else {
            self.compressor.as_mut()
        };
        let compressed = compressor.and_then(|c| c.compress(data));
        let zlen = compressed.map(|z| z.len() as u32);
        let plain_side = compressed.unwrap_or(data);
        let stored: &[u8] = if repo.is_encrypted() {
            self.sealed.clear();
            repo.seal_chunk_into(id, plain_side, &mut self.sealed);
            &self.sealed
        } else {
            plain_side
        };
        let size = stored.len() as u64;
        let pack = if len < small_below {
            Some(self.pack.append(stored))
        } else {
            repo.store
                .put(crate::store::ObjectKind::Chunk, &id.to_hex(), stored)?;
            None
        };
        let cref = ChunkRef {
            id,
            len,
            pack,
            zlen,
        };
        if self.pack.buf.len() >= PACK_TARGET {
            self.pack.flush(repo)?;
        }
        Ok((cref, Some(size)))
    }
}

/// Runs the pipeline over `inputs`; returns each input's chunk list.
fn ingest(
    repo: &Repository,
    known: HashMap<ChunkId, ChunkRef>,
    inputs: Vec<(PathBuf, Input)>,
    total: u64,
    workers: usize,
    progress: &dyn Progress,
    lock: &LockGuard,
) -> Result<(Vec<Vec<ChunkRef>>, IngestStats)> {
    let n = inputs.len();
    let params = repo.chunker();
    let readers = n.clamp(1, 2);
    let (in_tx, in_rx) = unbounded();
    for (i, (label, input)) in inputs.into_iter().enumerate() {
        in_tx.send((i, label, input)).expect("receiver alive");
    }
    drop(in_tx);
    let (piece_tx, piece_rx) = bounded::<(usize, usize, Chunk, bool)>(workers * 2);
    let (msg_tx, msg_rx) = unbounded::<Msg>();
    let cancel = AtomicBool::new(false);
    let seen = SeenChunks {
        map: Mutex::new(
            known
                .into_iter()
                .map(|(id, c)| (id, Seen::Stored(c)))
                .collect(),
        ),
        stored: Condvar::new(),
    };
    let page_chunk = repo.page_chunk();
    let small_below = params.min;

    std::thread::scope(|s| {
        for _ in 0..readers {
            let (in_rx, piece_tx, msg_tx, cancel) =
                (in_rx.clone(), piece_tx.clone(), msg_tx.clone(), &cancel);
            s.spawn(move || {
                let mut buffers = ChunkBuffers::default();
                while let Ok((i, label, input)) = in_rx.recv() {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let sent = read_input(
                        input,
                        params,
                        page_chunk,
                        &mut buffers,
                        |seq, data, paged| {
                            !cancel.load(Ordering::Relaxed)
                                && piece_tx.send((i, seq, data, paged)).is_ok()
                        },
                    );
                    let msg = match sent {
                        Ok(count) => Msg::Finished { input: i, count },
                        Err(e) => Msg::Failed(io_err("read", label)(e)),
                    };
                    let _ = msg_tx.send(msg);
                }
            });
        }
        drop(piece_tx);
        for _ in 0..workers {
            let (piece_rx, msg_tx, cancel, seen) =
                (piece_rx.clone(), msg_tx.clone(), &cancel, &seen);
            s.spawn(move || {
                let mut worker = Worker::new(repo);
                while let Ok((input, seq, data, paged)) = piece_rx.recv() {
                    // Keep draining after a failure so readers never block on a full channel.
                    if cancel.load(Ordering::Relaxed) {
                        continue;
                    }
                    match worker.store_piece(seen, &data, paged, small_below) {
                        Ok((cref, stored)) => {
                            let _ = msg_tx.send(Msg::Chunk {
                                input,
                                seq,
                                cref,
                                stored,
                            });
                        }
                        Err(e) => {
                            cancel.store(true, Ordering::Relaxed);
                            let _ = msg_tx.send(Msg::Failed(e));
                        }
                    }
                }
                // The last, partly filled pack: written before the collector can finish.
                if !cancel.load(Ordering::Relaxed) {
                    if let Err(e) = worker.pack.flush(repo) {
                        cancel.store(true, Ordering::Relaxed);
                        let _ = msg_tx.send(Msg::Failed(e));
                    }
                }
            });
        }
        drop(msg_tx);

        let mut lists: Vec<Vec<Option<ChunkRef>>> = vec![Vec::new(); n];
        let mut counts: Vec<Option<usize>> = vec![None; n];
        let mut stats = IngestStats::default();
        let mut first_err: Option<Error> = None;
        let (mut done, mut reported) = (0u64, 0u64);
        for msg in msg_rx.iter() {
            match msg {
                Msg::Chunk {
                    input,
                    seq,
                    cref,
                    stored,
                } => {
                    let list = &mut lists[input];
                    if list.len() <= seq {
                        list.resize(seq + 1, None);
                    }
                    list[seq] = Some(cref);
                    match stored {
                        Some(size) => {
                            stats.new_chunks += 1;
                            stats.new_bytes += u64::from(cref.len);
                            stats.stored_bytes += size;
                        }
                        None => stats.reused_chunks += 1,
                    }
                    if done == 0 {
                        crate::testing::pause_point("snapshot-ingesting");
                    }
                    done += u64::from(cref.len);
                    if done - reported >= REPORT_EVERY {
                        reported = done;
                        progress.update(ProgressUpdate {
                            phase: Phase::Snapshot,
                            done_bytes: done,
                            total_bytes: total.max(done),
                        });
                        if let Err(e) = lock.ensure_held() {
                            cancel.store(true, Ordering::Relaxed);
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Msg::Finished { input, count } => counts[input] = Some(count),
                Msg::Failed(e) => {
                    cancel.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        progress.update(ProgressUpdate {
            phase: Phase::Snapshot,
            done_bytes: done,
            total_bytes: total.max(done),
        });
        let mut out = Vec::with_capacity(n);
        for (i, list) in lists.into_iter().enumerate() {
            let complete = counts[i] == Some(list.len()) && list.iter().all(Option::is_some);
            if !complete {
                return Err(Error::Internal(format!("input {i}: chunk list incomplete")));
            }
            out.push(list.into_iter().flatten().collect());
        }
        Ok((out, stats))
    })
}

/// `files` snapshots of `source`'s stack and component (any revision), newest first. The
/// listing is in the store's order, not by time.
fn files_snapshots_newest_first<'a>(
    snapshots: &'a [SnapshotInfo],
    source: &Source,
) -> Vec<&'a SnapshotInfo> {
    let mut found: Vec<&SnapshotInfo> = snapshots
        .iter()
        .filter(|s| {
            s.meta.method == MethodKind::Files
                && s.meta.source.stack == source.stack
                && s.meta.source.component == source.component
        })
        .collect();
    found.sort_by(|a, b| b.meta.created.cmp(&a.meta.created).then(b.id.cmp(&a.id)));
    found
}

/// How many of a component's newest snapshots are looked at for the one taken from the
/// same volume (a StatefulSet's replicas take theirs at about the same time).
const PARENT_CANDIDATES: usize = 8;
/// How many scanned files are tried to recognise the volume a snapshot was taken from.
const VOLUME_PROBES: usize = 64;

/// True when `parent` was taken from the volume `scanned` is on: one of the first scanned
/// files is in it with the same path, device and inode (a file rewritten since has a new
/// inode, so several are tried).
fn same_volume(scanned: &[Entry], parent: &Manifest) -> bool {
    let probes: Vec<&Entry> = scanned
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.inode.is_some() && e.device.is_some())
        .take(VOLUME_PROBES)
        .collect();
    if probes.is_empty() {
        return true;
    }
    let by_path: HashMap<&str, &Entry> = parent.files().map(|e| (e.path.as_str(), e)).collect();
    probes.iter().any(|p| {
        by_path
            .get(p.path.as_str())
            .is_some_and(|e| e.inode == p.inode && e.device == p.device)
    })
}

impl Repository {
    /// The snapshot whose entries tell which of the `scanned` files are unchanged: the
    /// newest complete `files` snapshot of the same stack and component taken from the
    /// same volume (a StatefulSet's replicas are one component on several volumes), else
    /// the newest one (whose files then simply do not match).
    fn parent_manifest(
        &self,
        listing: &SnapshotListing,
        source: &Source,
        scanned: &[Entry],
    ) -> Result<Option<Manifest>> {
        let mut newest = None;
        for s in files_snapshots_newest_first(&listing.snapshots, source)
            .into_iter()
            .take(PARENT_CANDIDATES)
        {
            let m = match self.load_manifest(s.id) {
                Ok(m) => m,
                // Forgotten since the listing.
                Err(Error::SnapshotNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if same_volume(scanned, &m) {
                return Ok(Some(m));
            }
            newest.get_or_insert(m);
        }
        Ok(newest)
    }

    /// Takes a snapshot of `method`'s data, labelled with `source`. The caller quiesces the
    /// data for the `files` method; `sqlite` and `exec` are consistent by construction.
    pub fn snapshot(
        &self,
        source: &Source,
        method: &Method,
        options: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        let started = Instant::now();
        let created = Utc::now();
        let lock = lock::acquire(
            &self.store,
            LockKind::Shared,
            "snapshot",
            options.stale_lock_after,
        )?;
        let (known, listing) = self.referenced_chunks()?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = options
            .workers
            .unwrap_or_else(|| self.store.concurrency().max(cores))
            .max(1);

        let mut capture = methods::capture(method)?;
        let prepared = capture.take_prepared();
        let Prepared {
            mut entries,
            inputs,
            mut total,
        } = prepared;
        let parent = match method.kind() {
            MethodKind::Files if !options.read_unchanged_files => {
                self.parent_manifest(&listing, source, &entries)?
            }
            _ => None,
        };
        let (mut unchanged_files, mut unchanged_chunks) = (0, 0);
        let inputs: Vec<(usize, Input)> = match &parent {
            None => inputs,
            Some(p) => {
                let before: HashMap<&str, &Entry> =
                    p.files().map(|e| (e.path.as_str(), e)).collect();
                let settled = p.meta.created.timestamp_nanos_opt().unwrap_or(i64::MIN)
                    - RACY_MARGIN.as_nanos() as i64;
                inputs
                    .into_iter()
                    .filter(|(idx, _)| {
                        let e = &mut entries[*idx];
                        match before.get(e.path.as_str()) {
                            Some(old) if e.unchanged_since(old, settled) => {
                                // Its chunks are referenced by a complete snapshot, which
                                // our shared lock keeps from any gc.
                                e.chunks = old.chunks.clone();
                                total = total.saturating_sub(e.size);
                                unchanged_files += 1;
                                unchanged_chunks += e.chunks.len() as u64;
                                false
                            }
                            _ => true,
                        }
                    })
                    .collect()
            }
        };
        let (slots, inputs): (Vec<usize>, Vec<(PathBuf, Input)>) = inputs
            .into_iter()
            .map(|(idx, input)| (idx, (PathBuf::from(&entries[idx].path), input)))
            .unzip();
        let ingested = ingest(self, known, inputs, total, workers, progress, &lock);
        // The method learns whether all input was read (an exec dump must also exit 0).
        capture.finish(ingested.is_ok())?;
        let (lists, stats) = ingested?;
        for (idx, chunks) in slots.into_iter().zip(lists) {
            let e = &mut entries[idx];
            e.size = chunks.iter().map(|c| u64::from(c.len)).sum();
            e.chunks = chunks;
        }
        if self.manifest_format() == crate::manifest::MANIFEST_FORMAT_V1 {
            // Fields an engine that knows only format 1 would refuse.
            for e in &mut entries {
                (e.ctime_ns, e.inode, e.device) = (None, None, None);
            }
        }
        let files: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .collect();
        let meta = SnapshotMeta {
            source: source.clone(),
            method: method.kind(),
            created,
            total_size: files.iter().map(|e| e.size).sum(),
            file_count: files.len() as u64,
            chunk_count: files.iter().map(|e| e.chunks.len() as u64).sum(),
        };
        let manifest = Manifest {
            format: self.manifest_format(),
            meta: meta.clone(),
            entries,
        };
        // All chunks durable before the manifest exists: the manifest is the completion mark.
        self.store.sync()?;
        crate::testing::pause_point("snapshot-before-manifest");
        // A lock that went stale may have let a gc delete chunks this snapshot reused: then
        // no manifest, so no snapshot that would fail when restored.
        lock.ensure_held()?;
        let id = self.write_manifest(&manifest)?;
        drop(lock);
        Ok(SnapshotReport {
            info: SnapshotInfo { id, meta },
            new_chunks: stats.new_chunks,
            new_bytes: stats.new_bytes,
            stored_bytes: stats.stored_bytes,
            reused_chunks: stats.reused_chunks + unchanged_chunks,
            unchanged_files,
            duration: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::SnapshotId;
    use chrono::TimeZone;

    fn info(n: u8, component: &str, method: MethodKind, second: u32) -> SnapshotInfo {
        SnapshotInfo {
            // Ids in the opposite order of times, as a store's listing may well be.
            id: SnapshotId([255 - n; 32]),
            meta: SnapshotMeta {
                source: Source::new("shop", component, format!("r{n}")),
                method,
                created: Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, second).unwrap(),
                total_size: 0,
                file_count: 0,
                chunk_count: 0,
            },
        }
    }

    #[test]
    fn the_parent_is_the_newest_files_snapshot_of_the_component_whatever_the_listing_order() {
        let listing = vec![
            info(3, "db", MethodKind::Files, 30),
            info(5, "db", MethodKind::Sqlite, 50),
            info(4, "api", MethodKind::Files, 40),
            info(1, "db", MethodKind::Files, 10),
            info(2, "db", MethodKind::Files, 20),
        ];
        let src = Source::new("shop", "db", "r9");
        let revisions = |l: &[SnapshotInfo], src: &Source| -> Vec<String> {
            files_snapshots_newest_first(l, src)
                .iter()
                .map(|s| s.meta.source.revision.clone())
                .collect()
        };
        assert_eq!(revisions(&listing, &src), ["r3", "r2", "r1"]);
        let mut reversed = listing.clone();
        reversed.reverse();
        assert_eq!(revisions(&reversed, &src), ["r3", "r2", "r1"]);
        assert!(revisions(&listing, &Source::new("shop", "cache", "r1")).is_empty());
        assert!(revisions(&listing, &Source::new("other", "db", "r1")).is_empty());
    }
}
