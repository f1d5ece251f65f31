//! In-memory copies (reflector stores) of what reconciles would otherwise list: the
//! stacks' ControllerRevisions.
//!
//! Creating a revision, and loading the history for a rollback, needs the stack's
//! revisions; a list call reads every ControllerRevision of the namespace (label selectors
//! are applied after the read), megabytes per reconcile with a thousand stacks in a
//! namespace. A store that lags a moment behind is safe here: revision numbers also come
//! from the stack's status, a create that finds the revision already there re-reads it, and
//! the stable revision is fetched by name when the store does not have it yet.
//!
//! Workloads are still read with a GET (one object, cheap) rather than from a store: a
//! store fed by a separate watch could lag behind the event that woke the reconcile, and
//! a decision taken on an older copy could wait for the next resync.

use deployctl_api::{labels, ProductionStack};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use std::sync::Arc;

/// The stores; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    /// ControllerRevisions of stacks (labelled with a revision hash).
    pub revisions: Store<ControllerRevision>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("revisions", &self.revisions.len())
            .finish()
    }
}

impl Caches {
    /// Waits until the store holds its initial list: before that, a missing revision
    /// would look never created.
    pub async fn ready(&self) -> bool {
        self.revisions.wait_until_ready().await.is_ok()
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
