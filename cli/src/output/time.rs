//! Times as people read them: ages in kubectl's style (`45s`, `4m12s`, `3h`, `5d`) and
//! durations between two API timestamps. "Now" is always passed in, so output is
//! reproducible in tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// Time elapsed from `then` to `now`; zero if `then` is in the future (clock skew).
pub fn since(then: &Time, now: Timestamp) -> Duration {
    let secs = now.as_second() - then.0.as_second();
    let nanos = i64::from(now.subsec_nanosecond()) - i64::from(then.0.subsec_nanosecond());
    let total = secs as f64 + nanos as f64 / 1e9;
    if total <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(total)
    }
}

/// kubectl's age format (`HumanDuration`): two units while the first is small, one unit
/// after.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs();
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        match secs % 60 {
            0 => format!("{mins}m"),
            s => format!("{mins}m{s}s"),
        }
    } else if mins < 180 {
        format!("{mins}m")
    } else if hours < 8 {
        match mins % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        }
    } else {
        format!("{}y", days / 365)
    }
}

/// The age of an object (`4m12s`), or `-` when it has no timestamp.
pub fn age(t: Option<&Time>, now: Timestamp) -> String {
    t.map(|t| human(since(t, now)))
        .unwrap_or_else(|| "-".to_string())
}

/// `4m12s ago`.
pub fn ago(t: &Time, now: Timestamp) -> String {
    format!("{} ago", human(since(t, now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn ages_read_like_kubectl() {
        let d = Duration::from_secs;
        assert_eq!(human(d(0)), "0s");
        assert_eq!(human(d(119)), "119s");
        assert_eq!(human(d(120)), "2m");
        assert_eq!(human(d(252)), "4m12s");
        assert_eq!(human(d(45 * 60)), "45m");
        assert_eq!(human(d(3 * 3600 + 20 * 60)), "3h20m");
        assert_eq!(human(d(20 * 3600)), "20h");
        assert_eq!(human(d(3 * 86_400 + 5 * 3600)), "3d5h");
        assert_eq!(human(d(40 * 86_400)), "40d");
        assert_eq!(human(d(3 * 365 * 86_400 + 86_400)), "3y1d");
        assert_eq!(human(d(10 * 365 * 86_400)), "10y");
    }

    #[test]
    fn since_clamps_clock_skew_to_zero() {
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(since(&t(940), now), Duration::from_secs(60));
        assert_eq!(since(&t(2000), now), Duration::ZERO);
        assert_eq!(ago(&t(748), now), "4m12s ago");
        assert_eq!(age(None, now), "-");
    }
}
