//! Applying an image layer (a tar stream, gzip-, zstd- or not compressed) to a root
//! directory, as containerd's snapshotter does: entries in order with their ownership,
//! modes and times, whiteouts (`.wh.<name>` deletes `<name>` of the layers below,
//! `.wh..wh..opq` empties its directory of them), and nothing ever written or deleted
//! outside the root.
//!
//! Safety follows the `tar` crate's `unpack_in`, which writes every entry: entries with a
//! `..` component are skipped, leading `/` is dropped, and an entry whose parent resolves
//! (symlinks followed) outside the root is refused with an error. The steps done here
//! before `unpack_in` (whiteouts, replacing an entry of another type, device nodes) check
//! the same canonical-parent rule first, so a symlink planted by a layer cannot make them
//! delete or create anything on the host.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Prefix of a whiteout file.
const WHITEOUT: &str = ".wh.";
/// A whiteout that hides everything the lower layers have in its directory.
const OPAQUE: &str = ".wh..wh..opq";

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type (OCI and Docker ones, including the
    /// non-distributable and foreign variants); an error names an unsupported one.
    pub(crate) fn of_media_type(media_type: &str) -> Result<Self, String> {
        let known_tar = [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.docker.image.rootfs.diff.tar",
        ];
        if known_tar.contains(&media_type) {
            return Ok(Self::None);
        }
        if media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
            || media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        {
            return Ok(Self::Gzip);
        }
        match media_type.rsplit_once('+') {
            Some((base, "gzip")) if known_tar.contains(&base) => Ok(Self::Gzip),
            Some((base, "zstd")) if known_tar.contains(&base) => Ok(Self::Zstd),
            _ => Err(format!("unsupported layer media type {media_type:?}")),
        }
    }

    /// Wraps `input` in the matching decoder.
    pub(crate) fn reader<'a>(self, input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Self::None => Box::new(input),
            Self::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        })
    }
}

/// What applying a layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Entries unpacked.
    pub(crate) entries: u64,
    /// Entries skipped because a path component is `..`.
    pub(crate) skipped: u64,
    /// Whiteouts applied.
    pub(crate) whiteouts: u64,
}

/// The entry path as a relative path of normal components; `None` if it has a `..`.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return None,
            Component::Normal(p) => rel.push(p),
        }
    }
    Some(rel)
}

/// The canonical form of `root/rel`'s parent if it exists and lies inside `root`
/// (`canon_root` is `root` canonicalized); `Ok(None)` when the parent does not exist yet;
/// an error when it resolves outside.
fn parent_inside(canon_root: &Path, root: &Path, rel: &Path) -> io::Result<Option<PathBuf>> {
    let parent = match rel.parent() {
        Some(p) => root.join(p),
        None => root.to_path_buf(),
    };
    match parent.canonicalize() {
        Ok(canon) if canon.starts_with(canon_root) => Ok(Some(canon)),
        Ok(canon) => Err(io::Error::other(format!(
            "layer entry {} resolves outside the root (to {})",
            rel.display(),
            canon.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `path` (a file, symlink or whole directory) if it exists; never follows a
/// symlink at `path` itself.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one uncompressed layer stream to `root` (an existing directory).
pub(crate) fn apply_layer(root: &Path, layer: impl Read) -> io::Result<Applied> {
    let canon_root = root.canonicalize()?;
    let mut archive = tar::Archive::new(layer);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut applied = Applied::default();
    // What this layer itself wrote: a whiteout hides only what the layers below had.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(rel) = relative(&path) else {
            applied.skipped += 1;
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE {
            applied.whiteouts += 1;
            let dir_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
            let Some(dir) = parent_inside(&canon_root, root, &rel)? else {
                continue;
            };
            for child in fs::read_dir(&dir)? {
                let child = child?;
                if !written.contains(&dir_rel.join(child.file_name())) {
                    remove_any(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            applied.whiteouts += 1;
            let target_rel = rel.with_file_name(hidden);
            if hidden.is_empty() || hidden == "." || written.contains(&target_rel) {
                continue;
            }
            if let Some(dir) = parent_inside(&canon_root, root, &rel)? {
                remove_any(&dir.join(hidden))?;
            }
            continue;
        }
        let kind = entry.header().entry_type();
        if let Some(dir) = parent_inside(&canon_root, root, &rel)? {
            let target = dir.join(&name);
            // An entry replaces whatever the layers below had there, of any type; a
            // directory over a directory merges.
            if let Ok(existing) = fs::symlink_metadata(&target) {
                if !(kind.is_dir() && existing.is_dir()) {
                    remove_any(&target)?;
                }
            }
            if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                make_node(&target, &entry)?;
                written.insert(rel);
                applied.entries += 1;
                continue;
            }
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // The parent does not exist yet: let `unpack_in` create it with an empty
            // file in place, then make the node over it.
            entry.unpack_in(root)?;
            let dir = parent_inside(&canon_root, root, &rel)?
                .ok_or_else(|| io::Error::other(format!("no parent for {}", rel.display())))?;
            let target = dir.join(&name);
            remove_any(&target)?;
            make_node(&target, &entry)?;
            written.insert(rel);
            applied.entries += 1;
            continue;
        }
        if entry.unpack_in(root)? {
            written.insert(rel);
            applied.entries += 1;
        } else {
            applied.skipped += 1;
        }
    }
    Ok(applied)
}

/// Creates a device node or FIFO (the node runs as root, as containerd does).
fn make_node<R: Read>(target: &Path, entry: &tar::Entry<'_, R>) -> io::Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let header = entry.header();
    let kind = header.entry_type();
    let flag = if kind.is_character_special() {
        SFlag::S_IFCHR
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    let mode = header.mode()? & 0o7777;
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    mknod(
        target,
        flag,
        Mode::from_bits_truncate(mode),
        makedev(u64::from(major), u64::from(minor)),
    )
    .map_err(io::Error::from)?;
    let uid = u32::try_from(header.uid()?).unwrap_or(0);
    let gid = u32::try_from(header.gid()?).unwrap_or(0);
    std::os::unix::fs::lchown(target, Some(uid), Some(gid))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(target, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A tar layer built entry by entry, for tests.
    pub(crate) struct LayerBuilder {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Default for LayerBuilder {
        fn default() -> Self {
            Self {
                builder: tar::Builder::new(Vec::new()),
            }
        }
    }

    impl LayerBuilder {
        fn header(kind: tar::EntryType, mode: u32, uid: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_mtime(1_600_000_000);
            h.set_size(0);
            h
        }

        pub(crate) fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
            self.builder
                .append_data(&mut h, path, io::empty())
                .expect("append dir");
            self
        }

        pub(crate) fn file(mut self, path: &str, data: &str, mode: u32, uid: u64) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, mode, uid);
            h.set_size(data.len() as u64);
            self.builder
                .append_data(&mut h, path, data.as_bytes())
                .expect("append file");
            self
        }

        pub(crate) fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
            self.builder
                .append_link(&mut h, path, target)
                .expect("append symlink");
            self
        }

        /// An entry whose name is written raw, so it can hold `..` (the `tar` builder
        /// refuses such names).
        pub(crate) fn raw_file(mut self, path: &str, data: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, 0o644, 0);
            h.set_size(data.len() as u64);
            {
                let name = &mut h.as_old_mut().name;
                name.fill(0);
                name[..path.len()].copy_from_slice(path.as_bytes());
            }
            h.set_cksum();
            self.builder
                .append(&h, data.as_bytes())
                .expect("append raw");
            self
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish tar")
        }
    }

    fn apply(root: &Path, layer: LayerBuilder) -> io::Result<Applied> {
        apply_layer(root, layer.finish().as_slice())
    }

    #[test]
    fn layers_stack_with_modes_owners_and_whiteouts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        apply(
            root,
            LayerBuilder::default()
                .dir("etc")
                .file("etc/keep", "k", 0o644, 0)
                .file("etc/gone", "g", 0o644, 0)
                .dir("opq")
                .file("opq/lower", "l", 0o644, 0)
                .file("bin/tool", "#!", 0o4755, 65532)
                .symlink("usr-bin", "bin"),
        )
        .expect("layer 1");
        assert_eq!(fs::read_to_string(root.join("etc/keep")).unwrap(), "k");
        let tool = fs::metadata(root.join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((tool.uid(), tool.gid()), (65532, 65532));
        assert_eq!(tool.mtime(), 1_600_000_000);

        let applied = apply(
            root,
            LayerBuilder::default()
                .file("etc/.wh.gone", "", 0o644, 0)
                .file("opq/new", "n", 0o644, 0)
                .file("opq/.wh..wh..opq", "", 0o644, 0)
                // A file replaces the symlink, a directory replaces the file.
                .file("usr-bin", "now a file", 0o600, 0)
                .dir("etc/keep"),
        )
        .expect("layer 2");
        assert_eq!(applied.whiteouts, 2);
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(root.join("etc/keep").is_dir());
        assert!(
            root.join("opq/new").exists(),
            "this layer's own entry stays"
        );
        assert!(
            !root.join("opq/lower").exists(),
            "the opaque dir hides lower entries"
        );
        assert!(!root.join("opq/.wh..wh..opq").exists());
        let f = fs::symlink_metadata(root.join("usr-bin")).unwrap();
        assert!(f.is_file());
    }

    #[test]
    fn nothing_is_written_outside_the_root() {
        let outer = tempfile::tempdir().expect("temp dir");
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let victim = outer.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("precious"), "keep me").unwrap();

        // `..` entries are skipped, as `unpack_in` does.
        let applied = apply(
            &root,
            LayerBuilder::default()
                .raw_file("../escaped", "x")
                .raw_file("a/../../escaped2", "x")
                .file("fine", "ok", 0o644, 0),
        )
        .expect("layer with ..");
        assert_eq!(applied.skipped, 2);
        assert!(!outer.path().join("escaped").exists());
        assert!(!outer.path().join("escaped2").exists());
        assert!(root.join("fine").exists());

        // An absolute symlink to the host, then entries through it: refused.
        let link_layer = LayerBuilder::default().symlink("evil", victim.to_str().unwrap());
        apply(&root, link_layer).expect("a symlink alone is fine");
        let through = apply(
            &root,
            LayerBuilder::default().file("evil/planted", "x", 0o644, 0),
        );
        assert!(
            through.is_err(),
            "writing through an escaping symlink must fail"
        );
        let whiteout = apply(
            &root,
            LayerBuilder::default().file("evil/.wh.precious", "", 0o644, 0),
        );
        assert!(
            whiteout.is_err(),
            "a whiteout through an escaping symlink must fail"
        );
        let opaque = apply(
            &root,
            LayerBuilder::default().file("evil/.wh..wh..opq", "", 0o644, 0),
        );
        assert!(opaque.is_err());
        assert!(!victim.join("planted").exists());
        assert_eq!(
            fs::read_to_string(victim.join("precious")).unwrap(),
            "keep me"
        );
        // A relative symlink that climbs out is refused the same way.
        apply(&root, LayerBuilder::default().symlink("up", "../victim")).expect("symlink");
        assert!(apply(&root, LayerBuilder::default().file("up/x", "x", 0o644, 0)).is_err());
        assert!(!victim.join("x").exists());
    }

    #[test]
    fn media_types_map_to_decoders() {
        use Compression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
        ] {
            assert_eq!(Compression::of_media_type(mt), Ok(c), "{mt}");
        }
        assert!(Compression::of_media_type("application/vnd.wasm.content.layer.v1+wasm").is_err());

        let tar = LayerBuilder::default()
            .file("a", "hello", 0o644, 0)
            .finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(tar.as_slice(), 1).unwrap();
        for (c, bytes) in [(None, &tar), (Gzip, &gz), (Zstd, &zst)] {
            let dir = tempfile::tempdir().unwrap();
            apply_layer(dir.path(), c.reader(bytes.as_slice()).unwrap()).unwrap();
            assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "hello");
        }
    }
}
