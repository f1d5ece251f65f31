//! The harness restarts a controller that exits on its own, as the kubelet restarts a
//! pod's container: with a doubling back-off, each restart written to the controller's log,
//! and never after the test stopped it. No cluster needed: a controller given a kubeconfig
//! that does not exist exits at once, every time.

use std::path::Path;
use std::time::{Duration, Instant};

use deployctl_harness::ControllerProcess;

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_controller_that_exits_is_restarted_with_back_off_until_stopped() {
    let binary = deployctl_harness::controller::controller_binary();
    let ns = format!("restart-{}", std::process::id());
    let mut c = ControllerProcess::start_binary(
        &binary,
        Path::new("/nonexistent/kubeconfig"),
        &ns,
        "c1",
        &[],
    );
    wait_for("two restarts", Duration::from_secs(30), || {
        c.restarts() >= 2
    });
    let log = c.log();
    assert!(
        log.contains("restarting it in 1s, as the kubelet would")
            && log.contains("restarting it in 2s, as the kubelet would"),
        "the log says each restart and its growing back-off:\n{log}"
    );
    assert!(
        log.matches("/nonexistent/kubeconfig").count() >= 3,
        "each run's own error is kept in the log:\n{log}"
    );
    // kill() returns once the supervisor has ended: nothing can start it again after.
    c.kill();
    assert!(!c.running());
    assert_eq!(c.pid(), 0, "a stopped controller has no process");
    let _ = std::fs::remove_file(c.log_path());
}
