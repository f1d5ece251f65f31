//! Where gates may send requests. The controller runs with cluster-wide reach, and anyone
//! who may edit a stack in one namespace writes its gates: without a limit, a gate's `url`
//! or Prometheus `address` would make the controller a request proxy to other namespaces'
//! services or the cloud's metadata address, reporting back the status code and whether
//! the body held a string. So by default a gate reaches only the component's own pods (the
//! gates without `url`); any other target must be on the administrator's list (controller
//! flags, chart values), a spec naming another is `InvalidSpec`, and a redirect is followed
//! only where the first request could have gone.

use deployctl_api::validation::{FieldError, InvalidSpec};
use deployctl_api::{Gate, ProductionStackSpec};
use reqwest::Url;

/// The administrator's allow-list of gate targets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatePolicy {
    url_prefixes: Vec<Url>,
    prometheus: Vec<Url>,
}

/// Why an allow-list entry was refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {entry:?}: {reason}")]
pub struct PolicyError {
    flag: &'static str,
    entry: String,
    reason: String,
}

impl GatePolicy {
    /// The list from the controller's flags: URL prefixes for `http`/`errorRate` gates'
    /// `url`, and base URLs for `prometheus` gates' `address`.
    pub fn new(url_prefixes: &[String], prometheus: &[String]) -> Result<Self, PolicyError> {
        Ok(GatePolicy {
            url_prefixes: parse_prefixes("--gate-allowed-url-prefix", url_prefixes)?,
            prometheus: parse_prefixes("--gate-allowed-prometheus", prometheus)?,
        })
    }

    /// Whether a gate's `url` may be requested.
    pub fn allows_url(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| self.url_prefixes.iter().any(|p| within(p, &u)))
    }

    /// Whether a URL under a Prometheus gate's `address` may be requested.
    pub fn allows_prometheus(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| self.prometheus.iter().any(|p| within(p, &u)))
    }

    /// The stack's gates that reach beyond the component's own pods without being on the
    /// list, each named by its field.
    pub fn check(&self, spec: &ProductionStackSpec) -> Result<(), InvalidSpec> {
        let mut errors = Vec::new();
        for (i, c) in spec.components.iter().enumerate() {
            for (j, g) in c.gates.iter().enumerate() {
                self.check_gate(&format!("spec.components[{i}].gates[{j}]"), g, &mut errors);
            }
        }
        for (j, g) in spec.gates.iter().enumerate() {
            self.check_gate(&format!("spec.gates[{j}]"), g, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(errors))
        }
    }

    fn check_gate(&self, path: &str, g: &Gate, errors: &mut Vec<FieldError>) {
        let urls = [
            g.http
                .as_ref()
                .and_then(|h| h.target.url.as_ref())
                .map(|u| ("http.url", u)),
            g.error_rate
                .as_ref()
                .and_then(|e| e.target.url.as_ref())
                .map(|u| ("errorRate.url", u)),
        ];
        for (field, url) in urls.into_iter().flatten() {
            if !self.allows_url(url) {
                errors.push(FieldError {
                    path: format!("{path}.{field}"),
                    message: format!(
                        "{url} is not on the controller's list of gate targets: leave url unset to check the component's own pods, or ask the cluster administrator to allow its prefix (chart value gates.allowedUrlPrefixes)"
                    ),
                });
            }
        }
        if let Some(p) = &g.prometheus {
            if !self.allows_prometheus(&p.address) {
                errors.push(FieldError {
                    path: format!("{path}.prometheus.address"),
                    message: format!(
                        "{} is not on the controller's list of Prometheus servers: use one of the allowed addresses, or ask the cluster administrator to add it (chart value gates.allowedPrometheusAddresses)",
                        p.address
                    ),
                });
            }
        }
    }

    /// The redirect rule of the gates' HTTP client: a redirect is followed (at most 5)
    /// only to where the first request could have gone, so an allowed target cannot
    /// bounce the controller to one that is not: the same origin for a pod of the
    /// component, the list for a listed URL or Prometheus.
    pub fn redirects(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > 5 {
                return attempt.error("more than 5 redirects");
            }
            let next = attempt.url().clone();
            let first = attempt.previous().first().cloned();
            let allowed = match first {
                Some(first) if policy.allows_url(first.as_str()) => {
                    policy.allows_url(next.as_str())
                }
                Some(first) if policy.allows_prometheus(first.as_str()) => {
                    policy.allows_prometheus(next.as_str())
                }
                Some(first) => first.origin() == next.origin(),
                None => false,
            };
            if allowed {
                attempt.follow()
            } else {
                attempt.error(format!(
                    "redirect to {next} refused: not where the gate may send requests"
                ))
            }
        })
    }
}

/// An administrator's list of URL prefixes, as given to `flag`: http(s) URLs with a host
/// and no user, password, query or fragment (blank entries are skipped). Shared by every
/// list of where the controller may send requests (gates, notifications).
pub fn parse_prefixes(flag: &'static str, entries: &[String]) -> Result<Vec<Url>, PolicyError> {
    entries
        .iter()
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let refuse = |reason: &str| PolicyError {
                flag,
                entry: e.clone(),
                reason: reason.to_string(),
            };
            let url = Url::parse(e.trim()).map_err(|err| refuse(&err.to_string()))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(refuse("only http and https URLs"));
            }
            if url.host_str().is_none() {
                return Err(refuse("a URL with a host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(refuse("no user name or password in the URL"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(refuse(
                    "no query or fragment: a prefix is scheme, host, port and path",
                ));
            }
            Ok(url)
        })
        .collect()
}

/// Whether `url` is at or under `prefix`: same scheme, host and port, and a path that is
/// the prefix's or below it at a `/` (so `/api` covers `/api/x` but not `/apix`). A URL with
/// a user name is never within: `http://allowed@elsewhere/` is a request to `elsewhere`.
pub fn within(prefix: &Url, url: &Url) -> bool {
    if url.scheme() != prefix.scheme()
        || url.host_str() != prefix.host_str()
        || url.port_or_known_default() != prefix.port_or_known_default()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return false;
    }
    let (p, u) = (prefix.path(), url.path());
    if p.ends_with('/') {
        u.starts_with(p)
    } else {
        u == p || u.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> GatePolicy {
        GatePolicy::new(
            &[
                "https://status.example.com/checks".into(),
                "http://smoke.qa:8080/".into(),
            ],
            &["http://prometheus.monitoring:9090".into()],
        )
        .unwrap()
    }

    #[test]
    fn a_prefix_covers_its_own_path_and_below_it_only() {
        let p = policy();
        for ok in [
            "https://status.example.com/checks",
            "https://status.example.com/checks/db?x=1",
            "https://status.example.com:443/checks/",
            "http://smoke.qa:8080/anything",
            "HTTP://SMOKE.QA:8080/",
        ] {
            assert!(p.allows_url(ok), "{ok} should be allowed");
        }
        for refused in [
            "https://status.example.com/checksum",
            "https://status.example.com/",
            "http://status.example.com/checks",
            "https://status.example.com:8443/checks",
            "https://status.example.com.evil.net/checks",
            "https://status.example.com@169.254.169.254/checks",
            "http://169.254.169.254/latest/meta-data/",
            "http://smoke.qa/",
            "http://prometheus.monitoring:9090/api/v1/query",
            "not a url",
        ] {
            assert!(!p.allows_url(refused), "{refused} should be refused");
        }
        assert!(p.allows_prometheus("http://prometheus.monitoring:9090/api/v1/query"));
        assert!(!p.allows_prometheus("http://prometheus.monitoring:9091/api/v1/query"));
        assert!(!GatePolicy::default().allows_url("http://smoke.qa:8080/"));
    }

    #[test]
    fn bad_entries_are_refused_at_start_up() {
        for (urls, prom) in [
            (vec!["ftp://x/".to_string()], vec![]),
            (vec!["http://user:pw@x/".to_string()], vec![]),
            (vec![], vec!["http://x/?q=1".to_string()]),
            (vec!["x".to_string()], vec![]),
        ] {
            let err = GatePolicy::new(&urls, &prom).unwrap_err().to_string();
            assert!(err.starts_with("--gate-allowed"), "{err}");
        }
    }

    #[test]
    fn gates_beyond_the_pods_are_named_by_their_field() {
        let spec: ProductionStackSpec = serde_yaml_ng::from_str(
            r#"
components:
- name: api
  template: {spec: {containers: [{name: a, image: x}]}}
  gates:
  - {name: pods, http: {path: /healthz}}
  - {name: listed, http: {url: "https://status.example.com/checks/api"}}
  - {name: meta, errorRate: {url: "http://169.254.169.254/latest/meta-data/"}}
gates:
- name: slo
  prometheus: {address: "http://prometheus.other:9090", query: "1", condition: {operator: "<", value: 2}}
- name: ok
  prometheus: {address: "http://prometheus.monitoring:9090", query: "1", condition: {operator: "<", value: 2}}
"#,
        )
        .unwrap();
        let err = policy().check(&spec).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.components[0].gates[2].errorRate.url",
                "spec.gates[0].prometheus.address"
            ]
        );
        assert!(
            err.to_string().contains("gates.allowedUrlPrefixes"),
            "{err}"
        );
        assert!(
            GatePolicy::default()
                .check(&ProductionStackSpec {
                    gates: vec![],
                    ..spec.clone()
                })
                .is_err(),
            "with no list, only the pods: the listed URL is refused too"
        );
    }

    /// A one-shot HTTP server on loopback answering every request with `response`;
    /// returns its base URL and a counter of requests it got.
    async fn server(response: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        (url, hits)
    }

    fn redirect_to(location: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn a_redirect_is_followed_only_where_the_first_request_could_go() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string();
        let (elsewhere, elsewhere_hits) = server(ok.clone()).await;
        let (allowed_next, _) = server(ok).await;
        let (listed, _) = server(redirect_to(&format!("{elsewhere}/secret"))).await;
        let (listed_to_listed, _) = server(redirect_to(&format!("{allowed_next}/x"))).await;
        let policy = GatePolicy::new(
            &[
                format!("{listed}/"),
                format!("{listed_to_listed}/"),
                format!("{allowed_next}/"),
            ],
            &[],
        )
        .unwrap();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(policy.redirects())
            .build()
            .unwrap();
        let err = http
            .get(format!("{listed}/check"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_redirect(), "{err}");
        assert_eq!(
            elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the unlisted target got a request"
        );
        let r = http
            .get(format!("{listed_to_listed}/check"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a redirect within the list is followed");

        // A pod of the component (not on the list) may redirect within itself only.
        let (pod, _) = server(redirect_to(&format!("{elsewhere}/"))).await;
        let err = http.get(format!("{pod}/healthz")).send().await.unwrap_err();
        assert!(err.is_redirect(), "{err}");
        assert_eq!(elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
