//! Prometheus metrics. Labels are bounded: results, error categories and phases; never
//! error strings. Per-stack series (labelled `stack_namespace` and `stack`) are the
//! snapshot repository's gauges and those of `stacks.rs`: their cardinality is the number
//! of stacks, and an alert must be able to say which stack.

mod stacks;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RollbackLabels {
    trigger: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    format: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DataOpLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

/// One stack. `stack_namespace`, not `namespace`: a ServiceMonitor adds `namespace` (the
/// controller's) to every series, and the alerts group by it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StackLabels {
    stack_namespace: String,
    stack: String,
}

type DataHistograms = Family<DataOpLabels, Histogram, fn() -> Histogram>;

fn data_histogram() -> Histogram {
    // Seconds, from a small SQLite copy to gigabytes over S3.
    Histogram::new([
        0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0, 1800.0,
    ])
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
    rollouts: Family<OutcomeLabels, Counter>,
    rollbacks: Family<RollbackLabels, Counter>,
    rollback_duration: Histogram,
    rollback_deadline: Gauge<f64, std::sync::atomic::AtomicU64>,
    gate_measurements: Family<GateLabels, Counter>,
    data_duration: DataHistograms,
    data_bytes: Family<DataOpLabels, Counter>,
    data_failures: Family<DataOpLabels, Counter>,
    verification_failures: Counter,
    store_errors: Family<StoreLabels, Counter>,
    repository_used: Family<StackLabels, Gauge>,
    repository_available: Family<StackLabels, Gauge>,
    repository_capacity: Family<StackLabels, Gauge>,
    repository_next_rollout: Family<StackLabels, Gauge>,
    per_stack: stacks::StackSeries,
    notifications: Family<NotificationLabels, Counter>,
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
        let rollouts = Family::<OutcomeLabels, Counter>::default();
        let rollbacks = Family::<RollbackLabels, Counter>::default();
        // Seconds, from sub-second rollbacks to ones past a 5-minute deadline.
        let rollback_duration = Histogram::new([
            0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        let rollback_deadline = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let gate_measurements = Family::<GateLabels, Counter>::default();
        registry.register(
            "rollouts",
            "Rollouts that ended, by outcome (promoted, rolled_back, aborted)",
            rollouts.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollbacks that ended, by trigger (gate, deadline, manual) and outcome (completed, over_deadline, failed)",
            rollbacks.clone(),
        );
        registry.register(
            "rollback_duration_seconds",
            "Time from a rollback's decision to the target revision Available",
            rollback_duration.clone(),
        );
        registry.register(
            "rollback_deadline_seconds",
            "The rollback deadline that applied to the last rollback",
            rollback_deadline.clone(),
        );
        registry.register(
            "gate_measurements",
            "Health gate measurements by kind and outcome (success, failure, error)",
            gate_measurements.clone(),
        );
        let data_duration: DataHistograms = Family::new_with_constructor(data_histogram);
        let data_bytes = Family::<DataOpLabels, Counter>::default();
        let data_failures = Family::<DataOpLabels, Counter>::default();
        let verification_failures = Counter::default();
        let store_errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Snapshot agent Jobs that failed on the snapshot store (unreachable, refused), by store (fs, s3)",
            store_errors.clone(),
        );
        for store in ["fs", "s3"] {
            let _ = store_errors.get_or_create(&StoreLabels { store });
        }
        registry.register(
            "snapshot_duration_seconds",
            "Time a snapshot agent Job took, by operation (snapshot, restore, verify)",
            data_duration.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Bytes of data snapshotted or restored (every byte hashed), by operation",
            data_bytes.clone(),
        );
        registry.register(
            "snapshot_failures",
            "Snapshot agent Jobs that failed, by operation (store unreachable, corrupt data, ...)",
            data_failures.clone(),
        );
        registry.register(
            "snapshot_verification_failures",
            "Snapshots found damaged by a verification or refused by a restore",
            verification_failures.clone(),
        );
        let repository_used = Family::<StackLabels, Gauge>::default();
        let repository_available = Family::<StackLabels, Gauge>::default();
        let repository_capacity = Family::<StackLabels, Gauge>::default();
        let repository_next_rollout = Family::<StackLabels, Gauge>::default();
        registry.register(
            "snapshot_repository_used_bytes",
            "Bytes a stack's snapshot repository takes in its store, as last measured",
            repository_used.clone(),
        );
        registry.register(
            "snapshot_repository_available_bytes",
            "Room left for a stack's new snapshots (free space on the claim, or quota less use, whichever is smaller); absent when unknown",
            repository_available.clone(),
        );
        registry.register(
            "snapshot_repository_capacity_bytes",
            "The most a stack's snapshot repository can grow to (quota, or the claim's volume size, whichever is smaller); absent when unknown",
            repository_capacity.clone(),
        );
        registry.register(
            "snapshot_repository_next_rollout_bytes",
            "What a stack's next pre-rollout snapshots are estimated to add to its repository; absent without an estimate",
            repository_next_rollout.clone(),
        );
        for operation in ["snapshot", "restore", "verify"] {
            let _ = data_duration.get_or_create(&DataOpLabels { operation });
            let _ = data_bytes.get_or_create(&DataOpLabels { operation });
            let _ = data_failures.get_or_create(&DataOpLabels { operation });
        }
        for outcome in ["promoted", "rolled_back", "aborted"] {
            let _ = rollouts.get_or_create(&OutcomeLabels { outcome });
        }
        for trigger in ["gate", "deadline", "manual"] {
            for outcome in ["completed", "over_deadline", "failed"] {
                let _ = rollbacks.get_or_create(&RollbackLabels { trigger, outcome });
            }
        }
        for kind in ["readiness", "http", "error_rate", "prometheus", "job"] {
            for outcome in ["success", "failure", "error"] {
                let _ = gate_measurements.get_or_create(&GateLabels { kind, outcome });
            }
        }
        for result in ["ok", "error"] {
            let _ = reconciles.get_or_create(&ResultLabels { result });
        }
        for category in crate::error::Error::CATEGORIES {
            let _ = errors.get_or_create(&CategoryLabels { category });
        }
        for p in StackPhase::ALL {
            let _ = stacks.get_or_create(&PhaseLabels { phase: p.as_str() });
        }
        let per_stack = stacks::StackSeries::register(&mut registry);
        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification deliveries by payload format (CloudEvents, Slack, Teams) and outcome (sent, failed, refused)",
            notifications.clone(),
        );
        for format in deployctl_api::NotificationFormat::ALL {
            for outcome in ["sent", "failed", "refused"] {
                let _ = notifications.get_or_create(&NotificationLabels {
                    format: format.as_str(),
                    outcome,
                });
            }
        }
        Metrics {
            notifications,
            per_stack,
            registry,
            reconciles,
            errors,
            duration,
            stacks,
            leader,
            rollouts,
            rollbacks,
            rollback_duration,
            rollback_deadline,
            gate_measurements,
            data_duration,
            data_bytes,
            data_failures,
            verification_failures,
            store_errors,
            repository_used,
            repository_available,
            repository_capacity,
            repository_next_rollout,
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

    /// Records a stack as its status now says (`None` when it is gone: every series of the
    /// stack goes).
    pub fn set_stack(
        &self,
        namespace: &str,
        stack: &str,
        status: Option<&deployctl_api::ProductionStackStatus>,
    ) {
        self.set_phase(
            &format!("{namespace}/{stack}"),
            status.and_then(|s| s.phase),
        );
        match status {
            Some(s) => self.per_stack.set_info(
                namespace,
                stack,
                s.phase,
                s.current_revision,
                s.stable_revision,
            ),
            None => {
                self.per_stack.remove(namespace, stack);
                self.set_repository(namespace, stack, None);
            }
        }
    }

    /// Records a stack's phase in the count by phase (`None` when it is gone).
    fn set_phase(&self, key: &str, phase: Option<StackPhase>) {
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

    /// Sets a stack's snapshot repository gauges from its status (None: the stack is
    /// gone, or has no measurement; its series are removed). A figure that is not known
    /// has no series rather than a 0 that would read as a full store.
    pub fn set_repository(
        &self,
        namespace: &str,
        stack: &str,
        repo: Option<&deployctl_api::SnapshotRepositoryStatus>,
    ) {
        let labels = StackLabels {
            stack_namespace: namespace.to_string(),
            stack: stack.to_string(),
        };
        let set = |family: &Family<StackLabels, Gauge>, value: Option<i64>| match value {
            Some(v) => {
                family.get_or_create(&labels).set(v);
            }
            None => {
                family.remove(&labels);
            }
        };
        set(&self.repository_used, repo.map(|r| r.used_bytes));
        set(
            &self.repository_available,
            repo.and_then(|r| r.available_bytes),
        );
        set(
            &self.repository_capacity,
            repo.and_then(|r| r.capacity_bytes),
        );
        set(
            &self.repository_next_rollout,
            repo.and_then(|r| r.next_rollout_bytes),
        );
    }

    /// Records a measurement of a stack's gate (`component` None for the stack's own).
    pub fn gate_measured(
        &self,
        (namespace, stack, component, gate): (&str, &str, Option<&str>, &str),
        kind: &'static str,
        outcome: deployctl_api::MeasurementOutcome,
    ) {
        if outcome == deployctl_api::MeasurementOutcome::Failure {
            self.per_stack
                .gate_failed(namespace, stack, component, gate);
        }
        let outcome = match outcome {
            deployctl_api::MeasurementOutcome::Success => "success",
            deployctl_api::MeasurementOutcome::Failure => "failure",
            deployctl_api::MeasurementOutcome::Error => "error",
        };
        self.gate_measurements
            .get_or_create(&GateLabels { kind, outcome })
            .inc();
    }

    /// Records a finished snapshot agent Job: `operation` is snapshot, restore or verify.
    pub fn snapshot_operation(&self, operation: &'static str, seconds: f64, bytes: Option<u64>) {
        let l = DataOpLabels { operation };
        self.data_duration.get_or_create(&l).observe(seconds);
        if let Some(b) = bytes {
            self.data_bytes.get_or_create(&l).inc_by(b);
        }
    }

    /// Counts one notification delivery: `outcome` is `sent`, `failed` or `refused`.
    pub fn notification(&self, format: deployctl_api::NotificationFormat, outcome: &'static str) {
        self.notifications
            .get_or_create(&NotificationLabels {
                format: format.as_str(),
                outcome,
            })
            .inc();
    }

    /// Records a failed snapshot agent Job; `corrupt` when it found damaged data, `store`
    /// (`fs` or `s3`) when the snapshot store failed.
    pub fn snapshot_failed(
        &self,
        operation: &'static str,
        corrupt: bool,
        store: Option<&'static str>,
    ) {
        self.data_failures
            .get_or_create(&DataOpLabels { operation })
            .inc();
        if corrupt {
            self.verification_failures.inc();
        }
        if let Some(store) = store {
            self.store_errors
                .get_or_create(&StoreLabels { store })
                .inc();
        }
    }

    /// Records a finished restore Job of a stack.
    pub fn stack_restore(&self, namespace: &str, stack: &str, completed: bool) {
        self.per_stack.restore(namespace, stack, completed);
    }

    /// Records a rollout or rollback outcome of a stack.
    pub fn outcome(&self, namespace: &str, stack: &str, o: &crate::reconcile::plan::Outcome) {
        use crate::reconcile::plan::Outcome;
        match o {
            Outcome::Rollout(outcome) => {
                self.rollouts
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc();
            }
            Outcome::Rollback {
                trigger,
                outcome,
                seconds,
                deadline_seconds,
            } => {
                self.rollbacks
                    .get_or_create(&RollbackLabels { trigger, outcome })
                    .inc();
                self.rollback_duration.observe(*seconds);
                self.rollback_deadline.set(*deadline_seconds);
                self.per_stack
                    .rollback(namespace, stack, trigger, outcome, *seconds);
            }
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

    #[test]
    fn a_stacks_repository_has_one_series_per_figure_and_they_go_with_it() {
        let m = Metrics::default();
        let repo = deployctl_api::SnapshotRepositoryStatus {
            used_bytes: 700,
            available_bytes: Some(300),
            capacity_bytes: Some(1000),
            next_rollout_bytes: None,
            objects: None,
            volume_bytes: None,
            volume_available_bytes: None,
            quota_bytes: None,
            unestimated: vec![],
            measured_at: crate::context::now(),
            measured_by: None,
            operation: None,
        };
        m.set_repository("shop-ns", "shop", Some(&repo));
        let text = m.encode();
        let labels = r#"{stack_namespace="shop-ns",stack="shop"}"#;
        for line in [
            format!("deployctl_snapshot_repository_used_bytes{labels} 700"),
            format!("deployctl_snapshot_repository_available_bytes{labels} 300"),
            format!("deployctl_snapshot_repository_capacity_bytes{labels} 1000"),
        ] {
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("deployctl_snapshot_repository_next_rollout_bytes{"),
            "no estimate, no series: {text}"
        );
        m.set_repository("shop-ns", "shop", None);
        assert!(
            !m.encode().contains("shop-ns"),
            "a deleted stack's series go"
        );
    }

    fn status(
        phase: StackPhase,
        revision: i64,
        stable: i64,
    ) -> deployctl_api::ProductionStackStatus {
        deployctl_api::ProductionStackStatus {
            phase: Some(phase),
            current_revision: Some(revision),
            stable_revision: Some(stable),
            ..Default::default()
        }
    }

    #[test]
    fn each_stack_has_one_info_series_and_its_counters_go_with_it() {
        use crate::reconcile::plan::Outcome;
        use deployctl_api::MeasurementOutcome;
        let m = Metrics::default();
        m.set_stack("ns", "shop", Some(&status(StackPhase::Progressing, 2, 1)));
        m.set_stack("ns", "shop", Some(&status(StackPhase::RolledBack, 2, 1)));
        m.set_stack("other", "blog", Some(&status(StackPhase::Healthy, 4, 4)));
        m.gate_measured(
            ("ns", "shop", Some("api"), "errors"),
            "error_rate",
            MeasurementOutcome::Failure,
        );
        m.gate_measured(
            ("ns", "shop", Some("api"), "errors"),
            "error_rate",
            MeasurementOutcome::Failure,
        );
        m.gate_measured(
            ("ns", "shop", None, "slo"),
            "prometheus",
            MeasurementOutcome::Success,
        );
        m.outcome(
            "ns",
            "shop",
            &Outcome::Rollback {
                trigger: "gate",
                outcome: "completed",
                seconds: 6.5,
                deadline_seconds: 300.0,
            },
        );
        m.stack_restore("ns", "shop", true);
        let text = m.encode();
        let mut info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("deployctl_stack_info{"))
            .collect();
        info.sort();
        assert_eq!(
            info,
            [
                r#"deployctl_stack_info{stack_namespace="ns",stack="shop",phase="RolledBack",revision="2",stable_revision="1"} 1"#,
                r#"deployctl_stack_info{stack_namespace="other",stack="blog",phase="Healthy",revision="4",stable_revision="4"} 1"#,
            ],
            "one series per stack, the old phase replaced"
        );
        for line in [
            r#"deployctl_stack_gate_failures_total{stack_namespace="ns",stack="shop",component="api",gate="errors"} 2"#,
            r#"deployctl_stack_rollbacks_total{stack_namespace="ns",stack="shop",trigger="gate",outcome="completed"} 1"#,
            r#"deployctl_stack_last_rollback_duration_seconds{stack_namespace="ns",stack="shop"} 6.5"#,
            r#"deployctl_stack_restores_total{stack_namespace="ns",stack="shop",outcome="completed"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains(r#"gate="slo""#),
            "a success is not a failure: {text}"
        );
        m.set_stack("ns", "shop", None);
        let text = m.encode();
        assert!(
            !text.contains(r#"stack="shop""#),
            "a deleted stack's series go: {text}"
        );
        assert!(
            text.contains(r#"stack="blog""#),
            "another stack's stay: {text}"
        );
        assert!(
            text.contains(r#"deployctl_stacks{phase="Healthy"} 1"#),
            "{text}"
        );
    }
}
