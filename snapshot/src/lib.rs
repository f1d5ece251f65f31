//! deployctl-snapshot: content-addressed, verified snapshots of stack data, the data half of
//! deployctl's rollback.
//!
//! # Use
//!
//! ```no_run
//! use std::sync::Arc;
//! use deployctl_snapshot::{FsStore, Method, NoProgress, Repository, RestoreOptions, SnapshotOptions, Source};
//!
//! # fn main() -> deployctl_snapshot::Result<()> {
//! let store = Arc::new(FsStore::new("/backups/shop")?);
//! let repo = Repository::open_or_init(store, None)?;
//! let data = Method::Files { root: "/data".into() };
//! let snap = repo.snapshot(&Source::new("shop", "db", "rev-7"), &data, &SnapshotOptions::default(), &NoProgress)?;
//! repo.verify(snap.info.id, &NoProgress)?;
//! repo.restore(snap.info.id, &data, &RestoreOptions::default(), &NoProgress)?;
//! # Ok(()) }
//! ```
//!
//! All calls block; from async code run them under `tokio::task::spawn_blocking`.
//!
//! # Repository format (version 1)
//!
//! - `config`: JSON `{format, repoId, chunker: {min, avg, max}, encryption, keyCheck}`.
//! - `objects/ab/abcd…`: chunk objects, named by 64 hex digits. A chunk at least the
//!   chunker minimum (256 KiB by default) is its own object, named by its id; smaller chunks
//!   (small files, file tails) are appended to *pack* objects of about 8 MiB with random
//!   names, and the manifest records pack and offset for each. Plain repositories store
//!   chunk bytes as they are and the id is their SHA-256; encrypted ones store each chunk
//!   (alone or inside a pack) as `0x01 || nonce(12) || AES-256-GCM ciphertext || tag(16)`
//!   and the id is an HMAC-SHA256 under a key derived from the master key (see [`crypto`]).
//! - `snapshots/<id>`: a manifest (canonical JSON, sealed like a chunk when encrypted); the
//!   id is the digest of its plaintext bytes. Written last: its presence is what makes a
//!   snapshot complete.
//! - `locks/<kind>-<random>`: JSON lock objects (see [`lock`]).

pub mod chunker;
pub mod crypto;
pub mod error;
pub mod id;
pub mod lock;
pub mod manifest;
pub mod methods;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod swap;
pub mod testing;
pub mod verify;

pub use chunker::ChunkerParams;
pub use crypto::MasterKey;
pub use error::{ChunkFault, Error, Result};
pub use id::{ChunkId, SnapshotId};
pub use manifest::{Entry, EntryKind, Manifest, MethodKind, SnapshotInfo, SnapshotMeta, Source};
pub use methods::{CommandSpec, Method};
pub use progress::{NoProgress, Phase, Progress, ProgressUpdate};
pub use repo::{RepoUsage, Repository, SnapshotListing};
pub use restore::{RestoreOptions, RestoreReport};
pub use retention::{plan_retention, GcOptions, GcReport, RetentionPlan, RetentionPolicy};
pub use snapshot::{SnapshotOptions, SnapshotReport};
pub use store::{
    FsStore, MemStore, ObjectInfo, ObjectKind, S3Config, S3Store, Space, Store, StoreError,
    StoreSpec,
};
pub use swap::recover as recover_interrupted_restore;
pub use swap::{DataDirLock, TryLock};
pub use verify::VerifyReport;
