//! Connecting like kubectl does: kubeconfig from `--kubeconfig` or `KUBECONFIG` (a list
//! of files, merged) or `~/.kube/config`, else, inside a pod, its ServiceAccount (a CI job
//! running in the cluster); the context from `--context` or the current one, the
//! namespace from `-n` or the context (the pod's) or `default`; `--as`/`--as-group`
//! impersonation and `--request-timeout`; and who we are, for the `requestedBy` of
//! operations.

use crate::args::GlobalArgs;
use crate::error::{from_kube, Call, CliError, Target};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

/// A client for the chosen cluster, and what error messages need to know about it.
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: Client,
    /// The namespace commands work in.
    pub namespace: String,
    /// Server and context, for error messages.
    pub target: Target,
    /// The kubeconfig user name of the context, the fallback identity.
    pub user: Option<String>,
    /// `--request-timeout`: also bounds each watch request, so a long wait is made of
    /// watches that end in time and are started again.
    pub request_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Loads the kubeconfig (or, in a pod without one, the in-cluster configuration) and
    /// builds a client, without contacting the server yet.
    pub async fn connect(global: &GlobalArgs) -> Result<Cluster, CliError> {
        // kube's rustls setup uses the process-wide crypto provider; this binary uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (mut config, context, user) = if in_cluster(global) {
            let config = kube::Config::incluster().map_err(|e| CliError::Kubeconfig {
                message: format!("no kubeconfig, and the pod's ServiceAccount cannot be used: {e}"),
                hint: "mount the ServiceAccount token (automountServiceAccountToken), or pass --kubeconfig PATH".to_string(),
            })?;
            (config, "in-cluster".to_string(), None)
        } else {
            from_kubeconfig(global).await?
        };
        if let Some(user) = &global.as_user {
            config.auth_info.impersonate = Some(user.clone());
            if !global.as_groups.is_empty() {
                config.auth_info.impersonate_groups = Some(global.as_groups.clone());
            }
        }
        let request_timeout = global.request_timeout.as_ref().map(|t| t.duration);
        if let Some(t) = request_timeout {
            config.connect_timeout = Some(t);
            config.read_timeout = Some(t);
            config.write_timeout = Some(t);
            // The timeout counts from each request, not from when a pooled connection
            // went idle.
            config.reset_reader_on_write = true;
        }
        let target = Target {
            server: config
                .cluster_url
                .to_string()
                .trim_end_matches('/')
                .to_string(),
            context,
        };
        let namespace = global
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| CliError::Kubeconfig {
            message: format!("cannot build a client for {}: {e}", target.server),
            hint: "check the cluster's certificate settings in the kubeconfig".to_string(),
        })?;
        Ok(Cluster {
            client,
            namespace,
            target,
            user: global.as_user.clone().or(user),
            request_timeout,
        })
    }
}

/// Whether to use the pod's ServiceAccount: no kubeconfig named (flag or KUBECONFIG), none
/// at ~/.kube/config, no --context, and the environment of a pod. kubectl does the same.
fn in_cluster(global: &GlobalArgs) -> bool {
    global.kubeconfig.as_deref().is_none_or(str::is_empty)
        && global.context.is_none()
        && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && !home_kubeconfig_exists()
}

fn home_kubeconfig_exists() -> bool {
    std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .is_some_and(|h| h.join(".kube/config").exists())
}

/// The configuration of the kubeconfig's chosen context, its name and its user's name.
async fn from_kubeconfig(
    global: &GlobalArgs,
) -> Result<(kube::Config, String, Option<String>), CliError> {
    let kubeconfig = load_kubeconfig(global.kubeconfig.as_deref())?;
    let context_name = global
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .ok_or_else(|| CliError::Kubeconfig {
            message: "the kubeconfig has no current context".to_string(),
            hint: "choose one with --context, or set one with `kubectl config use-context`"
                .to_string(),
        })?;
    let Some(context) = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .cloned()
    else {
        let mut names: Vec<&str> = kubeconfig.contexts.iter().map(|c| &*c.name).collect();
        names.sort_unstable();
        return Err(CliError::Kubeconfig {
            message: format!("context \"{context_name}\" is not in the kubeconfig"),
            hint: if names.is_empty() {
                "the kubeconfig defines no context".to_string()
            } else {
                format!("its contexts are: {}", names.join(", "))
            },
        });
    };
    let user = context.context.as_ref().and_then(|c| c.user.clone());
    let options = KubeConfigOptions {
        context: Some(context_name.clone()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| CliError::Kubeconfig {
            message: format!("cannot use context \"{context_name}\": {e}"),
            hint: "check its cluster and user entries in the kubeconfig".to_string(),
        })?;
    Ok((config, context_name, user))
}

impl Cluster {
    /// Translates a client error for this cluster.
    pub fn error(&self, err: kube::Error, call: &Call<'_>) -> CliError {
        from_kube(err, call, &self.target)
    }

    /// Who the API server says we are (`SelfSubjectReview`, Kubernetes 1.28+), else the
    /// kubeconfig's user name for the context; `None` if neither is known. Only a label
    /// for people: the audit log is the authoritative record.
    pub async fn identity(&self) -> Option<String> {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        match api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
        {
            Ok(review) => review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .filter(|u| !u.is_empty())
                .or_else(|| self.user.clone()),
            // Older servers (404) or no permission: the kubeconfig's name is all we have.
            Err(_) => self.user.clone(),
        }
    }
}

/// Reads the kubeconfig: the files named by `--kubeconfig`/`KUBECONFIG` (a list
/// separated like `PATH`, merged in order, missing ones skipped as kubectl does) or
/// `~/.kube/config`.
fn load_kubeconfig(paths: Option<&str>) -> Result<Kubeconfig, CliError> {
    let hint = || "pass --kubeconfig PATH or set KUBECONFIG".to_string();
    let Some(paths) = paths.filter(|p| !p.is_empty()) else {
        return Kubeconfig::read().map_err(|e| CliError::Kubeconfig {
            message: format!(
                "cannot read ~/.kube/config: {}",
                crate::error::root_cause(&e)
            ),
            hint: hint(),
        });
    };
    let list: Vec<std::path::PathBuf> = std::env::split_paths(paths)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let mut merged: Option<Kubeconfig> = None;
    for path in &list {
        if list.len() > 1 && !path.exists() {
            continue;
        }
        let one = Kubeconfig::read_from(path).map_err(|e| CliError::Kubeconfig {
            message: format!(
                "cannot read kubeconfig {}: {}",
                path.display(),
                crate::error::root_cause(&e)
            ),
            hint: hint(),
        })?;
        merged = Some(match merged {
            None => one,
            Some(m) => m.merge(one).map_err(|e| CliError::Kubeconfig {
                message: format!("cannot merge kubeconfig {}: {e}", path.display()),
                hint: hint(),
            })?,
        });
    }
    merged.ok_or_else(|| CliError::Kubeconfig {
        message: format!("none of the kubeconfig files {paths} exists"),
        hint: hint(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: 'https://127.0.0.1:1'}
users:
- name: alice
  user: {token: abc}
contexts:
- name: one
  context: {cluster: c, user: alice, namespace: prod}
- name: two
  context: {cluster: c, user: alice}
current-context: one
";

    fn global(path: &std::path::Path, context: Option<&str>, ns: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            kubeconfig: Some(path.display().to_string()),
            context: context.map(str::to_string),
            namespace: ns.map(str::to_string),
            no_color: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn namespace_comes_from_the_flag_then_the_context_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, CONFIG).unwrap();
        let c = Cluster::connect(&global(&path, None, None)).await.unwrap();
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.user.as_deref(), Some("alice"));
        assert_eq!(c.target.server, "https://127.0.0.1:1");
        let c = Cluster::connect(&global(&path, Some("two"), None))
            .await
            .unwrap();
        assert_eq!(c.namespace, "default");
        let c = Cluster::connect(&global(&path, Some("two"), Some("x")))
            .await
            .unwrap();
        assert_eq!(c.namespace, "x");
    }

    #[tokio::test]
    async fn unknown_context_lists_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, CONFIG).unwrap();
        let err = Cluster::connect(&global(&path, Some("three"), None))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "context \"three\" is not in the kubeconfig\n  its contexts are: one, two"
        );
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_says_how_to_name_one() {
        let err = Cluster::connect(&global(
            std::path::Path::new("/nonexistent/kubeconfig"),
            None,
            None,
        ))
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot read kubeconfig /nonexistent/kubeconfig:"),
            "{text}"
        );
        assert!(text.ends_with("\n  pass --kubeconfig PATH or set KUBECONFIG"));
    }

    #[tokio::test]
    async fn as_and_request_timeout_reach_the_client_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, CONFIG).unwrap();
        let mut g = global(&path, None, None);
        g.as_user = Some("ci-bot".into());
        g.as_groups = vec!["deployers".into()];
        g.request_timeout = Some("7s".parse().unwrap());
        let c = Cluster::connect(&g).await.unwrap();
        assert_eq!(
            c.user.as_deref(),
            Some("ci-bot"),
            "the identity is the one acted as"
        );
        assert_eq!(c.request_timeout, Some(std::time::Duration::from_secs(7)));
        assert_eq!(c.target.context, "one");
    }
}
