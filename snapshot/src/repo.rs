//! A repository: a store plus its config and keys. Owns reading and writing of verified
//! objects; the operations (snapshot, restore, verify, retention) build on it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::crypto::{Crypto, MasterKey};
use crate::error::{ChunkFault, Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::manifest::{self, ChunkRef, Manifest, SnapshotInfo};
use crate::store::{ObjectKind, Store};

/// Format of new repositories: chunks and manifests may be stored zstd-compressed, and
/// page-structured files are cut on page boundaries.
pub const REPO_FORMAT: u32 = 2;
/// The first format: everything stored as it is. Still read and written (uncompressed), so
/// a repository made by an older agent keeps working and stays readable by that agent.
pub const REPO_FORMAT_V1: u32 = 1;
/// Largest manifest accepted when decompressing one (a million files is about 300 MiB of
/// JSON): a bound against a hostile frame that claims a huge size.
const MAX_MANIFEST_BYTES: u64 = 1 << 30;
const KEY_CHECK_PLAINTEXT: &[u8] = b"deployctl-snapshot key check v1";

/// Encryption of a repository, fixed at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// Plain SHA-256 ids and plaintext objects.
    None,
    /// Keyed ids and AES-256-GCM objects.
    Aes256Gcm,
}

/// How a format-2 repository compresses what it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compression {
    /// Always `zstd`.
    pub algorithm: CompressionAlgorithm,
    /// zstd level for content-defined chunks; 3 by default (see [`Compression::default`]).
    pub level: i32,
    /// zstd level for page chunks (databases); 1 by default.
    pub page_level: i32,
}

/// Compression algorithms a repository may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard, one frame per chunk (with its content size) and per manifest.
    Zstd,
}

impl Default for Compression {
    /// Measured in `benches/snapshot/` (RESULTS.md): on a tree of binaries and text level 3
    /// stores 7% less than level 1 (as little as rustic's level 3) for 35% more time; on
    /// 16 KiB page chunks of a database the two levels store the same to 0.2% and level 1
    /// is 30% faster, because a small input gains nothing from level 3's larger search.
    fn default() -> Self {
        Compression {
            algorithm: CompressionAlgorithm::Zstd,
            level: 3,
            page_level: 1,
        }
    }
}

/// Default chunk size for page-structured files (SQLite databases). Measured on a 1.1 GB
/// database of ~1 KB text rows after updating 1% of the rows at random
/// (`benches/snapshot/`): 16 KiB chunks stored 15% of a full snapshot again, 32 KiB chunks
/// 27%, 1 MiB content-defined chunks nearly all of it. Smaller chunks list more references
/// per manifest (a 1 GiB database: 65,536) for little more gain. A database whose pages
/// are larger gets one page per chunk.
pub const DEFAULT_PAGE_CHUNK: u32 = 16 * 1024;

/// What a new repository is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoParams {
    /// Content-defined chunk bounds.
    pub chunker: ChunkerParams,
    /// Compression of chunks and manifests; `None` stores them as they are.
    pub compression: Option<Compression>,
    /// Chunk size for page-structured files; `None` chunks them like any file.
    pub page_chunk: Option<u32>,
}

impl Default for RepoParams {
    fn default() -> Self {
        RepoParams {
            chunker: ChunkerParams::default(),
            compression: Some(Compression::default()),
            page_chunk: Some(DEFAULT_PAGE_CHUNK),
        }
    }
}

/// The `config` object (plaintext JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RepoConfig {
    format: u32,
    /// Random per repository; salts key derivation.
    repo_id: String,
    chunker: ChunkerParams,
    encryption: Encryption,
    /// Hex of a fixed plaintext sealed with the encryption key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_check: Option<String>,
    /// Format 2: how chunks and manifests are compressed (absent: stored as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compression: Option<Compression>,
    /// Format 2: chunk size for page-structured files (absent: content-defined chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_chunk: Option<u32>,
}

/// Refuses compression and page-chunk settings this engine cannot honour.
fn check_params(
    compression: Option<Compression>,
    page_chunk: Option<u32>,
) -> std::result::Result<(), String> {
    if let Some(c) = compression {
        let levels = zstd::compression_level_range();
        for level in [c.level, c.page_level] {
            if !levels.contains(&level) {
                return Err(format!("zstd level {level} outside {levels:?}"));
            }
        }
    }
    if let Some(p) = page_chunk {
        // SQLite pages are powers of two from 512 B to 64 KiB; a chunk must hold whole pages.
        if !p.is_power_of_two() || !(4096..=4 * 1024 * 1024).contains(&p) {
            return Err(format!(
                "page chunk {p} is not a power of two from 4 KiB to 4 MiB"
            ));
        }
    }
    Ok(())
}

/// Where a chunk's stored bytes are: an object of its own (`whole`) or a range of a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredAt {
    pub object: ChunkId,
    pub offset: u64,
    pub len: u64,
    pub whole: bool,
}

/// An open repository. Cheap to clone; safe to share between threads.
#[derive(Debug, Clone)]
pub struct Repository {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) crypto: Crypto,
    config: RepoConfig,
}

/// What a repository takes in its store, and the room left where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoUsage {
    /// Bytes of every object (chunks, packs, manifests, config, locks) as stored.
    pub stored_bytes: u64,
    /// Number of objects.
    pub objects: u64,
    /// The file system under the store (volume stores only).
    pub space: Option<crate::store::Space>,
}

/// Snapshots that could be read, and those that could not.
#[derive(Debug, Default)]
pub struct SnapshotListing {
    /// Complete, verified snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// Manifests that failed verification, with the reason.
    pub unreadable: Vec<(String, Error)>,
}

impl Repository {
    /// Creates a new repository in an empty store with the default compression and page
    /// chunks. With `key` it is encrypted.
    pub fn init(
        store: Arc<dyn Store>,
        key: Option<&MasterKey>,
        chunker: ChunkerParams,
    ) -> Result<Self> {
        Self::init_with(
            store,
            key,
            RepoParams {
                chunker,
                ..RepoParams::default()
            },
        )
    }

    /// Creates a new repository with explicit parameters.
    pub fn init_with(
        store: Arc<dyn Store>,
        key: Option<&MasterKey>,
        params: RepoParams,
    ) -> Result<Self> {
        let RepoParams {
            chunker,
            compression,
            page_chunk,
        } = params;
        chunker.validate().map_err(Error::Config)?;
        check_params(compression, page_chunk).map_err(Error::Config)?;
        match store.get(ObjectKind::Config, "config") {
            Ok(_) => return Err(Error::Config("a repository already exists here".into())),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        // Derived from the store's location and the key, and the key check sealed
        // deterministically: agents that create the repository at once write byte-identical
        // configs, so on a store that cannot refuse a second create (some S3 servers ignore
        // `If-None-Match`) the later write changes nothing.
        let repo_id = crate::crypto::repository_id(key, &store.location());
        let (crypto, encryption, key_check) = match key {
            Some(k) => {
                let c = Crypto::sealed(k, repo_id.as_bytes());
                let check =
                    hex::encode(c.seal_deterministic(b"config/key-check", KEY_CHECK_PLAINTEXT));
                (c, Encryption::Aes256Gcm, Some(check))
            }
            None => (Crypto::Plain, Encryption::None, None),
        };
        let config = RepoConfig {
            format: REPO_FORMAT,
            repo_id,
            chunker,
            encryption,
            key_check,
            compression,
            page_chunk,
        };
        let bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
        if !store.put_new(ObjectKind::Config, "config", &bytes)? {
            return Err(Error::Config("a repository already exists here".into()));
        }
        Ok(Repository {
            store,
            crypto,
            config,
        })
    }

    /// Opens an existing repository; refuses a wrong, missing or unexpected key.
    pub fn open(store: Arc<dyn Store>, key: Option<&MasterKey>) -> Result<Self> {
        let bytes = match store.get(ObjectKind::Config, "config") {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(Error::NotInitialized),
            Err(e) => return Err(e.into()),
        };
        let config: RepoConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("unreadable config: {e}")))?;
        match config.format {
            REPO_FORMAT => {}
            REPO_FORMAT_V1 if config.compression.is_none() && config.page_chunk.is_none() => {}
            REPO_FORMAT_V1 => {
                return Err(Error::Config(
                    "format-1 config with format-2 settings (compression, pageChunk)".into(),
                ))
            }
            other => {
                return Err(Error::Config(format!(
                    "unsupported repository format {other} (this engine reads formats \
                     {REPO_FORMAT_V1} and {REPO_FORMAT}): upgrade the agent"
                )))
            }
        }
        config.chunker.validate().map_err(Error::Config)?;
        check_params(config.compression, config.page_chunk).map_err(Error::Config)?;
        let crypto = match (config.encryption, key) {
            (Encryption::None, None) => Crypto::Plain,
            (Encryption::None, Some(_)) => return Err(Error::KeyNotExpected),
            (Encryption::Aes256Gcm, None) => return Err(Error::KeyRequired),
            (Encryption::Aes256Gcm, Some(k)) => {
                let c = Crypto::sealed(k, config.repo_id.as_bytes());
                let check = config
                    .key_check
                    .as_deref()
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or(Error::WrongKey)?;
                match c.open(b"config/key-check", check) {
                    Ok(p) if p == KEY_CHECK_PLAINTEXT => c,
                    _ => return Err(Error::WrongKey),
                }
            }
        };
        Ok(Repository {
            store,
            crypto,
            config,
        })
    }

    /// Opens the repository, creating it first if the store has none. Two agents that
    /// find no repository at once (the first snapshots of two components) both try to
    /// create it; the config is created atomically, so one wins and the other opens the
    /// winner's config (its id and key check) instead of overwriting it, which would make
    /// the winner's chunks unreadable.
    pub fn open_or_init(store: Arc<dyn Store>, key: Option<&MasterKey>) -> Result<Self> {
        match Self::open(store.clone(), key) {
            Err(Error::NotInitialized) => {
                match Self::init(store.clone(), key, ChunkerParams::default()) {
                    Err(Error::Config(_)) if store.get(ObjectKind::Config, "config").is_ok() => {
                        Self::open(store, key)
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// True when objects are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.crypto.is_sealed()
    }

    /// The chunk bounds of this repository.
    pub fn chunker(&self) -> ChunkerParams {
        self.config.chunker
    }

    /// The repository's format version.
    pub fn format(&self) -> u32 {
        self.config.format
    }

    /// How chunks and manifests are compressed (`None` in format 1).
    pub fn compression(&self) -> Option<Compression> {
        self.config.compression
    }

    /// Chunk size for page-structured files (`None`: content-defined, as in format 1).
    pub fn page_chunk(&self) -> Option<u32> {
        self.config.page_chunk
    }

    /// The manifest format snapshots of this repository are written in.
    pub(crate) fn manifest_format(&self) -> u32 {
        if self.config.format == REPO_FORMAT_V1 {
            manifest::MANIFEST_FORMAT_V1
        } else {
            manifest::MANIFEST_FORMAT
        }
    }

    pub(crate) fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(self.crypto.digest(data))
    }

    fn aad(kind: ObjectKind, name: &str) -> Vec<u8> {
        format!("{}/{}", kind.label(), name).into_bytes()
    }

    /// Appends a chunk as stored to `out`: sealed under its own id when encrypted (also
    /// inside a pack, so each packed chunk can be read and authenticated alone).
    pub(crate) fn seal_chunk_into(&self, id: ChunkId, data: &[u8], out: &mut Vec<u8>) {
        self.crypto
            .seal_into(&Self::aad(ObjectKind::Chunk, &id.to_hex()), data, out)
    }

    /// Stored size of a chunk: its (compressed, when it is) length plus the encryption
    /// overhead.
    pub(crate) fn stored_len(&self, c: &ChunkRef) -> u64 {
        u64::from(c.zlen.unwrap_or(c.len))
            + if self.crypto.is_sealed() {
                crate::crypto::OVERHEAD as u64
            } else {
                0
            }
    }

    /// Where a chunk's stored bytes are.
    pub(crate) fn stored_at(&self, c: &ChunkRef) -> StoredAt {
        match c.pack {
            None => StoredAt {
                object: c.id,
                offset: 0,
                len: self.stored_len(c),
                whole: true,
            },
            Some(p) => StoredAt {
                object: p.object,
                offset: p.offset,
                len: self.stored_len(c),
                whole: false,
            },
        }
    }

    /// The error for a chunk whose object is not in the store.
    pub(crate) fn chunk_missing(
        snapshot: SnapshotId,
        file: &str,
        offset: u64,
        c: &ChunkRef,
    ) -> Error {
        Error::ChunkMissing {
            snapshot,
            file: file.to_string(),
            chunk: c.id,
            offset,
        }
    }

    /// Appends the stored bytes at `at` to `out`: the whole object for a chunk stored alone
    /// (so an object longer than the chunk is noticed), the range for a packed one.
    pub(crate) fn fetch_stored(
        &self,
        at: &StoredAt,
        len: u64,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), crate::store::StoreError> {
        let name = at.object.to_hex();
        if at.whole {
            self.store.get_into(ObjectKind::Chunk, &name, out)
        } else {
            self.store
                .get_range_into(ObjectKind::Chunk, &name, at.offset, len, out)
        }
    }

    /// Checks the chunk whose stored bytes are `buf[raw]` against its reference:
    /// decrypts in place when encrypted, decompresses when compressed (appending the
    /// plaintext to `buf`), then checks length and hash. Returns where the verified
    /// plaintext is in `buf`. Errors name snapshot, file and chunk.
    pub(crate) fn check_chunk(
        &self,
        snapshot: SnapshotId,
        file: &str,
        offset: u64,
        c: &ChunkRef,
        buf: &mut Vec<u8>,
        raw: Range<usize>,
    ) -> Result<Range<usize>> {
        let corrupt = |fault| Error::ChunkCorrupt {
            snapshot,
            file: file.to_string(),
            chunk: c.id,
            offset,
            fault,
        };
        let opened = if self.crypto.is_sealed() {
            let p = self
                .crypto
                .open_in_place(
                    &Self::aad(ObjectKind::Chunk, &c.id.to_hex()),
                    &mut buf[raw.clone()],
                )
                .map_err(|_| corrupt(ChunkFault::Undecryptable))?;
            raw.start + p.start..raw.start + p.end
        } else {
            raw
        };
        let plain = match c.zlen {
            None => opened,
            Some(zlen) => {
                if opened.len() != zlen as usize {
                    return Err(corrupt(ChunkFault::LengthMismatch));
                }
                let start = buf.len();
                buf.resize(start + c.len as usize, 0);
                let (head, tail) = buf.split_at_mut(start);
                let n = crate::compress::decompress_into(&head[opened], tail)
                    .map_err(|_| corrupt(ChunkFault::Undecompressable))?;
                buf.truncate(start + n);
                start..start + n
            }
        };
        if plain.len() != c.len as usize {
            return Err(corrupt(ChunkFault::LengthMismatch));
        }
        if self.crypto.digest(&buf[plain.clone()]) != c.id.0 {
            return Err(corrupt(ChunkFault::HashMismatch));
        }
        Ok(plain)
    }

    /// Fetches a chunk into `buf` (cleared first; reused across calls) and checks it
    /// against its reference; returns where the verified plaintext is in `buf`.
    pub(crate) fn read_chunk_into(
        &self,
        snapshot: SnapshotId,
        file: &str,
        offset: u64,
        c: &ChunkRef,
        buf: &mut Vec<u8>,
    ) -> Result<Range<usize>> {
        buf.clear();
        let at = self.stored_at(c);
        match self.fetch_stored(&at, at.len, buf) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {
                return Err(Self::chunk_missing(snapshot, file, offset, c))
            }
            Err(e) => return Err(e.into()),
        }
        let raw = 0..buf.len();
        self.check_chunk(snapshot, file, offset, c, buf, raw)
    }

    /// Writes a manifest (the last write of a snapshot) and returns its id.
    pub(crate) fn write_manifest(&self, m: &Manifest) -> Result<SnapshotId> {
        let bytes = m.to_bytes();
        let id = SnapshotId(self.crypto.digest(&bytes));
        let name = id.to_hex();
        // Compressed whole: a manifest of page chunks lists tens of thousands of ids.
        let stored = match self.config.compression {
            Some(c) => crate::compress::compress_whole(&bytes, c.level),
            None => bytes,
        };
        let sealed = self
            .crypto
            .seal(&Self::aad(ObjectKind::Snapshot, &name), stored);
        self.store.put(ObjectKind::Snapshot, &name, &sealed)?;
        Ok(id)
    }

    /// Loads a complete snapshot's manifest and checks, before anything else, that its
    /// bytes match the id and that it is safe to restore.
    pub fn load_manifest(&self, id: SnapshotId) -> Result<Manifest> {
        let name = id.to_hex();
        let corrupt = |reason: String| Error::ManifestCorrupt {
            snapshot: id,
            reason,
        };
        let raw = match self.store.get(ObjectKind::Snapshot, &name) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Err(Error::SnapshotNotFound { snapshot: id }),
            Err(e) => return Err(e.into()),
        };
        let bytes = self
            .crypto
            .open(&Self::aad(ObjectKind::Snapshot, &name), raw)
            .map_err(|_| corrupt("authenticated decryption failed".into()))?;
        let bytes = match self.config.compression {
            Some(_) => crate::compress::decompress_whole(&bytes, MAX_MANIFEST_BYTES)
                .map_err(|e| corrupt(format!("does not decompress: {e}")))?,
            None => bytes,
        };
        if self.crypto.digest(&bytes) != id.0 {
            return Err(corrupt("content does not match the snapshot id".into()));
        }
        let m = Manifest::from_bytes(&bytes).map_err(corrupt)?;
        manifest::validate(&m, id)?;
        Ok(m)
    }

    /// Every snapshot, verified, oldest first; unreadable manifests are listed apart.
    pub fn list_snapshots_detailed(&self) -> Result<SnapshotListing> {
        let mut out = SnapshotListing::default();
        for o in self.store.list(ObjectKind::Snapshot)? {
            let id = match o.name.parse::<SnapshotId>() {
                Ok(id) => id,
                Err(e) => {
                    out.unreadable.push((o.name.clone(), Error::Config(e)));
                    continue;
                }
            };
            match self.load_manifest(id) {
                Ok(m) => out.snapshots.push(SnapshotInfo { id, meta: m.meta }),
                // Forgotten between list and get: not a snapshot any more.
                Err(Error::SnapshotNotFound { .. }) => {}
                Err(e) => out.unreadable.push((o.name, e)),
            }
        }
        out.snapshots
            .sort_by(|a, b| a.meta.created.cmp(&b.meta.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Every complete, verified snapshot, oldest first (unreadable ones are logged).
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let listing = self.list_snapshots_detailed()?;
        for (name, e) in &listing.unreadable {
            tracing::warn!(snapshot = %name, error = %e, "skipping unreadable snapshot");
        }
        Ok(listing.snapshots)
    }

    /// Chunks referenced by complete snapshots, with where they are stored: the only ones a
    /// new snapshot may reuse without writing (see the file system store for why).
    pub(crate) fn referenced_chunks(
        &self,
    ) -> Result<(HashMap<ChunkId, ChunkRef>, SnapshotListing)> {
        let mut set = HashMap::new();
        let mut listing = SnapshotListing::default();
        for o in self.store.list(ObjectKind::Snapshot)? {
            let Ok(id) = o.name.parse::<SnapshotId>() else {
                listing
                    .unreadable
                    .push((o.name.clone(), Error::Config("bad snapshot name".into())));
                continue;
            };
            match self.load_manifest(id) {
                Ok(m) => {
                    set.extend(m.files().flat_map(|e| e.chunks.iter().map(|c| (c.id, *c))));
                    listing.snapshots.push(SnapshotInfo { id, meta: m.meta });
                }
                Err(Error::SnapshotNotFound { .. }) => {}
                Err(e) => listing.unreadable.push((o.name, e)),
            }
        }
        Ok((set, listing))
    }

    /// What the repository takes (a listing of every object: one request per 1,000 objects
    /// on S3, a directory walk on a volume) and the free space of the volume under it.
    pub fn usage(&self) -> Result<RepoUsage> {
        let mut usage = RepoUsage {
            stored_bytes: 0,
            objects: 0,
            space: self.store.space()?,
        };
        for kind in [
            ObjectKind::Config,
            ObjectKind::Chunk,
            ObjectKind::Snapshot,
            ObjectKind::Lock,
        ] {
            let objects = self.store.list(kind)?;
            usage.objects += objects.len() as u64;
            usage.stored_bytes += objects.iter().map(|o| o.size).sum::<u64>();
        }
        Ok(usage)
    }

    /// Deletes a snapshot's manifest (its chunks go at the next gc).
    pub fn forget(&self, id: SnapshotId) -> Result<()> {
        self.store.delete(ObjectKind::Snapshot, &id.to_hex())?;
        Ok(())
    }
}
