//! Tests of the throwaway control plane itself, through the shared cluster of this binary:
//! it answers, `kubectl` can use its kubeconfig, RBAC and TokenRequest work, server-side
//! apply works, namespaces keep tests apart, and a cluster leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deployctl_harness::{kubeconfig, require_sim_node, shared, Cluster, ClusterOptions};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

#[tokio::test]
async fn api_server_answers_and_kubectl_can_use_the_kubeconfig() {
    let env = shared();
    let client = env.client().await;
    let version = client
        .apiserver_version()
        .await
        .expect("the API server reports its version");
    eprintln!("API server {}", version.git_version);

    let output = Command::new(deployctl_harness::kubectl_binary())
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .args(["get", "--raw", "/readyz"])
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "kubectl get --raw /readyz: {} stdout={stdout} stderr={}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn simulated_nodes_are_registered_and_schedulable() {
    let env = shared();
    require_sim_node!(env);
    assert!(!env.node_names().is_empty());
    let nodes: Api<Node> = Api::all(env.client().await);
    for name in env.node_names() {
        let node = nodes.get(name).await.expect("the node is registered");
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(ready, "node {name} is not Ready");
        assert!(
            taints.iter().all(|t| t.effect != "NoSchedule"),
            "node {name} has NoSchedule taints: {taints:?}"
        );
    }
}

async fn create_service_account(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Api<ServiceAccount> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    api
}

#[tokio::test]
async fn token_request_returns_a_token_that_rbac_restricts() {
    let env = shared();
    let ns = env.namespace("token").await;
    let client = env.client().await;
    let accounts = create_service_account(&client, ns.name(), "nobody").await;

    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let response = accounts
        .create_token_request("nobody", &PostParams::default(), &request)
        .await
        .expect("TokenRequest is served");
    let token = response.status.expect("TokenRequest has a status").token;
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");

    let as_nobody = kubeconfig::client_with_token(env.kubeconfig_path(), &token)
        .await
        .expect("client with the token");
    let pods: Api<Pod> = Api::namespaced(as_nobody, ns.name());
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert!(status.is_forbidden(), "expected 403, got {status:?}");
            assert!(
                status
                    .message
                    .contains(&format!("system:serviceaccount:{}:nobody", ns.name())),
                "the token authenticated as someone else: {}",
                status.message
            );
        }
        other => panic!("a ServiceAccount without bindings listed pods: {other:?}"),
    }
}

#[tokio::test]
async fn impersonated_service_account_without_bindings_is_forbidden() {
    let env = shared();
    let ns = env.namespace("rbac").await;
    let client = env.client().await;
    create_service_account(&client, ns.name(), "nobody").await;

    let user = format!("system:serviceaccount:{}:nobody", ns.name());
    let groups = ["system:serviceaccounts", "system:authenticated"];
    let as_nobody = kubeconfig::client_impersonating(env.kubeconfig_path(), &user, &groups)
        .await
        .expect("impersonating client");
    let pods: Api<Pod> = Api::namespaced(as_nobody, ns.name());
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert!(status.is_forbidden(), "{status:?}"),
        other => panic!("RBAC let {user} list pods: {other:?}"),
    }
    // The admin can, so the denial above is RBAC's doing, not a broken request.
    let admin_pods: Api<Pod> = Api::namespaced(client, ns.name());
    admin_pods
        .list(&ListParams::default())
        .await
        .expect("the admin lists pods");
}

#[tokio::test]
async fn server_side_apply_of_a_config_map() {
    let env = shared();
    let ns = env.namespace("ssa").await;
    let api: Api<ConfigMap> = Api::namespaced(env.client().await, ns.name());
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "applied"},
        "data": {"greeting": "hello"},
    });
    let params = PatchParams::apply("deployctl-harness-test");
    let first = api
        .patch("applied", &params, &Patch::Apply(&manifest))
        .await
        .expect("first apply creates");
    assert_eq!(
        first
            .data
            .as_ref()
            .and_then(|d| d.get("greeting"))
            .map(String::as_str),
        Some("hello")
    );
    let managers: Vec<_> = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert!(managers.contains(&"deployctl-harness-test"), "{managers:?}");

    let changed = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "applied"},
        "data": {"greeting": "bye"},
    });
    let second = api
        .patch("applied", &params, &Patch::Apply(&changed))
        .await
        .expect("second apply updates");
    assert_eq!(
        second
            .data
            .and_then(|d| d.get("greeting").cloned())
            .as_deref(),
        Some("bye")
    );
}

/// Both isolation tests make a ConfigMap of the same name in their own namespace and must
/// each see only their own.
async fn sees_only_its_own_objects(test: &str) {
    let env = shared();
    let ns = env.namespace(test).await;
    let api: Api<ConfigMap> = Api::namespaced(env.client().await, ns.name());
    let probe = ConfigMap {
        metadata: ObjectMeta {
            name: Some("isolation-probe".into()),
            labels: Some([("deployctl.dev/probe".to_owned(), "true".to_owned())].into()),
            ..Default::default()
        },
        data: Some([("owner".to_owned(), test.to_owned())].into()),
        ..Default::default()
    };
    api.create(&PostParams::default(), &probe)
        .await
        .expect("create the probe");
    let listed = api
        .list(&ListParams::default().labels("deployctl.dev/probe=true"))
        .await
        .expect("list probes");
    let owners: Vec<_> = listed
        .items
        .iter()
        .filter_map(|c| c.data.as_ref()?.get("owner").cloned())
        .collect();
    assert_eq!(owners, [test], "namespace {} saw {owners:?}", ns.name());
}

#[tokio::test]
async fn namespaces_keep_tests_apart_a() {
    sees_only_its_own_objects("isolation-a").await;
}

#[tokio::test]
async fn namespaces_keep_tests_apart_b() {
    sees_only_its_own_objects("isolation-b").await;
}

#[tokio::test]
async fn namespace_is_deleted_when_dropped() {
    let env = shared();
    let client = env.client().await;
    let ns = env.namespace("dropped").await;
    let name = ns.name().to_owned();
    drop(ns);
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let ns = api.get_opt(&name).await.expect("read namespace");
    // Finalisation takes the namespace controller a moment; deletion has begun already.
    let gone_or_terminating = ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some());
    assert!(gone_or_terminating, "namespace {name} was not deleted");
}

/// The tests that start clusters of their own run one at a time, after the shared one is
/// up: three control planes starting at once on two cores would each take far longer.
/// `None` (skip) when testing against an external cluster, where the local control-plane
/// binaries may not exist.
async fn own_cluster_turn() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    if std::env::var_os(deployctl_harness::shared::EXTERNAL_KUBECONFIG_ENV).is_some() {
        eprintln!("skipped: starts a local control plane, not run against an external cluster");
        return None;
    }
    shared();
    Some(TURN.lock().await)
}

fn process_alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still count as left behind.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_dropped_cluster_leaves_no_process_and_no_state_dir() {
    let Some(_turn) = own_cluster_turn().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("a second cluster starts");
    eprintln!(
        "control plane without node ready in {:.1?}",
        cluster.startup_time()
    );
    let pids = cluster.component_pids();
    let names: Vec<_> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ]
    );
    for (name, pid) in &pids {
        assert!(process_alive(*pid), "{name} ({pid}) is not running");
    }
    let data_dir = cluster.data_dir().to_owned();
    let client = cluster.client().await;
    client.apiserver_version().await.expect("it answers");

    let started = Instant::now();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("teardown");
    eprintln!("teardown took {:.1?}", started.elapsed());
    for (name, pid) in &pids {
        assert!(!process_alive(*pid), "{name} ({pid}) survived the drop");
    }
    assert!(
        !data_dir.exists(),
        "{} survived the drop",
        data_dir.display()
    );
}

/// Pids of processes whose cwd or command line is under `dir`.
fn processes_under(dir: &Path) -> Vec<u32> {
    let dir_text = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cwd.starts_with(dir) || String::from_utf8_lossy(&cmdline).contains(&dir_text)
        })
        .collect()
}

/// `(pid, start time)` from `/proc/<pid>/stat`; the start time tells a reused pid apart.
fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state ppid ... starttime (22nd field).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn same_process_alive(pid: u32, start: u64) -> bool {
    stat_of(pid).is_some_and(|(_, s)| s == start)
}

/// Every live descendant of `root`, with its start time.
fn descendants_of(root: u32) -> Vec<(u32, u64)> {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| stat_of(pid).map(|(ppid, start)| (pid, ppid, start)))
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![];
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, start) in &all {
            if *ppid == parent {
                found.push((*pid, *start));
                frontier.push(*pid);
            }
        }
    }
    found
}

#[tokio::test]
async fn a_killed_harness_process_leaves_nothing_behind() {
    let Some(_turn) = own_cluster_turn().await else {
        return;
    };
    // The sandbox binary is a harness process we can SIGKILL: no Drop runs, so only the
    // parent-death signals and the reaper can clean up.
    let out_dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig_out = out_dir.path().join("kubeconfig");
    let mut sandbox = Command::new(env!("CARGO_BIN_EXE_deployctl-sandbox"))
        .arg("--nodes=1")
        .arg("--kubeconfig-out")
        .arg(&kubeconfig_out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the sandbox");
    let stdout = sandbox.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps draining stdout: a closed pipe would make the sandbox panic on its next
    // println and tear down by unwinding, which is not what this test is about.
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("running") {
                let _ = tx.send(None);
            } else if let Some(dir) = line.strip_prefix("state dir: ") {
                let _ = tx.send(Some(PathBuf::from(dir)));
            }
        }
    });
    let state_dir: PathBuf = tokio::task::spawn_blocking(move || {
        let dir = rx.recv_timeout(Duration::from_secs(120)).ok().flatten();
        // Wait for "running", i.e. for the sandbox to be fully up.
        let running = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        dir.filter(|_| running)
    })
    .await
    .expect("read the sandbox output")
    .expect("the sandbox printed its state dir and started");
    assert!(kubeconfig_out.exists(), "the sandbox wrote no kubeconfig");
    let children = processes_under(&state_dir);
    assert!(
        children.len() >= 4,
        "expected the components, found {children:?}"
    );
    // Everything the sandbox started, the node's network-namespace holders included.
    let descendants = descendants_of(sandbox.id());
    assert!(descendants.len() > children.len(), "{descendants:?}");

    sandbox.kill().expect("SIGKILL the sandbox");
    sandbox.wait().expect("reap the sandbox");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut left = processes_under(&state_dir);
        left.extend(
            descendants
                .iter()
                .filter(|(pid, start)| same_process_alive(*pid, *start))
                .map(|(pid, _)| *pid),
        );
        if left.is_empty() && !state_dir.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGKILL of the sandbox: processes {left:?} and state dir exists={}",
            state_dir.exists()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
