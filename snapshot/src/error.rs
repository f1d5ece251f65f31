//! The engine's error type. Every refusal names the snapshot, the file and the chunk it
//! concerns, and maps to a bounded `category()` for metric labels and Event reasons (never
//! put ids, paths or messages into labels).

use std::path::PathBuf;

use thiserror::Error;

use crate::id::{ChunkId, SnapshotId};
use crate::store::StoreError;

/// Why a chunk was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFault {
    /// The (decrypted) bytes do not hash to the chunk id.
    HashMismatch,
    /// The object is shorter or longer than the manifest says.
    LengthMismatch,
    /// Authenticated decryption failed: flipped bits, truncation or another key.
    Undecryptable,
    /// A compressed chunk is not a valid zstd frame of the recorded length.
    Undecompressable,
}

impl std::fmt::Display for ChunkFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkFault::HashMismatch => "content does not match its hash",
            ChunkFault::LengthMismatch => "length differs from the manifest",
            ChunkFault::Undecryptable => "authenticated decryption failed",
            ChunkFault::Undecompressable => "compressed data is damaged (does not decompress)",
        })
    }
}

/// Everything that can go wrong in a snapshot, restore, verify, forget or gc.
#[derive(Debug, Error)]
pub enum Error {
    /// The object store failed (I/O, network, permissions).
    #[error("store: {0}")]
    Store(#[from] StoreError),

    /// No repository config object: the repository was never initialized.
    #[error("no repository at this location (missing config object); initialize it first")]
    NotInitialized,

    /// The repository config object exists but cannot be used.
    #[error("repository config: {0}")]
    Config(String),

    /// The repository is encrypted and no key was given.
    #[error("the repository is encrypted and no key was given")]
    KeyRequired,

    /// A key was given for a repository that is not encrypted; refused so that a
    /// misconfiguration never silently writes plaintext.
    #[error("a key was given but the repository is not encrypted")]
    KeyNotExpected,

    /// The key does not open this repository.
    #[error("wrong key for this repository")]
    WrongKey,

    /// No complete snapshot with this id (never written, deleted, or interrupted before its
    /// manifest was written).
    #[error("snapshot {snapshot} not found: no complete snapshot with this id")]
    SnapshotNotFound {
        /// The snapshot asked for.
        snapshot: SnapshotId,
    },

    /// The manifest's bytes do not match the snapshot id, do not decrypt, or do not parse.
    #[error("snapshot {snapshot}: manifest is corrupt: {reason}")]
    ManifestCorrupt {
        /// The snapshot.
        snapshot: SnapshotId,
        /// What is wrong.
        reason: String,
    },

    /// The manifest is authentic but unsafe to restore (`..` or absolute paths, symlinks
    /// leaving the tree, entries out of order).
    #[error("snapshot {snapshot}: unsafe manifest entry {path:?}: {reason}")]
    ManifestUnsafe {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The offending entry, as written in the manifest.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// A chunk referenced by the snapshot is not in the store.
    #[error("snapshot {snapshot}: file {file:?}: chunk {chunk} at offset {offset} is missing")]
    ChunkMissing {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The file the chunk belongs to.
        file: String,
        /// The chunk.
        chunk: ChunkId,
        /// Offset of the chunk in the file.
        offset: u64,
    },

    /// A chunk referenced by the snapshot is in the store but its content is wrong.
    #[error("snapshot {snapshot}: file {file:?}: chunk {chunk} at offset {offset}: {fault}")]
    ChunkCorrupt {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The file the chunk belongs to.
        file: String,
        /// The chunk.
        chunk: ChunkId,
        /// Offset of the chunk in the file.
        offset: u64,
        /// What is wrong.
        fault: ChunkFault,
    },

    /// The snapshot was taken with another method than the restore asks for.
    #[error(
        "snapshot {snapshot} was taken with method {recorded}, cannot restore it as {requested}"
    )]
    MethodMismatch {
        /// The snapshot.
        snapshot: SnapshotId,
        /// Method recorded in the manifest.
        recorded: String,
        /// Method asked for.
        requested: String,
    },

    /// Local file system I/O failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// The data to snapshot cannot be represented (non-UTF-8 name, device file, symlink
    /// leaving the tree).
    #[error("cannot snapshot {path}: {reason}")]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// SQLite's online backup failed.
    #[error("sqlite backup of {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },

    /// A dump or restore command failed to start or exited unsuccessfully.
    #[error("command {command:?}: {reason}")]
    Command {
        /// The program.
        command: String,
        /// What happened.
        reason: String,
    },

    /// Another operation holds the repository lock (a gc while snapshotting, or the reverse).
    #[error("repository is locked by another {holder} operation (lock {lock}, created {created})")]
    Locked {
        /// Kind of the other operation.
        holder: String,
        /// Lock object name.
        lock: String,
        /// When that lock was written.
        created: String,
    },

    /// Our repository lock could not be refreshed for its whole staleness period: a gc
    /// may have run since, so what the operation was about to write cannot be trusted.
    #[error(
        "the repository lock {lock} could not be refreshed for {since_secs} s and may have gone stale; refusing to complete (run the operation again)"
    )]
    LockLost {
        /// Lock object name.
        lock: String,
        /// Seconds since its last successful refresh.
        since_secs: u64,
    },

    /// A worker thread panicked; a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A bounded category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        if self.is_no_space() {
            return "no_space";
        }
        match self {
            Error::Store(StoreError::NotFound { .. }) => "store_not_found",
            Error::Store(_) => "store",
            Error::NotInitialized | Error::Config(_) => "config",
            Error::KeyRequired | Error::KeyNotExpected | Error::WrongKey => "key",
            Error::SnapshotNotFound { .. } => "snapshot_not_found",
            Error::ManifestCorrupt { .. } => "manifest_corrupt",
            Error::ManifestUnsafe { .. } => "manifest_unsafe",
            Error::ChunkMissing { .. } => "chunk_missing",
            Error::ChunkCorrupt { .. } => "chunk_corrupt",
            Error::MethodMismatch { .. } => "method_mismatch",
            Error::Io { .. } => "io",
            Error::Unsupported { .. } => "unsupported",
            Error::Sqlite { .. } => "sqlite",
            Error::Command { .. } => "command",
            Error::Locked { .. } => "locked",
            Error::LockLost { .. } => "lock_lost",
            Error::Internal(_) => "internal",
        }
    }

    /// True when a write failed for lack of room: a full volume (`ENOSPC`) or an exhausted
    /// quota (`EDQUOT`), under the repository or under the data being restored. Nothing is
    /// lost (a snapshot without its manifest is not a snapshot; a restore swaps nothing in
    /// until all is written), but the operator must make room, so it gets its own category.
    pub fn is_no_space(&self) -> bool {
        let os = match self {
            Error::Store(StoreError::Io { source, .. }) | Error::Io { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        };
        matches!(os, Some(libc_errno) if libc_errno == nix::libc::ENOSPC || libc_errno == nix::libc::EDQUOT)
    }

    /// True for refusals caused by data that failed verification (as opposed to an
    /// unreachable store or a local I/O error): the snapshot itself is unusable.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Error::WrongKey
                | Error::SnapshotNotFound { .. }
                | Error::ManifestCorrupt { .. }
                | Error::ManifestUnsafe { .. }
                | Error::ChunkMissing { .. }
                | Error::ChunkCorrupt { .. }
        )
    }
}

/// Shorthand for `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an `io::Error` with what was done and where.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
