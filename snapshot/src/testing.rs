//! Fault points for the kill tests (debug builds only).
//!
//! When `DEPLOYCTL_SNAPSHOT_TEST_PAUSE` names a point, the process prints
//! `paused at <point>` on stdout and waits forever there, so a test can SIGKILL it at
//! exactly that point instead of guessing with sleeps. Release builds compile this away.

/// Environment variable naming the point to pause at.
pub const PAUSE_ENV: &str = "DEPLOYCTL_SNAPSHOT_TEST_PAUSE";

#[cfg(debug_assertions)]
pub(crate) fn pause_point(point: &str) {
    use std::io::Write;
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == point) {
        let mut out = std::io::stdout().lock();
        // Own line: the test harness may have left its "test name ... " line open.
        let _ = writeln!(out, "\npaused at {point}");
        let _ = out.flush();
        drop(out);
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(debug_assertions))]
pub(crate) fn pause_point(_point: &str) {}
