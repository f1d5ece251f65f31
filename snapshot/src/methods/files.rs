//! The `files` method: a directory tree with modes, owners, mtimes and symlinks (kept as
//! links). Sockets and FIFOs are skipped (they carry no data); device files are refused.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};
use crate::manifest::{check_symlink, Entry, EntryKind, RESERVED_PREFIX};
use crate::snapshot::{Input, Prepared};

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

fn entry(path: String, kind: EntryKind, m: &fs::Metadata) -> Entry {
    Entry {
        path,
        kind,
        mode: if kind == EntryKind::Symlink {
            0
        } else {
            m.mode() & 0o7777
        },
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: (kind != EntryKind::Symlink).then(|| mtime_ns(m)),
        // The scanned size, replaced by what is read (or by the reused chunks' sum).
        size: if kind == EntryKind::File { m.len() } else { 0 },
        chunks: vec![],
        target: None,
        ctime_ns: (kind == EntryKind::File).then(|| {
            m.ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.ctime_nsec())
        }),
        inode: (kind == EntryKind::File).then(|| m.ino()),
        device: (kind == EntryKind::File).then(|| m.dev()),
    }
}

fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<(Entry, Option<PathBuf>)>,
    total: &mut u64,
) -> Result<()> {
    for item in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let item = item.map_err(io_err("read directory", dir))?;
        let path = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|_| Error::Unsupported {
                path: path.clone(),
                reason: "file name is not UTF-8".into(),
            })?;
        if rel.is_empty() && name.starts_with(RESERVED_PREFIX) {
            continue; // the engine's own staging or journal files
        }
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push((entry(child.clone(), EntryKind::Dir, &meta), None));
            walk(&path, &child, out, total)?;
        } else if ft.is_file() {
            *total += meta.len();
            out.push((entry(child, EntryKind::File, &meta), Some(path)));
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read symlink", &path))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| Error::Unsupported {
                    path: path.clone(),
                    reason: "symlink target is not UTF-8".into(),
                })?;
            // Refused here rather than at restore, so no snapshot is taken that cannot be restored.
            check_symlink(&child, &target).map_err(|reason| Error::Unsupported {
                path: path.clone(),
                reason,
            })?;
            let mut e = entry(child, EntryKind::Symlink, &meta);
            e.target = Some(target);
            out.push((e, None));
        } else if ft.is_socket() || ft.is_fifo() {
            tracing::debug!(path = %path.display(), "skipping socket or FIFO");
        } else {
            return Err(Error::Unsupported {
                path,
                reason: "device files are not supported".into(),
            });
        }
    }
    Ok(())
}

/// Lists the tree under `root` (which must be a directory) in manifest order.
pub(crate) fn scan(root: &Path) -> Result<Prepared> {
    let meta = fs::metadata(root).map_err(io_err("stat", root))?;
    if !meta.is_dir() {
        return Err(Error::Unsupported {
            path: root.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let mut found = Vec::new();
    let mut total = 0;
    walk(root, "", &mut found, &mut total)?;
    // Byte order of full paths (not per-directory order): "a" < "a-b" < "a/c".
    found.sort_by(|a, b| a.0.path.as_bytes().cmp(b.0.path.as_bytes()));
    let mut entries = Vec::with_capacity(found.len());
    let mut inputs = Vec::new();
    for (i, (e, src)) in found.into_iter().enumerate() {
        if let Some(src) = src {
            inputs.push((i, Input::Path(src)));
        }
        entries.push(e);
    }
    Ok(Prepared {
        entries,
        inputs,
        total,
    })
}
