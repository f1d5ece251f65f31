//! `--help` and error output pinned by snapshots (no cluster needed): what people read
//! first must not change by accident. Runs the built binaries with a fixed width and no
//! colour, as a user's terminal would render them.

use std::process::Command;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_binary(binary: &str, args: &[&str]) -> Output {
    let out = Command::new(binary)
        .args(args)
        .env_remove("KUBECONFIG")
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .env("HOME", "/nonexistent-home")
        .output()
        .expect("the binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn deployctl(args: &[&str]) -> Output {
    run_binary(env!("CARGO_BIN_EXE_deployctl"), args)
}

const COMMANDS: &[&str] = &[
    "get",
    "list",
    "status",
    "history",
    "diff",
    "rollback",
    "pause",
    "resume",
    "promote",
    "retry",
    "abort",
    "accept-live-data",
    "wait",
    "completion",
];

#[test]
fn top_level_help() {
    let out = deployctl(&["--help"]);
    assert_eq!(out.code, 0);
    insta::assert_snapshot!(out.stdout);
}

#[test]
fn help_of_every_command() {
    for command in COMMANDS {
        let out = deployctl(&[command, "--help"]);
        assert_eq!(out.code, 0, "{command} --help: {}", out.stderr);
        insta::assert_snapshot!(format!("help_{command}"), out.stdout);
    }
}

const SNAPSHOT_COMMANDS: &[&str] = &["list", "create", "verify", "restore"];

#[test]
fn help_of_the_snapshot_commands() {
    let out = deployctl(&["snapshot", "--help"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    insta::assert_snapshot!("help_snapshot", out.stdout);
    for command in SNAPSHOT_COMMANDS {
        let out = deployctl(&["snapshot", command, "--help"]);
        assert_eq!(out.code, 0, "snapshot {command} --help: {}", out.stderr);
        insta::assert_snapshot!(format!("help_snapshot_{command}"), out.stdout);
    }
}

#[test]
fn snapshot_usage_errors_exit_2() {
    let out = deployctl(&["snapshot"]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("usage_snapshot_without_command", out.stderr);
    let out = deployctl(&["snapshot", "restore"]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("usage_snapshot_restore_without_snapshot", out.stderr);
    let out = deployctl(&["snapshot", "list", "-o", "table"]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("usage_snapshot_list_bad_format", out.stderr);
    let out = deployctl(&["snapshot", "create", "shop", "--timeout", "soon"]);
    assert_eq!(out.code, 2);
}

#[test]
fn help_under_the_kubectl_plugin_name() {
    let out = run_binary(
        env!("CARGO_BIN_EXE_kubectl-deployctl"),
        &["status", "--help"],
    );
    assert_eq!(out.code, 0);
    assert!(
        out.stdout
            .contains("Usage: kubectl deployctl status [OPTIONS] <STACK>"),
        "{}",
        out.stdout
    );
    let out = run_binary(env!("CARGO_BIN_EXE_kubectl-deployctl"), &["--help"]);
    assert!(
        out.stdout
            .contains("Usage: kubectl deployctl [OPTIONS] <COMMAND>"),
        "{}",
        out.stdout
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = deployctl(&["wait", "shop", "--for", "green"]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("usage_bad_condition", out.stderr);
    let out = deployctl(&["rollback"]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("usage_missing_stack", out.stderr);
    let out = deployctl(&["rollback", "shop", "--to-revision", "0"]);
    assert_eq!(out.code, 2);
    let out = deployctl(&["wait", "shop", "--for", "healthy", "--timeout", "5"]);
    assert_eq!(out.code, 2);
    insta::assert_snapshot!("usage_bad_timeout", out.stderr);
}

/// A kubeconfig whose server nothing listens on (port 1 is privileged and unused).
fn unreachable_kubeconfig(dir: &std::path::Path) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}
users:
- name: alice
  user: {token: not-a-real-token}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: alice, namespace: prod}
current-context: nowhere
",
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn connection_and_kubeconfig_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kc = unreachable_kubeconfig(dir.path());
    let out = deployctl(&["--kubeconfig", &kc, "get", "shop"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    insta::assert_snapshot!("error_unreachable", out.stderr);

    let out = deployctl(&[
        "--kubeconfig",
        &kc,
        "--context",
        "elsewhere",
        "status",
        "shop",
    ]);
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("error_unknown_context", out.stderr);

    let out = deployctl(&["--kubeconfig", "/nonexistent/kubeconfig", "list"]);
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("error_missing_kubeconfig", out.stderr);

    // Without --kubeconfig or KUBECONFIG: ~/.kube/config, which does not exist here.
    let out = deployctl(&["history", "shop"]);
    assert_eq!(out.code, 1);
    insta::assert_snapshot!("error_no_default_kubeconfig", out.stderr);

    // The snapshot commands fail the same way, before asking anything.
    let out = deployctl(&["--kubeconfig", &kc, "snapshot", "restore", "shop-db-m1"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        deployctl(&["--kubeconfig", &kc, "get", "shop"]).stderr
    );
}

#[test]
fn completion_scripts_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = deployctl(&["completion", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("rollback"), "{shell}");
        // Nested commands complete too.
        assert!(out.stdout.contains("restore"), "{shell}");
        assert!(
            out.stdout.contains("--component") || out.stdout.contains("-l component"),
            "{shell}"
        );
    }
    let out = run_binary(
        env!("CARGO_BIN_EXE_kubectl-deployctl"),
        &["completion", "bash"],
    );
    assert!(out.stdout.contains("kubectl-deployctl"), "{}", out.stdout);
    assert_eq!(deployctl(&["completion", "powershell"]).code, 2);
}

#[test]
fn version() {
    let out = deployctl(&["--version"]);
    assert_eq!(out.code, 0);
    assert_eq!(
        out.stdout,
        format!("deployctl {}\n", env!("CARGO_PKG_VERSION"))
    );
}
