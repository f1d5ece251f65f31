//! The CLI in pipelines: label selectors, `-o name` and `-o jsonpath=`, `--as`
//! impersonation, `--request-timeout`, and `deployctl wait` run inside a pod with nothing
//! but its ServiceAccount (a CI job in the cluster), against the real control plane.

mod support;

use deployctl_harness::{require_sim_node, shared, ControllerProcess};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::time::Duration;
use support::*;

const WAIT: &str = "90s";

fn labelled(name: &str, team: &str) -> String {
    stack_yaml(name, "v1", "").replace(
        &format!("metadata: {{name: {name}}}"),
        &format!("metadata: {{name: {name}, labels: {{team: {team}}}}}"),
    )
}

#[tokio::test]
async fn selectors_names_and_jsonpath_print_what_a_script_needs() {
    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-pipe").await;
    let _c = ControllerProcess::start(env, ns.name(), "c1", &[]);
    let kc = env.kubeconfig_path();
    apply(&client, ns.name(), &labelled("shop", "shop")).await;
    apply(&client, ns.name(), &labelled("blog", "content")).await;
    for s in ["shop", "blog"] {
        run(
            kc,
            ns.name(),
            &["wait", s, "--for", "healthy", "--timeout", WAIT],
        )
        .await
        .expect_code(0);
    }

    let out = run(kc, ns.name(), &["list", "-l", "team=shop", "-o", "name"])
        .await
        .expect_code(0);
    assert_eq!(out.stdout, "productionstack.deployctl.dev/shop\n");
    let out = run(kc, ns.name(), &["get", "-l", "team!=shop", "-o", "name"])
        .await
        .expect_code(0);
    assert_eq!(out.stdout, "productionstack.deployctl.dev/blog\n");
    let out = run(kc, ns.name(), &["get", "shop", "-o", "name"])
        .await
        .expect_code(0);
    assert_eq!(out.stdout, "productionstack.deployctl.dev/shop\n");

    let out = run(
        kc,
        ns.name(),
        &[
            "get",
            "shop",
            "-o",
            "jsonpath={.status.phase}/{.status.stableRevision}",
        ],
    )
    .await
    .expect_code(0);
    assert_eq!(out.stdout, "Healthy/1");
    let out = run(
        kc,
        ns.name(),
        &[
            "list",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.labels.team}={.metadata.name}{"\n"}{end}"#,
        ],
    )
    .await
    .expect_code(0);
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["content=blog", "shop=shop"]);

    // A bad template is a usage error, before anything is asked of the server.
    let out = run(
        kc,
        ns.name(),
        &["get", "shop", "-o", "jsonpath={.status.phase"],
    )
    .await
    .expect_code(2);
    assert!(out.stderr.contains("unclosed {"), "{}", out.stderr);
    let out = run(kc, ns.name(), &["list", "-l", "team=nobody"])
        .await
        .expect_code(0);
    assert_eq!(out.stdout, "", "no stacks: an empty stdout for scripts");
}

#[tokio::test]
async fn as_acts_as_another_user_and_rbac_answers_for_them() {
    let env = shared();
    let client = install_crds(env).await;
    let ns = env.namespace("cli-as").await;
    apply(&client, ns.name(), &stack_yaml("shop", "v1", "")).await;
    let kc = env.kubeconfig_path();
    let out = run(kc, ns.name(), &["get", "shop", "--as", "release-bot"])
        .await
        .expect_code(1);
    assert!(
        out.stderr
            .contains("(User \"release-bot\" cannot get resource"),
        "the request was made as release-bot: {}",
        out.stderr
    );
    // A group that may read everything lets the same user through.
    run(
        kc,
        ns.name(),
        &[
            "get",
            "shop",
            "--as",
            "release-bot",
            "--as-group",
            "system:masters",
            "-o",
            "name",
        ],
    )
    .await
    .expect_code(0);
}

#[tokio::test]
async fn request_timeout_ends_a_request_to_a_server_that_never_answers() {
    // A server that accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("silent.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: 'http://{addr}'}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        run(&kc, "default", &["get", "shop", "--request-timeout", "1s"]),
    )
    .await
    .expect("--request-timeout ends the request; without it this would wait for ever")
    .expect_code(1);
    assert!(
        out.stderr.to_lowercase().contains("timed out") || out.stderr.contains("timeout"),
        "{}",
        out.stderr
    );
    held.abort();
}

/// A CI job running in the cluster: `deployctl wait` in a pod, no kubeconfig, only its
/// ServiceAccount's token and a Role that lets it read stacks.
#[tokio::test]
async fn wait_runs_in_a_pod_with_only_its_service_account() {
    let env = shared();
    require_sim_node!(env);
    let client = install_crds(env).await;
    let ns = env.namespace("cli-incluster").await;
    let _c = ControllerProcess::start(env, ns.name(), "c1", &[]);
    apply(&client, ns.name(), &stack_yaml("shop", "v1", "")).await;
    deployctl_harness::apply_yaml(
        &client,
        &format!(
            "apiVersion: v1
kind: ServiceAccount
metadata: {{name: pipeline}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-stacks}}
rules:
- apiGroups: [deployctl.dev]
  resources: [productionstacks]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pipeline-reads-stacks}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-stacks}}
subjects: [{{kind: ServiceAccount, name: pipeline, namespace: {}}}]
",
            ns.name()
        ),
        "rbac.yaml",
        "tester",
        ns.name(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ci-wait"},
        "spec": {
            "serviceAccountName": "pipeline",
            "restartPolicy": "Never",
            "containers": [{
                "name": "deployctl",
                "image": "deployctl.dev/cli:v1",
                "args": ["wait", "shop", "--for", "healthy", "--timeout", WAIT,
                         "--request-timeout", "20s"],
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let done = wait_until(
        "the pipeline pod to finish",
        Duration::from_secs(150),
        || async {
            let p = pods.get("ci-wait").await.ok()?;
            let phase = p.status.as_ref()?.phase.clone()?;
            (phase == "Succeeded" || phase == "Failed").then_some(p)
        },
    )
    .await;
    let logs = pods
        .logs("ci-wait", &Default::default())
        .await
        .unwrap_or_default();
    let status = done.status.unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Succeeded"),
        "deployctl wait in the pod failed:\n{logs}\n{status:?}"
    );
}
