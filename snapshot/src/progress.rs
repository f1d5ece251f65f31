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

/// Progress shared by several worker threads: adds up their bytes and reports at most
/// every [`REPORT_EVERY`] bytes, never a value below one already reported.
///
/// Why not compare each worker's running total with the last report directly: a worker's
/// total is read when it adds its bytes, and another worker may add and report a larger
/// total before the first one gets to report; `now - last` then underflows (a panic in a
/// debug build, stale progress in a release one). Reports are made under the lock and only
/// forward, so whatever order the workers arrive in, the receiver sees a rising sequence.
pub(crate) struct SharedProgress<'a> {
    progress: &'a dyn Progress,
    phase: Phase,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    reported: std::sync::Mutex<u64>,
}

impl<'a> SharedProgress<'a> {
    pub(crate) fn new(progress: &'a dyn Progress, phase: Phase, total: u64) -> Self {
        Self {
            progress,
            phase,
            total,
            done: std::sync::atomic::AtomicU64::new(0),
            reported: std::sync::Mutex::new(0),
        }
    }

    /// Adds `bytes` done by one worker and reports if due; returns the running total.
    pub(crate) fn add(&self, bytes: u64) -> u64 {
        let now = self
            .done
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            + bytes;
        self.report(now);
        now
    }

    /// Reports `now` if it is at least [`REPORT_EVERY`] past the last report. A worker
    /// never waits for another's report (`try_lock`): one that finds the lock taken skips.
    fn report(&self, now: u64) {
        if let Ok(mut last) = self.reported.try_lock() {
            if now.checked_sub(*last).is_some_and(|d| d >= REPORT_EVERY) {
                *last = now;
                self.progress.update(ProgressUpdate {
                    phase: self.phase,
                    done_bytes: now,
                    total_bytes: self.total,
                });
            }
        }
    }

    /// Bytes added so far.
    pub(crate) fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The last report: `done_bytes` given by the caller (all bytes, once every worker ended).
    pub(crate) fn finish(&self, done_bytes: u64) {
        let mut last = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        *last = (*last).max(done_bytes);
        self.progress.update(ProgressUpdate {
            phase: self.phase,
            done_bytes,
            total_bytes: self.total,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The interleaving that panicked a restore: worker A adds its bytes (total 1 x EVERY),
    /// worker B adds more and reports (total 2 x EVERY) before A gets to its report.
    #[test]
    fn a_worker_reporting_an_older_total_after_a_newer_one_is_skipped() {
        let seen = Mutex::new(Vec::new());
        let sink = |u: ProgressUpdate| seen.lock().unwrap().push(u.done_bytes);
        let p = SharedProgress::new(&sink, Phase::Restore, 10 * REPORT_EVERY);
        // A's fetch_add, then B's fetch_add and report, then A's report.
        let a = p
            .done
            .fetch_add(REPORT_EVERY, std::sync::atomic::Ordering::Relaxed)
            + REPORT_EVERY;
        let b = p
            .done
            .fetch_add(REPORT_EVERY, std::sync::atomic::Ordering::Relaxed)
            + REPORT_EVERY;
        p.report(b);
        p.report(a);
        p.finish(p.done());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![2 * REPORT_EVERY, 2 * REPORT_EVERY]
        );
    }

    #[test]
    fn many_workers_report_a_rising_sequence_that_ends_at_the_total() {
        let seen = Mutex::new(Vec::new());
        let sink = |u: ProgressUpdate| seen.lock().unwrap().push(u.done_bytes);
        let per_add = REPORT_EVERY / 3 + 1;
        let (workers, adds) = (8u64, 200u64);
        let p = SharedProgress::new(&sink, Phase::Verify, workers * adds * per_add);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    for _ in 0..adds {
                        p.add(per_add);
                    }
                });
            }
        });
        p.finish(p.done());
        let seen = seen.into_inner().unwrap();
        assert!(
            seen.len() > 2,
            "progress was reported along the way: {seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "never backwards: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&(workers * adds * per_add)));
    }
}
