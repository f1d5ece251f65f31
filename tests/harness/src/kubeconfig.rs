//! Kubeconfig files and kube clients: writing a self-contained kubeconfig (certificates
//! embedded, so it works for `kubectl` and copies outside the state dir), and building
//! clients from one, as the admin, as a bearer token or impersonating someone.

use std::path::Path;

use base64::Engine as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{HarnessError, Result};

/// Name of the cluster, user and context in the kubeconfigs the harness writes.
pub const CONTEXT_NAME: &str = "deployctl-test";

/// Renders a kubeconfig with one cluster, one certificate user and one context.
pub(crate) fn render(
    server: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    // Hand-written rather than serialised so the file reads like what kubeadm writes.
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {CONTEXT_NAME}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {CONTEXT_NAME}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {CONTEXT_NAME}
  context:
    cluster: {CONTEXT_NAME}
    user: {CONTEXT_NAME}
    namespace: default
current-context: {CONTEXT_NAME}
",
        ca = b64(ca_pem),
        cert = b64(client_cert_pem),
        key = b64(client_key_pem),
    )
}

/// Reads a kubeconfig file.
pub fn read(path: &Path) -> Result<Kubeconfig> {
    Kubeconfig::read_from(path).map_err(|e| HarnessError::Kubeconfig {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Builds a client from a parsed kubeconfig (its current context).
pub async fn client_from(kubeconfig: Kubeconfig, path: &Path) -> Result<kube::Client> {
    // kube's rustls setup uses the process-wide provider; install ring (the workspace's
    // choice) in case no other crate in this binary did.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| HarnessError::Kubeconfig {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    kube::Client::try_from(config).map_err(|e| HarnessError::kube("building a kube client", e))
}

/// Builds a new client from a kubeconfig file. The client belongs to the caller's tokio
/// runtime.
pub async fn client(path: &Path) -> Result<kube::Client> {
    client_from(read(path)?, path).await
}

/// Builds a client that authenticates with a bearer `token` (e.g. from a TokenRequest)
/// instead of the kubeconfig's own credentials, keeping its server and CA.
pub async fn client_with_token(path: &Path, token: &str) -> Result<kube::Client> {
    let mut kubeconfig = read(path)?;
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            *auth = kube::config::AuthInfo {
                token: Some(token.to_owned().into()),
                ..Default::default()
            };
        }
    }
    client_from(kubeconfig, path).await
}

/// Builds a client that keeps the kubeconfig's credentials but impersonates `user`
/// (e.g. `system:serviceaccount:NS:NAME`), with `groups` if given.
pub async fn client_impersonating(
    path: &Path,
    user: &str,
    groups: &[&str],
) -> Result<kube::Client> {
    let mut kubeconfig = read(path)?;
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.to_owned());
            auth.impersonate_groups =
                (!groups.is_empty()).then(|| groups.iter().map(|g| (*g).to_owned()).collect());
        }
    }
    client_from(kubeconfig, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_kubeconfig_parses_with_embedded_data() {
        let text = render("https://127.0.0.1:6443", "CA", "CERT", "KEY");
        let kubeconfig = Kubeconfig::from_yaml(&text).expect("parses");
        assert_eq!(kubeconfig.current_context.as_deref(), Some(CONTEXT_NAME));
        let cluster = kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Q0E="));
    }
}
