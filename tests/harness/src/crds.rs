//! Installs deployctl's CRDs (as checked in under `manifests/crds/`) into a test cluster and
//! waits until the API server serves them, for every test crate that needs them.

use crate::shared::SharedEnv;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use std::time::{Duration, Instant};

/// The CRDs, as checked in.
pub const CRDS_YAML: &str = concat!(
    include_str!("../../../manifests/crds/productionstacks.yaml"),
    "---\n",
    include_str!("../../../manifests/crds/stackoperations.yaml"),
    "---\n",
    include_str!("../../../manifests/crds/stacksnapshots.yaml")
);

/// Server-side applies the CRDs and waits until every kind can be listed, once per test
/// process: the first test to ask applies them, the others wait for it.
///
/// CRDs are cluster-wide, so one apply serves every test. Each test applying the same
/// large CRD at once only loaded the API server, and once etcd answered one of those
/// concurrent applies with an internal error.
///
/// # Panics
/// When they cannot be applied or are not served within 30 s, saying which.
pub async fn install_crds(env: &SharedEnv) -> kube::Client {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let client = env.client().await;
    // A failed install is not remembered: the next test tries again.
    if let Err(e) = INSTALLED
        .get_or_try_init(|| apply_crds(&client, "deployctl-tests"))
        .await
    {
        panic!("{e}");
    }
    client
}

/// Server-side applies the CRDs as `field_manager` and waits (up to 30 s each) until
/// every kind can be listed and discovery lists them; the error says which step failed.
pub async fn apply_crds(client: &kube::Client, field_manager: &str) -> Result<(), String> {
    crate::apply_yaml(
        client,
        CRDS_YAML,
        "manifests/crds",
        field_manager,
        "default",
    )
    .await
    .map_err(|e| format!("the CRDs do not apply: {e}"))?;
    for (kind, plural) in [
        ("ProductionStack", "productionstacks"),
        ("StackOperation", "stackoperations"),
        ("StackSnapshot", "stacksnapshots"),
    ] {
        let gvk = GroupVersionKind::gvk("deployctl.dev", "v1alpha1", kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        let deadline = Instant::now() + Duration::from_secs(30);
        while api.list(&ListParams::default().limit(1)).await.is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{plural}.deployctl.dev is not served 30 s after the CRD was applied"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Served is not yet discovered: the API server publishes the group in its discovery
    // documents a moment later, and clients that resolve kinds (apply_yaml, kubectl) fail
    // with a 404 until it does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Vec<String> = client
            .list_api_group_resources("deployctl.dev/v1alpha1")
            .await
            .map(|l| l.resources.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        if ["productionstacks", "stackoperations", "stacksnapshots"]
            .iter()
            .all(|p| listed.iter().any(|n| n == p))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "deployctl.dev/v1alpha1 is not in the API server's discovery 30 s after the \
                 CRDs were applied; it lists {listed:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
