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
}

#[test]
fn completion_scripts_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = deployctl(&["completion", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("rollback"), "{shell}");
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
