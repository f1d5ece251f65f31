//! Adoption (pure): when the workload a component's `templateFrom` names is scaled down.
//!
//! deployctl runs its own copy of the referenced workload's pods; the referenced one is
//! scaled to 0 only once that copy is Available on a revision, so adopting a running
//! service never leaves it without pods.

use super::{RevisionRef, WorkloadState};
use deployctl_api::WorkloadKind;
use std::collections::BTreeMap;

/// Scale a referenced workload to 0 through its `scale` subresource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleDown {
    /// The component whose template it provides.
    pub component: String,
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// Its replicas before.
    pub from: i32,
}

/// The referenced workloads to scale down now: those with replicas left whose component's
/// own workload is Available on a revision (any: after a rollback it is the older one, and
/// it serves). `referenced` holds each workload's current `spec.replicas`.
pub fn scale_downs(
    desired: &RevisionRef,
    observed: &BTreeMap<String, WorkloadState>,
    referenced: &BTreeMap<(WorkloadKind, String), i32>,
) -> Vec<ScaleDown> {
    desired
        .components
        .iter()
        .filter_map(|c| {
            let from = c.template_from.as_ref()?;
            let replicas = *referenced.get(&(from.kind, from.name.clone()))?;
            let own = observed.get(&c.name)?;
            (replicas > 0 && own.available && own.revision.is_some() && !own.stopped).then(|| {
                ScaleDown {
                    component: c.name.clone(),
                    kind: from.kind,
                    name: from.name.clone(),
                    from: replicas,
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> RevisionRef {
        let components = serde_yaml_ng::from_str(
            "[{name: web, templateFrom: {kind: Deployment, name: web}, template: {spec: {containers: [{name: a, image: x}]}}}, {name: db, template: {spec: {containers: [{name: a, image: x}]}}}]",
        )
        .unwrap();
        RevisionRef::new("s", 1, components).unwrap()
    }

    fn state(available: bool) -> WorkloadState {
        WorkloadState {
            revision: Some(1),
            replicas: 2,
            available,
            ..Default::default()
        }
    }

    #[test]
    fn the_referenced_workload_goes_to_zero_only_once_ours_is_available() {
        let referenced = BTreeMap::from([((WorkloadKind::Deployment, "web".to_string()), 3)]);
        let observed = BTreeMap::from([("web".to_string(), state(false))]);
        assert!(scale_downs(&desired(), &observed, &referenced).is_empty());
        assert!(scale_downs(&desired(), &BTreeMap::new(), &referenced).is_empty());
        let observed = BTreeMap::from([("web".to_string(), state(true))]);
        assert_eq!(
            scale_downs(&desired(), &observed, &referenced),
            vec![ScaleDown {
                component: "web".into(),
                kind: WorkloadKind::Deployment,
                name: "web".into(),
                from: 3
            }]
        );
        // Already at zero: nothing to do, no Event again.
        let zero = BTreeMap::from([((WorkloadKind::Deployment, "web".to_string()), 0)]);
        assert!(scale_downs(&desired(), &observed, &zero).is_empty());
    }
}
