//! The container's root filesystem, built by a generated `sh` script that runs as PID 1
//! of the container's fresh PID and mount namespaces (so no mount is ever visible on the
//! host, and nothing is created on the host's root filesystem):
//!
//! - a tmpfs scratch dir holds the new root;
//! - the host's `/usr /bin /sbin /lib /lib64 /etc` are bound read-only (symlinks such as
//!   `bin -> usr/bin` are copied as symlinks); a system dir that must receive a mount point
//!   is an overlay with its upper layer in the scratch tmpfs instead, made read-only again
//!   once the mount points exist;
//! - `/proc` (of the new PID namespace), a minimal `/dev` (null, zero, full, random,
//!   urandom, tty, `shm`), a private `/tmp`, and the image's executable at
//!   `/image/bin/<file name>`;
//! - each volume bound at its `mountPath`, parents first, `readOnly` honoured. Mount points
//!   are created *inside* the new root (`chroot ... mkdir`), so absolute symlinks cannot
//!   lead `mkdir` out to the host.
//!
//! The script then `chroot`s and becomes a minimal init ([`INIT_MARKER`]): it runs the
//! container's command as its child, forwards `SIGTERM`/`SIGINT`/`SIGHUP` to it and
//! exits with its status. An init is needed because PID 1 of a namespace ignores signals
//! it has no handler for, and because when PID 1 exits the kernel kills everything else
//! in the namespace: no process of a container can outlive it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// `$0` of the init shell, so `ps` shows which processes are container inits.
pub(crate) const INIT_MARKER: &str = "simnode-init";

/// The host directories a container sees (read-only).
const SYSTEM_DIRS: [&str; 6] = ["usr", "bin", "sbin", "lib", "lib64", "etc"];

/// The init shell's program (see the module docs).
const INIT: &str = r#"wd=$1; shift
cd -- "$wd" || exit 128
trap 'kill -TERM "$pid" 2>/dev/null' TERM
trap 'kill -INT "$pid" 2>/dev/null' INT
trap 'kill -HUP "$pid" 2>/dev/null' HUP
"$@" &
pid=$!
while :; do
  if wait "$pid"; then rc=0; else rc=$?; fi
  kill -0 "$pid" 2>/dev/null || exit "$rc"
done"#;

/// How a system dir exists on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostEntry {
    Dir,
    /// A symlink, with its target as written (merged-`/usr` systems: `bin -> usr/bin`).
    Symlink(String),
}

/// Which system dirs exist on the host, and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct HostLayout {
    pub(crate) entries: Vec<(String, HostEntry)>,
}

impl HostLayout {
    /// Looks at `/`.
    pub(crate) fn detect() -> Self {
        let entries = SYSTEM_DIRS
            .iter()
            .filter_map(|name| {
                let path = Path::new("/").join(name);
                let meta = std::fs::symlink_metadata(&path).ok()?;
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).ok()?;
                    Some((
                        (*name).to_owned(),
                        HostEntry::Symlink(target.to_string_lossy().into()),
                    ))
                } else if meta.is_dir() {
                    Some(((*name).to_owned(), HostEntry::Dir))
                } else {
                    None
                }
            })
            .collect();
        Self { entries }
    }

    /// The system dir a container path ends up in, following a top-level symlink
    /// (`/bin/x` -> `usr`), if any.
    fn system_dir_of(&self, container_path: &str) -> Option<String> {
        let top = container_path.trim_start_matches('/').split('/').next()?;
        match self.entries.iter().find(|(name, _)| name == top)? {
            (name, HostEntry::Dir) => Some(name.clone()),
            (_, HostEntry::Symlink(target)) => {
                let first = target.trim_start_matches('/').split('/').next()?;
                self.entries
                    .iter()
                    .any(|(n, e)| n == first && *e == HostEntry::Dir)
                    .then(|| first.to_owned())
            }
        }
    }
}

/// One bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountSpec {
    /// Host path (a directory, or a file for a `subPath` naming one).
    pub(crate) source: PathBuf,
    /// Normalized absolute path inside the container.
    pub(crate) target: String,
    pub(crate) read_only: bool,
    pub(crate) source_is_dir: bool,
}

/// Everything the setup script needs.
#[derive(Debug)]
pub(crate) struct RootSpec<'a> {
    /// `pod/container`, for the script's header.
    pub(crate) title: &'a str,
    /// An empty host dir; the scratch tmpfs is mounted on it (in the private namespace).
    pub(crate) scratch: &'a Path,
    pub(crate) executable: &'a Path,
    pub(crate) mounts: &'a [MountSpec],
    pub(crate) working_dir: &'a str,
    pub(crate) layout: &'a HostLayout,
    /// A host file created right before the final `exec`: the node's sign that setup
    /// succeeded and the command started (it is on the host, outside the new root).
    pub(crate) started_marker: &'a Path,
    /// The user the command runs as (`runAsUser`, `runAsGroup`, supplementary groups with
    /// `fsGroup`); `None`: root, the images' own user.
    pub(crate) user: Option<&'a RunAs>,
}

/// Whom a container's command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: i64,
    pub(crate) gid: i64,
    pub(crate) groups: Vec<i64>,
}

/// Normalizes an absolute container path (`mountPath`, `workingDir`): collapses `.` and
/// duplicate slashes; rejects relative paths, `..` and `/` itself.
pub(crate) fn normalize_container_path(path: &str) -> Result<String, String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("path {path:?} must be absolute"));
    }
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => {
                out.push('/');
                out.push_str(&part.to_string_lossy());
            }
            _ => return Err(format!("path {path:?} must not contain '..'")),
        }
    }
    if out.is_empty() {
        return Err(format!("path {path:?} must not be /"));
    }
    Ok(out)
}

/// Single-quotes `s` for `sh`.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The setup script. Its positional parameters are the container's argv.
pub(crate) fn setup_script(spec: &RootSpec<'_>) -> String {
    let mut s = String::new();
    let exe_name = spec
        .executable
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "entrypoint".into());
    let mut mounts: Vec<&MountSpec> = spec.mounts.iter().collect();
    // Parents before children, whatever order the pod spec lists them in.
    mounts.sort_by_key(|m| m.target.matches('/').count());
    let overlays: BTreeSet<String> = mounts
        .iter()
        .filter_map(|m| spec.layout.system_dir_of(&m.target))
        .collect();

    let _ = writeln!(
        s,
        "#!/bin/sh\n# {}: generated by deployctl-simnode. Runs as PID 1 of the container's PID\n\
         # and mount namespaces: builds the root filesystem, then becomes the container's init.\n\
         set -eu\nS={}\nR=\"$S/root\"",
        spec.title.replace('\n', " "),
        quote_path(spec.scratch)
    );
    s.push_str(
        "ro() { /usr/bin/mount -o remount,bind,ro \"$1\"; }\n\
         vol() {\n\
         \x20 if [ \"$3\" = d ]; then /usr/sbin/chroot \"$R\" /usr/bin/mkdir -p -- \"$2\"\n\
         \x20 else /usr/sbin/chroot \"$R\" /bin/sh -c 'mkdir -p -- \"${1%/*}/\" && touch -- \"$1\"' vol \"$2\"; fi\n\
         \x20 /usr/bin/mount --bind \"$1\" \"$R$2\"\n\
         \x20 if [ \"$4\" = ro ]; then ro \"$R$2\"; fi\n\
         }\n\
         /usr/bin/mount -t tmpfs -o mode=0755 simnode-scratch \"$S\"\n\
         /usr/bin/mkdir \"$R\"\n",
    );
    for (name, entry) in &spec.layout.entries {
        match entry {
            HostEntry::Symlink(target) => {
                let _ = writeln!(s, "/usr/bin/ln -s {} \"$R/{name}\"", quote(target));
            }
            HostEntry::Dir if overlays.contains(name) => {
                let _ = writeln!(
                    s,
                    "/usr/bin/mkdir \"$R/{name}\" \"$S/{name}.upper\" \"$S/{name}.work\"\n\
                     /usr/bin/mount -t overlay simnode-{name} -o \"lowerdir=/{name},upperdir=$S/{name}.upper,workdir=$S/{name}.work\" \"$R/{name}\""
                );
            }
            HostEntry::Dir => {
                let _ = writeln!(
                    s,
                    "/usr/bin/mkdir \"$R/{name}\"\n/usr/bin/mount --bind /{name} \"$R/{name}\"\nro \"$R/{name}\""
                );
            }
        }
    }
    s.push_str(
        "/usr/bin/mkdir -p \"$R/proc\" \"$R/dev\" \"$R/tmp\" \"$R/run\" \"$R/var/tmp\" \"$R/root\" \"$R/image/bin\"\n\
         /usr/bin/mount -t proc proc \"$R/proc\"\n\
         /usr/bin/mount -t tmpfs -o mode=0755,nosuid simnode-dev \"$R/dev\"\n\
         for n in null zero full random urandom tty; do\n\
         \x20 /usr/bin/touch \"$R/dev/$n\"; /usr/bin/mount --bind \"/dev/$n\" \"$R/dev/$n\"\n\
         done\n\
         /usr/bin/ln -s /proc/self/fd \"$R/dev/fd\"\n\
         /usr/bin/ln -s /proc/self/fd/0 \"$R/dev/stdin\"\n\
         /usr/bin/ln -s /proc/self/fd/1 \"$R/dev/stdout\"\n\
         /usr/bin/ln -s /proc/self/fd/2 \"$R/dev/stderr\"\n\
         /usr/bin/mkdir \"$R/dev/shm\"\n\
         /usr/bin/mount -t tmpfs -o mode=1777,nosuid,nodev simnode-shm \"$R/dev/shm\"\n\
         /usr/bin/mount -t tmpfs -o mode=1777,nosuid,nodev simnode-tmp \"$R/tmp\"\n",
    );
    let _ = writeln!(
        s,
        "/usr/bin/touch \"$R/image/bin/{exe_name}\"\n/usr/bin/mount --bind {} \"$R/image/bin/{exe_name}\"\nro \"$R/image/bin/{exe_name}\"",
        quote_path(spec.executable)
    );
    for m in &mounts {
        let _ = writeln!(
            s,
            "vol {} {} {} {}",
            quote_path(&m.source),
            quote(&m.target),
            if m.source_is_dir { "d" } else { "f" },
            if m.read_only { "ro" } else { "rw" }
        );
    }
    for name in &overlays {
        let _ = writeln!(s, "ro \"$R/{name}\"");
    }
    let wd = quote(spec.working_dir);
    let _ = writeln!(
        s,
        "/usr/sbin/chroot \"$R\" /usr/bin/mkdir -p -- {wd} 2>/dev/null || true\n\
         : > {}\n\
         exec /usr/sbin/chroot \"$R\" /bin/sh -c {} {INIT_MARKER} {wd}{} \"$@\"",
        quote_path(spec.started_marker),
        quote(INIT),
        spec.user.map(run_as_prefix).unwrap_or_default(),
    );
    s
}

/// The words before the command that run it as `u`: `setpriv` inside the new root, so
/// only the command changes user. The init stays root: changing credentials clears a
/// process's parent-death signal, and the init's is what kills the container (and its
/// PID namespace, and so the pod's network namespace) when the node's `unshare` parent
/// dies; a non-root init outlived its node. Numeric ids: the images have no passwd
/// entries, as distroless images have none.
fn run_as_prefix(u: &RunAs) -> String {
    let groups = if u.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        let groups: Vec<String> = u.groups.iter().map(i64::to_string).collect();
        format!("--groups={}", groups.join(","))
    };
    format!(
        " /usr/bin/setpriv --reuid={} --regid={} {groups} --",
        u.uid, u.gid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HostLayout {
        HostLayout {
            entries: vec![
                ("usr".into(), HostEntry::Dir),
                ("bin".into(), HostEntry::Symlink("usr/bin".into())),
                ("etc".into(), HostEntry::Dir),
            ],
        }
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(
            normalize_container_path("/data//x/./y/").as_deref(),
            Ok("/data/x/y")
        );
        assert!(normalize_container_path("data").is_err());
        assert!(normalize_container_path("/a/../b").is_err());
        assert!(normalize_container_path("/").is_err());
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn system_dirs_follow_symlinks() {
        let l = layout();
        assert_eq!(l.system_dir_of("/etc/app"), Some("etc".into()));
        assert_eq!(l.system_dir_of("/bin/tool"), Some("usr".into()));
        assert_eq!(l.system_dir_of("/data"), None);
    }

    #[test]
    fn script_mounts_parents_first_and_overlays_only_when_needed() {
        let mounts = vec![
            MountSpec {
                source: "/state/v/sub".into(),
                target: "/data/sub".into(),
                read_only: true,
                source_is_dir: true,
            },
            MountSpec {
                source: "/state/v/data".into(),
                target: "/data".into(),
                read_only: false,
                source_is_dir: true,
            },
            MountSpec {
                source: "/state/v/cfg/app.conf".into(),
                target: "/etc/app.conf".into(),
                read_only: true,
                source_is_dir: false,
            },
        ];
        let l = layout();
        let script = setup_script(&RootSpec {
            title: "ns/pod/c",
            scratch: Path::new("/state/pods/p/rootfs/c"),
            executable: Path::new("/target/debug/demo-app"),
            mounts: &mounts,
            working_dir: "/data",
            layout: &l,
            started_marker: Path::new("/state/pods/p/c.started"),
            user: None,
        });
        let data = script
            .find("vol '/state/v/data' '/data' d rw")
            .expect("data");
        let sub = script
            .find("vol '/state/v/sub' '/data/sub' d ro")
            .expect("sub");
        assert!(data < sub, "{script}");
        assert!(script.contains("vol '/state/v/cfg/app.conf' '/etc/app.conf' f ro"));
        assert!(script.contains("mount -t overlay simnode-etc"), "{script}");
        assert!(script.contains("mount --bind /usr \"$R/usr\""));
        assert!(!script.contains("simnode-usr"));
        assert!(script.contains("ln -s 'usr/bin' \"$R/bin\""));
        assert!(script.contains("mount --bind '/target/debug/demo-app' \"$R/image/bin/demo-app\""));
        assert!(script.contains(&format!("{INIT_MARKER} '/data' \"$@\"")));
        assert!(script.contains(": > '/state/pods/p/c.started'\nexec"));
        assert!(script.trim_end().ends_with("\"$@\""));
    }

    #[test]
    fn init_program_survives_quoting() {
        // The init program is passed single-quoted; its own single quotes must round-trip.
        let q = quote(INIT);
        assert!(q.starts_with('\'') && q.ends_with('\''));
        assert!(q.contains(r"'\''kill -TERM"));
    }

    #[test]
    fn a_user_runs_the_command_only_and_the_init_stays_root() {
        let l = layout();
        let user = RunAs {
            uid: 1000,
            gid: 1000,
            groups: vec![2000],
        };
        let script = setup_script(&RootSpec {
            title: "ns/p container c",
            scratch: Path::new("/state/pods/p/rootfs/c"),
            executable: Path::new("/work/target/debug/demo-app"),
            mounts: &[],
            working_dir: "/",
            layout: &l,
            started_marker: Path::new("/state/pods/p/c.started"),
            user: Some(&user),
        });
        let last = script.lines().last().unwrap();
        assert!(!last.contains("--userspec"), "{last}");
        assert!(
            last.ends_with("/usr/bin/setpriv --reuid=1000 --regid=1000 --groups=2000 -- \"$@\""),
            "{last}"
        );
    }
}
