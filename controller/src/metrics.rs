//! Prometheus metrics. Labels are bounded: results, error categories and phases; never
//! stack names or error strings.

use deployctl_api::StackPhase;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<CategoryLabels, Counter>,
    duration: Histogram,
    stacks: Family<PhaseLabels, Gauge>,
    leader: Gauge,
    phases: Mutex<HashMap<String, StackPhase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("deployctl");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<CategoryLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let stacks = Family::<PhaseLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register(
            "reconcile",
            "Reconciles of ProductionStacks by result (ok, error)",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile of a stack took",
            duration.clone(),
        );
        registry.register("stacks", "ProductionStacks by phase", stacks.clone());
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        for result in ["ok", "error"] {
            let _ = reconciles.get_or_create(&ResultLabels { result });
        }
        for category in crate::error::Error::CATEGORIES {
            let _ = errors.get_or_create(&CategoryLabels { category });
        }
        for p in StackPhase::ALL {
            let _ = stacks.get_or_create(&PhaseLabels { phase: p.as_str() });
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            stacks,
            leader,
            phases: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Records a finished reconcile.
    pub fn reconciled(&self, seconds: f64, error_category: Option<&'static str>) {
        self.duration.observe(seconds);
        let result = if error_category.is_some() {
            "error"
        } else {
            "ok"
        };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(category) = error_category {
            self.errors
                .get_or_create(&CategoryLabels { category })
                .inc();
        }
    }

    /// Records a stack's phase (`None` when it is gone).
    pub fn set_phase(&self, key: &str, phase: Option<StackPhase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Some(p) => phases.insert(key.to_string(), p),
            None => phases.remove(key),
        };
        for p in StackPhase::ALL {
            let n = phases.values().filter(|v| **v == p).count();
            self.stacks
                .get_or_create(&PhaseLabels { phase: p.as_str() })
                .set(n as i64);
        }
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading as i64);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_bounded_series() {
        let m = Metrics::default();
        m.reconciled(0.01, None);
        m.reconciled(0.02, Some("conflict"));
        m.set_phase("ns/a", Some(StackPhase::Healthy));
        m.set_phase("ns/b", Some(StackPhase::Healthy));
        m.set_phase("ns/b", None);
        let text = m.encode();
        assert!(
            text.contains("deployctl_reconcile_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(text.contains("deployctl_reconcile_errors_total{category=\"conflict\"} 1"));
        assert!(text.contains("deployctl_stacks{phase=\"Healthy\"} 1"));
        assert!(text.contains("deployctl_reconcile_duration_seconds_count 2"));
        assert!(!text.contains("ns/a"), "no object names in labels");
    }
}
