//! Progress reporting: the engine calls back with bytes done and total, so the agent can
//! publish progress without the engine knowing how.

/// Which operation is reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading, chunking and storing data.
    Snapshot,
    /// Fetching, verifying and writing data into staging.
    Restore,
    /// Re-reading and re-hashing every chunk.
    Verify,
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressUpdate {
    /// Which operation.
    pub phase: Phase,
    /// Bytes processed so far.
    pub done_bytes: u64,
    /// Bytes expected in all (for `exec` snapshots, bytes so far: the stream length is
    /// unknown until it ends).
    pub total_bytes: u64,
}

/// Receives progress reports, from one engine thread at a time, at most every few MiB.
pub trait Progress: Send + Sync {
    /// Called as work advances and once at the end.
    fn update(&self, update: ProgressUpdate);
}

impl<F: Fn(ProgressUpdate) + Send + Sync> Progress for F {
    fn update(&self, update: ProgressUpdate) {
        self(update)
    }
}

/// Discards progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: ProgressUpdate) {}
}

/// How often (in bytes) to report.
pub(crate) const REPORT_EVERY: u64 = 16 * 1024 * 1024;
