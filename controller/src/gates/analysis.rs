//! Pure gate bookkeeping: recording a measurement, deciding a gate's phase, and which
//! gates are due for a measurement. No I/O, so every rule is unit-tested.

use deployctl_api::duration::parse as parse_duration;
use deployctl_api::{Gate, GatePhase, GateStatus, Measurement, MeasurementOutcome};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// Measurements kept per gate in status: enough for a person to see a trend, small
/// enough that a status stays a few KB.
pub const KEEP_MEASUREMENTS: usize = 5;
/// Default interval between measurements.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The kind of check a gate makes, for metric labels and messages.
pub fn kind(g: &Gate) -> &'static str {
    if g.readiness.is_some() {
        "readiness"
    } else if g.http.is_some() {
        "http"
    } else if g.error_rate.is_some() {
        "error_rate"
    } else if g.prometheus.is_some() {
        "prometheus"
    } else if g.job.is_some() {
        "job"
    } else {
        "none"
    }
}

/// The gate's measurement interval.
pub fn interval(g: &Gate) -> Duration {
    g.interval
        .as_ref()
        .and_then(|d| d.parse().ok())
        .unwrap_or(DEFAULT_INTERVAL)
        .max(Duration::from_millis(100))
}

fn limits(g: &Gate) -> (i32, i32, i32) {
    (
        g.success_threshold.unwrap_or(1).max(1),
        g.failure_limit.unwrap_or(0).max(0),
        g.error_limit.unwrap_or(5).max(0),
    )
}

/// A fresh status for a gate about to be analysed.
pub fn fresh(g: &Gate) -> GateStatus {
    GateStatus {
        name: g.name.clone(),
        phase: GatePhase::Running,
        ..Default::default()
    }
}

/// Adds a measurement to the gate's counts and recent history.
pub fn record(st: &mut GateStatus, m: Measurement) {
    match m.outcome {
        MeasurementOutcome::Success => {
            st.successes += 1;
            st.consecutive_successes += 1;
            st.consecutive_failures = 0;
        }
        MeasurementOutcome::Failure => {
            st.failures += 1;
            st.consecutive_successes = 0;
            st.consecutive_failures += 1;
        }
        MeasurementOutcome::Error => {
            st.errors += 1;
            st.consecutive_successes = 0;
        }
    }
    st.measurements.push(m);
    if st.measurements.len() > KEEP_MEASUREMENTS {
        let extra = st.measurements.len() - KEEP_MEASUREMENTS;
        st.measurements.drain(..extra);
    }
}

/// Decides the gate's phase. `window_over` says whether the analysis window has elapsed
/// (a gate cannot pass before it; it can fail or become inconclusive at any time).
pub fn evaluate(st: &mut GateStatus, g: &Gate, window_over: bool) {
    if matches!(st.phase, GatePhase::Failed | GatePhase::Inconclusive) {
        return;
    }
    let (threshold, failure_limit, error_limit) = limits(g);
    let last_message = st
        .measurements
        .iter()
        .rev()
        .find(|m| m.outcome != MeasurementOutcome::Success)
        .and_then(|m| m.message.clone())
        .unwrap_or_default();
    if st.failures > failure_limit {
        st.phase = GatePhase::Failed;
        st.message = Some(format!(
            "gate {} failed: {} failed measurements (limit {failure_limit}); last: {last_message}",
            g.name, st.failures
        ));
    } else if st.errors > error_limit {
        st.phase = GatePhase::Inconclusive;
        st.message = Some(format!(
            "gate {} is inconclusive: {} measurements could not be taken (limit {error_limit}); last: {last_message}",
            g.name, st.errors
        ));
    } else if window_over && st.consecutive_successes >= threshold {
        st.phase = GatePhase::Passed;
        st.message = Some(format!(
            "gate {} passed: {} successes, {} failures, {} errors",
            g.name, st.successes, st.failures, st.errors
        ));
    } else {
        st.phase = GatePhase::Running;
        st.message = Some(format!(
            "{} of {threshold} consecutive successes needed{}",
            st.consecutive_successes,
            if window_over {
                ""
            } else {
                ", analysis window running"
            }
        ));
    }
}

/// Decides a gate's phase after promotion: Failed while its last `failureLimit + 1`
/// measurements all failed (so a stack that breaks is seen, and one that recovers is
/// seen too); measurement errors never fail it.
pub fn evaluate_monitoring(st: &mut GateStatus, g: &Gate) {
    let (_, failure_limit, _) = limits(g);
    let needed = failure_limit + 1;
    let recent: Vec<&Measurement> = st
        .measurements
        .iter()
        .filter(|m| m.outcome != MeasurementOutcome::Error)
        .collect();
    let failing = st.consecutive_failures >= needed;
    if failing {
        st.phase = GatePhase::Failed;
        st.message = Some(format!(
            "gate {} failed {needed} time(s) in a row; last: {}",
            g.name,
            recent
                .last()
                .and_then(|m| m.message.clone())
                .unwrap_or_default()
        ));
    } else {
        st.phase = GatePhase::Passed;
        st.message = recent
            .last()
            .map(|m| format!("last measurement: {:?}", m.outcome));
    }
}

/// Whether a measurement of this gate is due at `now`.
pub fn is_due(st: Option<&GateStatus>, g: &Gate, every: Duration, now: &Time) -> bool {
    let Some(st) = st else { return true };
    // During analysis a decided gate is not measured again; while monitoring
    // (`every` > 0) it is, so that a recovery is seen.
    if every.is_zero() && matches!(st.phase, GatePhase::Failed | GatePhase::Inconclusive) {
        return false;
    }
    match st.measurements.last() {
        None => true,
        Some(m) => elapsed(&m.at, now) + Duration::from_millis(50) >= every.max(interval(g)),
    }
}

/// Time until the gate's next measurement is due (zero if due now).
pub fn until_due(st: Option<&GateStatus>, g: &Gate, every: Duration, now: &Time) -> Duration {
    let every = every.max(interval(g));
    match st.and_then(|s| s.measurements.last()) {
        None => Duration::ZERO,
        Some(m) => every.saturating_sub(elapsed(&m.at, now)),
    }
}

/// `now - since`, zero if negative.
pub fn elapsed(since: &Time, now: &Time) -> Duration {
    Duration::try_from(now.0.duration_since(since.0)).unwrap_or_default()
}

/// Parses a duration field, falling back to a default.
pub fn duration_or(d: Option<&deployctl_api::Duration>, default: Duration) -> Duration {
    d.and_then(|d| parse_duration(&d.0).ok()).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(yaml: &str) -> Gate {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).unwrap())
    }

    fn m(outcome: MeasurementOutcome, at: i64) -> Measurement {
        Measurement {
            at: t(at),
            outcome,
            value: None,
            message: Some(format!("{outcome:?} at {at}")),
        }
    }

    use MeasurementOutcome::*;

    #[test]
    fn passes_only_after_the_window_with_enough_consecutive_successes() {
        let g = gate("{name: http, successThreshold: 2, http: {}}");
        let mut st = fresh(&g);
        record(&mut st, m(Success, 0));
        record(&mut st, m(Success, 1));
        evaluate(&mut st, &g, false);
        assert_eq!(st.phase, GatePhase::Running, "window still open");
        evaluate(&mut st, &g, true);
        assert_eq!(st.phase, GatePhase::Passed);
    }

    #[test]
    fn fails_past_the_failure_limit_and_stays_failed() {
        let g = gate("{name: http, failureLimit: 1, http: {}}");
        let mut st = fresh(&g);
        record(&mut st, m(Failure, 0));
        evaluate(&mut st, &g, false);
        assert_eq!(st.phase, GatePhase::Running, "one failure is tolerated");
        record(&mut st, m(Failure, 1));
        evaluate(&mut st, &g, false);
        assert_eq!(st.phase, GatePhase::Failed);
        assert!(st.message.as_ref().unwrap().contains("Failure at 1"));
        record(&mut st, m(Success, 2));
        evaluate(&mut st, &g, true);
        assert_eq!(
            st.phase,
            GatePhase::Failed,
            "a failed gate does not recover"
        );
    }

    #[test]
    fn a_flapping_gate_fails_once_failures_add_up() {
        let g = gate("{name: http, failureLimit: 2, http: {}}");
        let mut st = fresh(&g);
        for (i, o) in [Success, Failure, Success, Failure, Success, Failure]
            .into_iter()
            .enumerate()
        {
            record(&mut st, m(o, i as i64));
            evaluate(&mut st, &g, true);
        }
        assert_eq!(st.phase, GatePhase::Failed);
        assert_eq!((st.successes, st.failures), (3, 3));
    }

    #[test]
    fn errors_are_not_failures_until_the_error_limit_then_inconclusive() {
        let g = gate("{name: http, errorLimit: 2, http: {}}");
        let mut st = fresh(&g);
        record(&mut st, m(Error, 0));
        record(&mut st, m(Error, 1));
        evaluate(&mut st, &g, true);
        assert_eq!(st.phase, GatePhase::Running);
        record(&mut st, m(Success, 2));
        evaluate(&mut st, &g, true);
        assert_eq!(
            st.phase,
            GatePhase::Passed,
            "unreachable at first, then passes"
        );
        let mut st = fresh(&g);
        for i in 0..3 {
            record(&mut st, m(Error, i));
        }
        evaluate(&mut st, &g, true);
        assert_eq!(st.phase, GatePhase::Inconclusive);
    }

    #[test]
    fn keeps_a_bounded_history_and_knows_when_due() {
        let g = gate("{name: http, interval: 2s, http: {}}");
        let mut st = fresh(&g);
        assert!(is_due(Some(&st), &g, Duration::ZERO, &t(0)));
        for i in 0..20 {
            record(&mut st, m(Success, i));
        }
        assert_eq!(st.measurements.len(), KEEP_MEASUREMENTS);
        assert_eq!(st.measurements.last().unwrap().at, t(19));
        assert!(!is_due(Some(&st), &g, Duration::ZERO, &t(20)));
        assert!(is_due(Some(&st), &g, Duration::ZERO, &t(21)));
        assert_eq!(
            until_due(Some(&st), &g, Duration::ZERO, &t(20)),
            Duration::from_secs(1)
        );
        assert!(
            !is_due(Some(&st), &g, Duration::from_secs(30), &t(21)),
            "monitoring is slower"
        );
    }
}
