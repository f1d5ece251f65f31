//! A repository in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage): the same
//! keys as the file system layout under an optional prefix, path-style URLs, SigV4
//! presigned requests (`rusty-s3`) sent with `reqwest`.
//!
//! The store owns a small tokio runtime so the [`Store`] trait stays blocking; several
//! engine threads call `block_on` on it at once, which a multi-thread runtime allows.
//! A successful PUT is durable by S3's contract, so `sync` has nothing to do.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode, Url};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::{object_key, ObjectInfo, ObjectKind, Store, StoreError};

/// How presigned URLs stay valid; requests are sent right away, this only absorbs clock skew.
const SIGNATURE_TTL: Duration = Duration::from_secs(15 * 60);
/// Attempts per request on transport errors, 5xx and 429.
const ATTEMPTS: u32 = 4;

/// Where the bucket is and how to sign for it.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:3900`.
    pub endpoint: String,
    /// Bucket name (path-style addressing is always used).
    pub bucket: String,
    /// Signing region (`us-east-1`, or `garage` for Garage).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Key prefix inside the bucket, e.g. `deployctl/shop/db/`; empty for the bucket root.
    pub prefix: String,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Requests in flight at once during snapshot and restore.
    pub concurrency: usize,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Config {
    /// A config with a 60 s request timeout and 8 requests in flight.
    pub fn new(
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
        region: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        S3Config {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            region: region.into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            prefix: String::new(),
            request_timeout: Duration::from_secs(60),
            concurrency: 8,
        }
    }
}

/// An S3 bucket (or a prefix of one) holding a repository.
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    client: reqwest::Client,
    runtime: Option<tokio::runtime::Runtime>,
    concurrency: usize,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.name())
            .field("endpoint", &self.bucket.base_url().as_str())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // Dropping a runtime inside async code panics; the store may well be dropped there.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn config_err(e: impl fmt::Display) -> StoreError {
    StoreError::Config(e.to_string())
}

impl S3Store {
    /// Builds the client; sends no request.
    pub fn new(config: S3Config) -> Result<Self, StoreError> {
        // reqwest is built without a default crypto provider in this workspace; an error
        // here means another part of the process installed one already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint: Url = config.endpoint.parse().map_err(config_err)?;
        let bucket = Bucket::new(
            endpoint,
            UrlStyle::Path,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(config_err)?;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(config_err)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snapshot-s3")
            .enable_all()
            .build()
            .map_err(config_err)?;
        let mut prefix = config.prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Store {
            bucket,
            credentials: Credentials::new(config.access_key, config.secret_key),
            prefix,
            client,
            runtime: Some(runtime),
            concurrency: config.concurrency.max(1),
        })
    }

    fn key(&self, kind: ObjectKind, name: &str) -> Result<String, StoreError> {
        Ok(format!("{}{}", self.prefix, object_key(kind, name)?))
    }

    /// Sends one request with retries; returns status and body.
    fn send(
        &self,
        method: Method,
        url: Url,
        key: &str,
        body: Option<&[u8]>,
    ) -> Result<(StatusCode, Vec<u8>), StoreError> {
        self.send_with(method, url, key, body, None)
    }

    /// Sends a request with at most one more header (`extra`: Range, If-None-Match),
    /// retrying transport errors and server errors with back-off.
    fn send_with(
        &self,
        method: Method,
        url: Url,
        key: &str,
        body: Option<&[u8]>,
        extra: Option<(reqwest::header::HeaderName, String)>,
    ) -> Result<(StatusCode, Vec<u8>), StoreError> {
        let method_name: &'static str = match method {
            Method::GET => "GET",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            _ => "HEAD",
        };
        let rt = self
            .runtime
            .as_ref()
            .expect("runtime lives as long as the store");
        rt.block_on(async {
            let mut delay = Duration::from_millis(100);
            let mut attempt = 1;
            loop {
                let mut req = self.client.request(method.clone(), url.clone());
                if let Some(b) = body {
                    req = req.body(b.to_vec());
                }
                if let Some((name, value)) = &extra {
                    req = req.header(name.clone(), value.as_str());
                }
                let outcome = match req.send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.bytes().await {
                            Ok(b) => Ok((status, b.to_vec())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let retry = match &outcome {
                    Ok((s, _)) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
                    Err(_) => true,
                };
                if !retry || attempt == ATTEMPTS {
                    return outcome.map_err(|message| StoreError::Transport {
                        method: method_name,
                        key: key.to_string(),
                        message,
                    });
                }
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
        })
        .and_then(|(status, body)| {
            if status.is_success() {
                Ok((status, body))
            } else if status == StatusCode::RANGE_NOT_SATISFIABLE {
                // A range past the end: the object is shorter than the manifest says.
                Ok((status, Vec::new()))
            } else if status == StatusCode::NOT_FOUND {
                Err(StoreError::NotFound {
                    key: key.to_string(),
                })
            } else {
                let text = String::from_utf8_lossy(&body);
                Err(StoreError::Http {
                    method: method_name,
                    key: key.to_string(),
                    status: status.as_u16(),
                    message: text.chars().take(300).collect(),
                })
            }
        })
    }
}

fn parse_time(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(SystemTime::from)
}

impl Store for S3Store {
    fn location(&self) -> String {
        // Not the endpoint: one bucket may be reached through several.
        format!("s3://{}/{}", self.bucket.name(), self.prefix)
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let key = self.key(kind, name)?;
        let url = self
            .bucket
            .put_object(Some(&self.credentials), &key)
            .sign(SIGNATURE_TTL);
        self.send(Method::PUT, url, &key, Some(data)).map(drop)
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool, StoreError> {
        // A conditional PUT: the server refuses it (412) when the object exists, so of
        // two writers racing for the same key exactly one wins.
        let key = self.key(kind, name)?;
        let url = self
            .bucket
            .put_object(Some(&self.credentials), &key)
            .sign(SIGNATURE_TTL);
        let if_none_match = (reqwest::header::IF_NONE_MATCH, "*".to_string());
        match self.send_with(Method::PUT, url, &key, Some(data), Some(if_none_match)) {
            Ok(_) => Ok(true),
            Err(StoreError::Http { status: 412, .. }) => Ok(false),
            // Some servers answer a conflicting concurrent conditional write with 409.
            Err(StoreError::Http { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError> {
        let key = self.key(kind, name)?;
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &key)
            .sign(SIGNATURE_TTL);
        self.send(Method::GET, url, &key, None)
            .map(|(_, body)| body)
    }

    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(kind, name)?;
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &key)
            .sign(SIGNATURE_TTL);
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let (status, mut body) = self.send_with(
            Method::GET,
            url,
            &key,
            None,
            Some((reqwest::header::RANGE, range)),
        )?;
        // A server that ignores Range answers 200 with the whole object.
        if status == StatusCode::OK {
            let start = (offset as usize).min(body.len());
            let end = (start + len as usize).min(body.len());
            body = body[start..end].to_vec();
        }
        Ok(body)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError> {
        let sub = match kind {
            ObjectKind::Config => "config",
            ObjectKind::Chunk => "objects/",
            ObjectKind::Snapshot => "snapshots/",
            ObjectKind::Lock => "locks/",
        };
        let prefix = format!("{}{}", self.prefix, sub);
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            action.with_prefix(prefix.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNATURE_TTL);
            let (_, body) = self.send(Method::GET, url, &prefix, None)?;
            let text = String::from_utf8_lossy(&body);
            let page = ListObjectsV2::parse_response(&text).map_err(|e| StoreError::Transport {
                method: "GET",
                key: prefix.clone(),
                message: format!("unreadable listing: {e}"),
            })?;
            for o in page.contents {
                let rest = &o.key[self.prefix.len().min(o.key.len())..];
                if kind == ObjectKind::Config && rest != "config" {
                    continue;
                }
                let name = rest.rsplit('/').next().unwrap_or(rest).to_string();
                out.push(ObjectInfo {
                    name,
                    size: o.size.unwrap_or(0),
                    modified: o.last_modified.as_deref().and_then(parse_time),
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError> {
        let key = self.key(kind, name)?;
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), &key)
            .sign(SIGNATURE_TTL);
        match self.send(Method::DELETE, url, &key, None) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}
