//! Where repository objects live: one small trait, a directory on a volume ([`FsStore`]),
//! an S3-compatible bucket ([`S3Store`]) and memory ([`MemStore`], for tests and drills).
//!
//! The trait is blocking on purpose: the engine pipelines work on its own threads, and a
//! caller in async code runs the engine under `tokio::task::spawn_blocking`.

use std::fmt;
use std::time::{Duration, SystemTime};

use thiserror::Error;

pub(crate) mod fs;
mod mem;
mod s3;
mod spec;

pub use fs::FsStore;
pub use mem::MemStore;
pub use s3::{S3Config, S3Store};
pub use spec::{StoreSpec, ACCESS_KEY_ENV, SECRET_KEY_ENV};

/// The four kinds of object in a repository, each under its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `config`: format version, chunker bounds, encryption and key check.
    Config,
    /// `objects/<2 hex>/<64 hex>`: a chunk, named by its id.
    Chunk,
    /// `snapshots/<64 hex>`: a complete snapshot's manifest, named by its id.
    Snapshot,
    /// `locks/<name>`: a lock held by a running snapshot or gc.
    Lock,
}

impl ObjectKind {
    /// Short label, also used as associated data when sealing.
    pub fn label(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Chunk => "chunk",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Lock => "lock",
        }
    }
}

/// The key of an object relative to the repository root ('/'-separated).
///
/// Names are restricted to `[0-9a-z-]` so that no name can step out of its prefix on a
/// file system store.
pub fn object_key(kind: ObjectKind, name: &str) -> Result<String, StoreError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
    if !valid && kind != ObjectKind::Config {
        return Err(StoreError::BadName {
            name: name.to_string(),
        });
    }
    Ok(match kind {
        ObjectKind::Config => "config".to_string(),
        ObjectKind::Chunk if name.len() >= 2 => format!("objects/{}/{}", &name[..2], name),
        ObjectKind::Chunk => {
            return Err(StoreError::BadName {
                name: name.to_string(),
            })
        }
        ObjectKind::Snapshot => format!("snapshots/{name}"),
        ObjectKind::Lock => format!("locks/{name}"),
    })
}

/// An object seen in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its name (the part after the kind's prefix).
    pub name: String,
    /// Stored size in bytes.
    pub size: u64,
    /// Last write time, when the store knows it (gc keeps anything younger than its grace).
    pub modified: Option<SystemTime>,
}

/// A store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such object.
    #[error("{key}: not found")]
    NotFound {
        /// The object key.
        key: String,
    },
    /// A name that cannot be an object name.
    #[error("invalid object name {name:?}")]
    BadName {
        /// The name.
        name: String,
    },
    /// File system I/O failed.
    #[error("{key}: {source}")]
    Io {
        /// The object key or path.
        key: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("{method} {key}: HTTP {status}: {message}")]
    Http {
        /// HTTP method.
        method: &'static str,
        /// The object key.
        key: String,
        /// Status code.
        status: u16,
        /// Body excerpt.
        message: String,
    },
    /// The request did not get an answer (connect, TLS, timeout).
    #[error("{method} {key}: {message}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// The object key.
        key: String,
        /// What failed.
        message: String,
    },
    /// The store is misconfigured.
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// True for "no such object".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// An object store. Every method may be called from several threads at once.
pub trait Store: Send + Sync + fmt::Debug {
    /// Writes an object atomically: readers see the old object, no object, or all of the new
    /// one, never part of it. Chunks are durable once [`Store::sync`] returns; config,
    /// snapshot and lock objects are durable when `put` returns.
    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<(), StoreError>;

    /// Writes an object only if none exists under its name, atomically (of several
    /// writers racing, exactly one creates it); durable when it returns. Returns whether
    /// this call created it. Used where the first writer must win, such as the config
    /// of a repository two agents initialise at once.
    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool, StoreError>;

    /// Where the store keeps its objects (`s3://bucket/prefix`, a directory), the same for
    /// every agent that uses it: a new repository's id is derived from it, so agents that
    /// create one at once write the very same config, even on a store that cannot refuse
    /// a second create (see [`crate::Repository::open_or_init`]).
    fn location(&self) -> String {
        String::new()
    }

    /// Reads a whole object (objects are bounded by the chunker's maximum or are manifests).
    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>, StoreError>;

    /// Reads up to `len` bytes of an object from `offset` (fewer if the object is shorter).
    fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let all = self.get(kind, name)?;
        let start = (offset as usize).min(all.len());
        let end = (start + len as usize).min(all.len());
        Ok(all[start..end].to_vec())
    }

    /// Appends a whole object to `out`: the engine's hot loops reuse one buffer per thread
    /// rather than allocating per object. The default goes through [`Store::get`].
    fn get_into(&self, kind: ObjectKind, name: &str, out: &mut Vec<u8>) -> Result<(), StoreError> {
        out.extend_from_slice(&self.get(kind, name)?);
        Ok(())
    }

    /// Appends up to `len` bytes of an object from `offset` to `out` (fewer if the object is
    /// shorter). The default goes through [`Store::get_range`].
    fn get_range_into(
        &self,
        kind: ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        out.extend_from_slice(&self.get_range(kind, name, offset, len)?);
        Ok(())
    }

    /// Lists the objects of a kind, in no particular order; unfinished writes are not listed.
    fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StoreError>;

    /// Makes every `put` that returned before this call durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// Removes leftovers of interrupted writes older than `older_than`; returns how many.
    fn remove_stale_temporaries(&self, older_than: Duration) -> Result<usize, StoreError> {
        let _ = older_than;
        Ok(0)
    }

    /// How many requests are worth having in flight at once.
    fn concurrency(&self) -> usize {
        4
    }

    /// The space of the file system under the store, when there is one (`statvfs` of a
    /// volume). `None` for object stores: S3 has no free space to ask for, so a quota is
    /// configured instead (see the controller's `spec.snapshots.store.*.quota`).
    fn space(&self) -> Result<Option<Space>, StoreError> {
        Ok(None)
    }
}

/// Size and free space of the file system a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes the file system holds in all.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer can still use (`f_bavail`: root's reserve excluded).
    pub available_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_under_their_prefix() {
        let id = "ab".repeat(32);
        assert_eq!(
            object_key(ObjectKind::Chunk, &id).unwrap(),
            format!("objects/ab/{id}")
        );
        assert!(object_key(ObjectKind::Snapshot, "../x").is_err());
        assert!(object_key(ObjectKind::Lock, "a/b").is_err());
        assert!(object_key(ObjectKind::Chunk, "").is_err());
    }
}
