//! Test support: fault points for the kill tests (debug builds only), and small volumes
//! for the tests of a disk that fills up.
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

/// Runs `f` on a thread of its own with a private mount namespace in which `dir` is a
/// tmpfs of `size` bytes: a volume that fills up, for tests. `unshare(CLONE_NEWNS)` is per
/// thread, and the threads and processes `f` starts inherit the namespace, so the engine's
/// workers and an agent process see the small volume while nothing is mounted outside the
/// test, even if it crashes. Needs root (CAP_SYS_ADMIN); panics otherwise.
pub fn with_small_volume(dir: &std::path::Path, size: u64, f: impl FnOnce() + Send) {
    use nix::mount::{mount, MsFlags};
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .expect("unshare a mount namespace (run as root)");
            // Private, so the tmpfs below never propagates to the host's namespace.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .expect("make mounts private");
            std::fs::create_dir_all(dir).expect("create the mount point");
            mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                MsFlags::empty(),
                Some(format!("size={size}").as_str()),
            )
            .expect("mount a size-limited tmpfs");
            f();
        })
        .join()
        .expect("the test body panicked")
    });
}
