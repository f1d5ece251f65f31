//! Per-stack series, in the style of Argo Rollouts' `rollout_info`: one info series per
//! stack and a few counters by stack, so an alert can say which stack. Their cardinality is
//! bounded by the stacks the controller watches (times the bounded trigger, outcome and
//! gate labels); every series of a stack goes with it.

use super::StackLabels;
use deployctl_api::StackPhase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct InfoLabels {
    stack_namespace: String,
    stack: String,
    phase: &'static str,
    revision: String,
    stable_revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RollbackLabels {
    stack_namespace: String,
    stack: String,
    trigger: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct RestoreLabels {
    stack_namespace: String,
    stack: String,
    outcome: &'static str,
}

/// A gate of a component (`component` empty for the stack's own gates). Gate names are
/// bounded per component by the CRD (at most 32, unique).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct GateLabels {
    stack_namespace: String,
    stack: String,
    component: String,
    gate: String,
}

/// The series one stack has, so they can all be removed with it.
#[derive(Debug, Default)]
struct Known {
    info: Option<InfoLabels>,
    rollbacks: BTreeSet<RollbackLabels>,
    restores: BTreeSet<RestoreLabels>,
    gates: BTreeSet<GateLabels>,
    last_rollback: bool,
    counters_at_zero: bool,
}

/// The per-stack families.
#[derive(Debug)]
pub(super) struct StackSeries {
    info: Family<InfoLabels, Gauge>,
    rollbacks: Family<RollbackLabels, Counter>,
    restores: Family<RestoreLabels, Counter>,
    last_rollback: Family<StackLabels, Gauge<f64, AtomicU64>>,
    gate_failures: Family<GateLabels, Counter>,
    known: Mutex<HashMap<(String, String), Known>>,
}

impl StackSeries {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let info = Family::<InfoLabels, Gauge>::default();
        let rollbacks = Family::<RollbackLabels, Counter>::default();
        let restores = Family::<RestoreLabels, Counter>::default();
        let last_rollback = Family::<StackLabels, Gauge<f64, AtomicU64>>::default();
        let gate_failures = Family::<GateLabels, Counter>::default();
        registry.register(
            "stack_info",
            "One series per stack, always 1: its phase, the revision its spec asks for and its stable revision",
            info.clone(),
        );
        registry.register(
            "stack_rollbacks",
            "Rollbacks of a stack that ended, by trigger (gate, deadline, manual) and outcome (completed, over_deadline, failed)",
            rollbacks.clone(),
        );
        registry.register(
            "stack_restores",
            "Data restores (agent Jobs) of a stack that ended, by outcome (completed, failed)",
            restores.clone(),
        );
        registry.register(
            "stack_last_rollback_duration_seconds",
            "How long the stack's last rollback took, from its decision to the target revision Available",
            last_rollback.clone(),
        );
        registry.register(
            "stack_gate_failures",
            "Failed measurements of a stack's gates, by component (empty for the stack's own gates) and gate",
            gate_failures.clone(),
        );
        StackSeries {
            info,
            rollbacks,
            restores,
            last_rollback,
            gate_failures,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the stack's info series; a stack with no phase yet has none.
    pub(super) fn set_info(
        &self,
        namespace: &str,
        stack: &str,
        phase: Option<StackPhase>,
        revision: Option<i64>,
        stable_revision: Option<i64>,
    ) {
        let key = (namespace.to_string(), stack.to_string());
        let next = phase.map(|p| InfoLabels {
            stack_namespace: namespace.to_string(),
            stack: stack.to_string(),
            phase: p.as_str(),
            revision: revision.map(|r| r.to_string()).unwrap_or_default(),
            stable_revision: stable_revision.map(|r| r.to_string()).unwrap_or_default(),
        });
        let mut known = self.known();
        let entry = known.entry(key).or_default();
        if !entry.counters_at_zero {
            // Counters start at 0 rather than appear at 1: `increase()` cannot see the
            // first event of a series that did not exist, and the rollback alerts need it.
            entry.counters_at_zero = true;
            for trigger in ["gate", "deadline", "manual"] {
                for outcome in ["completed", "over_deadline", "failed"] {
                    let labels = RollbackLabels {
                        stack_namespace: namespace.to_string(),
                        stack: stack.to_string(),
                        trigger,
                        outcome,
                    };
                    let _ = self.rollbacks.get_or_create(&labels);
                    entry.rollbacks.insert(labels);
                }
            }
            for outcome in ["completed", "failed"] {
                let labels = RestoreLabels {
                    stack_namespace: namespace.to_string(),
                    stack: stack.to_string(),
                    outcome,
                };
                let _ = self.restores.get_or_create(&labels);
                entry.restores.insert(labels);
            }
        }
        if entry.info == next {
            return;
        }
        // Replace, never add: one series per stack, whatever its history.
        if let Some(old) = entry.info.take() {
            self.info.remove(&old);
        }
        if let Some(labels) = next {
            self.info.get_or_create(&labels).set(1);
            entry.info = Some(labels);
        }
    }

    /// Counts a finished rollback of the stack and records its duration.
    pub(super) fn rollback(
        &self,
        namespace: &str,
        stack: &str,
        trigger: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        let labels = RollbackLabels {
            stack_namespace: namespace.to_string(),
            stack: stack.to_string(),
            trigger,
            outcome,
        };
        self.rollbacks.get_or_create(&labels).inc();
        let stack_labels = StackLabels {
            stack_namespace: namespace.to_string(),
            stack: stack.to_string(),
        };
        self.last_rollback.get_or_create(&stack_labels).set(seconds);
        let mut known = self.known();
        let entry = known
            .entry((namespace.to_string(), stack.to_string()))
            .or_default();
        entry.rollbacks.insert(labels);
        entry.last_rollback = true;
    }

    /// Counts a finished restore Job of the stack.
    pub(super) fn restore(&self, namespace: &str, stack: &str, completed: bool) {
        let labels = RestoreLabels {
            stack_namespace: namespace.to_string(),
            stack: stack.to_string(),
            outcome: if completed { "completed" } else { "failed" },
        };
        self.restores.get_or_create(&labels).inc();
        self.known()
            .entry((namespace.to_string(), stack.to_string()))
            .or_default()
            .restores
            .insert(labels);
    }

    /// Counts a failed measurement of a gate.
    pub(super) fn gate_failed(
        &self,
        namespace: &str,
        stack: &str,
        component: Option<&str>,
        gate: &str,
    ) {
        let labels = GateLabels {
            stack_namespace: namespace.to_string(),
            stack: stack.to_string(),
            component: component.unwrap_or_default().to_string(),
            gate: gate.to_string(),
        };
        self.gate_failures.get_or_create(&labels).inc();
        self.known()
            .entry((namespace.to_string(), stack.to_string()))
            .or_default()
            .gates
            .insert(labels);
    }

    /// Removes every series of a stack that is gone.
    pub(super) fn remove(&self, namespace: &str, stack: &str) {
        let Some(known) = self
            .known()
            .remove(&(namespace.to_string(), stack.to_string()))
        else {
            return;
        };
        if let Some(info) = &known.info {
            self.info.remove(info);
        }
        for l in &known.rollbacks {
            self.rollbacks.remove(l);
        }
        for l in &known.restores {
            self.restores.remove(l);
        }
        for l in &known.gates {
            self.gate_failures.remove(l);
        }
        if known.last_rollback {
            self.last_rollback.remove(&StackLabels {
                stack_namespace: namespace.to_string(),
                stack: stack.to_string(),
            });
        }
    }
}
