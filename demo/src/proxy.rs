//! The `proxy` role: forwards `/api/*` to an upstream demo-app and checks its readiness.
//!
//! This is what lets a stack have two tiers (an API tier in front of the tier that owns the
//! data), so a bad release of either shows up in the other's health.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use reqwest::{Client, Url};

/// Largest request body forwarded upstream.
const MAX_BODY: usize = 1 << 20;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's request body could not be read.
    #[error("reading the request body: {0}")]
    Body(String),
    /// The upstream did not answer.
    #[error("upstream {url}: {source}")]
    Upstream {
        /// The upstream URL asked.
        url: Url,
        /// The HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// The path does not form a URL against the upstream base.
    #[error("bad upstream path {0:?}")]
    Path(String),
}

/// An HTTP client bound to the upstream base URL.
#[derive(Debug, Clone)]
pub struct Proxy {
    client: Client,
    base: Url,
}

impl Proxy {
    /// Builds the client. Installs rustls' ring provider (reqwest is built without a default
    /// one) unless a provider is installed already.
    pub fn new(base: Url) -> Result<Self, reqwest::Error> {
        // Err only means some provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Proxy { client, base })
    }

    /// The upstream base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path_and_query: &str) -> Result<Url, ProxyError> {
        self.base
            .join(path_and_query)
            .map_err(|_| ProxyError::Path(path_and_query.to_owned()))
    }

    /// Whether the upstream's `/readyz` answers 200; `Err` carries the reason for `/readyz`.
    pub async fn check_ready(&self) -> Result<(), String> {
        let url = self.url("/readyz").map_err(|e| e.to_string())?;
        match self
            .client
            .get(url.clone())
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::OK => Ok(()),
            Ok(r) => Err(format!("upstream {url} answered {}", r.status())),
            Err(e) => Err(format!("upstream {url} unreachable: {e}")),
        }
    }

    /// Asks the upstream to migrate its database to the schema of `app_version`
    /// (`POST /admin/migrate`); returns the schema before and after.
    pub async fn migrate_upstream(&self, app_version: u32) -> Result<(u32, u32), String> {
        let url = self.url("/admin/migrate").map_err(|e| e.to_string())?;
        let resp = self
            .client
            .post(url.clone())
            .json(&crate::http::MigrateRequest { app_version })
            .send()
            .await
            .map_err(|e| format!("upstream {url} unreachable: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status != StatusCode::OK {
            return Err(format!("upstream {url} answered {status}: {}", body.trim()));
        }
        let report: crate::http::MigrateReport = serde_json::from_str(&body)
            .map_err(|e| format!("upstream {url} answered {body:?}: {e}"))?;
        Ok((report.from, report.to))
    }

    /// Forwards a request (method, path, query, content type and body) and returns the
    /// upstream's status, content type and body.
    pub async fn forward(&self, req: Request) -> Result<Response, ProxyError> {
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |pq| pq.as_str());
        let url = self.url(path)?;
        let body = to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| ProxyError::Body(e.to_string()))?;
        let mut out = self.client.request(parts.method.clone(), url.clone());
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            out = out.header(header::CONTENT_TYPE, ct.clone());
        }
        let upstream = out
            .body(body)
            .send()
            .await
            .map_err(|source| ProxyError::Upstream {
                url: url.clone(),
                source,
            })?;
        let status = upstream.status();
        let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
        let location = upstream.headers().get(header::LOCATION).cloned();
        let bytes = upstream
            .bytes()
            .await
            .map_err(|source| ProxyError::Upstream { url, source })?;
        let mut resp = Response::new(Body::from(bytes));
        *resp.status_mut() = status;
        for (name, value) in [
            (header::CONTENT_TYPE, content_type),
            (header::LOCATION, location),
        ] {
            if let Some(v) = value {
                resp.headers_mut().insert(name, v);
            }
        }
        resp.headers_mut()
            .insert("x-demo-proxied", HeaderValue::from_static("1"));
        Ok(resp)
    }
}
