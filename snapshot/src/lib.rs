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
//! # Repository format (version 2)
//!
//! - `config`: JSON `{format, repoId, chunker: {min, avg, max}, encryption, keyCheck,
//!   compression: {algorithm, level, pageLevel}, pageChunk}`.
//! - `objects/ab/abcd…`: chunk objects, named by 64 hex digits. A chunk at least the
//!   chunker minimum (256 KiB by default) is its own object, named by its id; smaller chunks
//!   (small files, file tails, database pages) are appended to *pack* objects of about
//!   8 MiB with random names, and the manifest records pack and offset for each.
//! - Each chunk is stored as one zstd frame when that saves at least 1/32 of it (the
//!   manifest then records the frame's length as `zlen`), else as it is. Plain repositories
//!   store those bytes; encrypted ones seal them (compress, then seal) as
//!   `0x01 || nonce(12) || AES-256-GCM ciphertext || tag(16)`. The id is always the
//!   plaintext's: its SHA-256 in a plain repository, an HMAC-SHA256 under a key derived from
//!   the master key in an encrypted one (see [`crypto`]). Verification decompresses and
//!   re-hashes.
//! - Files that start with a SQLite header are cut into fixed runs of whole pages
//!   (`pageChunk`, 16 KiB by default) instead of content-defined chunks, so scattered row
//!   updates rewrite small chunks.
//! - `snapshots/<id>`: a manifest (canonical JSON, zstd-compressed, sealed like a chunk
//!   when encrypted); the id is the digest of its plaintext JSON. Written last: its
//!   presence is what makes a snapshot complete.
//!
//! Format 1 (repositories created before compression) is the same without compression and
//! page chunks; it is still read and written as format 1, so an older agent can still read
//! it. An engine that knows only format 1 refuses a format-2 repository at open.
//! - `locks/<kind>-<random>`: JSON lock objects (see [`lock`]).

pub mod chunker;
mod compress;
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
pub use repo::{
    Compression, CompressionAlgorithm, RepoParams, RepoUsage, Repository, SnapshotListing,
    DEFAULT_PAGE_CHUNK,
};
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
