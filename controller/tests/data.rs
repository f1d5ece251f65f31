//! Data rolled back with the workloads, on the real control plane: the demo database's
//! version 2 migrates its SQLite data and fails its gate; after the automatic rollback the
//! database's logical checksum equals the one taken before the upgrade (version 1 could
//! not even start on the migrated data: it exits 4). The same when another component's
//! release migrated the data through the database's API. Also a snapshot a person asks
//! for, and a manual restore of it; and a rollout held for room in the snapshot store
//! until its quota is raised.

mod support;

use deployctl_api::{
    OperationAction, OperationPhase, ProductionStack, RestorePhase, RollbackTrigger, SnapshotPhase,
    StackOperation, StackOperationSpec, StackPhase, StackSnapshot, StackSnapshotSpec,
};
use deployctl_harness::{claim_dir, files_under, require_sim_node, shared};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::path::PathBuf;
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(150);

/// db: a StatefulSet keeping the demo app's SQLite database on a claim, snapshotted with
/// SQLite's online backup; `db_tag` and `db_env` make a release. api: a Deployment in
/// front of it.
fn stack(db_tag: &str, db_env: &str) -> ProductionStack {
    stack_yaml(
        "shop",
        &format!(
            "  rollout: {{progressDeadline: 40s, rollbackDeadline: 90s, analysis: 3s}}
  components:
  - name: db
    kind: StatefulSet
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
    volumeClaims: [{{name: data, size: 1Gi}}]
    data: {{volume: data, method: Sqlite, database: app.db}}
    gates: [{{name: http, interval: 500ms, failureLimit: 1, http: {{path: /api/items, port: http}}}}]
  - name: api
    dependsOn: [db]
    template: {api}
",
            db = demo_template(db_tag, &format!(", {{name: SEED_ITEMS, value: '25'}}{db_env}")),
            // api keeps nothing: its /data is an emptyDir.
            api = demo_template("v1", "").replace(
                "volumeMounts: [{name: data, mountPath: /data}]}]}}",
                "volumeMounts: [{name: data, mountPath: /data}]}], volumes: [{name: data, emptyDir: {}}]}}",
            ),
        ),
    )
}

/// Applies stack `s` as a person or a GitOps tool would: server-side apply, forced.
async fn apply_stack(stacks: &Api<ProductionStack>, s: ProductionStack) {
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(&s),
        )
        .await
        .unwrap();
}

/// The directory of the db's volume on the simulated node.
async fn db_dir(client: &Client, ns: &str) -> PathBuf {
    claim_dir(client, ns, "data-shop-db-0", T).await
}

/// The demo app's logical checksum of the database in `dir`.
fn checksum(dir: &std::path::Path) -> String {
    let bin = deployctl_harness::node::target_profile_dir()
        .expect("the workspace is built")
        .join("demo-app");
    let out = std::process::Command::new(bin)
        .args(["checksum", "--data-dir"])
        .arg(dir)
        .output()
        .expect("demo-app runs");
    assert!(
        out.status.success(),
        "checksum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_failed_migration_is_rolled_back_with_its_data() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("data").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let apply = |s: ProductionStack| apply_stack(&stacks, s);

    apply(stack("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
    })
    .await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);

    // Release 2 of db migrates the data to schema 2, then fails every request.
    apply(stack("v2", ", {name: FAULT_ERROR_RATE, value: '1.0'}")).await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack) && is_settled(s)
    })
    .await;
    let st = s.status.unwrap();
    let last = st.last_rollback.clone().expect("a rollback is recorded");
    assert_eq!((last.from_revision, last.to_revision), (2, 1));
    assert_eq!(last.restores.len(), 1, "{last:?}");
    assert_eq!(last.restores[0].component, "db");
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    assert!(last.within_deadline);

    // The snapshot taken before the upgrade is recorded, checksummed.
    let snap = snaps.get(&last.restores[0].snapshot).await.unwrap();
    let sst = snap.status.unwrap();
    assert_eq!(sst.phase, Some(SnapshotPhase::Completed));
    assert_eq!(sst.revision, Some(1));
    assert_eq!(sst.digest.as_deref().map(str::len), Some(64));
    assert!(sst.size_bytes.unwrap_or(0) > 0);

    // The data is the pre-upgrade data, and version 1 serves it again.
    assert_eq!(checksum(&dir), before, "the migration was undone");
    let db = st.components.iter().find(|c| c.name == "db").unwrap();
    assert_eq!(db.revision, Some(1));
    assert_eq!(db.ready_replicas, 1);
    wait_event(&client, ns.name(), "DataRestored").await;
}

/// db (StatefulSet, the demo app's SQLite database) and api with an HTTP gate. `api_env`
/// makes api's release: in release 1 it keeps its own (throwaway) data; in release 2 it is
/// a proxy in front of db that migrates db's database through db's API when it starts.
fn app_migrates_db_stack(api_tag: &str, api_env: &str) -> ProductionStack {
    stack_yaml(
        "shop",
        &format!(
            "  rollout: {{progressDeadline: 40s, rollbackDeadline: 90s, analysis: 3s}}
  components:
  - name: db
    kind: StatefulSet
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
    volumeClaims: [{{name: data, size: 1Gi}}]
    data: {{volume: data, method: Sqlite, database: app.db}}
  - name: api
    dependsOn: [db]
    template: {api}
    gates: [{{name: http, interval: 500ms, failureLimit: 1, http: {{path: /api/items, port: http}}}}]
",
            db = demo_template("v1", ", {name: SEED_ITEMS, value: '25'}"),
            api = demo_template(api_tag, api_env).replace(
                "volumeMounts: [{name: data, mountPath: /data}]}]}}",
                "volumeMounts: [{name: data, mountPath: /data}]}], volumes: [{name: data, emptyDir: {}}]}}",
            ),
        ),
    )
}

#[tokio::test]
async fn data_migrated_by_another_components_release_is_restored_before_anything_starts_on_it() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("app-migrates").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let apply = |s: ProductionStack| apply_stack(&stacks, s);
    apply(app_migrates_db_stack("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
    })
    .await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);
    let db_ip = Api::<Pod>::namespaced(client.clone(), ns.name())
        .get("shop-db-0")
        .await
        .unwrap()
        .status
        .and_then(|s| s.pod_ip)
        .expect("db's pod has an IP");

    // Release 2 changes only api: it migrates db's schema through db's API as it starts
    // (db's own spec, and so its code, stay those of release 1), becomes ready, and then
    // fails every request.
    apply(app_migrates_db_stack(
        "v2",
        &format!(
            ", {{name: UPSTREAM_URL, value: 'http://{db_ip}:8080'}}, {{name: MIGRATE_UPSTREAM, value: '2'}}, {{name: FAULT_ERROR_RATE, value: '1.0'}}"
        ),
    ))
    .await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack) && is_settled(s)
    })
    .await;
    let st = s.status.unwrap();
    let last = st.last_rollback.clone().expect("a rollback is recorded");
    assert_eq!(
        last.trigger,
        RollbackTrigger::Gate,
        "api's gate failed, so api had become ready, so it had migrated db: {last:?}"
    );
    assert_eq!(last.restores.len(), 1, "{last:?}");
    assert_eq!(
        (last.restores[0].component.as_str(), last.restores[0].phase),
        ("db", RestorePhase::Restored),
        "db's data comes back although db's spec never changed"
    );
    assert_eq!(checksum(&dir), before, "the migration api ran was undone");
    for c in &st.components {
        assert_eq!((c.revision, c.ready_replicas), (Some(1), 1), "{c:?}");
    }
    wait_event(&client, ns.name(), "DataRestored").await;
}

/// A rollback is settled when the stack holds the stable revision and every component is
/// Ready on it.
fn is_settled(s: &ProductionStack) -> bool {
    s.status.as_ref().is_some_and(|st| {
        st.rollback.is_none()
            && st
                .components
                .iter()
                .all(|c| c.ready_replicas >= 1 && c.revision == st.stable_revision)
    })
}

async fn wait_event(client: &Client, ns: &str, reason: &str) {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("an Event {reason}"), T, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_snapshot_taken_on_request_can_be_restored_by_an_operation() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("restore").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns.name());
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(stack("v1", "")),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);

    // A person takes a snapshot now.
    let done = take_snapshot(&snaps, "before-import").await;
    assert_eq!(
        done.phase,
        Some(SnapshotPhase::Completed),
        "{:?}",
        done.message
    );
    assert!(done.files.unwrap_or(0) >= 1);

    bad_import(&dir);
    assert_ne!(checksum(&dir), before);

    let acted = request_restore(&ops, "undo-import", "before-import").await;
    assert_eq!(acted, OperationPhase::Succeeded);
    let s = wait_stack(&stacks, "shop", "Healthy after the restore", T, |s| {
        is_ready(s)
            && s.status
                .as_ref()
                .and_then(|st| st.last_rollback.as_ref())
                .is_some_and(|r| r.restores.iter().any(|r| r.snapshot == "before-import"))
    })
    .await;
    assert_eq!(s.status.unwrap().stable_revision, Some(1));
    assert_eq!(checksum(&dir), before, "the deleted items are back");
}

#[tokio::test]
async fn an_invalid_spec_pushed_mid_rollback_does_not_stop_the_rollback() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("invalid-mid").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let apply = |s: ProductionStack| apply_stack(&stacks, s);
    apply(stack("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);
    apply(stack("v2", ", {name: FAULT_ERROR_RATE, value: '1.0'}")).await;
    wait_stack(&stacks, "shop", "RollingBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RollingBack)
    })
    .await;
    // Mid-incident, someone pushes a spec with a dependency cycle.
    let mut bad = stack("v1", "");
    bad.spec.components[0].depends_on = vec!["api".into()];
    apply(bad).await;
    let s = wait_stack(
        &stacks,
        "shop",
        "rolled back, then refusing the spec",
        T,
        |s| {
            s.status.as_ref().is_some_and(|st| {
                st.rollback.is_none()
                    && st.last_rollback.is_some()
                    && st.condition("Stalled").map(|c| c.reason.as_str()) == Some("InvalidSpec")
            })
        },
    )
    .await;
    let st = s.status.unwrap();
    let last = st.last_rollback.unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    let db = st.components.iter().find(|c| c.name == "db").unwrap();
    assert_eq!((db.revision, db.ready_replicas), (Some(1), 1), "{db:?}");
    assert_eq!(checksum(&dir), before);
}

/// `stack(db_tag, "")` with a filesystem store limited to `quota`.
fn with_quota(db_tag: &str, quota: &str) -> ProductionStack {
    let mut s = stack(db_tag, "");
    s.spec.snapshots = Some(
        serde_yaml_ng::from_str(&format!("{{store: {{filesystem: {{quota: '{quota}'}}}}}}"))
            .unwrap(),
    );
    s
}

#[tokio::test]
async fn a_rollout_whose_snapshot_does_not_fit_the_quota_stalls_untouched_until_it_is_raised() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("capacity").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    apply_stack(&stacks, with_quota("v1", "1Gi")).await;
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
    })
    .await;

    // A snapshot measures the repository; the stack's status shows it.
    let taken = take_snapshot(&snaps, "first").await;
    assert_eq!(taken.phase, Some(SnapshotPhase::Completed), "{taken:?}");
    let added = taken.stored_bytes.expect("the snapshot says what it added");
    assert!(added > 0, "{taken:?}");
    let s = wait_stack(&stacks, "shop", "the repository measured", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.snapshot_repository.as_ref())
            .is_some_and(|r| r.next_rollout_bytes.is_some())
    })
    .await;
    let repo = s.status.unwrap().snapshot_repository.unwrap();
    assert!(repo.used_bytes >= added, "{repo:?}");
    assert_eq!(repo.quota_bytes, Some(1 << 30));
    assert_eq!(repo.next_rollout_bytes, Some(added));
    assert!(
        repo.volume_available_bytes.is_some_and(|v| v > 0),
        "statvfs of the claim: {repo:?}"
    );
    assert_eq!(repo.operation.as_deref(), Some("snapshot"));

    // Release 2 with a quota that leaves less room than db's snapshot adds.
    let tight = repo.used_bytes + added / 2;
    apply_stack(&stacks, with_quota("v2", &tight.to_string())).await;
    let s = wait_stack(&stacks, "shop", "Stalled for room", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.condition("Stalled"))
            .is_some_and(|c| c.status == "True" && c.reason == "SnapshotStoreFull")
    })
    .await;
    let st = s.status.unwrap();
    let msg = st.message.clone().unwrap_or_default();
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert!(
        msg.contains("spec.snapshots.store.filesystem.quota"),
        "{msg}"
    );
    wait_event(&client, ns.name(), "SnapshotStoreFull").await;
    // Nothing changed: no pre-rollout snapshot, db still runs revision 1 and serves.
    let before_rollout = |list: &[StackSnapshot]| {
        list.iter()
            .filter(|s| s.spec.reason == deployctl_api::SnapshotReason::BeforeRollout)
            .count()
    };
    assert_eq!(
        before_rollout(&snaps.list(&Default::default()).await.unwrap().items),
        0
    );
    for c in &st.components {
        assert_eq!((c.revision, c.ready_replicas), (Some(1), 1), "{c:?}");
    }
    let sts = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), ns.name())
        .get("shop-db")
        .await
        .unwrap();
    assert_eq!(
        sts.annotations()
            .get(deployctl_api::labels::REVISION)
            .map(String::as_str),
        Some("1"),
        "the workload was not touched"
    );

    // Raising the quota is enough: the rollout starts with its snapshot and completes.
    apply_stack(&stacks, with_quota("v2", "1Gi")).await;
    let s = wait_stack(&stacks, "shop", "Healthy on revision 2", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(2)
    })
    .await;
    let list = snaps.list(&Default::default()).await.unwrap().items;
    assert_eq!(before_rollout(&list), 1, "the rollout took its snapshot");
    let repo = s.status.unwrap().snapshot_repository.unwrap();
    assert!(repo.available_bytes.is_some_and(|a| a > 0), "{repo:?}");
}

/// The directory of the stack's snapshot repository (the store claim) on the node.
async fn store_dir(client: &Client, ns: &str) -> PathBuf {
    claim_dir(client, ns, "shop-snapshots", T).await
}

/// Takes snapshot `name` of db and damages the chunks it added to the repository (the
/// ones no earlier snapshot shares), so restoring it fails its verification.
async fn take_damaged_snapshot(
    client: &Client,
    ns: &str,
    snaps: &Api<StackSnapshot>,
    name: &str,
) -> Vec<PathBuf> {
    let store = store_dir(client, ns).await;
    let before: std::collections::BTreeSet<PathBuf> =
        files_under(&store.join("objects")).into_iter().collect();
    let st = take_snapshot(snaps, name).await;
    assert_eq!(st.phase, Some(SnapshotPhase::Completed), "{st:?}");
    let added: Vec<PathBuf> = files_under(&store.join("objects"))
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert!(!added.is_empty(), "snapshot {name} added chunks");
    flip(&added);
    added
}

/// Flips one byte in the middle of each file: damages them, and a second call repairs them.
fn flip(files: &[PathBuf]) {
    for f in files {
        let mut bytes = std::fs::read(f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(f, bytes).unwrap();
    }
}

/// Creates operation `name` (who: tester) and waits until the controller acted on it.
async fn request(
    ops: &Api<StackOperation>,
    name: &str,
    action: OperationAction,
    snapshot: Option<&str>,
) -> (OperationPhase, String) {
    request_to(ops, name, action, snapshot, None).await
}

/// [`request`], with a revision to go to.
async fn request_to(
    ops: &Api<StackOperation>,
    name: &str,
    action: OperationAction,
    snapshot: Option<&str>,
    to_revision: Option<i64>,
) -> (OperationPhase, String) {
    ops.create(
        &PostParams::default(),
        &StackOperation {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: StackOperationSpec {
                stack: "shop".into(),
                action,
                to_revision,
                snapshot: snapshot.map(Into::into),
                reason: Some("on call".into()),
                requested_by: Some("tester".into()),
            },
            status: None,
        },
    )
    .await
    .unwrap();
    wait_until("the operation to be acted on", T, || async {
        let st = ops.get(name).await.ok()?.status?;
        Some((st.phase?, st.message.unwrap_or_default()))
    })
    .await
}

/// A restore stuck after its verification failed: Stalled, reason RestoreFailed.
fn restore_failed(s: &ProductionStack) -> bool {
    s.status
        .as_ref()
        .and_then(|st| st.condition("Stalled"))
        .is_some_and(|c| c.status == "True" && c.reason == "RestoreFailed")
}

#[tokio::test]
async fn after_a_restore_fails_on_a_damaged_snapshot_another_snapshot_or_the_live_data_is_a_way_out(
) {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("way-out").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns.name());
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(&stack("v1", "")),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    let good_sum = checksum(&dir);
    take_snapshot(&snaps, "good").await;
    bad_import(&dir);
    let live_sum = checksum(&dir);
    assert_ne!(live_sum, good_sum);

    // 1. A damaged snapshot's restore fails; the live data is untouched, db and api stay
    //    stopped, and the status names the ways out. Restoring another snapshot is one.
    take_damaged_snapshot(&client, ns.name(), &snaps, "damaged").await;
    let (phase, msg) = request(
        &ops,
        "restore-damaged",
        OperationAction::Restore,
        Some("damaged"),
    )
    .await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    let s = wait_stack(&stacks, "shop", "Stalled: RestoreFailed", T, restore_failed).await;
    let message = s
        .status
        .as_ref()
        .and_then(|st| st.message.clone())
        .unwrap_or_default();
    assert!(message.contains("accept-live-data"), "{message}");
    assert_eq!(
        checksum(&dir),
        live_sum,
        "a refused restore leaves the live data alone"
    );
    let (phase, msg) = request(&ops, "abort", OperationAction::Abort, None).await;
    assert_eq!(
        phase,
        OperationPhase::Failed,
        "abort is not a way out: {msg}"
    );
    assert!(msg.contains("AcceptLiveData"), "and says which are: {msg}");
    let (phase, msg) = request(&ops, "restore-good", OperationAction::Restore, Some("good")).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    let s = wait_stack(&stacks, "shop", "Ready again", T, |s| {
        is_ready(s) && is_settled(s)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(
        (last.restores[0].snapshot.as_str(), last.restores[0].phase),
        ("good", RestorePhase::Restored)
    );
    assert_eq!(
        checksum(&dir),
        good_sum,
        "the other snapshot's data is back"
    );

    // 2. The same failure, and this time the person accepts the data as it is. (Another
    //    import than the first: the same one would give the same data, whose chunks the
    //    first damaged snapshot already holds.)
    let db = rusqlite::Connection::open(dir.join("app.db")).unwrap();
    db.execute("DELETE FROM items WHERE id % 3 = 0", [])
        .unwrap();
    drop(db);
    let live_sum = checksum(&dir);
    take_damaged_snapshot(&client, ns.name(), &snaps, "damaged-2").await;
    let (phase, msg) = request(
        &ops,
        "restore-damaged-2",
        OperationAction::Restore,
        Some("damaged-2"),
    )
    .await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    wait_stack(&stacks, "shop", "Stalled: RestoreFailed", T, restore_failed).await;
    let (phase, msg) = request(&ops, "accept", OperationAction::AcceptLiveData, None).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    let s = wait_stack(&stacks, "shop", "Ready on the live data", T, |s| {
        is_ready(s) && is_settled(s)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Accepted);
    let why = last.restores[0].message.clone().unwrap_or_default();
    assert!(
        why.contains("tester") && why.contains("accept"),
        "who decided is recorded: {why}"
    );
    assert_eq!(checksum(&dir), live_sum, "started on the data as it was");
}

#[tokio::test]
async fn a_failed_restore_can_be_retried_or_left_by_a_rollback_to_a_revision_on_the_live_data() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("retry").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns.name());
    // Two good revisions: 1, then 2 (api's settings changed).
    apply_stack(&stacks, stack("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
    })
    .await;
    let mut two = stack("v1", "");
    two.spec.components[1]
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .env
        .get_or_insert_with(Vec::new)
        .push(serde_json::from_value(serde_json::json!({"name": "REV", "value": "2"})).unwrap());
    apply_stack(&stacks, two).await;
    wait_stack(&stacks, "shop", "Healthy on revision 2", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(2)
    })
    .await;
    let dir = db_dir(&client, ns.name()).await;

    // 1. The restore fails on chunks that read back wrong (a store that served bad
    //    bytes for a while); once the store is sound again, Retry restores the snapshot.
    bad_import(&dir);
    let snap_sum = checksum(&dir);
    let damaged = take_damaged_snapshot(&client, ns.name(), &snaps, "flaky").await;
    let delete_some = |modulus: i64| {
        let db = rusqlite::Connection::open(dir.join("app.db")).unwrap();
        db.execute("DELETE FROM items WHERE id % ?1 = 0", [modulus])
            .unwrap();
    };
    delete_some(3);
    let live_sum = checksum(&dir);
    assert_ne!(live_sum, snap_sum);
    let (phase, msg) = request(&ops, "restore", OperationAction::Restore, Some("flaky")).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    wait_stack(&stacks, "shop", "Stalled: RestoreFailed", T, restore_failed).await;
    assert_eq!(
        checksum(&dir),
        live_sum,
        "the failed restore left the data alone"
    );
    flip(&damaged);
    let (phase, msg) = request(&ops, "retry", OperationAction::Retry, None).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    // (db keeps revision 1: only api changed in revision 2.)
    let up = |s: &ProductionStack| {
        is_ready(s)
            && s.status.as_ref().is_some_and(|st| {
                st.rollback.is_none() && st.components.iter().all(|c| c.ready_replicas >= 1)
            })
    };
    let s = wait_stack(&stacks, "shop", "Ready after the retry", T, up).await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(
        (last.restores[0].snapshot.as_str(), last.restores[0].phase),
        ("flaky", RestorePhase::Restored)
    );
    assert_eq!(
        checksum(&dir),
        snap_sum,
        "the retried restore brought the snapshot back"
    );

    // 2. Another failed restore; this time the person rolls the stack back to revision 1
    //    on the data as it is now.
    delete_some(5);
    take_damaged_snapshot(&client, ns.name(), &snaps, "bad").await;
    delete_some(7);
    let live_sum = checksum(&dir);
    let (phase, msg) = request(&ops, "restore-bad", OperationAction::Restore, Some("bad")).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    wait_stack(&stacks, "shop", "Stalled: RestoreFailed", T, restore_failed).await;
    let (phase, msg) = request_to(&ops, "to-1", OperationAction::Rollback, None, Some(1)).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    assert!(msg.contains("stays as it is now"), "{msg}");
    let s = wait_stack(&stacks, "shop", "RolledBack to revision 1", T, |s| {
        s.status.as_ref().is_some_and(|st| {
            st.phase == Some(StackPhase::RolledBack)
                && st.rollback.is_none()
                && st
                    .components
                    .iter()
                    .all(|c| c.revision == Some(1) && c.ready_replicas >= 1)
        })
    })
    .await;
    let st = s.status.unwrap();
    // Held on revision 1 as after any rollback an operator asks for, no longer stuck on
    // the failed restore.
    let stalled = st.condition("Stalled").expect("a Stalled condition");
    assert_eq!(stalled.reason, "RolledBack", "{st:?}");
    assert!(st.last_rollback.as_ref().unwrap().restores.is_empty());
    assert_eq!(
        checksum(&dir),
        live_sum,
        "revision 1 runs on the data as it was"
    );
}

/// Writes `len` bytes of a pseudo-random stream (seeded by `seed`) to `path`, or, with
/// `check`, tells whether `path` holds exactly them.
fn ballast(path: &std::path::Path, seed: u64, len: usize, check: bool) -> bool {
    use std::io::{Read, Write};
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut theirs = vec![0u8; 1 << 20];
    let mut w = (!check).then(|| std::io::BufWriter::new(std::fs::File::create(path).unwrap()));
    let mut r = check.then(|| std::fs::File::open(path).unwrap());
    for _ in 0..len / block.len() {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        if let Some(w) = w.as_mut() {
            w.write_all(&block).unwrap();
        } else if let Some(r) = r.as_mut() {
            if r.read_exact(&mut theirs).is_err() || theirs != block {
                return false;
            }
        }
    }
    match (w, r) {
        (Some(mut w), _) => {
            w.flush().unwrap();
            true
        }
        // Nothing after the expected bytes.
        (_, Some(mut r)) => r.read(&mut theirs[..1]).unwrap() == 0,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_scheduled_snapshot_due_during_a_large_restore_waits_for_it() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("busy").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns.name());
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns.name());
    // The data: 1 GiB of files, copied live (a snapshot does not stop db).
    let mut s = stack("v1", "");
    s.spec.components[0].data = Some(
        serde_json::from_value(serde_json::json!({"volume": "data", "consistency": "Live"}))
            .unwrap(),
    );
    apply_stack(&stacks, s.clone()).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    const GIB: usize = 1 << 30;
    ballast(&dir.join("ballast.bin"), 1, GIB, false);
    let st = take_snapshot(&snaps, "good").await;
    assert_eq!(st.phase, Some(SnapshotPhase::Completed), "{st:?}");
    ballast(&dir.join("ballast.bin"), 2, GIB, false);

    let (phase, msg) = request(&ops, "restore", OperationAction::Restore, Some("good")).await;
    assert_eq!(phase, OperationPhase::Succeeded, "{msg}");
    let restoring = "deployctl.dev/data-operation=restore";
    let running = |j: &k8s_openapi::api::batch::v1::Job| {
        j.status.as_ref().is_some_and(|s| s.active.unwrap_or(0) > 0)
    };
    wait_until("the restore Job to run", T, || async {
        let list = jobs
            .list(&kube::api::ListParams::default().labels(restoring))
            .await
            .ok()?;
        list.items.iter().any(running).then_some(())
    })
    .await;
    // Now a snapshot falls due every second.
    s.spec.snapshots =
        Some(serde_json::from_value(serde_json::json!({"schedule": "* * * * * *"})).unwrap());
    apply_stack(&stacks, s).await;

    let done = wait_stack(&stacks, "shop", "Ready after the restore", T, |s| {
        is_ready(s) && is_settled(s)
    })
    .await;
    let last = done.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    assert!(
        ballast(&dir.join("ballast.bin"), 1, GIB, true),
        "the snapshot's data is back, byte for byte"
    );
    let restore_job = jobs
        .list(&kube::api::ListParams::default().labels(restoring))
        .await
        .unwrap()
        .items
        .remove(0);
    let restored_at = restore_job
        .status
        .and_then(|s| s.completion_time)
        .expect("the restore Job completed")
        .0;
    // Snapshots fell due while the restore ran, and each one waited for it to end: none
    // started before the restore Job had completed.
    let scheduled = wait_until("a scheduled snapshot to complete", T, || async {
        let list: Vec<StackSnapshot> = snaps
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|s| s.spec.reason == deployctl_api::SnapshotReason::Scheduled)
            .collect();
        list.iter()
            .any(|s| s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Completed))
            .then_some(list)
    })
    .await;
    assert!(
        scheduled.iter().any(|s| s
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0 < restored_at)),
        "a snapshot fell due during the restore"
    );
    for s in &scheduled {
        if let Some(started) = s.status.as_ref().and_then(|st| st.started_at.as_ref()) {
            assert!(
                started.0 >= restored_at,
                "snapshot {} started at {} while the restore ran (until {restored_at})",
                s.name_any(),
                started.0
            );
        }
    }
}

#[tokio::test]
async fn scheduled_snapshots_are_kept_by_retention_and_a_damaged_one_raises_a_condition() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("schedule").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let mut s = stack("v1", "");
    // Seconds-resolution cron, so the test sees several runs in seconds.
    s.spec.snapshots = Some(
        serde_json::from_value(serde_json::json!({
            "schedule": "*/3 * * * * *",
            "verifySchedule": "*/2 * * * * *",
            "retention": {"keepLast": 2},
        }))
        .unwrap(),
    );
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(&s),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;

    // Several scheduled snapshots complete; retention keeps two, and a prune Job makes the
    // repository agree.
    let completed = |list: &[StackSnapshot]| {
        list.iter()
            .filter(|s| s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Completed))
            .count()
    };
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns.name());
    wait_until("a prune Job to succeed", T, || async {
        jobs.list(&kube::api::ListParams::default().labels("deployctl.dev/data-operation=prune"))
            .await
            .ok()?
            .items
            .iter()
            .any(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
            .then_some(())
    })
    .await;
    // Snapshots keep completing every few seconds, so the count is checked once
    // retention has caught up with them, not at one instant.
    let list = wait_until("retention to keep 2 (plus one just taken)", T, || async {
        let list = snaps.list(&Default::default()).await.ok()?.items;
        (completed(&list) <= 3).then_some(list)
    })
    .await;
    assert!(list
        .iter()
        .all(|s| s.spec.reason == deployctl_api::SnapshotReason::Scheduled));

    // The verification schedule re-hashes the newest one.
    let st = wait_stack(&stacks, "shop", "SnapshotsVerified=True", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.condition("SnapshotsVerified"))
            .is_some_and(|c| c.status == "True")
    })
    .await;
    let _ = st;

    // Damage every chunk in the repository: the next verification finds it.
    let store = store_dir(&client, ns.name()).await;
    let objects = files_under(&store.join("objects"));
    assert!(!objects.is_empty(), "the repository holds chunks");
    for f in &objects {
        // Scheduled Jobs keep writing and pruning the repository meanwhile: a chunk being
        // written (.tmp-*) or just pruned is skipped.
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        {
            continue;
        }
        let mut bytes = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", f.display()),
        };
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(f, bytes).unwrap();
    }
    let s = wait_stack(&stacks, "shop", "SnapshotsVerified=False", T, |s| {
        s.status
            .as_ref()
            .and_then(|st| st.condition("SnapshotsVerified"))
            .is_some_and(|c| c.status == "False")
    })
    .await;
    let c = s
        .status
        .unwrap()
        .condition("SnapshotsVerified")
        .unwrap()
        .clone();
    assert_eq!(c.reason, "SnapshotCorrupt");
    let corrupt = snaps
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|s| {
            s.status.as_ref().and_then(|st| st.verification)
                == Some(deployctl_api::VerificationResult::Corrupt)
        })
        .expect("a snapshot is marked Corrupt");
    assert!(
        c.message.contains(&corrupt.metadata.name.clone().unwrap()),
        "{}",
        c.message
    );
    let msg = corrupt.status.unwrap().message.unwrap_or_default();
    assert!(msg.contains("chunk"), "the finding names the chunk: {msg}");
}

#[tokio::test]
async fn files_data_is_quiesced_for_its_snapshot_and_restored_on_rollback() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("files").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    // The same database copied as files: the component must be stopped for the copy.
    let files = |tag: &str, env: &str| {
        let mut s = stack(tag, env);
        s.spec.components[0].data =
            Some(serde_json::from_value(serde_json::json!({"volume": "data"})).unwrap());
        s
    };
    let apply = |s: ProductionStack| apply_stack(&stacks, s);
    apply(files("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);
    apply(files("v2", ", {name: FAULT_ERROR_RATE, value: '1.0'}")).await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack) && is_settled(s)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    assert_eq!(checksum(&dir), before);
    wait_event(&client, ns.name(), "ComponentQuiesced").await;
    let snap: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let st = snap
        .get(&last.restores[0].snapshot)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(st.method, Some(deployctl_api::DataMethod::Files));
    assert!(st.files.unwrap_or(0) >= 1);
}

#[tokio::test]
async fn every_replica_of_a_statefulset_gets_its_own_data_back_on_rollback() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("replicas").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    // Two replicas of the database, each with its own claim, copied as files while the
    // StatefulSet is stopped.
    let two = |tag: &str, env: &str| {
        let mut s = stack(tag, env);
        s.spec.components[0].replicas = Some(2);
        s.spec.components[0].data =
            Some(serde_json::from_value(serde_json::json!({"volume": "data"})).unwrap());
        s
    };
    let apply = |s: ProductionStack| apply_stack(&stacks, s);
    apply(two("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dirs = [
        claim_dir(&client, ns.name(), "data-shop-db-0", T).await,
        claim_dir(&client, ns.name(), "data-shop-db-1", T).await,
    ];
    // Each replica holds something the other does not: a restore that put one replica's
    // data into the other's claim would show.
    for (i, d) in dirs.iter().enumerate() {
        std::fs::write(d.join("replica.txt"), format!("replica {i}\n")).unwrap();
    }
    let before: Vec<String> = dirs.iter().map(|d| checksum(d)).collect();

    // Release 2 migrates both replicas' databases, then fails its gate.
    apply(two("v2", ", {name: FAULT_ERROR_RATE, value: '1.0'}")).await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack) && is_settled(s)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores.len(), 1, "{last:?}");
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(checksum(d), before[i], "replica {i}'s migration was undone");
        assert_eq!(
            std::fs::read_to_string(d.join("replica.txt")).unwrap(),
            format!("replica {i}\n"),
            "replica {i} got its own data back"
        );
    }
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let st = snaps
        .get(&last.restores[0].snapshot)
        .await
        .unwrap()
        .status
        .unwrap();
    let ordinals: Vec<i32> = st.replicas.iter().map(|r| r.ordinal).collect();
    assert_eq!(ordinals, vec![0, 1], "{st:?}");
    let digests = st.digests();
    assert_eq!(digests.len(), 2);
    assert_ne!(digests[0].1, digests[1].1, "the replicas' data differ");
    assert_eq!(st.digest.as_ref(), Some(&digests[0].1));
    let sizes: i64 = st.replicas.iter().filter_map(|r| r.size_bytes).sum();
    assert_eq!(st.size_bytes, Some(sizes));
}

/// `s` made to run under the `restricted` Pod Security level: every component as user
/// and group 1000 with fsGroup 1000, no privilege escalation, no capability, the
/// runtime's seccomp profile.
fn restricted(mut s: ProductionStack) -> ProductionStack {
    for c in &mut s.spec.components {
        let pod = c.template.spec.as_mut().unwrap();
        pod.security_context = Some(
            serde_json::from_value(serde_json::json!({
                "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true,
                "seccompProfile": {"type": "RuntimeDefault"},
            }))
            .unwrap(),
        );
        for container in &mut pod.containers {
            container.security_context = Some(
                serde_json::from_value(serde_json::json!({
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                }))
                .unwrap(),
            );
        }
    }
    s
}

/// Sets Pod Security admission's `enforce` level of namespace `ns`.
async fn enforce(client: &Client, ns: &str, level: &str) {
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": level,
            }}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn in_a_restricted_namespace_the_agent_runs_as_the_components_user_and_rolls_data_back() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("restricted").await;
    enforce(&client, ns.name(), "restricted").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    // The stack's own agent resources, in place of the controller's default.
    let with_agent = |mut s: ProductionStack| {
        s.spec.snapshots = Some(
            serde_json::from_value(serde_json::json!({
                "agentResources": {"requests": {"cpu": "200m", "memory": "96Mi"}},
            }))
            .unwrap(),
        );
        restricted(s)
    };
    apply_stack(&stacks, with_agent(stack("v1", ""))).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);

    apply_stack(
        &stacks,
        with_agent(stack("v2", ", {name: FAULT_ERROR_RATE, value: '1.0'}")),
    )
    .await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack) && is_settled(s)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored, "{last:?}");
    assert_eq!(checksum(&dir), before, "the migration was undone");
    // The snapshot and restore Jobs ran as the component's user, with no capability.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns.name());
    let agent_jobs = jobs
        .list(&kube::api::ListParams::default().labels("deployctl.dev/data-operation"))
        .await
        .unwrap()
        .items;
    let ops: std::collections::BTreeSet<String> = agent_jobs
        .iter()
        .filter_map(|j| j.labels().get("deployctl.dev/data-operation").cloned())
        .collect();
    assert!(
        ops.contains("snapshot") && ops.contains("restore"),
        "{ops:?}"
    );
    for j in &agent_jobs {
        let pod = j.spec.clone().unwrap().template.spec.unwrap();
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_user, Some(1000), "{}", j.name_any());
        let requests = pod.containers[0]
            .resources
            .clone()
            .unwrap()
            .requests
            .unwrap();
        assert_eq!(requests["cpu"].0, "200m", "{}", j.name_any());
        assert_eq!(pod.security_context.unwrap().fs_group, Some(1000));
    }
    // And the data files are still the component's: v1 serves them again.
    assert!(files_under(&dir).iter().all(|f| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(f).unwrap().uid() == 1000
    }));
}

#[tokio::test]
async fn an_agent_pod_the_namespace_refuses_fails_its_snapshot_saying_why() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("refused").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    // db runs as root (its pods were admitted before the namespace was tightened), so its
    // agent is root too, which the restricted level refuses.
    apply_stack(&stacks, stack("v1", "")).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    enforce(&client, ns.name(), "restricted").await;
    let st = take_snapshot(&snaps, "refused").await;
    assert_eq!(st.phase, Some(SnapshotPhase::Failed), "{st:?}");
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.contains("refused the pod") && msg.contains("PodSecurity") && msg.contains("runAsUser"),
        "{msg}"
    );
    // Nothing is left retrying: the refused Job is gone, and the next snapshot can run.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns.name());
    let left = jobs
        .list(&kube::api::ListParams::default().labels("deployctl.dev/data-operation=snapshot"))
        .await
        .unwrap()
        .items;
    assert!(
        left.is_empty(),
        "{:?}",
        left.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    enforce(&client, ns.name(), "baseline").await;
    let st = take_snapshot(&snaps, "allowed").await;
    assert_eq!(st.phase, Some(SnapshotPhase::Completed), "{st:?}");
}

/// The demo database as an `Exec` component: `demo-app dump` is its dump command and
/// `demo-app load` its restore command, like `pg_dump` and `psql` for PostgreSQL.
fn exec_stack(tag: &str, env: &str, dump: &[&str]) -> ProductionStack {
    let mut s = stack(tag, env);
    s.spec.components[0].data = Some(
        serde_json::from_value(serde_json::json!({
            "volume": "data",
            "method": "Exec",
            "exec": {
                "container": "app",
                "dump": dump,
                "restore": ["demo-app", "load", "--data-dir", "/data"],
            },
        }))
        .unwrap(),
    );
    s
}

const DEMO_DUMP: &[&str] = &["demo-app", "dump", "--data-dir", "/data"];

/// Creates StackSnapshot `name` of db and waits until it is final.
async fn take_snapshot(
    snaps: &Api<StackSnapshot>,
    name: &str,
) -> deployctl_api::StackSnapshotStatus {
    snaps
        .create(
            &PostParams::default(),
            &StackSnapshot {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: StackSnapshotSpec {
                    stack: "shop".into(),
                    component: "db".into(),
                    reason: Default::default(),
                },
                status: None,
            },
        )
        .await
        .unwrap();
    wait_until(&format!("snapshot {name} to be final"), T, || async {
        let st = snaps.get(name).await.ok()?.status?;
        st.phase?.is_final().then_some(st)
    })
    .await
}

/// A bad import behind the stack's back: half the items deleted straight in the file.
fn bad_import(dir: &std::path::Path) {
    let db = rusqlite::Connection::open(dir.join("app.db")).unwrap();
    db.execute("DELETE FROM items WHERE id % 2 = 0", [])
        .unwrap();
}

/// Asks (as a person would) for the stack's data to be restored from `snapshot` by
/// operation `name`, and waits until the operation has a result.
async fn request_restore(ops: &Api<StackOperation>, name: &str, snapshot: &str) -> OperationPhase {
    ops.create(
        &PostParams::default(),
        &StackOperation {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: StackOperationSpec {
                stack: "shop".into(),
                action: OperationAction::Restore,
                to_revision: None,
                snapshot: Some(snapshot.into()),
                reason: Some("bad import".into()),
                requested_by: Some("tester".into()),
            },
            status: None,
        },
    )
    .await
    .unwrap();
    wait_until("the restore operation to be acted on", T, || async {
        ops.get(name).await.ok()?.status?.phase
    })
    .await
}

#[tokio::test]
async fn exec_data_is_dumped_live_and_restored_by_its_restore_command() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("exec").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns.name());
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(exec_stack("v1", "", DEMO_DUMP)),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);

    let st = take_snapshot(&snaps, "before-import").await;
    assert_eq!(st.phase, Some(SnapshotPhase::Completed), "{:?}", st.message);
    assert_eq!(st.method, Some(deployctl_api::DataMethod::Exec));
    assert_eq!(st.files, Some(1), "one stream");
    assert!(st.size_bytes.unwrap_or(0) > 0);
    // The dump ran in the component's image, as an init container before the agent,
    // while the component kept serving.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns.name());
    let job = jobs.get(st.job.as_deref().unwrap()).await.unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let init = pod.init_containers.unwrap();
    assert_eq!(init[0].name, "dump");
    assert_eq!(init[0].image.as_deref(), Some("deployctl.dev/demo-app:v1"));
    assert_eq!(pod.containers[0].name, "agent");
    assert!(is_ready(&stacks.get("shop").await.unwrap()));

    bad_import(&dir);
    assert_ne!(checksum(&dir), before);

    let acted = request_restore(&ops, "undo-import", "before-import").await;
    assert_eq!(acted, OperationPhase::Succeeded);
    let s = wait_stack(&stacks, "shop", "Healthy after the restore", T, |s| {
        is_ready(s)
            && s.status
                .as_ref()
                .and_then(|st| st.last_rollback.as_ref())
                .is_some_and(|r| r.restores.iter().any(|r| r.snapshot == "before-import"))
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    assert_eq!(checksum(&dir), before, "the deleted items are back");
    wait_event(&client, ns.name(), "DataRestored").await;

    // The restore ran as the component's container after the agent verified the snapshot.
    let restore = jobs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|j| {
            j.metadata.labels.as_ref().is_some_and(|l| {
                l.get(deployctl_api::labels::DATA_OPERATION)
                    .map(String::as_str)
                    == Some("restore")
            })
        })
        .expect("a restore Job");
    let pod = restore.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.init_containers.unwrap()[0].name, "agent");
    assert_eq!(pod.containers[0].name, "restore");
}

#[tokio::test]
async fn a_failing_dump_command_fails_its_snapshot_with_the_commands_error() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("exec-fail").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    stacks
        .patch(
            "shop",
            &PatchParams::apply("tester").force(),
            &Patch::Apply(exec_stack(
                "v1",
                "",
                &[
                    "sh",
                    "-c",
                    "echo partial output; echo 'dump: cannot reach the database' >&2; exit 3",
                ],
            )),
        )
        .await
        .unwrap();
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    let st = take_snapshot(&snaps, "doomed").await;
    assert_eq!(st.phase, Some(SnapshotPhase::Failed));
    let msg = st.message.unwrap_or_default();
    for needle in [
        "dump command",
        "exited with code 3",
        "cannot reach the database",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    assert!(st.digest.is_none());
}

#[tokio::test]
async fn a_failed_migration_is_undone_by_the_exec_restore_command_on_rollback() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("exec-rb").await;
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let apply = |s: ProductionStack| apply_stack(&stacks, s);
    apply(exec_stack("v1", "", DEMO_DUMP)).await;
    wait_stack(&stacks, "shop", "Healthy on revision 1", T, |s| {
        is_ready(s) && s.status.as_ref().and_then(|st| st.stable_revision) == Some(1)
    })
    .await;
    let dir = db_dir(&client, ns.name()).await;
    let before = checksum(&dir);

    // Release 2 migrates the data to schema 2, then fails every request.
    apply(exec_stack(
        "v2",
        ", {name: FAULT_ERROR_RATE, value: '1.0'}",
        DEMO_DUMP,
    ))
    .await;
    let s = wait_stack(&stacks, "shop", "RolledBack", T, |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(StackPhase::RolledBack) && is_settled(s)
    })
    .await;
    let last = s.status.unwrap().last_rollback.unwrap();
    assert_eq!(last.restores.len(), 1, "{last:?}");
    assert_eq!(last.restores[0].phase, RestorePhase::Restored);
    // The pre-rollout dump, loaded back: version 1 serves the data it had.
    assert_eq!(checksum(&dir), before, "the migration was undone");
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns.name());
    let quiesced = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("ComponentQuiesced"));
    assert!(
        !quiesced,
        "an Exec component is never stopped for its snapshot"
    );
}
