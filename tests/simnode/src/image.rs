//! Images: which local executable an image reference runs, and the identifiers a kubelet
//! would report for it.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The repository of an image reference: without `@digest` and without `:tag` (a colon in
/// the registry host's port is not a tag).
pub(crate) fn repository(image: &str) -> &str {
    let no_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(colon) => &no_digest[..last_slash + colon],
        None => no_digest,
    }
}

/// Resolves `image` against the node's known images.
pub(crate) fn resolve<'a>(images: &'a BTreeMap<String, PathBuf>, image: &str) -> Option<&'a Path> {
    images.get(repository(image)).map(PathBuf::as_path)
}

/// The message a kubelet with containerd gives when a pull fails.
pub(crate) fn pull_error_message(image: &str) -> String {
    format!(
        "rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": \
         repository {} is unknown to the simulated node (it runs only images listed in \
         docs/platform-contract.md)",
        repository(image)
    )
}

/// A stable `sha256:` id for an executable: hashed from its path, size and modification
/// time (hashing a debug binary's bytes would cost a second per start), so it changes
/// when the executable is rebuilt.
pub(crate) fn image_id(repository: &str, exe: &Path) -> String {
    let meta = std::fs::metadata(exe).ok();
    let mut hasher = Sha256::new();
    hasher.update(exe.to_string_lossy().as_bytes());
    if let Some(m) = meta {
        hasher.update(m.size().to_le_bytes());
        hasher.update(m.mtime().to_le_bytes());
        hasher.update(m.mtime_nsec().to_le_bytes());
    }
    format!("{repository}@sha256:{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_and_digests() {
        assert_eq!(
            repository("deployctl.dev/demo-app:v1"),
            "deployctl.dev/demo-app"
        );
        assert_eq!(
            repository("deployctl.dev/demo-app"),
            "deployctl.dev/demo-app"
        );
        assert_eq!(
            repository("deployctl.dev/demo-app@sha256:abcd"),
            "deployctl.dev/demo-app"
        );
        assert_eq!(
            repository("deployctl.dev/demo-app:v2@sha256:abcd"),
            "deployctl.dev/demo-app"
        );
        assert_eq!(repository("localhost:5000/app:1.0"), "localhost:5000/app");
        assert_eq!(repository("localhost:5000/app"), "localhost:5000/app");
        assert_eq!(repository("nginx"), "nginx");
    }

    #[test]
    fn resolves_known_repositories_only() {
        let images: BTreeMap<String, PathBuf> = [(
            "deployctl.dev/demo-app".to_owned(),
            PathBuf::from("/bin/true"),
        )]
        .into();
        assert_eq!(
            resolve(&images, "deployctl.dev/demo-app:v3"),
            Some(Path::new("/bin/true"))
        );
        assert_eq!(resolve(&images, "docker.io/library/nginx:1.25"), None);
        assert!(pull_error_message("nginx:1").contains("\"nginx:1\""));
    }

    #[test]
    fn image_ids_are_stable() {
        let a = image_id("r", Path::new("/bin/sh"));
        assert_eq!(a, image_id("r", Path::new("/bin/sh")));
        assert!(a.starts_with("r@sha256:") && a.len() == "r@sha256:".len() + 64);
        assert_ne!(a, image_id("r", Path::new("/bin/ls")));
    }
}
