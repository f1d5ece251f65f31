//! In-memory copies (reflector stores) of what every reconcile reads: the components'
//! Deployments and StatefulSets, the StackOperations and the stacks' ControllerRevisions.
//!
//! Without them a reconcile GETs each workload and lists the namespace's operations and
//! revisions; with a thousand stacks in a namespace those lists alone are megabytes per
//! reconcile, and latency grows with the number of stacks. The stores are fed by the same
//! watches that trigger reconciles (shared reflectors): an event reaches the controller
//! only after the store holds it, so a reconcile never decides on an older copy than the
//! event that woke it.

use deployctl_api::{labels, ProductionStack, StackOperation};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use std::sync::Arc;

/// The stores; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    /// Deployments deployctl manages.
    pub deployments: Store<Deployment>,
    /// StatefulSets deployctl manages.
    pub statefulsets: Store<StatefulSet>,
    /// Every StackOperation.
    pub operations: Store<StackOperation>,
    /// ControllerRevisions of stacks (labelled with a revision hash).
    pub revisions: Store<ControllerRevision>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("deployments", &self.deployments.len())
            .field("statefulsets", &self.statefulsets.len())
            .field("operations", &self.operations.len())
            .field("revisions", &self.revisions.len())
            .finish()
    }
}

impl Caches {
    /// Waits until every store holds its initial list: before that, a missing object
    /// would look deleted.
    pub async fn ready(&self) -> bool {
        let (a, b, c, d) = futures::join!(
            self.deployments.wait_until_ready(),
            self.statefulsets.wait_until_ready(),
            self.operations.wait_until_ready(),
            self.revisions.wait_until_ready(),
        );
        a.is_ok() && b.is_ok() && c.is_ok() && d.is_ok()
    }

    /// The Deployment `name` in `ns`.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(ns))
    }

    /// The StatefulSet `name` in `ns`.
    pub fn statefulset(&self, ns: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.statefulsets.get(&ObjectRef::new(name).within(ns))
    }

    /// The StackOperations naming `stack` in its namespace.
    pub fn operations_for(&self, stack: &ProductionStack) -> Vec<StackOperation> {
        let ns = stack.namespace();
        let name = stack.name_any();
        self.operations
            .state()
            .iter()
            .filter(|o| o.namespace() == ns && o.spec.stack == name)
            .map(|o| (**o).clone())
            .collect()
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
}
