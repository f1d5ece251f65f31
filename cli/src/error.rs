//! The one error type of the command line, how it is worded for a person, and which exit
//! code each kind maps to (documented in `--help` and the README, relied on by pipelines).
//!
//! Every message is one or two lines: what failed, then what to do next. Errors from the
//! API client are translated here, so no command prints a Rust debug dump.

/// Exit codes, part of the command line's contract with scripts.
pub mod exit {
    /// Success.
    pub const SUCCESS: u8 = 0;
    /// Any error not listed below (the message says what failed).
    pub const ERROR: u8 = 1;
    /// Bad arguments (clap's own code).
    pub const USAGE: u8 = 2;
    /// A wait reached its `--timeout`.
    pub const TIMED_OUT: u8 = 3;
    /// The stack rolled back instead of becoming healthy.
    pub const ROLLED_BACK: u8 = 4;
}

/// The exit codes as shown at the end of `deployctl --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error: the message says what failed and what to do next
  2  usage error: bad arguments
  3  timed out: --timeout passed before the awaited state was reached
  4  rolled back: the stack rolled back instead of becoming healthy";

/// Everything that can make a command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No usable kubeconfig, or a bad `--context`.
    #[error("{message}\n  {hint}")]
    Kubeconfig {
        /// What is wrong.
        message: String,
        /// What to do about it.
        hint: String,
    },

    /// The API server could not be reached at all.
    #[error(
        "cannot reach the API server at {server}: {detail}\n  \
         check that the cluster is up, or choose another one with --context or --kubeconfig"
    )]
    Unreachable {
        /// The server URL from the kubeconfig.
        server: String,
        /// The innermost cause (e.g. `Connection refused (os error 111)`).
        detail: String,
    },

    /// The API server did not accept the credentials (HTTP 401).
    #[error(
        "the API server at {server} did not accept the credentials of context {context}: \
         {detail}\n  log in again or choose another context with --context"
    )]
    Unauthorized {
        /// The server URL.
        server: String,
        /// The kubeconfig context in use.
        context: String,
        /// The server's message.
        detail: String,
    },

    /// RBAC refused a request (HTTP 403).
    #[error(
        "forbidden: you may not {verb} {resource} in {scope}{server_said}\n  \
         ask a cluster admin for a Role that allows \"{verb}\" on \"{resource}\", \
         or use another --context"
    )]
    Forbidden {
        /// The refused verb (`get`, `create`, `watch`, ...).
        verb: String,
        /// The refused resource, e.g. `stackoperations.deployctl.dev`.
        resource: String,
        /// `namespace "prod"` or `all namespaces`.
        scope: String,
        /// ` (User "bob" cannot ...)`, the server's reason when it gave one.
        server_said: String,
    },

    /// A named object does not exist.
    #[error("{kind} \"{name}\" not found in namespace \"{namespace}\"{}", did_you_mean(.suggestions))]
    NotFound {
        /// `stack`, `snapshot`.
        kind: &'static str,
        /// The name that was asked for.
        name: String,
        /// Where it was looked for.
        namespace: String,
        /// Close names that do exist, closest first.
        suggestions: Vec<String>,
    },

    /// The deployctl CRDs are not installed on the server.
    #[error(
        "the API server at {server} does not serve {resource}: the deployctl CRDs are not \
         installed\n  install them with `kubectl apply -f manifests/crds/`, or choose another \
         cluster with --context"
    )]
    ApiNotInstalled {
        /// The server URL.
        server: String,
        /// The missing resource.
        resource: String,
    },

    /// A revision number that the stack's history does not have.
    #[error(
        "stack \"{stack}\" has no revision {revision}; it has {}\n  \
         revisions older than spec.revisionHistoryLimit are pruned",
        list_or_none(.available)
    )]
    RevisionNotFound {
        /// The stack.
        stack: String,
        /// The revision asked for.
        revision: i64,
        /// The revisions it has.
        available: Vec<i64>,
    },

    /// A request failed for another reason; `action` says what was being done.
    #[error("{action}: {message}")]
    Api {
        /// What the command was doing, e.g. `creating a StackOperation`.
        action: String,
        /// The server's or the client's message.
        message: String,
    },

    /// The controller refused a StackOperation.
    #[error("{message}")]
    OperationFailed {
        /// `rollback of stack "shop" failed (operation shop-rollback-x7k2q): ...`.
        message: String,
    },

    /// The request cannot be made as asked (a component without data, a snapshot that is
    /// not complete, a restore without confirmation); nothing was changed.
    #[error("{message}\n  {hint}")]
    Refused {
        /// What cannot be done, and why.
        message: String,
        /// What to do instead.
        hint: String,
    },

    /// The controller could not do what was asked: a snapshot failed, a verification found
    /// the snapshot corrupt, a restore failed.
    #[error("{message}")]
    Failed {
        /// What failed, with the controller's message (and what to do, on a second line).
        message: String,
    },

    /// The stack reached a state the wait can never get out of by itself (Invalid,
    /// deleted, Terminating).
    #[error("{message}")]
    Hopeless {
        /// Why waiting longer is pointless.
        message: String,
    },

    /// `--timeout` passed.
    #[error("{message}")]
    TimedOut {
        /// `timed out after 5m waiting for stack "shop" to be healthy; it is ...`.
        message: String,
    },

    /// The stack rolled back while the command waited for it to become healthy.
    #[error("{message}")]
    RolledBack {
        /// Which rollback, and why.
        message: String,
    },

    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::TimedOut { .. } => exit::TIMED_OUT,
            CliError::RolledBack { .. } => exit::ROLLED_BACK,
            _ => exit::ERROR,
        }
    }

    /// Whether this is a closed pipe on stdout (`deployctl history | head`): not worth a
    /// message, the reader has gone.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!("; did you mean \"{one}\"?"),
        many => {
            let quoted: Vec<String> = many.iter().map(|s| format!("\"{s}\"")).collect();
            format!("; did you mean one of {}?", quoted.join(", "))
        }
    }
}

fn list_or_none(revisions: &[i64]) -> String {
    if revisions.is_empty() {
        return "none yet (has the controller seen it?)".to_string();
    }
    let s: Vec<String> = revisions.iter().map(|r| r.to_string()).collect();
    format!("revisions {}", s.join(", "))
}

/// What a request was doing, so that a failure can say so.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    /// The Kubernetes verb (`get`, `list`, `watch`, `create`, `patch`).
    pub verb: &'a str,
    /// The resource with its group, e.g. `productionstacks.deployctl.dev`.
    pub resource: &'a str,
    /// The namespace, `None` for all namespaces.
    pub namespace: Option<&'a str>,
    /// What the command was doing, in words (`reading stack "shop"`).
    pub action: String,
}

/// Where the requests go, for error messages.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// The server URL.
    pub server: String,
    /// The kubeconfig context.
    pub context: String,
}

/// Translates an API client error into a [`CliError`] that says what was refused and what
/// to do. Not-found is left to the caller, which knows what was looked for; here it
/// becomes a generic message.
pub fn from_kube(err: kube::Error, call: &Call<'_>, target: &Target) -> CliError {
    match err {
        kube::Error::Api(status) => match status.code {
            401 => CliError::Unauthorized {
                server: target.server.clone(),
                context: target.context.clone(),
                detail: status.message.clone(),
            },
            403 => {
                // The server's sentence names the user and the exact rule; keep just that.
                let said = status
                    .message
                    .split_once("is forbidden: ")
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or_else(|| status.message.clone());
                CliError::Forbidden {
                    verb: call.verb.to_string(),
                    resource: call.resource.to_string(),
                    scope: match call.namespace {
                        Some(ns) => format!("namespace \"{ns}\""),
                        None => "all namespaces".to_string(),
                    },
                    server_said: if said.is_empty() {
                        String::new()
                    } else {
                        format!(" ({said})")
                    },
                }
            }
            _ => CliError::Api {
                action: call.action.clone(),
                message: if status.message.is_empty() {
                    format!("the API server answered {} {}", status.code, status.reason)
                } else {
                    status.message.clone()
                },
            },
        },
        e @ (kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::RustlsTls(_)
        | kube::Error::ReadEvents(_)) => CliError::Unreachable {
            server: target.server.clone(),
            detail: root_cause(&e),
        },
        kube::Error::Auth(e) => CliError::Kubeconfig {
            message: format!(
                "cannot get credentials for context {}: {}",
                target.context,
                root_cause(&e)
            ),
            hint: "check the user of that context in the kubeconfig (exec plugin, token file, \
                   certificates)"
                .to_string(),
        },
        e => CliError::Api {
            action: call.action.clone(),
            message: root_cause(&e),
        },
    }
}

/// The innermost message of an error chain: `Connection refused (os error 111)` rather
/// than `ServiceError: client error (Connect)`.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The `error: ...` block printed on stderr, colouring the prefix when asked.
pub fn render(err: &CliError, color: bool) -> String {
    let prefix = if color {
        "\x1b[1;31merror:\x1b[0m"
    } else {
        "error:"
    };
    format!("{prefix} {err}")
}

/// A one-line description of something, for errors; keeps messages on one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn call() -> Call<'static> {
        Call {
            verb: "create",
            resource: "stackoperations.deployctl.dev",
            namespace: Some("prod"),
            action: "creating a StackOperation".into(),
        }
    }

    fn target() -> Target {
        Target {
            server: "https://127.0.0.1:6443".into(),
            context: "prod-admin".into(),
        }
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let msg = || "m".to_string();
        assert_eq!(CliError::TimedOut { message: msg() }.exit_code(), 3);
        assert_eq!(CliError::RolledBack { message: msg() }.exit_code(), 4);
        assert_eq!(CliError::Hopeless { message: msg() }.exit_code(), 1);
        assert_eq!(CliError::OperationFailed { message: msg() }.exit_code(), 1);
        assert_eq!(CliError::Failed { message: msg() }.exit_code(), 1);
        assert_eq!(
            CliError::Refused {
                message: msg(),
                hint: msg()
            }
            .exit_code(),
            1
        );
        assert_eq!(
            CliError::Unreachable {
                server: msg(),
                detail: msg()
            }
            .exit_code(),
            1
        );
        for code in ["0", "1", "2", "3", "4"] {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")));
        }
    }

    #[test]
    fn not_found_suggests_close_names() {
        let e = CliError::NotFound {
            kind: "stack",
            name: "shop".into(),
            namespace: "prod".into(),
            suggestions: vec!["shop-api".into()],
        };
        assert_eq!(
            e.to_string(),
            "stack \"shop\" not found in namespace \"prod\"; did you mean \"shop-api\"?"
        );
        let e = CliError::NotFound {
            kind: "stack",
            name: "shop".into(),
            namespace: "prod".into(),
            suggestions: vec!["shop-api".into(), "shops".into()],
        };
        assert!(e
            .to_string()
            .ends_with("did you mean one of \"shop-api\", \"shops\"?"));
    }

    #[test]
    fn forbidden_names_verb_resource_and_namespace() {
        let status = Status::failure(
            "stackoperations.deployctl.dev is forbidden: User \"bob\" cannot create resource \
             \"stackoperations\" in API group \"deployctl.dev\" in the namespace \"prod\"",
            "Forbidden",
        )
        .with_code(403);
        let e = from_kube(kube::Error::Api(status.boxed()), &call(), &target());
        let text = e.to_string();
        assert!(
            text.starts_with(
                "forbidden: you may not create stackoperations.deployctl.dev in namespace \
                 \"prod\" (User \"bob\" cannot create resource"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("allows \"create\" on \"stackoperations.deployctl.dev\""));
    }

    #[test]
    fn other_api_errors_say_what_was_being_done() {
        let status = Status::failure("admission webhook said no", "BadRequest").with_code(400);
        let e = from_kube(kube::Error::Api(status.boxed()), &call(), &target());
        assert_eq!(
            e.to_string(),
            "creating a StackOperation: admission webhook said no"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn unreachable_names_the_server_and_suggests_context() {
        let e = CliError::Unreachable {
            server: "https://127.0.0.1:6443".into(),
            detail: "Connection refused (os error 111)".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with(
            "cannot reach the API server at https://127.0.0.1:6443: Connection refused"
        ));
        assert!(text.contains("--context"));
    }

    #[test]
    fn revision_not_found_lists_what_exists() {
        let e = CliError::RevisionNotFound {
            stack: "shop".into(),
            revision: 7,
            available: vec![2, 3],
        };
        assert!(e
            .to_string()
            .starts_with("stack \"shop\" has no revision 7; it has revisions 2, 3\n"));
    }

    #[test]
    fn rendering_colours_only_the_prefix_and_only_when_asked() {
        let e = CliError::Hopeless {
            message: "gone".into(),
        };
        assert_eq!(render(&e, false), "error: gone");
        assert_eq!(render(&e, true), "\x1b[1;31merror:\x1b[0m gone");
    }
}
