//! The manifest: what a snapshot contains, in canonical JSON.
//!
//! Entries are sorted by path (byte order), which makes the encoding canonical and puts
//! every directory before its contents. The snapshot id is the digest of these exact bytes,
//! so any edit, however small, changes or breaks the id. [`validate`] then refuses an
//! authentic manifest that would be unsafe to restore: this is the second line of defense
//! after the digest, against a manifest written by a buggy or hostile agent.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};

/// Manifest format of snapshots in a format-1 repository (no compression).
pub const MANIFEST_FORMAT_V1: u32 = 1;
/// Manifest format of snapshots in a format-2 repository: chunk references may carry
/// `zlen` (stored compressed). An engine that knows only format 1 refuses these with
/// "unsupported manifest format" rather than misreading a compressed chunk.
pub const MANIFEST_FORMAT: u32 = 2;

/// Top-level names starting with this are the engine's own (staging, swap journal) and are
/// neither snapshotted nor restored.
pub const RESERVED_PREFIX: &str = ".deployctl-";

/// Largest chunk a manifest may reference (the chunker's own maximum is far below).
const MAX_CHUNK_LEN: u32 = 64 * 1024 * 1024;

/// Who the snapshot belongs to: opaque strings from the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// The ProductionStack.
    pub stack: String,
    /// The component whose data this is.
    pub component: String,
    /// The stack revision the data belongs to.
    pub revision: String,
}

impl Source {
    /// Builds a source label.
    pub fn new(
        stack: impl Into<String>,
        component: impl Into<String>,
        revision: impl Into<String>,
    ) -> Self {
        Source {
            stack: stack.into(),
            component: component.into(),
            revision: revision.into(),
        }
    }
}

/// How the data was captured, and so how it must be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// A directory tree.
    Files,
    /// A SQLite database copied with the online backup API.
    Sqlite,
    /// The stdout of a dump command.
    Exec,
}

impl MethodKind {
    /// The method's name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Files => "files",
            MethodKind::Sqlite => "sqlite",
            MethodKind::Exec => "exec",
        }
    }
}

/// Facts about a snapshot, recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotMeta {
    /// Whose data.
    pub source: Source,
    /// How it was captured.
    pub method: MethodKind,
    /// When the snapshot started.
    pub created: DateTime<Utc>,
    /// Bytes of file content.
    pub total_size: u64,
    /// Number of regular files.
    pub file_count: u64,
    /// Number of chunk references (a chunk used twice counts twice).
    pub chunk_count: u64,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link, recorded as a link (never followed).
    Symlink,
}

/// Where a small chunk is stored inside a pack object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackLoc {
    /// The pack object (`objects/..`), a random name.
    pub object: ChunkId,
    /// Offset of the stored (sealed, when encrypted) chunk in the pack.
    pub offset: u64,
}

/// One piece of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// The chunk.
    pub id: ChunkId,
    /// Its plaintext length.
    pub len: u32,
    /// Set for chunks smaller than the chunker minimum (small files, file tails), which are
    /// stored in packs: one object per 10,000 small files would cost seconds of file
    /// creation on a volume, or 10,000 requests on S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackLoc>,
    /// Set when the chunk is stored zstd-compressed (format 2): the length of the
    /// compressed frame, which is what is sealed and stored. Absent: stored as it is (data
    /// that does not compress). The id and `len` are always those of the plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zlen: Option<u32>,
}

/// One file system entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// Path relative to the snapshot root, '/'-separated, no `.`/`..`/empty components.
    pub path: String,
    /// Kind of entry.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most); 0 for symlinks.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time in nanoseconds since the epoch, restored on files and directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// File size (sum of chunk lengths); 0 for others.
    #[serde(default)]
    pub size: u64,
    /// File content, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Format 2, regular files of the `files` method: the status-change time (ns) when
    /// read. With `inode`, `size` and `mtime_ns` it tells the next snapshot the file is
    /// unchanged, so its chunks are reused without reading it (as restic does): any write,
    /// truncate, rename over it or chmod changes the ctime, which no program can set back.
    /// Not restored (no file system lets it be set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
    /// Format 2, regular files of the `files` method: the inode number when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// Format 2, regular files of the `files` method: the device (file system) the file
    /// was on. Inode numbers are unique only within one file system: the replicas of a
    /// StatefulSet share a component, and two volumes filled alike can give the same path
    /// the same inode and times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u64>,
}

impl Entry {
    /// True when `self` (just scanned, not read) is the same file, unchanged, as `parent`
    /// (from the previous snapshot of the same data): same path, size, mtime, ctime and
    /// inode on the same device, all known, and that ctime before `settled_before_ns`.
    ///
    /// The last condition is git's "racy clean" rule: file times come from a coarse clock
    /// (one tick is milliseconds), so a write in the same tick as the one before it,
    /// after the previous snapshot read the file, leaves every time as it was. A file whose
    /// ctime is well before the previous snapshot started cannot have had such a write
    /// (the clock had moved on), so only files changed shortly before it are read again.
    pub(crate) fn unchanged_since(&self, parent: &Entry, settled_before_ns: i64) -> bool {
        self.ctime_ns.is_some_and(|c| c < settled_before_ns)
            && self.kind == EntryKind::File
            && parent.kind == EntryKind::File
            && self.path == parent.path
            && self.size == parent.size
            && self.mtime_ns.is_some()
            && self.mtime_ns == parent.mtime_ns
            && self.ctime_ns.is_some()
            && self.ctime_ns == parent.ctime_ns
            && self.inode.is_some()
            && self.inode == parent.inode
            && self.device.is_some()
            && self.device == parent.device
    }
}

/// A snapshot manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Facts about the snapshot.
    pub meta: SnapshotMeta,
    /// Entries sorted by path.
    pub entries: Vec<Entry>,
}

/// A complete snapshot as listed: its id and metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// The snapshot id.
    pub id: SnapshotId,
    /// Its metadata.
    pub meta: SnapshotMeta,
}

impl Manifest {
    /// Canonical bytes (the snapshot id is their digest).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifests serialize")
    }

    /// Parses manifest bytes; unknown fields are refused.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Regular files, in manifest order.
    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::File)
    }
}

/// Checks one relative path: non-empty '/'-separated normal components.
pub fn check_path(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\0') {
        return Err("NUL in path".into());
    }
    for c in path.split('/') {
        match c {
            "" => return Err("empty path component".into()),
            "." | ".." => return Err(format!("{c:?} path component")),
            _ => {}
        }
    }
    if path.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "names starting with {RESERVED_PREFIX} are reserved"
        ));
    }
    Ok(())
}

/// Checks that a symlink at `link_path` with `target` resolves inside the tree.
///
/// Allowed: a relative target made of leading `..` components (no more than the link's
/// depth) followed by normal components. Because every parent of an entry is a real
/// directory of the tree, popping those leading `..` lands in a real directory of the tree,
/// and any symlink walked through afterwards passes this same check; a `..` after a normal
/// component could climb out of a symlinked directory, so it is refused.
pub fn check_symlink(link_path: &str, target: &str) -> std::result::Result<(), String> {
    if target.is_empty() {
        return Err("empty symlink target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink target {target:?} is absolute"));
    }
    if target.contains('\0') {
        return Err("NUL in symlink target".into());
    }
    let depth = link_path.matches('/').count();
    let mut ups = 0;
    let mut descended = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if !descended => ups += 1,
            ".." => return Err(format!("symlink target {target:?} climbs after descending")),
            _ => descended = true,
        }
    }
    if ups > depth {
        return Err(format!("symlink target {target:?} leaves the tree"));
    }
    Ok(())
}

/// Refuses a manifest that is inconsistent or unsafe to restore.
pub fn validate(m: &Manifest, snapshot: SnapshotId) -> Result<()> {
    let unsafe_entry = |path: &str, reason: String| Error::ManifestUnsafe {
        snapshot,
        path: path.to_string(),
        reason,
    };
    if m.format != MANIFEST_FORMAT && m.format != MANIFEST_FORMAT_V1 {
        return Err(Error::ManifestCorrupt {
            snapshot,
            reason: format!("unsupported manifest format {}", m.format),
        });
    }
    let mut dirs: HashSet<&str> = HashSet::new();
    let mut prev: Option<&str> = None;
    let (mut files, mut total, mut chunks) = (0u64, 0u64, 0u64);
    for e in &m.entries {
        check_path(&e.path).map_err(|r| unsafe_entry(&e.path, r))?;
        if let Some(p) = prev {
            if p.as_bytes() >= e.path.as_bytes() {
                return Err(unsafe_entry(
                    &e.path,
                    "entries out of order or duplicated".into(),
                ));
            }
        }
        prev = Some(&e.path);
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            if !dirs.contains(parent) {
                return Err(unsafe_entry(
                    &e.path,
                    format!("parent {parent:?} is not a directory of the snapshot"),
                ));
            }
        }
        if e.mode > 0o7777 {
            return Err(unsafe_entry(
                &e.path,
                format!("mode {:o} has non-permission bits", e.mode),
            ));
        }
        match e.kind {
            EntryKind::Dir => {
                if e.size != 0 || !e.chunks.is_empty() || e.target.is_some() {
                    return Err(unsafe_entry(&e.path, "directory with content".into()));
                }
                dirs.insert(&e.path);
            }
            EntryKind::Symlink => {
                let target = e
                    .target
                    .as_deref()
                    .ok_or_else(|| unsafe_entry(&e.path, "symlink without target".into()))?;
                check_symlink(&e.path, target).map_err(|r| unsafe_entry(&e.path, r))?;
                if e.size != 0 || !e.chunks.is_empty() {
                    return Err(unsafe_entry(&e.path, "symlink with content".into()));
                }
            }
            EntryKind::File => {
                if e.target.is_some() {
                    return Err(unsafe_entry(&e.path, "file with a symlink target".into()));
                }
                let mut sum = 0u64;
                for c in &e.chunks {
                    if c.len == 0 || c.len > MAX_CHUNK_LEN {
                        return Err(unsafe_entry(
                            &e.path,
                            format!("chunk {} has length {}", c.id, c.len),
                        ));
                    }
                    match c.zlen {
                        Some(z) if m.format == MANIFEST_FORMAT_V1 => {
                            return Err(unsafe_entry(
                                &e.path,
                                format!(
                                    "chunk {} compressed ({z} bytes) in a format-1 manifest",
                                    c.id
                                ),
                            ))
                        }
                        // zstd never expands by more than a small bound; a frame longer than
                        // the plaintext would have been stored plain.
                        Some(z) if z == 0 || z >= c.len => {
                            return Err(unsafe_entry(
                                &e.path,
                                format!(
                                    "chunk {} of length {} has compressed length {z}",
                                    c.id, c.len
                                ),
                            ))
                        }
                        _ => {}
                    }
                    sum += u64::from(c.len);
                }
                if sum != e.size {
                    return Err(unsafe_entry(
                        &e.path,
                        format!("size {} but chunks add up to {sum}", e.size),
                    ));
                }
                files += 1;
                total += sum;
                chunks += e.chunks.len() as u64;
            }
        }
    }
    let meta = &m.meta;
    if (meta.file_count, meta.total_size, meta.chunk_count) != (files, total, chunks) {
        return Err(Error::ManifestCorrupt {
            snapshot,
            reason: format!(
                "metadata says {} files, {} bytes, {} chunks; entries have {files}, {total}, {chunks}",
                meta.file_count, meta.total_size, meta.chunk_count
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_unchanged_only_if_every_stamp_matches_and_it_settled_before() {
        let old = Entry {
            path: "db/data".into(),
            kind: EntryKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime_ns: Some(1_000),
            size: 10,
            chunks: vec![],
            target: None,
            ctime_ns: Some(2_000),
            inode: Some(7),
            device: Some(64),
        };
        assert!(old.unchanged_since(&old, 2_001));
        // Changed within the racy margin before the previous snapshot: read again.
        assert!(!old.unchanged_since(&old, 2_000));
        let differs: [fn(&mut Entry); 8] = [
            |e| e.device = Some(65),
            |e| e.size += 1,
            |e| e.mtime_ns = Some(1_001),
            |e| e.ctime_ns = Some(2_001),
            |e| e.inode = Some(8),
            |e| e.path = "db/other".into(),
            |e| e.ctime_ns = None,
            |e| e.kind = EntryKind::Symlink,
        ];
        for change in differs {
            let mut now = old.clone();
            change(&mut now);
            assert!(!now.unchanged_since(&old, i64::MAX), "{now:?}");
            assert!(!old.unchanged_since(&now, i64::MAX), "{now:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(check_path("a/b.txt").is_ok());
        for bad in [
            "",
            "/etc",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            ".deployctl-x",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks() {
        assert!(check_symlink("a/l", "../b").is_ok());
        assert!(check_symlink("l", "b/c").is_ok());
        assert!(check_symlink("a/b/l", "../../x").is_ok());
        assert!(check_symlink("l", "../x").is_err());
        assert!(check_symlink("a/l", "../../x").is_err());
        assert!(check_symlink("l", "/etc/passwd").is_err());
        assert!(check_symlink("l", "d/../../x").is_err());
        assert!(check_symlink("l", "").is_err());
    }
}
