//! In-memory copies (reflector stores) of what reconciles read: the stacks'
//! ControllerRevisions, their workloads, and StackOperations.
//!
//! Without them every reconcile costs reads: a GET per component and a list of the
//! namespace's operations, even when nothing changed (a resync, or the echo of the
//! controller's own status write). With a thousand stacks those reads alone kept the API
//! server busy; with the stores a reconcile of a steady stack sends no request at all.
//!
//! Each store is fed by its own watch, in its own task ([`feed`]). That same task is what
//! wakes the stacks ([`Triggers`]): an object is put in the store first and its stack is
//! woken after, so the reconcile an event starts always sees at least that event. (A
//! store fed by a second watch next to the controller's own trigger watch could lag
//! behind the event that woke the reconcile, and a decision taken on the older copy would
//! wait for the next resync.) The feeds run apart from the controller's scheduler, and
//! the controller starts reconciling only once they hold their first lists
//! ([`Caches::ready`]).
//!
//! A store that lags a moment behind a write of the controller's own is safe: the
//! planner reads workloads by their spec-hash annotations and re-applies (a no-op
//! server-side apply) what looks out of date; revision numbers also come from the
//! stack's status, and a create that finds the revision already there re-reads it; an
//! operation that looks unanswered is read again before it is acted on.

use deployctl_api::{labels, ProductionStack, StackOperation};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;

/// The stores; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    /// ControllerRevisions of stacks (labelled with a revision hash).
    pub revisions: Store<ControllerRevision>,
    /// The stacks' Deployments (labelled managed-by deployctl), without pod templates.
    pub deployments: Store<Deployment>,
    /// The stacks' StatefulSets (labelled managed-by deployctl), without pod templates.
    pub statefulsets: Store<StatefulSet>,
    /// Every StackOperation.
    pub operations: Store<StackOperation>,
    /// HorizontalPodAutoscalers: one targeting a component's workload owns its count.
    pub hpas: Store<HorizontalPodAutoscaler>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("revisions", &self.revisions.len())
            .field("deployments", &self.deployments.len())
            .field("statefulsets", &self.statefulsets.len())
            .field("operations", &self.operations.len())
            .field("hpas", &self.hpas.len())
            .finish()
    }
}

/// Stacks to reconcile because something of theirs changed; the receiving end goes to
/// the controller (`Controller::reconcile_on`).
pub type Triggers = UnboundedSender<ObjectRef<ProductionStack>>;

/// A channel for [`Triggers`]. Unbounded: a feed never waits for the controller (its
/// scheduler merges repeated wake-ups of one stack), so the stores stay current even
/// while every reconcile is busy.
pub fn triggers() -> (Triggers, UnboundedReceiver<ObjectRef<ProductionStack>>) {
    futures::channel::mpsc::unbounded()
}

impl Caches {
    /// Waits until every store holds its initial list: before that, a missing workload
    /// would look deleted and a missing revision never created. The controller waits
    /// once, before its first reconcile.
    ///
    /// Only one task may wait at a time: a store's readiness wakes a single waiter
    /// (kube-runtime 5.0's `DelayedInit` polls a oneshot receiver, which keeps only the
    /// last waker), so reconciles that each waited for it hung for good, all but the last.
    pub async fn ready(&self) -> bool {
        self.revisions.wait_until_ready().await.is_ok()
            && self.deployments.wait_until_ready().await.is_ok()
            && self.statefulsets.wait_until_ready().await.is_ok()
            && self.operations.wait_until_ready().await.is_ok()
            && self.hpas.wait_until_ready().await.is_ok()
    }

    /// The stack's ControllerRevisions (by label and owner), by revision number.
    pub fn revisions_of(&self, stack: &ProductionStack) -> Vec<ControllerRevision> {
        let ns = stack.namespace();
        let name = stack.name_any();
        let uid = stack.metadata.uid.as_ref();
        let mut out: Vec<ControllerRevision> = self
            .revisions
            .state()
            .iter()
            .filter(|r| r.namespace() == ns)
            .filter(|r| r.labels().get(labels::STACK) == Some(&name))
            .filter(|r| r.owner_references().iter().any(|o| Some(&o.uid) == uid))
            .map(|r| (**r).clone())
            .collect();
        out.sort_by_key(|r| r.revision);
        out
    }

    /// The ControllerRevision `name` in `ns`.
    pub fn revision(&self, ns: &str, name: &str) -> Option<Arc<ControllerRevision>> {
        self.revisions.get(&ObjectRef::new(name).within(ns))
    }

    /// Whether the store of `kind` holds the workload `name` in `ns`.
    pub fn has_workload(&self, kind: deployctl_api::WorkloadKind, ns: &str, name: &str) -> bool {
        match kind {
            deployctl_api::WorkloadKind::Deployment => self
                .deployments
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
            deployctl_api::WorkloadKind::StatefulSet => self
                .statefulsets
                .get(&ObjectRef::new(name).within(ns))
                .is_some(),
        }
    }

    /// The StackOperations in `ns` that name `stack`.
    pub fn operations_for(&self, ns: &str, stack: &str) -> Vec<StackOperation> {
        self.operations
            .state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(ns) && o.spec.stack == stack)
            .map(|o| (**o).clone())
            .collect()
    }
}

/// Keeps `writer`'s store current from a watch of `api`, and after each change sends the
/// stack `wakes` names (if any) to `triggers`. `trim` drops what no reconcile reads, to
/// keep the store small. Runs until the task is aborted; watch errors are retried with
/// kube's default back-off.
pub fn feed<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    wakes: fn(&K) -> Option<ObjectRef<ProductionStack>>,
    triggers: Option<Triggers>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(
        watcher(api, config)
            .default_backoff()
            .modify(move |o| {
                o.managed_fields_mut().clear();
                trim(o);
            })
            .reflect(writer)
            .touched_objects()
            .for_each(move |o| {
                match (o, &triggers) {
                    (Ok(o), Some(t)) => {
                        if let Some(stack) = wakes(&o) {
                            // Fails only when the controller is gone (shutting down).
                            let _ = t.unbounded_send(stack);
                        }
                    }
                    (Err(e), _) => tracing::debug!(error = %e, "watch error (retried)"),
                    _ => {}
                }
                std::future::ready(())
            }),
    )
}

/// The stack that owns `o` (by its controller owner reference).
pub fn owning_stack<K: Resource>(o: &K) -> Option<ObjectRef<ProductionStack>> {
    let ns = o.meta().namespace.clone()?;
    let owner = o.meta().owner_references.iter().flatten().find(|r| {
        r.kind == ProductionStack::kind(&()) && r.api_version == ProductionStack::api_version(&())
    })?;
    Some(ObjectRef::new(&owner.name).within(&ns))
}

/// The stack a StackOperation names.
pub fn operation_stack(o: &StackOperation) -> Option<ObjectRef<ProductionStack>> {
    let ns = o.metadata.namespace.clone()?;
    Some(ObjectRef::new(&o.spec.stack).within(&ns))
}

/// A Deployment as observed: the pod template is not read (the spec hash annotation
/// says which revision it is), and it is most of the object.
pub fn trim_deployment(d: &mut Deployment) {
    if let Some(s) = d.spec.as_mut() {
        s.template = Default::default();
    }
}

/// A StatefulSet as observed: without its pod and claim templates.
pub fn trim_statefulset(s: &mut StatefulSet) {
    if let Some(s) = s.spec.as_mut() {
        s.template = Default::default();
        s.volume_claim_templates = None;
    }
}

/// Nothing to drop.
pub fn keep<K>(_: &mut K) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workload_wakes_the_stack_that_owns_it_and_nothing_else() {
        let d: Deployment = serde_yaml_ng::from_str(
            "metadata:
  name: shop-api
  namespace: prod
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: other, uid: u0}
  - {apiVersion: deployctl.dev/v1alpha1, kind: ProductionStack, name: shop, uid: u1, controller: true}",
        )
        .unwrap();
        assert_eq!(
            owning_stack(&d),
            Some(ObjectRef::new("shop").within("prod"))
        );
        let mut foreign = d.clone();
        foreign.metadata.owner_references.as_mut().unwrap().pop();
        assert_eq!(owning_stack(&foreign), None, "not a stack's workload");
    }

    #[test]
    fn an_operation_wakes_the_stack_it_names() {
        let o: StackOperation = serde_yaml_ng::from_str(
            "apiVersion: deployctl.dev/v1alpha1
kind: StackOperation
metadata: {name: undo-1, namespace: prod}
spec: {stack: shop, action: Rollback}",
        )
        .unwrap();
        assert_eq!(
            operation_stack(&o),
            Some(ObjectRef::new("shop").within("prod"))
        );
    }

    #[test]
    fn trimmed_workloads_keep_what_observing_reads() {
        let mut d: Deployment = serde_yaml_ng::from_str(
            "metadata: {name: x, generation: 2, annotations: {deployctl.dev/spec-hash: h, deployctl.dev/revision: '3'}}
spec: {replicas: 2, selector: {}, template: {spec: {containers: [{name: app, image: big}]}}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, availableReplicas: 2, readyReplicas: 2}",
        )
        .unwrap();
        let before = crate::reconcile::observe::deployment_state(&d);
        trim_deployment(&mut d);
        assert!(d.spec.as_ref().unwrap().template.spec.is_none());
        assert_eq!(crate::reconcile::observe::deployment_state(&d), before);
    }
}
