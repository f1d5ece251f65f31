//! The node's image store and puller: images pulled from OCI registries with `oci-client`,
//! kept content-addressed under `state_dir/images/`, each unpacked once into a root
//! filesystem that containers use read-only (as the lower layer of their overlay).
//!
//! Layout of `state_dir/images/`:
//! - `sha256/<hex>/`: one image, named by the digest its reference resolved to (the
//!   manifest's, or the index's for a multi-platform image: the `imageID` digest), with
//!   `image.json` (its record: platform manifest and config digests, size, run config)
//!   and `rootfs/`;
//! - `blobs/sha256/<hex>`: the manifests, indexes and configs fetched (layers are not
//!   kept once unpacked);
//! - `refs.json`: normalized reference (`host/repo:tag`) → image digest, for
//!   `IfNotPresent` and `Never`;
//! - `tmp/`: pulls in progress (`pull-<first 12 hex of the digest>-<random>`), removed
//!   when the node starts.
//!
//! Invariants:
//! - **A directory `sha256/<hex>` is complete or absent.** It is built in `tmp/` and
//!   appears by one `rename` after every layer was verified and unpacked and `image.json`
//!   written; a crash leaves only `tmp/`, which is never used and is cleared at start.
//! - **One pull per image at a time.** Downloading and unpacking an image happen under
//!   that image digest's async lock; a second pull of the same image (two pods starting
//!   together) waits on the lock, then finds the directory and downloads nothing.
//! - **Pulls are bounded and never block other pods.** They run in their own tasks (the
//!   pod worker only waits for a message), at most [`MAX_PARALLEL_PULLS`] at once, the
//!   unpacking on the blocking pool.
//! - **Nothing unverified is unpacked.** Every manifest, config and layer is checked
//!   against its digest before use; a layer is written to a temp file, verified, then
//!   applied (see [`crate::unpack`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;

use crate::image::{ConfigBlob, ImageRef, RunConfig};
use crate::unpack::{self, Compression};

/// Pulls (downloads and unpacks) that may run at once on one node.
pub(crate) const MAX_PARALLEL_PULLS: usize = 2;

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image in the store, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredImage {
    /// `sha256:…` the reference resolved to: the `imageID` digest.
    pub(crate) digest: String,
    /// The linux/amd64 image manifest (the same as `digest` unless it is an index).
    pub(crate) manifest: String,
    /// The config blob's digest.
    pub(crate) config: String,
    /// Manifest, config and compressed layers, in bytes (what a kubelet reports).
    pub(crate) size: u64,
    /// Entrypoint, command, environment, user and working dir.
    pub(crate) run: RunConfig,
    /// The unpacked root filesystem (set when loaded, not stored).
    #[serde(skip)]
    pub(crate) rootfs: PathBuf,
}

/// A finished pull.
#[derive(Debug, Clone)]
pub(crate) struct Pulled {
    pub(crate) image: StoredImage,
    /// Time spent pulling, without waiting for another pull or a free pull slot.
    pub(crate) pulling: Duration,
    /// Time from the request to the end, waiting included.
    pub(crate) total: Duration,
}

/// The node's images. Cheap to share behind an `Arc`.
pub(crate) struct ImageStore {
    root: PathBuf,
    /// Registries pulled from over plain HTTP.
    insecure: Vec<String>,
    /// Registry hosts that serve the executable map only and are never contacted.
    reserved: BTreeSet<String>,
    client: OnceLock<Result<Client, String>>,
    /// One lock per image digest (see the module docs).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    slots: tokio::sync::Semaphore,
    /// Serializes read-modify-write of `refs.json`.
    refs: Mutex<()>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .field("insecure", &self.insecure)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

/// The hex part of `sha256:<hex>`, checked, so it is safe as a file name.
fn digest_hex(digest: &str) -> Result<&str, String> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("unsupported digest {digest:?} (only sha256 is supported)"))
}

/// An error and its causes, `: `-separated (reqwest hides the useful part in sources).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// What the registry said, or why it could not be reached.
fn describe(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, url } => {
            let errors: Vec<String> = envelope
                .errors
                .iter()
                .map(|err| {
                    let code = serde_json::to_value(&err.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| format!("{:?}", err.code));
                    format!("{} ({code})", err.message)
                })
                .collect();
            format!("{url}: {}", errors.join("; "))
        }
        OciDistributionError::ServerError { code, url, message } => {
            format!("{url}: HTTP {code} {}", message.trim())
        }
        other => chain(other),
    }
}

/// Whether the registry said the reference does not exist (a 404, or an `*_UNKNOWN` code).
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|err| {
            serde_json::to_value(&err.code)
                .ok()
                .and_then(|v| v.as_str().map(|c| c.ends_with("_UNKNOWN")))
                .unwrap_or(false)
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

impl ImageStore {
    /// Opens (creating) the store under `root`, removing pulls a crash left in `tmp/`.
    pub(crate) fn open(
        root: PathBuf,
        insecure: Vec<String>,
        reserved: BTreeSet<String>,
    ) -> Result<Self, String> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| io_err(tmp.display(), e))?;
        }
        for dir in [root.join("sha256"), root.join("blobs/sha256"), tmp] {
            std::fs::create_dir_all(&dir).map_err(|e| io_err(dir.display(), e))?;
        }
        Ok(Self {
            root,
            insecure,
            reserved,
            client: OnceLock::new(),
            locks: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(MAX_PARALLEL_PULLS),
            refs: Mutex::new(()),
        })
    }

    fn client(&self) -> Result<&Client, String> {
        self.client
            .get_or_init(|| {
                // reqwest is built without a crypto provider: ring is the workspace's.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let config = ClientConfig {
                    protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
                    connect_timeout: Some(Duration::from_secs(10)),
                    read_timeout: Some(Duration::from_secs(60)),
                    ..Default::default()
                };
                Client::try_from(config).map_err(|e| format!("building the registry client: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn image_dir(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self.root.join("sha256").join(digest_hex(digest)?))
    }

    /// The image stored under `digest`, if complete.
    pub(crate) fn load(&self, digest: &str) -> Option<StoredImage> {
        let dir = self.image_dir(digest).ok()?;
        let text = std::fs::read_to_string(dir.join("image.json")).ok()?;
        let mut image: StoredImage = serde_json::from_str(&text).ok()?;
        image.rootfs = dir.join("rootfs");
        Some(image)
    }

    fn read_refs(&self) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.root.join("refs.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// The local image of `image`: by its digest, or the one its reference last resolved to.
    pub(crate) fn local(&self, image: &ImageRef) -> Option<StoredImage> {
        let digest = match &image.digest {
            Some(d) => d.clone(),
            None => self.read_refs().get(&image.key())?.clone(),
        };
        self.load(&digest)
    }

    fn remember(&self, image: &ImageRef, digest: &str) -> Result<(), String> {
        let _guard = self.refs.lock().unwrap_or_else(|e| e.into_inner());
        let mut refs = self.read_refs();
        if refs.get(&image.key()).map(String::as_str) == Some(digest) {
            return Ok(());
        }
        refs.insert(image.key(), digest.to_owned());
        let path = self.root.join("refs.json");
        let tmp = self
            .root
            .join("tmp")
            .join(format!("refs-{:016x}.json", rand::random::<u64>()));
        let text = serde_json::to_string_pretty(&refs).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_err(path.display(), e))
    }

    fn lock_for(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(digest.to_owned()).or_default().clone()
    }

    /// Why `image` is never fetched from the network, if so.
    fn refuse_offline(&self, image: &ImageRef) -> Result<(), String> {
        if self.reserved.contains(&image.registry) {
            return Err(format!(
                "repository {} is unknown to the simulated node: registry {} only serves \
                 the node's executable map (docs/platform-contract.md) and is never contacted",
                image.repository(),
                image.registry
            ));
        }
        let host = image.registry.split(':').next().unwrap_or_default();
        if host == "invalid" || host.ends_with(".invalid") {
            return Err(format!(
                "failed to resolve reference \"{}\": lookup {host}: no such host (names \
                 under .invalid never resolve, RFC 6761)",
                image.key()
            ));
        }
        Ok(())
    }

    fn scheme_note(&self, image: &ImageRef) -> String {
        if self.insecure.contains(&image.registry) {
            String::new()
        } else {
            format!(
                " (pulled over HTTPS: the node uses plain HTTP only for its insecure \
                 registries {:?}; add {:?} to NodeConfig.insecure_registries for a \
                 plain-HTTP registry)",
                self.insecure, image.registry
            )
        }
    }

    /// Resolves `image` at its registry and makes sure the image it names is in the store,
    /// downloading and unpacking it unless it already is. The error is the registry's
    /// answer (or why it could not be reached), prefixed like containerd's.
    pub(crate) async fn pull(&self, image: &ImageRef) -> Result<Pulled, String> {
        let requested = Instant::now();
        // The CRI error a kubelet shows, with containerd's wording.
        let fail_with = |code: &str, e: String| {
            format!(
                "rpc error: code = {code} desc = failed to pull and unpack image \"{}\": {e}",
                image.key()
            )
        };
        let fail = |e: String| fail_with("Unknown", e);
        self.refuse_offline(image)
            .map_err(|e| fail_with("NotFound", e))?;
        let client = self.client().map_err(fail)?;
        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => {
                Reference::with_digest(image.registry.clone(), image.path.clone(), d.clone())
            }
            (None, Some(t)) => {
                Reference::with_tag(image.registry.clone(), image.path.clone(), t.clone())
            }
            (None, None) => {
                Reference::with_tag(image.registry.clone(), image.path.clone(), "latest".into())
            }
        };
        let auth = RegistryAuth::Anonymous;
        let resolve_error = |e: OciDistributionError| {
            let code = if is_not_found(&e) {
                "NotFound"
            } else {
                "Unknown"
            };
            fail_with(
                code,
                format!(
                    "failed to resolve reference \"{}\": {}{}",
                    image.key(),
                    describe(&e),
                    self.scheme_note(image)
                ),
            )
        };
        // A digest names the content: it needs no registry when the image is here.
        let (top, top_digest) = match image.digest.as_ref().and_then(|d| self.load(d)) {
            Some(found) => (None, found.digest),
            None => {
                let (bytes, digest) = client
                    .pull_manifest_raw(&reference, &auth, MANIFEST_TYPES)
                    .await
                    .map_err(resolve_error)?;
                (Some(bytes), digest)
            }
        };
        let lock = self.lock_for(&top_digest);
        let waited_from = Instant::now();
        let _one_pull = lock.lock().await;
        let mut waited = waited_from.elapsed();
        if let Some(found) = self.load(&top_digest) {
            self.remember(image, &top_digest).map_err(fail)?;
            return Ok(Pulled {
                image: found,
                pulling: requested.elapsed().saturating_sub(waited),
                total: requested.elapsed(),
            });
        }
        let slot_from = Instant::now();
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| fail("the node is shutting down".into()))?;
        waited += slot_from.elapsed();
        let top = top.ok_or_else(|| fail("the stored image vanished".into()))?;
        let stored = self
            .fetch(client, &reference, &top, &top_digest)
            .await
            .map_err(|e| fail(format!("{e}{}", self.scheme_note(image))))?;
        self.remember(image, &top_digest).map_err(fail)?;
        Ok(Pulled {
            image: stored,
            pulling: requested.elapsed().saturating_sub(waited),
            total: requested.elapsed(),
        })
    }

    fn keep_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.root.join("blobs/sha256").join(digest_hex(digest)?);
        if path.exists() {
            return Ok(());
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("blob-{:016x}", rand::random::<u64>()));
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_err(path.display(), e))
    }

    /// Downloads and unpacks the image whose top manifest (or index) is `top`, into a temp
    /// dir renamed into place when complete. Called under the image's lock.
    async fn fetch(
        &self,
        client: &Client,
        reference: &Reference,
        top: &[u8],
        top_digest: &str,
    ) -> Result<StoredImage, String> {
        self.keep_blob(top_digest, top)?;
        let (manifest_bytes, manifest_digest) = match serde_json::from_slice::<OciImageIndex>(top) {
            Ok(index) if !index.manifests.is_empty() && is_index(top) => {
                let entry = pick_platform(&index)?;
                let by_digest = reference.clone_with_digest(entry.clone());
                let (bytes, digest) = client
                    .pull_manifest_raw(&by_digest, &RegistryAuth::Anonymous, MANIFEST_TYPES)
                    .await
                    .map_err(|e| {
                        format!(
                            "fetching the linux/amd64 manifest {entry}: {}",
                            describe(&e)
                        )
                    })?;
                self.keep_blob(&digest, &bytes)?;
                (bytes.to_vec(), digest)
            }
            _ => (top.to_vec(), top_digest.to_owned()),
        };
        let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| format!("parsing manifest {manifest_digest}: {e}"))?;
        let mut config_bytes = Vec::new();
        client
            .pull_blob(reference, &manifest.config, &mut config_bytes)
            .await
            .map_err(|e| {
                format!(
                    "fetching config {}: {}",
                    manifest.config.digest,
                    describe(&e)
                )
            })?;
        self.keep_blob(&manifest.config.digest, &config_bytes)?;
        let config: ConfigBlob = serde_json::from_slice(&config_bytes)
            .map_err(|e| format!("parsing config {}: {e}", manifest.config.digest))?;
        let os = config.os.as_deref().unwrap_or("linux");
        let arch = config.architecture.as_deref().unwrap_or("amd64");
        if (os, arch) != ("linux", "amd64") {
            return Err(format!("the image is for {os}/{arch}, not linux/amd64"));
        }
        let compressions = manifest
            .layers
            .iter()
            .map(|l| Compression::of_media_type(&l.media_type))
            .collect::<Result<Vec<_>, _>>()?;

        let work = self.root.join("tmp").join(format!(
            "pull-{}-{:016x}",
            &digest_hex(top_digest)?[..12],
            rand::random::<u64>()
        ));
        let result = self
            .unpack_into(client, reference, &manifest.layers, &compressions, &work)
            .await;
        let finish = || -> Result<StoredImage, String> {
            result?;
            let size = manifest_bytes.len() as u64
                + u64::try_from(manifest.config.size).unwrap_or(0)
                + manifest
                    .layers
                    .iter()
                    .map(|l| u64::try_from(l.size).unwrap_or(0))
                    .sum::<u64>();
            let mut image = StoredImage {
                digest: top_digest.to_owned(),
                manifest: manifest_digest.clone(),
                config: manifest.config.digest.clone(),
                size,
                run: config.config.clone().unwrap_or_default(),
                rootfs: PathBuf::new(),
            };
            let record = serde_json::to_string_pretty(&image).map_err(|e| e.to_string())?;
            std::fs::write(work.join("image.json"), record)
                .map_err(|e| io_err("writing image.json", e))?;
            let dir = self.image_dir(top_digest)?;
            std::fs::rename(&work, &dir).map_err(|e| io_err(dir.display(), e))?;
            image.rootfs = dir.join("rootfs");
            Ok(image)
        };
        let outcome = finish();
        if outcome.is_err() {
            let work = work.clone();
            // Best effort: the node clears tmp/ at its next start anyway.
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(work)).await;
        }
        outcome
    }

    async fn unpack_into(
        &self,
        client: &Client,
        reference: &Reference,
        layers: &[OciDescriptor],
        compressions: &[Compression],
        work: &Path,
    ) -> Result<(), String> {
        let rootfs = work.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| io_err(rootfs.display(), e))?;
        for (i, (layer, compression)) in layers.iter().zip(compressions).enumerate() {
            let blob = work.join(format!("layer-{i}"));
            let mut file = tokio::fs::File::create(&blob)
                .await
                .map_err(|e| io_err(blob.display(), e))?;
            // Verified against the layer's digest before anything is unpacked from it.
            client
                .pull_blob(reference, layer, &mut file)
                .await
                .map_err(|e| format!("fetching layer {}: {}", layer.digest, describe(&e)))?;
            drop(file);
            verify_file(&blob, &layer.digest).await?;
            let (root, path, compression) = (rootfs.clone(), blob.clone(), *compression);
            let digest = layer.digest.clone();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let file = std::fs::File::open(&path).map_err(|e| io_err(path.display(), e))?;
                let reader = compression
                    .reader(std::io::BufReader::new(file))
                    .map_err(|e| format!("layer {digest}: {e}"))?;
                unpack::apply_layer(&root, reader)
                    .map_err(|e| format!("unpacking layer {digest}: {e}"))?;
                std::fs::remove_file(&path).map_err(|e| io_err(path.display(), e))
            })
            .await
            .map_err(|e| format!("unpacking a layer: {e}"))??;
        }
        Ok(())
    }
}

/// Checks a downloaded blob against its digest once more, from the file itself: what is
/// unpacked is exactly what was verified.
async fn verify_file(path: &Path, digest: &str) -> Result<(), String> {
    let path = path.to_owned();
    let expected = digest.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| io_err(path.display(), e))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n =
                std::io::Read::read(&mut file, &mut buf).map_err(|e| io_err(path.display(), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual == expected {
            Ok(())
        } else {
            Err(format!(
                "layer digest mismatch: expected {expected}, got {actual}"
            ))
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Whether manifest bytes are an index (OCI index or Docker manifest list).
fn is_index(bytes: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| match p.media_type.as_deref() {
        Some(t) => t.contains("index") || t.contains("manifest.list"),
        None => p.manifests.is_some(),
    })
}

/// The linux/amd64 entry of an index.
fn pick_platform(index: &OciImageIndex) -> Result<String, String> {
    // Compared in their wire form: the enums come from `oci-spec`, not re-exported.
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let platform = |p: &oci_client::manifest::Platform| {
        (
            name(serde_json::to_value(&p.os)),
            name(serde_json::to_value(&p.architecture)),
        )
    };
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| platform(p) == ("linux".into(), "amd64".into()))
        })
        .map(|m| m.digest.clone())
        .ok_or_else(|| {
            let platforms: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| {
                    let (os, arch) = platform(p);
                    format!("{os}/{arch}")
                })
                .collect();
            format!("no linux/amd64 manifest in the image index (it has {platforms:?})")
        })
}

/// Most symlinks followed while resolving one path inside a root, as Linux allows.
const MAX_SYMLINKS: usize = 40;

/// Reads `path` of the image root `root` as the container would see it: symlinks are
/// followed *inside* the root (an absolute target starts again from `root`, `..` stops at
/// it), so a link in the image can never make the node read a host file.
pub(crate) fn read_in_root(root: &Path, path: &str) -> std::io::Result<Vec<u8>> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        let meta = std::fs::symlink_metadata(&candidate)?;
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(std::io::Error::other(format!(
                "too many symlinks resolving {path} in the image"
            )));
        }
        let target = std::fs::read_link(&candidate)?;
        if target.is_absolute() {
            resolved.clear();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(p) => pending.push(p.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                _ => {}
            }
        }
    }
    let mut full = root.to_path_buf();
    full.extend(&resolved);
    std::fs::read(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::unpack::tests::LayerBuilder;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// A registry speaking just enough of the distribution API: fixed manifests and blobs,
    /// a delay on blob answers (so pulls overlap), and a count of every request.
    #[derive(Default)]
    struct FakeRegistry {
        /// Path (`/v2/...`) → (content type, body).
        routes: BTreeMap<String, (String, Vec<u8>)>,
        /// Served instead of the real body, same length: a corrupted blob.
        corrupt: BTreeSet<String>,
        blob_delay: Duration,
        hits: Mutex<BTreeMap<String, usize>>,
    }

    impl FakeRegistry {
        fn hits(&self, path: &str) -> usize {
            self.hits
                .lock()
                .unwrap()
                .get(path)
                .copied()
                .unwrap_or_default()
        }

        async fn serve(self: Arc<Self>) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let host = listener.local_addr().expect("addr").to_string();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let mut words = text.split_whitespace();
                        let (method, path) =
                            (words.next().unwrap_or(""), words.next().unwrap_or(""));
                        *me.hits.lock().unwrap().entry(path.to_owned()).or_default() += 1;
                        let found = if path == "/v2/" {
                            Some(("application/json".to_owned(), b"{}".to_vec()))
                        } else {
                            me.routes.get(path).cloned()
                        };
                        let response = match found {
                            Some((content_type, mut body)) => {
                                let digest = path
                                    .rsplit('/')
                                    .next()
                                    .filter(|d| d.starts_with("sha256:"))
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| sha(&body));
                                if path.contains("/blobs/") {
                                    tokio::time::sleep(me.blob_delay).await;
                                    if me.corrupt.contains(path) {
                                        body.iter_mut().for_each(|b| *b = b'x');
                                    }
                                }
                                let mut r = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\
                                     Docker-Content-Digest: {digest}\r\nContent-Length: {}\r\n\
                                     Connection: close\r\n\r\n",
                                    body.len()
                                )
                                .into_bytes();
                                if method != "HEAD" {
                                    r.extend(body);
                                }
                                r
                            }
                            None => {
                                let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                                let mut r = format!(
                                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
                                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                                    body.len()
                                )
                                .into_bytes();
                                r.extend_from_slice(body);
                                r
                            }
                        };
                        let _ = conn.write_all(&response).await;
                        let _ = conn.shutdown().await;
                    });
                }
            });
            host
        }
    }

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    /// Adds an image (one gzip layer holding `file`) to `reg`; returns its manifest digest
    /// and the layer's blob path.
    fn add_image(reg: &mut FakeRegistry, repo: &str, file: &str, arch: &str) -> (String, String) {
        let tar = LayerBuilder::default()
            .dir("etc")
            .file(file, arch, 0o644, 0)
            .finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let layer = gz.finish().unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"User": "65532", "Env": ["GREETING=hi"], "Entrypoint": ["/app"]},
            "rootfs": {"type": "layers", "diff_ids": [sha(&tar)]}
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(&layer), "size": layer.len()}]
        }))
        .unwrap();
        let blob = |d: &str| format!("/v2/{repo}/blobs/{d}");
        let layer_path = blob(&sha(&layer));
        reg.routes.insert(
            layer_path.clone(),
            ("application/octet-stream".into(), layer),
        );
        reg.routes
            .insert(blob(&sha(&config)), ("application/json".into(), config));
        let digest = sha(&manifest);
        reg.routes.insert(
            format!("/v2/{repo}/manifests/{digest}"),
            (MANIFEST.into(), manifest),
        );
        (digest, layer_path)
    }

    fn open_store(dir: &Path, host: &str) -> ImageStore {
        ImageStore::open(
            dir.join("images"),
            vec![host.to_owned()],
            ["deployctl.dev".to_owned()].into(),
        )
        .expect("open the store")
    }

    #[tokio::test]
    async fn an_index_resolves_to_linux_amd64_and_concurrent_pulls_download_once() {
        let mut reg = FakeRegistry {
            blob_delay: Duration::from_millis(300),
            ..Default::default()
        };
        let (arm, arm_layer) = add_image(&mut reg, "app", "etc/arch", "arm64");
        let (amd, amd_layer) = add_image(&mut reg, "app", "etc/arch", "amd64");
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": MANIFEST, "digest": arm, "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": MANIFEST, "digest": amd, "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}}
            ]
        }))
        .unwrap();
        let index_digest = sha(&index);
        reg.routes.insert(
            "/v2/app/manifests/v1".into(),
            ("application/vnd.oci.image.index.v1+json".into(), index),
        );
        let reg = Arc::new(reg);
        let host = reg.clone().serve().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(open_store(dir.path(), &host));
        let image = ImageRef::parse(&format!("{host}/app:v1")).expect("ref");

        // Two pods asking at once: one downloads, the other waits for it.
        let (a, b) = tokio::join!(store.pull(&image), store.pull(&image));
        let (a, b) = (a.expect("first pull"), b.expect("second pull"));
        assert_eq!(a.image, b.image);
        assert_eq!(
            a.image.digest, index_digest,
            "the imageID digest is the index's"
        );
        assert_eq!(a.image.manifest, amd);
        assert_eq!(reg.hits(&amd_layer), 1, "one download for two pulls");
        assert_eq!(reg.hits(&format!("/v2/app/manifests/{arm}")), 0);
        assert_eq!(reg.hits(&arm_layer), 0);
        assert_eq!(
            std::fs::read_to_string(a.image.rootfs.join("etc/arch")).unwrap(),
            "amd64"
        );
        assert_eq!(a.image.run.user.as_deref(), Some("65532"));
        assert!(a.total >= a.pulling && b.total >= b.pulling);

        // Remembered by reference, and by digest, with no registry needed.
        assert_eq!(
            store.local(&image).map(|i| i.digest),
            Some(index_digest.clone())
        );
        let by_digest = ImageRef::parse(&format!("{host}/app@{index_digest}")).expect("digest ref");
        let again = store.pull(&by_digest).await.expect("pull by digest");
        assert_eq!(again.image.digest, index_digest);
        assert_eq!(reg.hits(&amd_layer), 1);
        // A store opened again (a node restart) still has it.
        let reopened = open_store(dir.path(), &host);
        assert_eq!(reopened.local(&image).map(|i| i.manifest), Some(amd));
    }

    #[tokio::test]
    async fn a_corrupted_blob_is_refused_and_nothing_is_unpacked() {
        let mut reg = FakeRegistry::default();
        let (digest, layer) = add_image(&mut reg, "bad", "etc/x", "amd64");
        let manifest = reg.routes[&format!("/v2/bad/manifests/{digest}")].clone();
        reg.routes.insert("/v2/bad/manifests/v1".into(), manifest);
        reg.corrupt.insert(layer.clone());
        let reg = Arc::new(reg);
        let host = reg.clone().serve().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_store(dir.path(), &host);
        let image = ImageRef::parse(&format!("{host}/bad:v1")).expect("ref");
        let err = store.pull(&image).await.expect_err("a corrupted layer");
        assert!(err.contains(layer.rsplit('/').next().unwrap()), "{err}");
        assert!(err.to_lowercase().contains("digest"), "{err}");
        assert!(
            err.starts_with("rpc error: code = Unknown desc = "),
            "{err}"
        );
        assert!(store.load(&digest).is_none());
        assert!(store.local(&image).is_none());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("images/tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // An unknown tag: the registry's answer, and the protocol is plain HTTP here.
        let missing = ImageRef::parse(&format!("{host}/bad:nope")).expect("ref");
        let err = store.pull(&missing).await.expect_err("unknown tag");
        assert!(err.contains("manifest unknown (MANIFEST_UNKNOWN)"), "{err}");
        assert!(
            err.starts_with("rpc error: code = NotFound desc = failed to pull and unpack image"),
            "{err}"
        );
        assert!(
            err.contains(&format!("http://{host}/v2/bad/manifests/nope")),
            "{err}"
        );
        assert!(!err.contains("HTTPS"), "{err}");
    }

    #[tokio::test]
    async fn some_registries_are_never_contacted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_store(dir.path(), "127.0.0.1:1");
        let reserved = ImageRef::parse("deployctl.dev/elsewhere:v1").expect("ref");
        let err = store.pull(&reserved).await.expect_err("reserved");
        assert!(err.contains("never contacted"), "{err}");
        let invalid = ImageRef::parse("registry.invalid/nope:1.0").expect("ref");
        let err = store.pull(&invalid).await.expect_err("invalid");
        assert!(err.contains("no such host"), "{err}");
        assert!(err.contains("registry.invalid/nope:1.0"), "{err}");
    }

    #[test]
    fn files_are_read_inside_the_root() {
        let outer = tempfile::tempdir().expect("temp dir");
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(outer.path().join("secret"), "host file").unwrap();
        std::fs::write(root.join("secret"), "image file").unwrap();
        std::fs::write(root.join("real/passwd"), "app").unwrap();
        let link = |target: &str, at: &str| {
            std::os::unix::fs::symlink(target, root.join(at)).unwrap();
        };
        // Absolute and climbing links resolve inside the root, never to the host.
        link(
            &outer.path().join("secret").display().to_string(),
            "etc/abs",
        );
        link("../../../../../secret", "etc/up");
        link("/real/passwd", "etc/passwd");
        link("loop", "etc/loop");
        let read = |p: &str| read_in_root(&root, p).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(read("/etc/passwd").unwrap(), "app");
        assert_eq!(read("/etc/up").unwrap(), "image file");
        assert!(
            read("/etc/abs").is_err(),
            "the host path does not exist in the root"
        );
        assert!(read("/etc/loop").is_err());
        assert!(read("/etc/missing").is_err());
    }
}
