//! Secrets stay secret: sentinel values in the snapshot encryption key, the S3 store's
//! credentials and a component's Secret env var (a referenced Secret, versioned with the
//! revision through a per-revision copy) never appear in the controller's logs, the
//! agent's output, Events, any status, ControllerRevisions, Job objects, metrics or the
//! CLI's output, in clear or base64, while
//! the stack goes through a rollout, an encrypted snapshot, a rollback that restores it,
//! and a snapshot that fails against an unreachable S3 store.

mod support;

use deployctl_api::{
    ProductionStack, RestorePhase, SnapshotPhase, StackPhase, StackSnapshot, StackSnapshotSpec,
};
use deployctl_harness::{require_sim_node, shared};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(150);
/// The encryption key: 32 bytes as 64 hex digits.
const KEY: &str = "5e17e15e17e15e17e15e17e15e17e15e17e15e17e15e17e15e17e15e17e15e17";
const ACCESS_KEY: &str = "AKIASENTINEL7Q2W9E4R";
const SECRET_KEY: &str = "sentinel-s3-secret-Vb8xZq3N";
const DB_PASSWORD: &str = "sentinel-db-password-Kp4Lm7";
const SENTINELS: [&str; 4] = [KEY, ACCESS_KEY, SECRET_KEY, DB_PASSWORD];

fn stack(name: &str, db_tag: &str, db_env: &str, snapshots: &str) -> ProductionStack {
    stack_yaml(
        name,
        &format!(
            "  rollout: {{progressDeadline: 40s, rollbackDeadline: 90s, analysis: 3s}}
  snapshots: {snapshots}
  components:
  - name: db
    kind: StatefulSet
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
    volumeClaims: [{{name: data, size: 1Gi}}]
    data: {{volume: data, method: Sqlite, database: app.db}}
    gates: [{{name: http, interval: 500ms, failureLimit: 1, http: {{path: /api/items, port: http}}}}]
",
            db = demo_template(
                db_tag,
                &format!(
                    ", {{name: SEED_ITEMS, value: '10'}}, {{name: DB_PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}{db_env}"
                )
            ),
        ),
    )
}

async fn secret(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    api.create(&PostParams::default(), &s).await.unwrap();
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Panics naming `what` when `text` holds a sentinel, in clear or base64 (as a Secret's
/// `data` would carry it).
fn assert_clean(what: &str, text: &str) {
    let encoded: Vec<String> = SENTINELS
        .iter()
        .map(|s| {
            serde_json::to_value(k8s_openapi::ByteString(s.as_bytes().to_vec()))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for s in SENTINELS
        .iter()
        .copied()
        .chain(encoded.iter().map(String::as_str))
    {
        assert!(
            !text.contains(s),
            "a secret value ({s}) leaked into {what}:\n{}",
            text.lines()
                .filter(|l| l.contains(s))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn cli(kubeconfig: &Path, ns: &str, args: &[&str]) -> String {
    let bin = deployctl_harness::node::target_profile_dir()
        .expect("the workspace is built")
        .join("deployctl");
    let out = std::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("deployctl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn secret_values_never_leave_their_secrets() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crd(env).await;
    let ns = env.namespace("secrets").await;
    let controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    secret(&secrets, "creds", &[("password", DB_PASSWORD)]).await;
    secret(&secrets, "snapshot-key", &[("key", KEY)]).await;
    secret(
        &secrets,
        "s3-creds",
        &[("accessKeyId", ACCESS_KEY), ("secretAccessKey", SECRET_KEY)],
    )
    .await;
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns.name());
    let apply = |s: ProductionStack| {
        let stacks = stacks.clone();
        async move {
            stacks
                .patch(
                    &s.metadata.name.clone().unwrap(),
                    &PatchParams::apply("tester").force(),
                    &Patch::Apply(&s),
                )
                .await
                .unwrap();
        }
    };

    // An encrypted filesystem repository: rollout, bad upgrade, rollback with restore.
    let encrypted = "{encryption: {keySecret: {name: snapshot-key}}}";
    apply(stack("shop", "v1", "", encrypted)).await;
    wait_stack(&stacks, "shop", "Healthy", T, is_ready).await;
    apply(stack(
        "shop",
        "v2",
        ", {name: FAULT_ERROR_RATE, value: '1.0'}",
        encrypted,
    ))
    .await;
    let s = wait_stack(&stacks, "shop", "RolledBack with its data", T, |s| {
        s.status.as_ref().is_some_and(|st| {
            st.phase == Some(StackPhase::RolledBack)
                && st.last_rollback.as_ref().is_some_and(|r| {
                    r.restores.iter().all(|x| x.phase == RestorePhase::Restored)
                        && !r.restores.is_empty()
                })
        })
    })
    .await;
    assert!(s.status.unwrap().last_rollback.is_some());

    // An S3 store that cannot be reached: the snapshot fails, saying why, without the keys.
    apply(stack(
        "depot",
        "v1",
        "",
        "{store: {s3: {endpoint: 'http://127.0.0.1:9', bucket: backups, credentialsSecret: s3-creds}}}",
    ))
    .await;
    wait_stack(&stacks, "depot", "Healthy", T, is_ready).await;
    snaps
        .create(
            &PostParams::default(),
            &StackSnapshot {
                metadata: ObjectMeta {
                    name: Some("depot-now".into()),
                    ..Default::default()
                },
                spec: StackSnapshotSpec {
                    stack: "depot".into(),
                    component: "db".into(),
                    reason: Default::default(),
                },
                status: None,
            },
        )
        .await
        .unwrap();
    let failed = wait_until("the S3 snapshot to fail", T, || async {
        let st = snaps.get("depot-now").await.ok()?.status?;
        (st.phase == Some(SnapshotPhase::Failed)).then_some(st)
    })
    .await;
    let msg = failed.message.unwrap_or_default();
    assert!(!msg.is_empty(), "the failure says why");

    // Where a secret could leak.
    let json = |v: &dyn erased::Json| v.to_json();
    let mut places: Vec<(String, String)> = vec![];
    places.push(("the controller's log".into(), controller.log()));
    let events = Api::<Event>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default())
        .await
        .unwrap();
    places.push(("Events".into(), json(&events.items)));
    places.push((
        "ProductionStacks".into(),
        json(&stacks.list(&ListParams::default()).await.unwrap().items),
    ));
    // The revisions record the referenced Secret by name and digest only.
    let revisions = Api::<ControllerRevision>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default())
        .await
        .unwrap();
    let recorded = json(&revisions.items);
    assert!(
        recorded.contains("\"name\":\"creds\"") && recorded.contains("\"copy\":\"creds-"),
        "the revision records the Secret's version: {recorded}"
    );
    places.push(("ControllerRevisions".into(), recorded));
    // The copy is a Secret of its own, immutable, with the same content.
    let copies = secrets
        .list(&ListParams::default().labels("deployctl.dev/config-source=creds"))
        .await
        .unwrap()
        .items;
    assert!(
        !copies.is_empty(),
        "the referenced Secret is copied per revision"
    );
    assert!(copies.iter().all(|c| c.immutable == Some(true)));
    places.push((
        "StackSnapshots".into(),
        json(&snaps.list(&ListParams::default()).await.unwrap().items),
    ));
    let jobs = Api::<Job>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        jobs.items.len() >= 3,
        "snapshot, restore and the failed S3 snapshot ran as Jobs"
    );
    places.push(("agent Jobs".into(), json(&jobs.items)));
    let pods = Api::<Pod>::namespaced(client.clone(), ns.name())
        .list(&ListParams::default())
        .await
        .unwrap();
    // Pod objects hold the agents' termination messages.
    places.push(("Pods (termination messages)".into(), json(&pods.items)));
    let (_, metrics) = http_get(&controller.metrics_addr, "/metrics")
        .await
        .unwrap();
    places.push(("metrics".into(), metrics));
    let kubeconfig = env.kubeconfig_path();
    for args in [
        &["status", "shop"][..],
        &["history", "shop"],
        &["get", "-o", "yaml"],
        &["status", "depot"],
    ] {
        places.push((
            format!("`deployctl {}`", args.join(" ")),
            cli(kubeconfig, ns.name(), args),
        ));
    }
    // The agents' own output, as the node keeps it (found next to the volumes).
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns.name())
        .get("data-shop-db-0")
        .await
        .unwrap();
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pvc.spec.unwrap().volume_name.unwrap())
        .await
        .unwrap();
    let pv_dir = PathBuf::from(pv.spec.unwrap().local.unwrap().path);
    let node_dir = pv_dir
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let logs: Vec<PathBuf> = files_under(&node_dir.join("pods"))
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.to_string_lossy().contains(&format!("/{}_", ns.name()))
        })
        .collect();
    assert!(
        logs.iter().any(|p| p.to_string_lossy().contains("-snap-")),
        "the agents' logs are found: {logs:?}"
    );
    for p in logs {
        places.push((
            format!("pod log {}", p.display()),
            String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
        ));
    }

    // The scan sees a secret where one is: the Secret objects themselves.
    let raw: String = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.data.clone().unwrap_or_default().into_values())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        SENTINELS.iter().all(|s| raw.contains(s)),
        "the sentinels are in the Secrets"
    );
    for (what, text) in &places {
        assert_clean(what, text);
    }
}

/// JSON text of objects, for scanning.
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}
