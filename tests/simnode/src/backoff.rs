//! The kubelet's restart and image-pull back-off: the first retry is immediate, then
//! 10 s, doubling up to 5 min; a container that ran for 10 min (or an entry untouched for
//! that long) starts over.

use std::time::{Duration, Instant};

/// First non-zero delay.
pub(crate) const INITIAL: Duration = Duration::from_secs(10);
/// Longest delay.
pub(crate) const MAX: Duration = Duration::from_secs(300);
/// Running (or staying quiet) this long resets the back-off.
pub(crate) const RESET_AFTER: Duration = Duration::from_secs(600);

/// Back-off state of one container (or one image pull).
#[derive(Debug, Clone, Default)]
pub(crate) struct BackOff {
    /// The delay the next failure will wait; `None` before the first failure.
    next: Option<Duration>,
    last_failure: Option<Instant>,
}

impl BackOff {
    /// Records a failure at `now` after running for `ran_for`; returns how long to wait
    /// before the next attempt.
    pub(crate) fn failure(&mut self, now: Instant, ran_for: Duration) -> Duration {
        let stale = self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= RESET_AFTER);
        if ran_for >= RESET_AFTER || stale {
            self.next = None;
        }
        self.last_failure = Some(now);
        match self.next {
            None => {
                self.next = Some(INITIAL);
                Duration::ZERO
            }
            Some(d) => {
                self.next = Some((d * 2).min(MAX));
                d
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let mut b = BackOff::default();
        let t = Instant::now();
        let delays: Vec<u64> = (0..8)
            .map(|i| {
                b.failure(t + Duration::from_secs(i), Duration::ZERO)
                    .as_secs()
            })
            .collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn resets_after_a_long_run_or_a_long_quiet() {
        let mut b = BackOff::default();
        let t = Instant::now();
        b.failure(t, Duration::ZERO);
        assert_eq!(b.failure(t, Duration::ZERO), INITIAL);
        assert_eq!(b.failure(t, RESET_AFTER), Duration::ZERO);
        assert_eq!(b.failure(t, Duration::ZERO), INITIAL);
        assert_eq!(b.failure(t + RESET_AFTER, Duration::ZERO), Duration::ZERO);
    }
}
