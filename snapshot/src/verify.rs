//! A restore drill without the restore: re-reads and re-hashes every chunk of a snapshot.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::lock::{self, LockKind, DEFAULT_STALE_AFTER};
use crate::manifest::ChunkRef;
use crate::progress::{Phase, Progress, SharedProgress};
use crate::repo::Repository;

/// What a verify checked.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Regular files in it.
    pub files: u64,
    /// Distinct chunks read and re-hashed.
    pub unique_chunks: u64,
    /// Plaintext bytes of those chunks.
    pub bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

impl Repository {
    /// Checks that snapshot `id` is complete and intact: manifest digest and safety, then
    /// every distinct chunk fetched, decrypted and re-hashed. The first failure is returned,
    /// naming the file and chunk.
    pub fn verify(&self, id: SnapshotId, progress: &dyn Progress) -> Result<VerifyReport> {
        let started = Instant::now();
        let _lock = lock::acquire(&self.store, LockKind::Shared, "verify", DEFAULT_STALE_AFTER)?;
        let m = self.load_manifest(id)?;
        let mut seen = HashSet::new();
        let mut jobs: Vec<(&str, u64, ChunkRef)> = Vec::new();
        for e in m.files() {
            let mut offset = 0;
            for c in &e.chunks {
                if seen.insert(c.id) {
                    jobs.push((&e.path, offset, *c));
                }
                offset += u64::from(c.len);
            }
        }
        let total: u64 = jobs.iter().map(|j| u64::from(j.2.len)).sum();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = self.store.concurrency().max(cores).min(jobs.len().max(1));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_err: Mutex<Option<Error>> = Mutex::new(None);
        let shared = SharedProgress::new(progress, Phase::Verify, total);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let Some((file, offset, c)) =
                            jobs.get(next.fetch_add(1, Ordering::Relaxed))
                        else {
                            return;
                        };
                        if let Err(e) = self.read_chunk_into(id, file, *offset, c, &mut buf) {
                            failed.store(true, Ordering::Relaxed);
                            first_err.lock().expect("poisoned").get_or_insert(e);
                            return;
                        }
                        shared.add(u64::from(c.len));
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().expect("poisoned") {
            return Err(e);
        }
        shared.finish(total);
        Ok(VerifyReport {
            snapshot: id,
            files: m.meta.file_count,
            unique_chunks: jobs.len() as u64,
            bytes: total,
            duration: started.elapsed(),
        })
    }
}
