//! Images, the pure parts: references (`host:port/repo:tag@sha256:…`), pull policies, the
//! image configuration (entrypoint, command, environment, user, working dir) and how a
//! container's command line and user follow from it, plus the executable map of images
//! that run a local executable instead of being pulled.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Docker Hub, for references without a registry host (`nginx` is
/// `docker.io/library/nginx:latest`), as containerd normalizes them.
pub(crate) const DOCKER_HUB: &str = "docker.io";

/// The repository of an image reference: without `@digest` and without `:tag` (a colon in
/// the registry host's port is not a tag), as written.
pub(crate) fn repository(image: &str) -> &str {
    let no_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[last_slash..].rfind(':') {
        Some(colon) => &no_digest[..last_slash + colon],
        None => no_digest,
    }
}

/// Resolves `image` against the node's executable map.
pub(crate) fn resolve<'a>(images: &'a BTreeMap<String, PathBuf>, image: &str) -> Option<&'a Path> {
    images.get(repository(image)).map(PathBuf::as_path)
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

/// A parsed image reference, normalized as containerd does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// As written in the pod spec.
    pub(crate) written: String,
    /// `host[:port]`; [`DOCKER_HUB`] when the reference names none.
    pub(crate) registry: String,
    /// The path inside the registry (`library/nginx`, `team/app`).
    pub(crate) path: String,
    /// `None` only when a digest is given without a tag.
    pub(crate) tag: Option<String>,
    /// `sha256:<64 hex>`; it wins over the tag.
    pub(crate) digest: Option<String>,
}

fn is_path_component(c: &str) -> bool {
    // Lowercase alphanumerics separated by `.`, `_`, `__` or runs of `-`.
    !c.is_empty()
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && c.as_bytes()[0].is_ascii_alphanumeric()
        && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
}

fn is_tag(t: &str) -> bool {
    (1..=128).contains(&t.len())
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ImageRef {
    /// Parses `[host[:port]/]path[:tag][@sha256:hex]`. The first component is a registry
    /// host when it has a `.` or a `:` or is `localhost`, as Docker decides.
    pub(crate) fn parse(image: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid image reference {image:?}: {why}");
        if image.is_empty() {
            return Err(bad("it is empty"));
        }
        let (name, digest) = match image.split_once('@') {
            Some((name, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("only sha256 digests are supported"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad(
                        "the digest must be sha256: and 64 lowercase hex digits",
                    ));
                }
                (name, Some(digest.to_owned()))
            }
            None => (image, None),
        };
        let repo = repository(name);
        let tag = name[repo.len()..].strip_prefix(':').map(str::to_owned);
        if let Some(t) = &tag {
            if !is_tag(t) {
                return Err(bad(&format!("invalid tag {t:?}")));
            }
        }
        let (registry, path) = match repo.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), repo.to_owned()),
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.is_empty() || path.split('/').any(|c| !is_path_component(c)) {
            return Err(bad(
                "the repository must be lowercase letters, digits and separators",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            written: image.to_owned(),
            registry,
            path,
            tag,
            digest,
        })
    }

    /// The repository as written (no tag, no digest): the `<repository>` of an imageID.
    pub(crate) fn repository(&self) -> &str {
        repository(&self.written)
    }

    /// `registry/path:tag` or `registry/path@digest` (the digest wins): the key under which
    /// a pulled image is remembered, so `nginx` and `docker.io/library/nginx:latest` meet.
    pub(crate) fn key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}/{}@{d}", self.registry, self.path),
            (None, Some(t)) => format!("{}/{}:{t}", self.registry, self.path),
            (None, None) => format!("{}/{}", self.registry, self.path),
        }
    }

    /// Whether the tag is `latest` or missing (and no digest is given): then the API server
    /// defaults `imagePullPolicy` to `Always`.
    fn floating(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullPolicy {
    /// Resolve the reference at the registry at every container start.
    Always,
    /// Use the local image of the reference if there is one.
    IfNotPresent,
    /// Only local images.
    Never,
}

impl PullPolicy {
    /// The policy of a container: as written, else the API server's default (`Always` for
    /// `:latest` or no tag, else `IfNotPresent`).
    pub(crate) fn of(written: Option<&str>, image: &ImageRef) -> Self {
        match written {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ if image.floating() => Self::Always,
            _ => Self::IfNotPresent,
        }
    }
}

/// What an image's configuration says about running it (OCI image config `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunConfig {
    /// `User`: `uid`, `uid:gid`, `name`, `name:group`; empty is root.
    #[serde(rename = "User", default)]
    pub(crate) user: Option<String>,
    /// `Env`: `NAME=value` entries.
    #[serde(rename = "Env", default)]
    pub(crate) env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub(crate) entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub(crate) cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub(crate) working_dir: Option<String>,
}

/// The parts of an OCI image configuration blob the node uses.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct ConfigBlob {
    #[serde(default)]
    pub(crate) config: Option<RunConfig>,
    #[serde(default)]
    pub(crate) os: Option<String>,
    #[serde(default)]
    pub(crate) architecture: Option<String>,
}

impl RunConfig {
    /// The image's environment as pairs (entries without `=` are skipped, as runc does).
    pub(crate) fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .flatten()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The command line of a container from its `command`/`args` (already `$(VAR)`-expanded)
/// and the image's `Entrypoint`/`Cmd`, by Kubernetes' rules: `command` replaces the
/// entrypoint and drops `Cmd`; `args` replace `Cmd`.
pub(crate) fn argv(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Result<Vec<String>, String> {
    let argv: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        entrypoint.iter().chain(args).cloned().collect()
    } else {
        entrypoint.iter().chain(cmd).cloned().collect()
    };
    if argv.is_empty() {
        return Err(
            "no command specified: the image has no Entrypoint or Cmd and the \
                    container no command or args"
                .into(),
        );
    }
    Ok(argv)
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub(crate) name: String,
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    pub(crate) home: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub(crate) name: String,
    pub(crate) gid: i64,
    pub(crate) members: Vec<String>,
}

/// Parses `/etc/passwd` text; malformed lines are skipped.
pub(crate) fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then_some(())?;
            Some(PasswdEntry {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_owned(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; malformed lines are skipped.
pub(crate) fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4).then_some(())?;
            Some(GroupEntry {
                name: f[0].to_owned(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// The image's `User` as the kubelet sees it before starting anything: a numeric uid, or
/// a name it cannot check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageUser {
    Uid(i64),
    Name(String),
}

impl ImageUser {
    /// From `User` (`uid`, `uid:gid`, `name`, `name:group`; empty is root).
    pub(crate) fn of(user: Option<&str>) -> Self {
        let user = user.unwrap_or("").split(':').next().unwrap_or("");
        if user.is_empty() {
            return Self::Uid(0);
        }
        match user.parse() {
            Ok(uid) => Self::Uid(uid),
            Err(_) => Self::Name(user.to_owned()),
        }
    }
}

/// Who a container process is, once resolved against the image's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    /// Supplementary groups from `/etc/group` (the user's memberships), sorted.
    pub(crate) groups: Vec<i64>,
    /// `$HOME`: the passwd entry's home, else `/`.
    pub(crate) home: String,
}

/// Resolves the process user as runc does with containerd's CRI: `run_as_user` and
/// `run_as_group` (from the securityContext) override the image's `User`; a name is
/// looked up in the image's `/etc/passwd` and `/etc/group`; the gid defaults to the
/// passwd entry's; the user's memberships in `/etc/group` become supplementary groups.
pub(crate) fn resolve_user(
    image_user: Option<&str>,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<ResolvedUser, String> {
    let spec = image_user.unwrap_or("");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match run_as_user {
        Some(uid) => passwd.iter().find(|p| p.uid == uid).cloned(),
        None if user_part.is_empty() => passwd.iter().find(|p| p.uid == 0).cloned(),
        None => match user_part.parse::<i64>() {
            Ok(uid) => passwd.iter().find(|p| p.uid == uid).cloned(),
            Err(_) => Some(
                passwd
                    .iter()
                    .find(|p| p.name == user_part)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "unable to find user {user_part}: no matching entries in the \
                             image's /etc/passwd"
                        )
                    })?,
            ),
        },
    };
    let uid = match (run_as_user, &entry) {
        (Some(uid), _) => uid,
        (None, Some(e)) => e.uid,
        (None, None) => user_part.parse().unwrap_or(0),
    };
    let image_gid = match group_part.filter(|g| !g.is_empty() && run_as_user.is_none()) {
        None => None,
        Some(g) => Some(match g.parse::<i64>() {
            Ok(gid) => gid,
            Err(_) => group
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    )
                })?,
        }),
    };
    let gid = run_as_group
        .or(image_gid)
        .or(entry.as_ref().map(|e| e.gid))
        .unwrap_or(0);
    let mut groups: Vec<i64> = entry
        .as_ref()
        .map(|e| {
            group
                .iter()
                .filter(|g| g.members.contains(&e.name))
                .map(|g| g.gid)
                .collect()
        })
        .unwrap_or_default();
    groups.sort_unstable();
    groups.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home: entry
            .map(|e| e.home)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into()),
    })
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
    }

    #[test]
    fn image_ids_are_stable() {
        let a = image_id("r", Path::new("/bin/sh"));
        assert_eq!(a, image_id("r", Path::new("/bin/sh")));
        assert!(a.starts_with("r@sha256:") && a.len() == "r@sha256:".len() + 64);
        assert_ne!(a, image_id("r", Path::new("/bin/ls")));
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_references_like_containerd() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1").expect("parse");
        assert_eq!(
            (r.registry.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        assert_eq!(r.repository(), "127.0.0.1:5000/team/app");
        assert_eq!(r.key(), "127.0.0.1:5000/team/app:v1");

        let r = ImageRef::parse("nginx").expect("parse");
        assert_eq!(r.key(), "docker.io/library/nginx:latest");
        assert_eq!(r.repository(), "nginx");
        let r = ImageRef::parse("localhost/app").expect("parse");
        assert_eq!(r.registry, "localhost");
        let r = ImageRef::parse("team/app:1.0").expect("parse");
        assert_eq!(r.key(), "docker.io/team/app:1.0");

        let by_digest = ImageRef::parse(&format!("127.0.0.1:5000/app@{D}")).expect("parse");
        assert_eq!(by_digest.tag, None);
        assert_eq!(by_digest.key(), format!("127.0.0.1:5000/app@{D}"));
        // The digest wins over the tag.
        let both = ImageRef::parse(&format!("127.0.0.1:5000/app:v1@{D}")).expect("parse");
        assert_eq!(both.tag.as_deref(), Some("v1"));
        assert_eq!(both.key(), by_digest.key());
        assert_eq!(both.repository(), "127.0.0.1:5000/app");

        for bad in [
            "",
            "App:v1",
            "127.0.0.1:5000/app:",
            "app@sha256:abc",
            "app@md5:0123",
            "a//b",
            "app:-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn pull_policy_defaults_like_the_api_server() {
        let p = |image: &str, written: Option<&str>| {
            PullPolicy::of(written, &ImageRef::parse(image).expect("parse"))
        };
        assert_eq!(p("h:1/app", None), PullPolicy::Always);
        assert_eq!(p("h:1/app:latest", None), PullPolicy::Always);
        assert_eq!(p("h:1/app:v1", None), PullPolicy::IfNotPresent);
        assert_eq!(p(&format!("h:1/app@{D}"), None), PullPolicy::IfNotPresent);
        assert_eq!(p("h:1/app:v1", Some("Always")), PullPolicy::Always);
        assert_eq!(p("h:1/app", Some("Never")), PullPolicy::Never);
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let ep = s(&["/app/server"]);
        let cmd = s(&["--port", "80"]);
        // Neither: the image's Entrypoint and Cmd.
        assert_eq!(
            argv(&[], &[], &ep, &cmd).unwrap(),
            s(&["/app/server", "--port", "80"])
        );
        // args replace Cmd.
        assert_eq!(
            argv(&[], &s(&["-v"]), &ep, &cmd).unwrap(),
            s(&["/app/server", "-v"])
        );
        // command replaces the Entrypoint and drops Cmd.
        assert_eq!(
            argv(&s(&["/bin/other"]), &[], &ep, &cmd).unwrap(),
            s(&["/bin/other"])
        );
        assert_eq!(
            argv(&s(&["/bin/other"]), &s(&["x"]), &ep, &cmd).unwrap(),
            s(&["/bin/other", "x"])
        );
        // Only Cmd in the image: it is the command.
        assert_eq!(argv(&[], &[], &[], &cmd).unwrap(), cmd);
        assert!(argv(&[], &[], &[], &[]).is_err());
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
        # comment\n\
        app:x:65532:65532:app:/home/app:/sbin/nologin\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\napp:x:65532:\nextra:x:700:app,other\nnope:x:701:other\n";

    fn user(
        spec: Option<&str>,
        uid: Option<i64>,
        gid: Option<i64>,
    ) -> Result<ResolvedUser, String> {
        resolve_user(spec, uid, gid, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn users_resolve_like_runc() {
        let app = user(Some("app"), None, None).unwrap();
        assert_eq!(
            app,
            ResolvedUser {
                uid: 65532,
                gid: 65532,
                groups: vec![700],
                home: "/home/app".into()
            }
        );
        assert_eq!(user(Some("65532"), None, None).unwrap(), app);
        let explicit = user(Some("app:extra"), None, None).unwrap();
        assert_eq!((explicit.uid, explicit.gid), (65532, 700));
        let numeric = user(Some("1234:55"), None, None).unwrap();
        assert_eq!(
            (numeric.uid, numeric.gid, numeric.home.as_str()),
            (1234, 55, "/")
        );
        let root = user(None, None, None).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        // The securityContext wins over the image.
        let over = user(Some("app"), Some(4000), Some(4001)).unwrap();
        assert_eq!((over.uid, over.gid, over.groups.len()), (4000, 4001, 0));
        let over_uid = user(Some("1:2"), Some(65532), None).unwrap();
        assert_eq!((over_uid.uid, over_uid.gid), (65532, 65532));
        assert!(user(Some("ghost"), None, None)
            .unwrap_err()
            .contains("unable to find user ghost"));
        assert!(user(Some("app:ghosts"), None, None)
            .unwrap_err()
            .contains("unable to find group ghosts"));
        assert_eq!(ImageUser::of(Some("app:1")), ImageUser::Name("app".into()));
        assert_eq!(ImageUser::of(Some("65532:65532")), ImageUser::Uid(65532));
        assert_eq!(ImageUser::of(Some("")), ImageUser::Uid(0));
        assert_eq!(ImageUser::of(None), ImageUser::Uid(0));
    }

    #[test]
    fn config_blobs_parse() {
        let blob: ConfigBlob = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"User":"app","Env":["PATH=/bin","A=b=c","junk"],
                "Entrypoint":["/app/x"],"Cmd":null,"WorkingDir":"/srv"},"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .expect("parse");
        let c = blob.config.expect("config");
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(
            c.env_pairs(),
            vec![("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())]
        );
        assert_eq!(c.cmd, None);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    }
}
