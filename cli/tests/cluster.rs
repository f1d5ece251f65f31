//! The `deployctl` binary against the real control plane and the real controller, run as
//! a user or a pipeline would: exit codes, stdout and stderr. Stacks have `replicas: 0`
//! so they become Healthy without pods; each test has its own namespace.

mod support;

use deployctl_api::{OperationAction, ProductionStack, StackOperation, StackPhase};
use deployctl_harness::{shared, ControllerProcess, SharedEnv, TestNamespace};
use kube::api::{Api, ListParams};
use kube::Client;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `--timeout` of waits that the controller meets in a few seconds.
const WAIT: &str = "90s";

/// A namespace with the CRDs installed and the controller running for it.
async fn setup(
    env: &'static SharedEnv,
    prefix: &str,
) -> (Client, TestNamespace, ControllerProcess) {
    let client = install_crds(env).await;
    let ns = env.namespace(prefix).await;
    let controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    (client, ns, controller)
}

/// Applies `shop` and waits, with the CLI, until it is healthy.
async fn healthy_shop(env: &SharedEnv, client: &Client, ns: &str, api_tag: &str) {
    apply(client, ns, &stack_yaml("shop", api_tag, "")).await;
    run(
        env.kubeconfig_path(),
        ns,
        &["wait", "shop", "--for", "healthy", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
}

fn operations(client: &Client, ns: &str) -> Api<StackOperation> {
    Api::namespaced(client.clone(), ns)
}

#[tokio::test]
async fn get_and_list_show_a_table_and_the_api_objects() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-get").await;
    let kc = env.kubeconfig_path();
    healthy_shop(env, &client, ns.name(), "v1").await;

    let out = run(kc, ns.name(), &["get", "shop"]).await.expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("NAME   PHASE     REVISION   STABLE   READY   LAST ROLLBACK   AGE"),
        "{}",
        lines[0]
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &cells[..6],
        ["shop", "Healthy", "1", "1", "2/2", "-"],
        "{}",
        lines[1]
    );

    // Machine output is the API object itself, readable by the API types.
    let out = run(kc, ns.name(), &["get", "shop", "-o", "json"])
        .await
        .expect_code(0);
    let stack: ProductionStack = serde_json::from_str(&out.stdout).expect("get -o json is a stack");
    assert_eq!(stack.status.unwrap().phase, Some(StackPhase::Healthy));
    let out = run(kc, ns.name(), &["get", "shop", "-o", "yaml"])
        .await
        .expect_code(0);
    let stack: ProductionStack =
        serde_yaml_ng::from_str(&out.stdout).expect("get -o yaml is a stack");
    assert_eq!(stack.spec.components.len(), 2);

    let out = run(kc, ns.name(), &["list", "-o", "json"])
        .await
        .expect_code(0);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list["kind"], "ProductionStackList");
    assert_eq!(list["items"][0]["metadata"]["name"], "shop");
    assert_eq!(list["items"][0]["status"]["readyComponents"], "2/2");

    let out = run(kc, ns.name(), &["list", "-A"]).await.expect_code(0);
    assert!(out.stdout.starts_with("NAMESPACE"), "{}", out.stdout);
    // Other tests' namespaces may be listed too; ours has shop, Healthy.
    assert!(
        out.stdout.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq([ns.name(), "shop", "Healthy"])),
        "{}",
        out.stdout
    );
    let out = run(kc, ns.name(), &["get", "-o", "wide"])
        .await
        .expect_code(0);
    assert!(
        out.stdout
            .lines()
            .next()
            .unwrap()
            .contains("ROLLOUT   HOLD   GENERATION"),
        "{}",
        out.stdout
    );

    // The other conditions a pipeline may wait for are met as well.
    for condition in ["ready", "phase=Healthy"] {
        run(
            kc,
            ns.name(),
            &["wait", "shop", "--for", condition, "--timeout", "10s"],
        )
        .await
        .expect_code(0);
    }
}

#[tokio::test]
async fn a_missing_stack_suggests_close_names_and_an_empty_namespace_says_so() {
    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-notfound").await;
    let kc = env.kubeconfig_path();
    let out = run(kc, ns.name(), &["list"]).await.expect_code(0);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        format!("No stacks found in namespace \"{}\".\n", ns.name())
    );

    apply(&client, ns.name(), &stack_yaml("shop-api", "v1", "")).await;
    let out = run(kc, ns.name(), &["status", "shop"]).await.expect_code(1);
    assert_eq!(
        out.stderr,
        format!(
            "error: stack \"shop\" not found in namespace \"{}\"; did you mean \"shop-api\"?\n",
            ns.name()
        )
    );
    assert_eq!(out.stdout, "");
}

#[tokio::test]
async fn status_tells_the_story_of_a_healthy_stack() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-status").await;
    healthy_shop(env, &client, ns.name(), "v1").await;
    let out = run(env.kubeconfig_path(), ns.name(), &["status", "shop"])
        .await
        .expect_code(0);
    let s = &out.stdout;
    assert!(s.contains("Stack:         shop\n"), "{s}");
    assert!(s.contains("Phase:         Healthy\n"), "{s}");
    assert!(s.contains("Revisions:     current 1, stable 1\n"), "{s}");
    assert!(s.contains("Conditions:    Ready=True"), "{s}");
    let rows: Vec<Vec<&str>> = s
        .lines()
        .skip_while(|l| !l.starts_with("Components:"))
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..4], ["db", "1", "Available", "0/0"], "{s}");
    assert_eq!(rows[1][..4], ["api", "1", "Available", "0/0"], "{s}");
}

#[tokio::test]
async fn history_and_diff_after_a_spec_change() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-history").await;
    let kc = env.kubeconfig_path();
    healthy_shop(env, &client, ns.name(), "v1").await;
    healthy_shop(env, &client, ns.name(), "v2").await;

    let out = run(kc, ns.name(), &["history", "shop"])
        .await
        .expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("REVISION   AGE"), "{}", out.stdout);
    assert!(lines[1].starts_with("1 "), "{}", out.stdout);
    assert!(
        lines[1].ends_with(
            "components: db (deployctl.dev/demo-app:v1), api (deployctl.dev/demo-app:v1)"
        ),
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with("2 "), "{}", out.stdout);
    assert!(lines[2].contains("current, stable"), "{}", out.stdout);
    assert!(
        lines[2].ends_with("api: deployctl.dev/demo-app:v1 → v2"),
        "{}",
        out.stdout
    );

    let out = run(kc, ns.name(), &["history", "shop", "-o", "json"])
        .await
        .expect_code(0);
    let entries: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(entries[1]["revision"], 2);
    assert_eq!(
        entries[1]["marks"],
        serde_json::json!(["current", "stable"])
    );
    assert_eq!(entries[1]["generation"], 2);

    let out = run(kc, ns.name(), &["diff", "shop", "1", "2"])
        .await
        .expect_code(0);
    assert!(
        out.stdout
            .starts_with("component api changed\n--- api (revision 1)\n+++ api (revision 2)\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "-    - image: deployctl.dev/demo-app:v1\n+    - image: deployctl.dev/demo-app:v2\n"
        ),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("\nunchanged: db\n"), "{}", out.stdout);

    let out = run(kc, ns.name(), &["diff", "shop", "1", "9"])
        .await
        .expect_code(1);
    assert!(
        out.stderr
            .starts_with("error: stack \"shop\" has no revision 9; it has revisions 1, 2\n"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn wait_times_out_with_exit_3_saying_where_the_stack_is() {
    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-timeout").await;
    let kc = env.kubeconfig_path();
    // No controller yet: the stack never gets a status.
    apply(&client, ns.name(), &stack_yaml("shop", "v1", "")).await;
    let out = run(
        kc,
        ns.name(),
        &["wait", "shop", "--for", "healthy", "--timeout", "2s"],
    )
    .await
    .expect_code(3);
    assert_eq!(
        out.stderr,
        "error: timed out after 2s waiting for stack \"shop\" to be healthy; it is without \
         status: the controller has not reported on it yet (is it running?)\n"
    );

    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    run(
        kc,
        ns.name(),
        &["wait", "shop", "--for", "healthy", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    let out = run(
        kc,
        ns.name(),
        &["wait", "shop", "--for", "rolled-back", "--timeout", "1s"],
    )
    .await
    .expect_code(3);
    assert!(
        out.stderr.starts_with(
            "error: timed out after 1s waiting for stack \"shop\" to be rolled back; it is Healthy"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

/// A spec whose `api` has a readiness gate that fails at once (no pods: failure, and no
/// failure is tolerated), so the controller rolls the stack back by itself.
fn failing_gate(tag: &str) -> String {
    stack_yaml("shop", tag, "").replace(
        "dependsOn: [db], ",
        "dependsOn: [db], gates: [{name: pods-ready, interval: 1s, readiness: {}}], ",
    )
}

#[tokio::test]
async fn wait_exits_4_when_a_gate_rolls_the_stack_back_and_retry_reports_it_again() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-rolledback").await;
    let kc = env.kubeconfig_path();
    healthy_shop(env, &client, ns.name(), "v1").await;
    apply(&client, ns.name(), &failing_gate("v2")).await;

    let out = run(
        kc,
        ns.name(),
        &["wait", "shop", "--for", "healthy", "--timeout", WAIT],
    )
    .await
    .expect_code(4);
    assert!(
        out.stderr
            .starts_with("error: stack \"shop\" rolled back from revision 2 to 1: "),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    run(
        kc,
        ns.name(),
        &["wait", "shop", "--for", "rolled-back", "--timeout", "10s"],
    )
    .await
    .expect_code(0);

    let out = run(kc, ns.name(), &["history", "shop"])
        .await
        .expect_code(0);
    let rev2 = out.stdout.lines().nth(2).unwrap_or_default();
    assert!(
        rev2.contains("current, held back, rolled back to 1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\nLast rollback: 2 → 1, "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("(automatic: a gate failed)"),
        "{}",
        out.stdout
    );

    let out = run(kc, ns.name(), &["get", "shop"]).await.expect_code(0);
    assert!(
        out.stdout.contains("   RolledBack   2          1   "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("   2→1 "), "{}", out.stdout);

    // A retry rolls revision 2 out again; its gate fails again: exit 4 once more.
    let out = run(
        kc,
        ns.name(),
        &["retry", "shop", "--wait", "--timeout", WAIT],
    )
    .await
    .expect_code(4);
    assert!(
        out.stdout
            .starts_with("Retry of stack \"shop\" succeeded (operation shop-retry-"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("revision 2 is rolled out again"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .starts_with("error: stack \"shop\" rolled back from revision 2 to 1"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn rollback_creates_an_operation_and_waits_for_the_stack_to_roll_back() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-rollback").await;
    let kc = env.kubeconfig_path();
    healthy_shop(env, &client, ns.name(), "v1").await;
    healthy_shop(env, &client, ns.name(), "v2").await;

    let out = run(kc, ns.name(), &["rollback", "shop", "--to-revision", "9"])
        .await
        .expect_code(1);
    assert!(
        out.stderr
            .starts_with("error: stack \"shop\" has no revision 9; it has revisions 1, 2\n"),
        "{}",
        out.stderr
    );

    let out = run(
        kc,
        ns.name(),
        &[
            "rollback",
            "shop",
            "--reason",
            "bad deploy",
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
        lines[0].starts_with("Rollback of stack \"shop\" succeeded (operation shop-rollback-"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with("): rolling back to revision 1"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("stack \"shop\" rolled back from revision 2 to 1 in "),
        "{}",
        lines[1]
    );

    let ops = operations(&client, ns.name())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(ops.len(), 1);
    let op = &ops[0];
    assert!(op
        .metadata
        .name
        .as_deref()
        .unwrap()
        .starts_with("shop-rollback-"));
    assert_eq!(op.spec.stack, "shop");
    assert_eq!(op.spec.action, OperationAction::Rollback);
    assert_eq!(op.spec.to_revision, None);
    assert_eq!(op.spec.reason.as_deref(), Some("bad deploy"));
    // Who the API server says the caller is (SelfSubjectReview): the harness certificate's
    // user, not the kubeconfig's user entry name (deployctl-test).
    assert_eq!(op.spec.requested_by.as_deref(), Some("deployctl-admin"));
    assert_eq!(op.status.as_ref().unwrap().target_revision, Some(1));

    let out = run(kc, ns.name(), &["status", "shop"]).await.expect_code(0);
    assert!(
        out.stdout.contains("Phase:         RolledBack\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Holding:       revision 1; revision 2 is held back"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Last rollback: 2 → 1, "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "operation {}): bad deploy",
            op.metadata.name.as_deref().unwrap()
        )),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn pause_and_resume_are_recorded_with_who_and_why() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-pause").await;
    let kc = env.kubeconfig_path();
    healthy_shop(env, &client, ns.name(), "v1").await;

    let out = run(
        kc,
        ns.name(),
        &["pause", "shop", "--reason", "investigating"],
    )
    .await
    .expect_code(0);
    assert!(
        out.stdout
            .starts_with("Pause of stack \"shop\" succeeded (operation shop-pause-"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("the rollout is paused"),
        "{}",
        out.stdout
    );
    let stacks: Api<ProductionStack> = Api::namespaced(client.clone(), ns.name());
    let pause = stacks
        .get("shop")
        .await
        .unwrap()
        .status
        .unwrap()
        .manual_pause
        .expect("manualPause is set");
    assert_eq!(pause.reason.as_deref(), Some("investigating"));
    assert_eq!(pause.requested_by.as_deref(), Some("deployctl-admin"));
    let out = run(kc, ns.name(), &["status", "shop"]).await.expect_code(0);
    assert!(
        out.stdout
            .contains("by deployctl-admin (operation shop-pause-"),
        "{}",
        out.stdout
    );

    let out = run(
        kc,
        ns.name(),
        &["resume", "shop", "--wait", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    assert!(
        out.stdout.contains("): the rollout resumes\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .ends_with("stack \"shop\" is Healthy on revision 1\n"),
        "{}",
        out.stdout
    );
    let status = stacks.get("shop").await.unwrap().status.unwrap();
    assert!(status.manual_pause.is_none());
}

#[tokio::test]
async fn a_refused_operation_exits_1_with_the_controllers_reason() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-refused").await;
    healthy_shop(env, &client, ns.name(), "v1").await;
    let out = run(env.kubeconfig_path(), ns.name(), &["promote", "shop"])
        .await
        .expect_code(1);
    assert!(
        out.stderr
            .starts_with("error: Promote of stack \"shop\" failed (operation shop-promote-"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .ends_with("): no rollout is in progress to promote\n"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_operation_nobody_acts_on_times_out_with_exit_3() {
    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-noctl").await;
    apply(&client, ns.name(), &stack_yaml("shop", "v1", "")).await;
    let out = run(
        env.kubeconfig_path(),
        ns.name(),
        &["abort", "shop", "--timeout", "2s"],
    )
    .await
    .expect_code(3);
    assert!(
        out.stderr.starts_with(
            "error: timed out after 2s waiting for the controller to act on operation shop-abort-"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is the deployctl controller running"),
        "{}",
        out.stderr
    );
    let ops = operations(&client, ns.name())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].spec.action, OperationAction::Abort);
    assert!(ops[0].status.is_none());
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .expect("status --watch prints within 90s")
        .expect("stdout is readable")
        .expect("status --watch keeps running")
}

#[tokio::test]
async fn status_watch_prints_a_block_per_change_off_a_terminal() {
    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-watch").await;
    apply(&client, ns.name(), &stack_yaml("shop", "v1", "")).await;
    let mut child = command(
        env.kubeconfig_path(),
        ns.name(),
        &["status", "shop", "--watch"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("deployctl starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The first block: no status yet.
    loop {
        let line = next_line(&mut lines).await;
        seen.push(line.clone());
        if line.starts_with("Phase:") {
            assert_eq!(line, "Phase:         Unknown");
            break;
        }
    }
    // The controller starts: new blocks follow until one says Healthy.
    let _controller = ControllerProcess::start(env, ns.name(), "c1", &[]);
    loop {
        let line = next_line(&mut lines).await;
        seen.push(line.clone());
        if line == "Phase:         Healthy" {
            break;
        }
    }
    let blocks = seen.iter().filter(|l| l.starts_with("Stack:")).count();
    assert!(
        blocks >= 2,
        "expected a block per change:\n{}",
        seen.join("\n")
    );
    child.kill().await.expect("deployctl stops");
}

#[tokio::test]
async fn runs_as_a_kubectl_plugin() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-plugin").await;
    healthy_shop(env, &client, ns.name(), "v1").await;
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-deployctl"));
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str]| {
        std::process::Command::new(deployctl_harness::kubectl_binary())
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", env.kubeconfig_path())
            .env("NO_COLOR", "1")
            .env("COLUMNS", "200")
            .output()
            .expect("kubectl runs")
    };
    let out = kubectl(&["deployctl", "get", "shop", "-n", ns.name()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("NAME   PHASE"), "{stdout}");
    assert!(
        stdout.lines().nth(1).unwrap().starts_with("shop   Healthy"),
        "{stdout}"
    );

    let out = kubectl(&["deployctl", "rollback", "--help"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Usage: kubectl deployctl rollback [OPTIONS] <STACK>"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_refusal_by_rbac_names_the_verb_and_resource() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::PostParams;

    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-rbac").await;
    apply(&client, ns.name(), &stack_yaml("shop", "v1", "")).await;
    // A ServiceAccount with no role at all, and a kubeconfig with its token.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "nobody"}})).unwrap();
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("ServiceAccount is created");
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &TokenRequest::default())
        .await
        .expect("a token is issued")
        .status
        .expect("token status")
        .token;
    let admin = std::fs::read_to_string(env.kubeconfig_path()).unwrap();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&admin).unwrap();
    config["users"][0]["user"] = serde_yaml_ng::from_str(&format!("{{token: '{token}'}}")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.kubeconfig");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();

    let out = run(&path, ns.name(), &["get", "shop"]).await.expect_code(1);
    assert!(
        out.stderr.starts_with(&format!(
            "error: forbidden: you may not get productionstacks.deployctl.dev in namespace \"{}\" \
             (User \"system:serviceaccount:{}:nobody\" cannot get resource",
            ns.name(),
            ns.name()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("\n  ask a cluster admin for a Role that allows \"get\""),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
}

/// A spec whose `api` is analysed for ten minutes by a gate that tolerates its failures,
/// so a rollout stays in analysis until someone promotes or aborts it.
fn long_analysis(tag: &str) -> String {
    stack_yaml("shop", tag, "  rollout: {analysis: 10m}\n").replace(
        "dependsOn: [db], ",
        "dependsOn: [db], gates: [{name: pods-ready, interval: 5s, failureLimit: 1000, readiness: {}}], ",
    )
}

#[tokio::test]
async fn promote_and_abort_act_on_a_rollout_in_progress() {
    let env = shared();
    let (client, ns, _controller) = setup(env, "cli-promote").await;
    let kc = env.kubeconfig_path();
    apply(&client, ns.name(), &long_analysis("v1")).await;
    run(
        kc,
        ns.name(),
        &[
            "wait",
            "shop",
            "--for",
            "phase=Progressing",
            "--timeout",
            WAIT,
        ],
    )
    .await
    .expect_code(0);
    let out = run(
        kc,
        ns.name(),
        &["promote", "shop", "--wait", "--timeout", WAIT],
    )
    .await
    .expect_code(0);
    assert!(
        out.stdout
            .contains("): the remaining analysis of revision 1 is skipped\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .ends_with("stack \"shop\" is Healthy on revision 1\n"),
        "{}",
        out.stdout
    );

    apply(&client, ns.name(), &long_analysis("v2")).await;
    run(
        kc,
        ns.name(),
        &[
            "wait",
            "shop",
            "--for",
            "phase=Progressing",
            "--timeout",
            WAIT,
        ],
    )
    .await
    .expect_code(0);
    let out = run(
        kc,
        ns.name(),
        &[
            "abort",
            "shop",
            "--reason",
            "wrong build",
            "--wait",
            "--timeout",
            WAIT,
        ],
    )
    .await
    .expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("Abort of stack \"shop\" succeeded (operation shop-abort-"),
        "{}",
        out.stdout
    );
    assert!(
        lines[0].ends_with("): rolling back to revision 1"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("stack \"shop\" rolled back from revision 2 to 1 in "),
        "{}",
        out.stdout
    );
}
