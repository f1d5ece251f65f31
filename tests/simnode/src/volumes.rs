//! A pod's volumes as host directories, made before its containers start: `emptyDir`,
//! `configMap`, `secret`, `downwardAPI` and `projected` (ServiceAccount tokens from the
//! TokenRequest API, `ca.crt`, ConfigMap/Secret/downward API sources) become files under
//! the pod's state dir; a `persistentVolumeClaim` resolves to its PV's local directory.
//! The containers' mount namespaces bind these directories at their `mountPath`s (see
//! [`crate::rootfs`]). File contents are computed by pure functions; only fetching the
//! objects and writing files does I/O. Files are written once per pod: later changes of
//! a ConfigMap or Secret are not propagated (a kubelet would, after a minute or so).

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount,
};
use kube::api::{Api, PostParams};

use crate::env::{field_ref, PodFacts};
use crate::quantity;

/// The ConfigMap every namespace gets with the cluster CA (Kubernetes 1.20+).
const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// `0644`, the API's default file mode for projected files.
const DEFAULT_MODE: i32 = 0o644;

/// A volume ready to be bind-mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedVolume {
    pub(crate) host_path: PathBuf,
    /// Mounted read-only whatever the volume mount says (ConfigMaps, Secrets, ...).
    pub(crate) read_only: bool,
}

/// One file of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSpec {
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
    pub(crate) mode: u32,
}

/// Checks a relative path from the API (`items[].path`, `subPath`): no absolute paths, no
/// `..`, nothing empty.
pub(crate) fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || p.is_absolute() {
        return Err(format!("path {path:?} must be relative and non-empty"));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("path {path:?} must not contain '..'"));
    }
    Ok(())
}

fn mode_of(mode: Option<i32>, default: i32) -> u32 {
    u32::try_from(mode.unwrap_or(default)).unwrap_or(0o644) & 0o7777
}

/// Files of a ConfigMap or Secret volume (or projection): every key, or just `items`.
pub(crate) fn key_files(
    kind: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: i32,
    optional: bool,
) -> Result<Vec<FileSpec>, String> {
    match items {
        None => Ok(data
            .iter()
            .filter(|(k, _)| check_relative(k).is_ok())
            .map(|(k, v)| FileSpec {
                path: k.clone(),
                data: v.clone(),
                mode: mode_of(None, default_mode),
            })
            .collect()),
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                check_relative(&item.path)?;
                match data.get(&item.key) {
                    Some(v) => files.push(FileSpec {
                        path: item.path.clone(),
                        data: v.clone(),
                        mode: mode_of(item.mode, default_mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{kind} references non-existent config key: {}",
                            item.key
                        ))
                    }
                }
            }
            Ok(files)
        }
    }
}

/// Files of a downward API volume (or projection).
pub(crate) fn downward_files(
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
) -> Result<Vec<FileSpec>, String> {
    let mut files = Vec::new();
    for item in items {
        check_relative(&item.path)?;
        let value = if let Some(f) = &item.field_ref {
            field_ref(pod, facts, &f.field_path)?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            let container = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name)
                .ok_or_else(|| format!("resourceFieldRef: no container named {name:?}"))?;
            quantity::resource_field_value(container, r)?
        } else {
            return Err(format!("downward API item {} has no source", item.path));
        };
        files.push(FileSpec {
            path: item.path.clone(),
            data: value.into_bytes(),
            mode: mode_of(item.mode, default_mode),
        });
    }
    Ok(files)
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    data
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in secret.data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    data
}

/// Fetches a ConfigMap's data; `None` when it does not exist.
pub(crate) async fn fetch_config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map(|cm| cm.as_ref().map(config_map_data))
        .map_err(|e| format!("reading configmap {ns}/{name}: {e}"))
}

/// Fetches a Secret's data; `None` when it does not exist.
pub(crate) async fn fetch_secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map(|s| s.as_ref().map(secret_data))
        .map_err(|e| format!("reading secret {ns}/{name}: {e}"))
}

/// What [`prepare`] needs besides the pod.
pub(crate) struct VolumeContext<'a> {
    pub(crate) client: &'a kube::Client,
    pub(crate) ca_pem: &'a str,
    /// `state_dir/pvs`: PV directories under it are created on demand.
    pub(crate) pv_root: &'a Path,
}

/// What a kubelet does to a volume for a pod's `fsGroup` (`fsGroupChangePolicy: Always`):
/// every file and directory gets group `gid`, group read and write (and execute where the
/// owner has it), and directories the set-group-ID bit, so new files get the group too.
fn give_to_group(path: &Path, gid: i64) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let gid = u32::try_from(gid).map_err(|_| std::io::Error::other("fsGroup out of range"))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    let mode = meta.mode() & 0o7777;
    let mut want = mode | 0o060 | if mode & 0o100 != 0 { 0o010 } else { 0 };
    if meta.is_dir() {
        want |= 0o2010;
    }
    if want != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            give_to_group(&e?.path(), i64::from(gid))?;
        }
    }
    Ok(())
}

/// Makes every volume of `pod` under `pod_dir/volumes`. An error is the message a kubelet
/// would put in a `FailedMount` event; the caller retries.
pub(crate) async fn prepare(
    cx: &VolumeContext<'_>,
    pod: &Pod,
    facts: &PodFacts,
    pod_dir: &Path,
) -> Result<BTreeMap<String, PreparedVolume>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.fs_group);
    let mut prepared = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let files = if volume.empty_dir.is_some() {
            create_dir(&dir, 0o777)?;
            prepared.insert(
                volume.name.clone(),
                PreparedVolume {
                    host_path: dir,
                    read_only: false,
                },
            );
            continue;
        } else if let Some(src) = &volume.persistent_volume_claim {
            let path = claim_path(cx, ns, &src.claim_name).await?;
            if let Some(gid) = fs_group {
                give_to_group(&path, gid).map_err(|e| {
                    format!("applying fsGroup {gid} to claim {}: {e}", src.claim_name)
                })?;
            }
            prepared.insert(
                volume.name.clone(),
                PreparedVolume {
                    host_path: path,
                    read_only: src.read_only.unwrap_or(false),
                },
            );
            continue;
        } else if let Some(src) = &volume.config_map {
            let optional = src.optional.unwrap_or(false);
            let data = match fetch_config_map(cx.client, ns, &src.name).await? {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => return Err(format!("configmap \"{}\" not found", src.name)),
            };
            key_files(
                "configMap",
                &data,
                src.items.as_deref(),
                src.default_mode.unwrap_or(DEFAULT_MODE),
                optional,
            )?
        } else if let Some(src) = &volume.secret {
            let name = src.secret_name.clone().unwrap_or_default();
            let optional = src.optional.unwrap_or(false);
            let data = match fetch_secret(cx.client, ns, &name).await? {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => return Err(format!("secret \"{name}\" not found")),
            };
            key_files(
                "secret",
                &data,
                src.items.as_deref(),
                src.default_mode.unwrap_or(DEFAULT_MODE),
                optional,
            )?
        } else if let Some(src) = &volume.downward_api {
            downward_files(
                pod,
                facts,
                src.items.as_deref().unwrap_or_default(),
                src.default_mode.unwrap_or(DEFAULT_MODE),
            )?
        } else if let Some(src) = &volume.projected {
            projected_files(cx, pod, facts, src).await?
        } else {
            return Err(format!(
                "volume {:?}: this volume type is not supported by the simulated node \
                 (supported: emptyDir, configMap, secret, downwardAPI, projected, \
                 persistentVolumeClaim)",
                volume.name
            ));
        };
        write_volume(&dir, &files)?;
        prepared.insert(
            volume.name.clone(),
            PreparedVolume {
                host_path: dir,
                read_only: true,
            },
        );
    }
    Ok(prepared)
}

async fn projected_files(
    cx: &VolumeContext<'_>,
    pod: &Pod,
    facts: &PodFacts,
    src: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
) -> Result<Vec<FileSpec>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let default_mode = src.default_mode.unwrap_or(DEFAULT_MODE);
    let mut files = Vec::new();
    for source in src.sources.iter().flatten() {
        if let Some(p) = &source.config_map {
            let optional = p.optional.unwrap_or(false);
            let data = match fetch_config_map(cx.client, ns, &p.name).await? {
                Some(d) => d,
                // Clusters without the root-CA publisher: serve the CA the node was given.
                None if p.name == ROOT_CA_CONFIGMAP => {
                    [("ca.crt".to_owned(), cx.ca_pem.as_bytes().to_vec())].into()
                }
                None if optional => BTreeMap::new(),
                None => return Err(format!("configmap \"{}\" not found", p.name)),
            };
            files.extend(key_files(
                "configMap",
                &data,
                p.items.as_deref(),
                default_mode,
                optional,
            )?);
        } else if let Some(p) = &source.secret {
            let optional = p.optional.unwrap_or(false);
            let data = match fetch_secret(cx.client, ns, &p.name).await? {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => return Err(format!("secret \"{}\" not found", p.name)),
            };
            files.extend(key_files(
                "secret",
                &data,
                p.items.as_deref(),
                default_mode,
                optional,
            )?);
        } else if let Some(p) = &source.downward_api {
            files.extend(downward_files(
                pod,
                facts,
                p.items.as_deref().unwrap_or_default(),
                default_mode,
            )?);
        } else if let Some(p) = &source.service_account_token {
            check_relative(&p.path)?;
            let token = request_token(
                cx.client,
                pod,
                p.audience.as_deref(),
                p.expiration_seconds.unwrap_or(3600),
            )
            .await?;
            files.push(FileSpec {
                path: p.path.clone(),
                data: token.into_bytes(),
                mode: mode_of(None, default_mode),
            });
        } else {
            return Err("projected volume: unsupported source".into());
        }
    }
    Ok(files)
}

/// A ServiceAccount token bound to `pod`, from the TokenRequest API (not refreshed: ask
/// for a long enough `expirationSeconds`).
async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
            expiration_seconds: Some(expiration_seconds.max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let response: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for serviceaccount {ns}/{sa}: {e}"))?;
    response
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("token request for {ns}/{sa} returned no token"))
}

/// The directory of the PV bound to claim `ns/name`.
async fn claim_path(cx: &VolumeContext<'_>, ns: &str, name: &str) -> Result<PathBuf, String> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(cx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading persistentvolumeclaim {ns}/{name}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" is not bound"))?;
    let pv = Api::<PersistentVolume>::all(cx.client.clone())
        .get(&pv_name)
        .await
        .map_err(|e| format!("reading persistentvolume {pv_name}: {e}"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .local
        .map(|l| l.path)
        .or(spec.host_path.map(|h| h.path))
        .map(PathBuf::from)
        .ok_or_else(|| format!("persistentvolume {pv_name} is neither local nor hostPath"))?;
    if path.starts_with(cx.pv_root) {
        create_dir(&path, 0o777)?;
    } else if !path.is_dir() {
        // Never create directories elsewhere on the host.
        return Err(format!(
            "persistentvolume {pv_name}: {} does not exist",
            path.display()
        ));
    }
    Ok(path)
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))
}

/// Writes `files` into a fresh `dir`.
pub(crate) fn write_volume(dir: &Path, files: &[FileSpec]) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("clearing {}: {e}", dir.display())),
    }
    create_dir(dir, 0o755)?;
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, &file.data)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    }
    Ok(())
}

/// `root/sub`, for a volume mount's `subPath`: checked to stay inside `root` (no `..`, no
/// symlinks on the way) and created as a directory if missing, as a kubelet does.
pub(crate) fn sub_path_source(root: &Path, sub: &str) -> Result<PathBuf, String> {
    check_relative(sub)?;
    let mut path = root.to_path_buf();
    for component in Path::new(sub).components() {
        let Component::Normal(part) = component else {
            continue;
        };
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("subPath {sub:?} goes through a symlink"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&path)
                    .map_err(|e| format!("creating subPath {}: {e}", path.display()))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| format!("chmod {}: {e}", path.display()))?;
            }
            Err(e) => return Err(format!("subPath {}: {e}", path.display())),
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> BTreeMap<String, Vec<u8>> {
        [
            ("app.conf".to_owned(), b"a=1".to_vec()),
            ("other".to_owned(), b"o".to_vec()),
        ]
        .into()
    }

    #[test]
    fn projects_all_keys_or_items() {
        let all = key_files("configMap", &data(), None, 0o644, false).expect("all");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].path, "app.conf");
        assert_eq!(all[0].mode, 0o644);
        let items = [KeyToPath {
            key: "app.conf".into(),
            path: "conf/app.conf".into(),
            mode: Some(0o600),
        }];
        let some = key_files("configMap", &data(), Some(&items), 0o644, false).expect("items");
        assert_eq!(
            some,
            [FileSpec {
                path: "conf/app.conf".into(),
                data: b"a=1".to_vec(),
                mode: 0o600
            }]
        );
        let missing = [KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(key_files("configMap", &data(), Some(&missing), 0o644, false).is_err());
        assert!(key_files("configMap", &data(), Some(&missing), 0o644, true)
            .expect("optional")
            .is_empty());
        let escaping = [KeyToPath {
            key: "other".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(key_files("secret", &data(), Some(&escaping), 0o644, false).is_err());
    }

    #[test]
    fn downward_api_files() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"}}}]}
        }))
        .expect("pod");
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(serde_json::json!([
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}
        ]))
        .expect("items");
        let facts = PodFacts {
            pod_ip: None,
            host_ip: "h".into(),
            api_host: "a".into(),
            api_port: 1,
        };
        let files = downward_files(&pod, &facts, &items, 0o644).expect("files");
        let texts: Vec<(&str, String)> = files
            .iter()
            .map(|f| {
                (
                    f.path.as_str(),
                    String::from_utf8_lossy(&f.data).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            texts,
            [
                ("name", "p".to_owned()),
                ("labels", "a=\"1\"".to_owned()),
                ("mem", "1024".to_owned())
            ]
        );
    }

    #[test]
    fn relative_paths_only() {
        assert!(check_relative("a/b").is_ok());
        assert!(check_relative("").is_err());
        assert!(check_relative("/etc").is_err());
        assert!(check_relative("a/../../b").is_err());
    }

    #[test]
    fn writes_files_and_sub_paths() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("vol");
        let files = vec![FileSpec {
            path: "d/f".into(),
            data: b"x".to_vec(),
            mode: 0o600,
        }];
        write_volume(&dir, &files).expect("write");
        assert_eq!(std::fs::read(dir.join("d/f")).expect("read"), b"x");
        let mode = std::fs::metadata(dir.join("d/f"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sub = sub_path_source(&dir, "new/deeper").expect("sub");
        assert!(sub.is_dir());
        std::os::unix::fs::symlink("/", dir.join("escape")).expect("symlink");
        assert!(sub_path_source(&dir, "escape/tmp").is_err());
        assert!(sub_path_source(&dir, "../x").is_err());
    }
}
