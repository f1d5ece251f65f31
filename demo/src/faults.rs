//! Fault switches: how a release of the demo app misbehaves on purpose.
//!
//! The switches are set at start from flags or env and can be changed while running through
//! `POST /admin/faults`. Start-only switches (`crash_on_start`, `corrupt_data`) are kept and
//! reported but only act at the next start.

use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

/// The fault switches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Fraction (0.0 to 1.0) of `/` and `/api/*` requests that answer 500.
    pub error_rate: f64,
    /// Latency added to every `/api/*` request, in milliseconds.
    pub latency_ms: u64,
    /// Exit with code 3 right after start (start-only).
    pub crash_on_start: bool,
    /// `/readyz` answers 503 for as long as this is set.
    pub never_ready: bool,
    /// Overwrite some rows with garbage on start (start-only).
    pub corrupt_data: bool,
    /// Crash (exit code 3) this many seconds after start, or after being set at runtime.
    pub crash_after_secs: Option<u64>,
}

/// A partial update from `POST /admin/faults`: absent fields keep their value.
///
/// `crash_after_secs: null` cancels a pending crash, which is why that field is a double
/// option.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    /// New error rate.
    pub error_rate: Option<f64>,
    /// New added latency.
    pub latency_ms: Option<u64>,
    /// New start-only crash switch.
    pub crash_on_start: Option<bool>,
    /// New readiness fault.
    pub never_ready: Option<bool>,
    /// New start-only corruption switch.
    pub corrupt_data: Option<bool>,
    /// New crash delay (from now); `null` cancels.
    #[serde(default, deserialize_with = "double_option")]
    pub crash_after_secs: Option<Option<u64>>,
}

fn double_option<'de, D>(d: D) -> Result<Option<Option<u64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<u64>::deserialize(d).map(Some)
}

/// A switch value outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// `error_rate` must be a fraction.
    #[error("error_rate {0} is outside 0.0..=1.0")]
    ErrorRate(f64),
}

impl Faults {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), FaultsError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FaultsError::ErrorRate(self.error_rate));
        }
        Ok(())
    }

    /// Applies a partial update, validating the result before anything changes.
    pub fn patched(&self, patch: &FaultsPatch) -> Result<Faults, FaultsError> {
        let mut next = self.clone();
        if let Some(v) = patch.error_rate {
            next.error_rate = v;
        }
        if let Some(v) = patch.latency_ms {
            next.latency_ms = v;
        }
        if let Some(v) = patch.crash_on_start {
            next.crash_on_start = v;
        }
        if let Some(v) = patch.never_ready {
            next.never_ready = v;
        }
        if let Some(v) = patch.corrupt_data {
            next.corrupt_data = v;
        }
        if let Some(v) = patch.crash_after_secs {
            next.crash_after_secs = v;
        }
        next.validate()?;
        Ok(next)
    }
}

/// The live switches shared by the request handlers and the crash timer.
#[derive(Debug)]
pub struct FaultState {
    current: RwLock<Faults>,
    crash_at: watch::Sender<Option<Instant>>,
}

impl FaultState {
    /// Starts with the given switches; a crash delay counts from now.
    pub fn new(faults: Faults) -> Self {
        let deadline = crash_deadline(&faults);
        FaultState {
            current: RwLock::new(faults),
            crash_at: watch::Sender::new(deadline),
        }
    }

    /// A copy of the current switches.
    pub fn get(&self) -> Faults {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Applies a patch; a changed crash delay restarts the crash countdown from now.
    pub fn apply(&self, patch: &FaultsPatch) -> Result<Faults, FaultsError> {
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let next = guard.patched(patch)?;
        if patch.crash_after_secs.is_some() {
            self.crash_at.send_replace(crash_deadline(&next));
        }
        *guard = next.clone();
        Ok(next)
    }

    /// Follows the crash deadline (`None`: no crash planned).
    pub fn crash_deadline(&self) -> watch::Receiver<Option<Instant>> {
        self.crash_at.subscribe()
    }

    /// Rolls the dice for one request against the error rate.
    pub fn should_fail(&self) -> bool {
        let rate = self.get().error_rate;
        // Exact ends avoid the dice so that 0.0 and 1.0 are deterministic in tests.
        rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
    }

    /// The latency to add to an `/api/*` request.
    pub fn added_latency(&self) -> Option<Duration> {
        let ms = self.get().latency_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

fn crash_deadline(f: &Faults) -> Option<Instant> {
    f.crash_after_secs
        .map(|s| Instant::now() + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_changes_only_given_fields() {
        let base = Faults {
            latency_ms: 20,
            crash_after_secs: Some(60),
            ..Faults::default()
        };
        let patch: FaultsPatch = serde_json::from_str(r#"{"error_rate": 0.25}"#).unwrap();
        let next = base.patched(&patch).unwrap();
        assert_eq!(next.error_rate, 0.25);
        assert_eq!(next.latency_ms, 20);
        assert_eq!(next.crash_after_secs, Some(60));

        let cancel: FaultsPatch = serde_json::from_str(r#"{"crash_after_secs": null}"#).unwrap();
        assert_eq!(base.patched(&cancel).unwrap().crash_after_secs, None);
    }

    #[test]
    fn patch_rejects_bad_values() {
        let patch: FaultsPatch = serde_json::from_str(r#"{"error_rate": 1.5}"#).unwrap();
        assert_eq!(
            Faults::default().patched(&patch),
            Err(FaultsError::ErrorRate(1.5))
        );
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"eror_rate": 1}"#).is_err());
    }

    #[tokio::test]
    async fn error_rate_ends_are_deterministic() {
        let s = FaultState::new(Faults::default());
        assert!((0..100).all(|_| !s.should_fail()));
        s.apply(&FaultsPatch {
            error_rate: Some(1.0),
            ..FaultsPatch::default()
        })
        .unwrap();
        assert!((0..100).all(|_| s.should_fail()));
    }

    #[tokio::test]
    async fn crash_deadline_follows_patches() {
        let s = FaultState::new(Faults::default());
        let rx = s.crash_deadline();
        assert!(rx.borrow().is_none());
        s.apply(&FaultsPatch {
            crash_after_secs: Some(Some(5)),
            ..FaultsPatch::default()
        })
        .unwrap();
        assert!(rx.borrow().is_some());
        s.apply(&FaultsPatch {
            crash_after_secs: Some(None),
            ..FaultsPatch::default()
        })
        .unwrap();
        assert!(rx.borrow().is_none());
    }
}
