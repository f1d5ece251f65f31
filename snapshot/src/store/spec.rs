//! Where a repository lives, as configuration: what the controller passes to its agent
//! (JSON or flags) to open a store, so the agent needs no store-specific wiring.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FsStore, S3Config, S3Store, Store, StoreError};

/// A store description. Credentials are not part of it: the agent reads them from the
/// environment (a Kubernetes Secret mounted as env vars), see [`StoreSpec::open`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum StoreSpec {
    /// A directory, typically on a PersistentVolume.
    Filesystem {
        /// The repository directory.
        path: PathBuf,
    },
    /// An S3-compatible bucket, path-style.
    S3 {
        /// Endpoint URL.
        endpoint: String,
        /// Bucket.
        bucket: String,
        /// Signing region.
        region: String,
        /// Key prefix, e.g. `<namespace>/<stack>/<component>/`.
        #[serde(default)]
        prefix: String,
    },
}

/// Environment variable holding the S3 access key id.
pub const ACCESS_KEY_ENV: &str = "DEPLOYCTL_S3_ACCESS_KEY_ID";
/// Environment variable holding the S3 secret access key.
pub const SECRET_KEY_ENV: &str = "DEPLOYCTL_S3_SECRET_ACCESS_KEY";

impl StoreSpec {
    /// Opens the store; S3 credentials come from [`ACCESS_KEY_ENV`] and [`SECRET_KEY_ENV`].
    pub fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            StoreSpec::Filesystem { path } => Ok(Arc::new(FsStore::new(path.clone())?)),
            StoreSpec::S3 {
                endpoint,
                bucket,
                region,
                prefix,
            } => {
                let env = |name: &str| {
                    std::env::var(name)
                        .map_err(|_| StoreError::Config(format!("{name} is not set")))
                };
                let mut c = S3Config::new(
                    endpoint,
                    bucket,
                    region,
                    env(ACCESS_KEY_ENV)?,
                    env(SECRET_KEY_ENV)?,
                );
                c.prefix = prefix.clone();
                c.request_timeout = Duration::from_secs(60);
                Ok(Arc::new(S3Store::new(c)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_json_and_open() {
        let spec: StoreSpec =
            serde_json::from_str(r#"{"type":"filesystem","path":"/tmp/x"}"#).unwrap();
        assert_eq!(
            spec,
            StoreSpec::Filesystem {
                path: "/tmp/x".into()
            }
        );
        let s3: StoreSpec = serde_json::from_str(
            r#"{"type":"s3","endpoint":"http://127.0.0.1:1","bucket":"b","region":"garage"}"#,
        )
        .unwrap();
        assert!(matches!(s3, StoreSpec::S3 { ref prefix, .. } if prefix.is_empty()));
        let dir = tempfile::tempdir().unwrap();
        StoreSpec::Filesystem {
            path: dir.path().join("repo"),
        }
        .open()
        .unwrap();
    }
}
