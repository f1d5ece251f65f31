//! `deployctl snapshot list|create|verify|restore` and the data in `status` and `history`,
//! against the real control plane, the real controller and the simulated node: a stack
//! whose `db` (the demo app on a StatefulSet) keeps a SQLite database on a claim. Run as
//! a user or a pipeline would: exit codes, stdout and stderr. Each test has its own
//! namespace.

mod support;

use deployctl_api::{OperationAction, StackOperation, StackSnapshot};
use deployctl_harness::{claim_dir, files_under, require_sim_node, shared, ControllerProcess};
use kube::api::{Api, ListParams};
use support::*;

/// `--timeout` of waits that involve pods and agent Jobs on the simulated node.
const WAIT: &str = "150s";

/// The demo app serving its SQLite database from `/data`; `note` makes a new release.
fn demo_template(note: &str) -> String {
    format!(
        "{{metadata: {{labels: {{app: demo}}}}, spec: {{terminationGracePeriodSeconds: 5, \
         containers: [{{name: app, image: 'deployctl.dev/demo-app:v1', env: [{{name: DATA_DIR, \
         value: /data}}, {{name: SEED_ITEMS, value: '25'}}, {{name: NOTE, value: '{note}'}}], \
         ports: [{{name: http, containerPort: 8080}}], readinessProbe: {{httpGet: {{path: \
         /readyz, port: http}}, periodSeconds: 1}}, volumeMounts: [{{name: data, mountPath: \
         /data}}]}}]}}}}"
    )
}

/// `shop`: `db` keeps its data on the claim `data` (snapshotted with SQLite's online
/// backup), `api` (no pods) keeps none.
fn data_stack(note: &str) -> String {
    format!(
        "apiVersion: deployctl.dev/v1alpha1
kind: ProductionStack
metadata: {{name: shop}}
spec:
  rollout: {{analysis: 1s, progressDeadline: 60s}}
  components:
  - name: db
    kind: StatefulSet
    template: {db}
    service: {{ports: [{{name: http, port: 8080}}]}}
    volumeClaims: [{{name: data, size: 1Gi}}]
    data: {{volume: data, method: Sqlite, database: app.db}}
  - {{name: api, replicas: 0, dependsOn: [db], template: {{spec: {{containers: [{{name: app, image: 'deployctl.dev/demo-app:v1'}}]}}}}}}
",
        db = demo_template(note)
    )
}

/// Runs `deployctl` on a pseudo-terminal (util-linux `script`, as the harness uses its
/// `setpriv`), typing `input`; stdout and stderr arrive together, as on a screen.
async fn on_a_terminal(
    kubeconfig: &std::path::Path,
    ns: &str,
    args: &[&str],
    input: &str,
) -> Output {
    use tokio::io::AsyncWriteExt;
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = vec![
        quote(binary()),
        "--kubeconfig".into(),
        quote(&kubeconfig.display().to_string()),
        "-n".into(),
        quote(ns),
    ];
    line.extend(args.iter().map(|a| quote(a)));
    let mut child = tokio::process::Command::new("script")
        .args([
            "--quiet",
            "--return",
            "--command",
            &line.join(" "),
            "/dev/null",
        ])
        .env("SHELL", "/bin/sh")
        .env_remove("KUBECONFIG")
        .env("COLUMNS", "200")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script (util-linux) runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.expect("script ends");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn snapshots_are_taken_listed_verified_and_restored() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crds(env).await;
    let ns = env.namespace("cli-data").await;
    let ns = ns.name();
    let kc = env.kubeconfig_path();
    let _controller = ControllerProcess::start(env, ns, "c1", &[]);
    apply(&client, ns, &data_stack("1")).await;
    run(
        kc,
        ns,
        &["wait", "shop", "--for", "healthy", "--timeout", WAIT],
    )
    .await
    .expect_code(0);

    // A component without data is refused, naming the ones that have some.
    let out = run(
        kc,
        ns,
        &["snapshot", "create", "shop", "--component", "api"],
    )
    .await
    .expect_code(1);
    assert_eq!(
        out.stderr,
        "error: cannot snapshot component \"api\" of stack \"shop\": it declares no data\n  \
         components that declare data: db\n"
    );

    // Take one now and wait for it.
    let out = run(
        kc,
        ns,
        &["snapshot", "create", "shop", "--wait", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    let name = lines[0]
        .strip_prefix("Snapshot ")
        .and_then(|l| l.strip_suffix(" of component db (stack \"shop\") requested"))
        .unwrap_or_else(|| panic!("unexpected first line: {}", lines[0]))
        .to_string();
    let stamp = name
        .strip_prefix("shop-db-m")
        .unwrap_or_else(|| panic!("unexpected name {name}"));
    assert!(stamp.bytes().all(|b| b.is_ascii_digit()), "{name}");
    assert!(
        lines[1].starts_with(&format!("Snapshot {name} of component db is Completed: ")),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains(" of revision 1, digest "), "{}", lines[1]);
    let digest = lines[1].rsplit(' ').next().unwrap().to_string();
    assert!(is_hex64(&digest), "not a SHA-256 digest: {}", lines[1]);

    // The object is what a person would have written, filled by the controller.
    let snaps: Api<StackSnapshot> = Api::namespaced(client.clone(), ns);
    let snap = snaps.get(&name).await.unwrap();
    assert_eq!(snap.spec.reason, deployctl_api::SnapshotReason::Manual);
    assert_eq!(snap.spec.component, "db");
    assert_eq!(
        snap.status.as_ref().and_then(|s| s.digest.as_deref()),
        Some(digest.as_str())
    );

    // The snapshot measured the repository; the controller records it in the stack.
    let stacks: Api<deployctl_api::ProductionStack> = Api::namespaced(client.clone(), ns);
    wait_until(
        "the stack's snapshot store to be measured",
        std::time::Duration::from_secs(60),
        || async {
            stacks
                .get("shop")
                .await
                .ok()?
                .status?
                .snapshot_repository
                .map(|_| ())
        },
    )
    .await;

    // list: the table with the store under it, the wide table, the API objects.
    let out = run(kc, ns, &["snapshot", "list", "shop"])
        .await
        .expect_code(0);
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 4, "{}", out.stdout);
    assert!(
        rows[0].starts_with("NAME ")
            && rows[0].contains("STACK   COMPONENT   REVISION   PHASE       SIZE")
            && rows[0].contains("ADDED")
            && rows[0].contains("DIGEST         VERIFIED   AGE"),
        "{}",
        rows[0]
    );
    let cells: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(
        cells[..5],
        [name.as_str(), "shop", "db", "1", "Completed"],
        "{}",
        rows[1]
    );
    // SIZE and ADDED are two words each (`12 KiB`); then the short digest and no
    // verification yet.
    assert_eq!(cells[9], &digest[..12], "{}", rows[1]);
    assert_eq!(cells[10], "-", "{}", rows[1]);
    // The stack's store, measured by that snapshot's Job.
    assert_eq!(rows[2], "", "{}", out.stdout);
    assert!(
        rows[3].starts_with(&format!("Snapshot store of {ns}/shop: "))
            && rows[3].contains(" used, ")
            && rows[3].contains(" free on the claim of ")
            && rows[3].contains("by snapshot Job "),
        "{}",
        rows[3]
    );
    let out = run(kc, ns, &["snapshot", "list", "-o", "wide"])
        .await
        .expect_code(0);
    assert!(out.stdout.contains(&digest), "{}", out.stdout);
    assert!(out.stdout.contains("Manual"), "{}", out.stdout);
    let out = run(kc, ns, &["snapshot", "list", "shop", "-o", "json"])
        .await
        .expect_code(0);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list["items"][0]["status"]["digest"], digest.as_str());
    let out = run(kc, ns, &["snapshot", "list", "shpo"])
        .await
        .expect_code(1);
    assert_eq!(
        out.stderr,
        format!("error: stack \"shpo\" not found in namespace \"{ns}\"; did you mean \"shop\"?\n")
    );

    // verify: the controller re-reads and re-hashes it.
    let out = run(
        kc,
        ns,
        &["snapshot", "verify", &name, "--wait", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    assert!(
        out.stdout.starts_with(&format!(
            "Verification of snapshot {name} requested (deployctl.dev/verify-requested-at="
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.ends_with(&format!(
            "Snapshot {name} is Verified: its data in pvc://shop-snapshots matches digest \
             {digest}\n"
        )),
        "{}",
        out.stdout
    );
    let out = run(kc, ns, &["snapshot", "list", "shop"])
        .await
        .expect_code(0);
    assert!(out.stdout.contains("   Verified "), "{}", out.stdout);

    // An unknown snapshot suggests the close one.
    let typo = format!("{}x", &name[..name.len() - 1]);
    let out = run(kc, ns, &["snapshot", "verify", &typo])
        .await
        .expect_code(1);
    assert_eq!(
        out.stderr,
        format!(
            "error: snapshot \"{typo}\" not found in namespace \"{ns}\"; did you mean \
             \"{name}\"?\n"
        )
    );

    // restore: refused without --yes when nobody can be asked; nothing is requested.
    let out = run(kc, ns, &["snapshot", "restore", &name])
        .await
        .expect_code(1);
    assert_eq!(
        out.stderr,
        format!(
            "error: restoring snapshot \"{name}\" replaces the data of component db of stack \
             \"shop\", and stdin is not a terminal to ask for confirmation\n  pass --yes to \
             restore without asking\n"
        )
    );
    // On a terminal it asks; "n" changes nothing.
    let out = on_a_terminal(kc, ns, &["snapshot", "restore", &name], "n\n").await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "Restore snapshot {name} into component db of stack \"shop\"?\r\n"
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Restore? [y/N] "), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!(
            "error: restore of snapshot \"{name}\" cancelled; nothing was changed"
        )),
        "{}",
        out.stdout
    );
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns);
    assert!(ops
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());

    let out = run(
        kc,
        ns,
        &[
            "snapshot",
            "restore",
            &name,
            "--yes",
            "--reason",
            "bad import",
            "--wait",
            "--timeout",
            WAIT,
        ],
    )
    .await
    .expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("Restore of stack \"shop\" succeeded (operation shop-restore-"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!(
            "stack \"shop\" is Ready again: component db restored from snapshot {name} in "
        )),
        "{}",
        lines[1]
    );
    let all = ops.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), 1);
    let op = &all[0];
    assert_eq!(op.spec.action, OperationAction::Restore);
    assert_eq!(op.spec.snapshot.as_deref(), Some(name.as_str()));
    assert_eq!(op.spec.reason.as_deref(), Some("bad import"));
    assert_eq!(op.spec.requested_by.as_deref(), Some("deployctl-admin"));
    let op_name = op.metadata.name.clone().unwrap();

    // status tells which snapshot went into which component.
    let out = run(kc, ns, &["status", "shop"]).await.expect_code(0);
    assert!(
        out.stdout.contains("Phase:         Healthy\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("operation {op_name}): restore of snapshot {name}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Last rollback: revision 1 (data only), "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("Data restored: snapshot {name} into db\n")),
        "{}",
        out.stdout
    );

    // A new release is rolled out after a pre-rollout snapshot of revision 1's data,
    // which the history lists under revision 1.
    apply(&client, ns, &data_stack("2")).await;
    run(
        kc,
        ns,
        &["wait", "shop", "--for", "healthy", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    let out = run(kc, ns, &["history", "shop"]).await.expect_code(0);
    let section: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Snapshots taken before rollouts"))
        .collect();
    assert!(section.len() >= 3, "{}", out.stdout);
    let cells: Vec<&str> = section[2].split_whitespace().collect();
    assert_eq!(cells[0], "1", "{}", out.stdout);
    assert!(cells[1].starts_with("shop-db-r1-"), "{}", out.stdout);
    assert_eq!(cells[2..4], ["db", "Completed"], "{}", out.stdout);
    let out = run(kc, ns, &["history", "shop", "-o", "json"])
        .await
        .expect_code(0);
    let entries: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(entries[0]["revision"], 1);
    assert!(
        is_hex64(entries[0]["snapshots"][0]["digest"].as_str().unwrap_or("")),
        "{}",
        out.stdout
    );
    // The manual snapshot is not a pre-rollout one: in `snapshot list`, not the history.
    assert!(!out.stdout.contains(&name), "{}", out.stdout);
}

#[tokio::test]
async fn after_a_restore_fails_accept_live_data_starts_the_stack_on_the_data_as_it_is() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crds(env).await;
    let ns = env.namespace("cli-accept").await;
    let ns = ns.name();
    let kc = env.kubeconfig_path();
    let _controller = ControllerProcess::start(env, ns, "c1", &[]);
    apply(&client, ns, &data_stack("1")).await;
    run(
        kc,
        ns,
        &["wait", "shop", "--for", "healthy", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    let out = run(
        kc,
        ns,
        &["snapshot", "create", "shop", "--wait", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    let name = out
        .stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Snapshot "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the snapshot's name")
        .to_string();
    // The only snapshot: every chunk in the repository is its own. Damage them all.
    let store = claim_dir(
        &client,
        ns,
        "shop-snapshots",
        std::time::Duration::from_secs(60),
    )
    .await;
    let chunks = files_under(&store.join("objects"));
    assert!(!chunks.is_empty());
    for f in chunks {
        let mut bytes = std::fs::read(&f).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&f, bytes).unwrap();
    }

    // The restore fails its verification: exit 1, and the message names the ways out.
    let out = run(
        kc,
        ns,
        &[
            "snapshot",
            "restore",
            &name,
            "--reason",
            "drill",
            "--yes",
            "--wait",
            "--timeout",
            WAIT,
        ],
    )
    .await
    .expect_code(1);
    for way in [
        "deployctl retry shop",
        "deployctl snapshot restore",
        "deployctl accept-live-data shop",
    ] {
        assert!(
            out.stderr.contains(way),
            "{way} missing from:\n{}",
            out.stderr
        );
    }
    // abort is not a way out, and says which are.
    let out = run(kc, ns, &["abort", "shop", "--reason", "no"])
        .await
        .expect_code(1);
    assert!(out.stderr.contains("AcceptLiveData"), "{}", out.stderr);

    // The person accepts the data as it is: the stack is started on it and ends rolled
    // back onto its stable revision, the decision recorded with who made it.
    let out = run(
        kc,
        ns,
        &[
            "accept-live-data",
            "shop",
            "--reason",
            "the data is fine",
            "--wait",
            "--timeout",
            WAIT,
        ],
    )
    .await
    .expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("AcceptLiveData of stack \"shop\" succeeded (operation ")
            && lines[0].ends_with(&format!(
                "the data of component db from snapshot {name} is kept as it is now; the rollback to revision 1 goes on"
            )),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "stack \"shop\" is Healthy on revision 1");
    let ops: Api<StackOperation> = Api::namespaced(client.clone(), ns);
    let accept = ops
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|o| o.spec.action == OperationAction::AcceptLiveData)
        .expect("the CLI created an AcceptLiveData operation");
    assert_eq!(accept.spec.reason.as_deref(), Some("the data is fine"));
    let stack = Api::<deployctl_api::ProductionStack>::namespaced(client.clone(), ns)
        .get("shop")
        .await
        .unwrap();
    let last = stack.status.unwrap().last_rollback.unwrap();
    assert_eq!(
        last.restores[0].phase,
        deployctl_api::RestorePhase::Accepted
    );
    let why = last.restores[0].message.clone().unwrap_or_default();
    assert!(
        why.contains("the data is fine"),
        "the decision and its reason are recorded: {why}"
    );
}
