//! Where a claim's data lives on the simulated node, for tests that read or damage it
//! behind the stack's back (a bad import, a corrupted snapshot repository).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::{Api, Client};

/// The directory of claim `claim` in namespace `ns` on the node, once it is bound (waits up
/// to `timeout`).
///
/// # Panics
/// When the claim is not bound in time or its volume is not a local one.
pub async fn claim_dir(client: &Client, ns: &str, claim: &str, timeout: Duration) -> PathBuf {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    let pv = loop {
        let bound = pvcs
            .get_opt(claim)
            .await
            .ok()
            .flatten()
            .and_then(|c| c.spec?.volume_name);
        if let Some(pv) = bound {
            break pv;
        }
        assert!(
            Instant::now() < deadline,
            "claim {ns}/{claim} not bound within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let local = Api::<PersistentVolume>::all(client.clone())
        .get(&pv)
        .await
        .unwrap_or_else(|e| panic!("reading volume {pv} of claim {claim}: {e}"))
        .spec
        .and_then(|s| s.local)
        .unwrap_or_else(|| panic!("volume {pv} of claim {claim} is not a local volume"));
    PathBuf::from(local.path)
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}
