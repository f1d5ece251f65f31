//! The container's root filesystem, built by a generated `sh` script that runs as PID 1
//! of the container's fresh PID and mount namespaces (so no mount is ever visible on the
//! host, and nothing is created on the host's root filesystem). A tmpfs scratch dir holds
//! the new root, which is one of:
//!
//! - **an image's root filesystem** (pulled, see [`crate::store`]): an overlay whose lower
//!   layer is the unpacked image (never written) and whose upper and work dirs are in the
//!   scratch tmpfs, so a container's writes are private to it and vanish when it ends;
//! - **the host's system dirs** (images of the executable map): `/usr /bin /sbin /lib
//!   /lib64 /etc` bound read-only (symlinks such as `bin -> usr/bin` copied as symlinks;
//!   a system dir that must receive a mount point is an overlay with its upper layer in
//!   the scratch instead, made read-only again once the mount points exist), and the
//!   executable at `/image/bin/<file name>`.
//!
//! Both get `/proc` (of the new PID namespace), a minimal `/dev` (null, zero, full,
//! random, urandom, tty, `shm`), a private `/tmp`, and each volume bound at its
//! `mountPath`, parents first, `readOnly` honoured. Mount points (and the working dir)
//! are created, and mount targets resolved, *inside* the new root by `mkdir`/`realpath`
//! run under `chroot`, so an absolute symlink in an image or a volume cannot lead them
//! out to the host. An image may have no such tools (distroless images have no shell):
//! the host's are bound at [`SETUP_TOOLS`] for the setup only and run through the host's
//! dynamic loader, then removed before the command starts. With
//! `readOnlyRootFilesystem` the root is remounted read-only last (volumes, `/dev` and
//! `/tmp` stay writable, as on a kubelet).
//!
//! The script then becomes a minimal init ([`INIT_MARKER`]), the host's `sh` *outside*
//! the new root, so the image needs no shell: it runs the container's command as its
//! child through `unshare --root --wd` (the `chroot` and working dir), after `setpriv`
//! (group ids) and with `unshare --setuid` (the user), forwards `SIGTERM`/`SIGINT`/`SIGHUP`
//! to it and exits with its status. An init is needed because PID 1 of a namespace
//! ignores signals it has no handler for, and because when PID 1 exits the kernel kills
//! everything else in the namespace: no process of a container can outlive it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

/// `$0` of the init shell, so `ps` shows which processes are container inits.
pub(crate) const INIT_MARKER: &str = "simnode-init";

/// Where the host's tools are bound inside an image's root during setup.
pub(crate) const SETUP_TOOLS: &str = "/.simnode-setup";

/// The host directories a container sees (read-only).
const SYSTEM_DIRS: [&str; 6] = ["usr", "bin", "sbin", "lib", "lib64", "etc"];

/// Dynamic loaders of the host, by architecture (the first that exists is used).
const LOADERS: [&str; 5] = [
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux-armhf.so.3",
    "/lib/ld-linux-riscv64-lp64d.so.1",
    "/lib64/ld64.so.2",
];

/// The init shell's program (see the module docs). Its arguments are the command.
const INIT: &str = r#"trap 'kill -TERM "$pid" 2>/dev/null' TERM
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
    /// The host's dynamic loader, resolved (`/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`):
    /// its dir holds the libraries of the setup tools run inside image roots.
    pub(crate) loader: Option<PathBuf>,
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
        let loader = LOADERS.iter().find_map(|l| std::fs::canonicalize(l).ok());
        Self { entries, loader }
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

/// What the container's root is made of.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RootSource<'a> {
    /// The host's system dirs, with this executable at `/image/bin/<file name>`.
    Executable(&'a Path),
    /// An unpacked image root filesystem (the overlay's read-only lower layer).
    Image(&'a Path),
}

/// Everything the setup script needs.
#[derive(Debug)]
pub(crate) struct RootSpec<'a> {
    /// `pod/container`, for the script's header.
    pub(crate) title: &'a str,
    /// An empty host dir; the scratch tmpfs is mounted on it (in the private namespace).
    pub(crate) scratch: &'a Path,
    pub(crate) source: RootSource<'a>,
    pub(crate) mounts: &'a [MountSpec],
    pub(crate) working_dir: &'a str,
    pub(crate) layout: &'a HostLayout,
    /// A host file created right before the final `exec`: the node's sign that setup
    /// succeeded and the command started (it is on the host, outside the new root).
    pub(crate) started_marker: &'a Path,
    /// The user the command runs as (`runAsUser`, `runAsGroup`, supplementary groups with
    /// `fsGroup`, or the image's user); `None`: root.
    pub(crate) user: Option<&'a RunAs>,
    /// `securityContext.readOnlyRootFilesystem`.
    pub(crate) read_only: bool,
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

/// The setup script. Its positional parameters are the container's argv. Fails when an
/// image root cannot be set up on this host (no known dynamic loader).
pub(crate) fn setup_script(spec: &RootSpec<'_>) -> Result<String, String> {
    let mut s = String::new();
    let mut mounts: Vec<&MountSpec> = spec.mounts.iter().collect();
    // Parents before children, whatever order the pod spec lists them in.
    mounts.sort_by_key(|m| m.target.matches('/').count());
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
         /usr/bin/mount -t tmpfs -o mode=0755 simnode-scratch \"$S\"\n\
         /usr/bin/mkdir \"$R\"\n",
    );
    let overlays = match spec.source {
        RootSource::Executable(_) => host_root(&mut s, spec, &mounts),
        RootSource::Image(rootfs) => {
            let loader = spec.layout.loader.as_deref().ok_or(
                "the host's dynamic loader was not found (looked for the glibc loaders of \
                 x86_64, aarch64, armhf, riscv64 and ppc64le): image roots need it for setup",
            )?;
            image_root(&mut s, rootfs, loader);
            BTreeSet::new()
        }
    };
    s.push_str(
        "/usr/bin/mount -t proc proc \"$(at /proc)\"\n\
         D=\"$(at /dev)\"\n\
         /usr/bin/mount -t tmpfs -o mode=0755,nosuid simnode-dev \"$D\"\n\
         for n in null zero full random urandom tty; do\n\
         \x20 /usr/bin/touch \"$D/$n\"; /usr/bin/mount --bind \"/dev/$n\" \"$D/$n\"\n\
         done\n\
         /usr/bin/ln -s /proc/self/fd \"$D/fd\"\n\
         /usr/bin/ln -s /proc/self/fd/0 \"$D/stdin\"\n\
         /usr/bin/ln -s /proc/self/fd/1 \"$D/stdout\"\n\
         /usr/bin/ln -s /proc/self/fd/2 \"$D/stderr\"\n\
         /usr/bin/mkdir \"$D/shm\"\n\
         /usr/bin/mount -t tmpfs -o mode=1777,nosuid,nodev simnode-shm \"$D/shm\"\n\
         /usr/bin/mount -t tmpfs -o mode=1777,nosuid,nodev simnode-tmp \"$(at /tmp)\"\n",
    );
    if let RootSource::Executable(exe) = spec.source {
        let exe_name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "entrypoint".into());
        let _ = writeln!(
            s,
            "/usr/bin/touch \"$R/image/bin/{exe_name}\"\n/usr/bin/mount --bind {} \"$R/image/bin/{exe_name}\"\nro \"$R/image/bin/{exe_name}\"",
            quote_path(exe)
        );
    }
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
    let _ = writeln!(s, "inroot mkdir -p -- {wd} 2>/dev/null || true");
    if matches!(spec.source, RootSource::Image(_)) {
        s.push_str(
            "/usr/bin/umount \"$H/lib\" \"$H/bin\"\n/usr/bin/rmdir \"$H/lib\" \"$H/bin\" \"$H\"\n",
        );
    }
    if spec.read_only {
        s.push_str("ro \"$R\"\n");
    }
    let _ = writeln!(
        s,
        ": > {}\n\
         exec /bin/sh -c {} {INIT_MARKER}{} /usr/bin/unshare --root=\"$R\" --wd={wd}{} -- \"$@\"",
        quote_path(spec.started_marker),
        quote(INIT),
        spec.user.map(group_prefix).unwrap_or_default(),
        spec.user
            .map(|u| format!(" --setuid={}", u.uid))
            .unwrap_or_default(),
    );
    Ok(s)
}

/// The shell functions every root uses (each root defines `inroot TOOL ARGS`, which runs
/// a host tool chrooted into the new root): `at PATH` prints the host path of a container
/// path resolved inside the root, `vol SRC TARGET d|f ro|rw` mounts a volume there.
fn helpers(s: &mut String) {
    s.push_str(
        "at() { printf '%s%s' \"$R\" \"$(inroot realpath -m -- \"$1\")\"; }\n\
         vol() {\n\
         \x20 if [ \"$3\" = d ]; then inroot mkdir -p -- \"$2\"\n\
         \x20 else inroot mkdir -p -- \"${2%/*}/\"; inroot touch -- \"$2\"; fi\n\
         \x20 t=\"$(at \"$2\")\"\n\
         \x20 /usr/bin/mount --bind \"$1\" \"$t\"\n\
         \x20 if [ \"$4\" = ro ]; then ro \"$t\"; fi\n\
         }\n",
    );
}

/// The host-dirs root of an executable-map image; returns the system dirs made overlays.
fn host_root(s: &mut String, spec: &RootSpec<'_>, mounts: &[&MountSpec]) -> BTreeSet<String> {
    let overlays: BTreeSet<String> = mounts
        .iter()
        .filter_map(|m| spec.layout.system_dir_of(&m.target))
        .collect();
    if spec.read_only {
        // A mount of its own, so it can be made read-only at the end.
        s.push_str("/usr/bin/mount --bind \"$R\" \"$R\"\n");
    }
    s.push_str("inroot() { tool=$1; shift; /usr/sbin/chroot \"$R\" \"/usr/bin/$tool\" \"$@\"; }\n");
    helpers(s);
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
        "/usr/bin/mkdir -p \"$R/proc\" \"$R/dev\" \"$R/tmp\" \"$R/run\" \"$R/var/tmp\" \"$R/root\" \"$R/image/bin\"\n",
    );
    overlays
}

/// The overlay root of a pulled image, with the host's tools bound for the setup.
fn image_root(s: &mut String, rootfs: &Path, loader: &Path) {
    let lib_dir = loader.parent().unwrap_or(Path::new("/lib"));
    let loader_name = loader
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // overlayfs separates lower dirs with ':' and options with ','.
    let lower = rootfs
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,");
    let _ = writeln!(
        s,
        "L={}\n\
         /usr/bin/mkdir \"$S/upper\" \"$S/work\"\n\
         /usr/bin/mount -t overlay simnode-root -o \"lowerdir=$L,upperdir=$S/upper,workdir=$S/work\" \"$R\"\n\
         H=\"$R{SETUP_TOOLS}\"\n\
         if [ -e \"$H\" ] || [ -L \"$H\" ]; then\n\
         \x20 echo \"the image has {SETUP_TOOLS}, where the node binds its setup tools\" >&2; exit 1\n\
         fi\n\
         /usr/bin/mkdir \"$H\" \"$H/lib\" \"$H/bin\"\n\
         /usr/bin/mount --bind {} \"$H/lib\"; ro \"$H/lib\"\n\
         /usr/bin/mount --bind /usr/bin \"$H/bin\"; ro \"$H/bin\"\n\
         inroot() {{ tool=$1; shift; /usr/sbin/chroot \"$R\" {SETUP_TOOLS}/lib/{} --library-path {SETUP_TOOLS}/lib \"{SETUP_TOOLS}/bin/$tool\" \"$@\"; }}",
        quote(&lower),
        quote_path(lib_dir),
        quote(&loader_name),
    );
    helpers(s);
    s.push_str("inroot mkdir -p /proc /dev /tmp\n");
}

/// The words before `unshare` that set the command's group ids: `setpriv` keeps the uid
/// (0), so `unshare` can still `chroot`, then `--setuid` drops it. The init stays root:
/// changing credentials clears a process's parent-death signal, and the init's is what
/// kills the container (and its PID namespace, and so the pod's network namespace) when
/// the node's `unshare` parent dies; a non-root init outlived its node.
fn group_prefix(u: &RunAs) -> String {
    let groups = if u.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        let groups: Vec<String> = u.groups.iter().map(i64::to_string).collect();
        format!("--groups={}", groups.join(","))
    };
    format!(" /usr/bin/setpriv --regid={} {groups} --", u.gid)
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
            loader: Some("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into()),
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

    fn spec<'a>(
        l: &'a HostLayout,
        source: RootSource<'a>,
        mounts: &'a [MountSpec],
        user: Option<&'a RunAs>,
        read_only: bool,
    ) -> RootSpec<'a> {
        RootSpec {
            title: "ns/pod/c",
            scratch: Path::new("/state/pods/p/rootfs/c"),
            source,
            mounts,
            working_dir: "/data",
            layout: l,
            started_marker: Path::new("/state/pods/p/c.started"),
            user,
            read_only,
        }
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
        let exe = RootSource::Executable(Path::new("/target/debug/demo-app"));
        let script = setup_script(&spec(&l, exe, &mounts, None, false)).expect("script");
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
        assert!(
            !script.contains(SETUP_TOOLS),
            "host roots have the host's tools"
        );
        assert!(script.contains(": > '/state/pods/p/c.started'\nexec"));
        let last = script.trim_end().lines().last().unwrap();
        assert!(
            last.ends_with(&format!(
                "{INIT_MARKER} /usr/bin/unshare --root=\"$R\" --wd='/data' -- \"$@\""
            )),
            "{last}"
        );
        assert!(!script.contains("ro \"$R\"\n"), "{script}");
    }

    #[test]
    fn image_roots_are_overlays_set_up_with_the_host_tools() {
        let l = layout();
        let mounts = vec![MountSpec {
            source: "/state/v/data".into(),
            target: "/data".into(),
            read_only: false,
            source_is_dir: true,
        }];
        let image = RootSource::Image(Path::new("/state/images/sha256/ab/rootfs"));
        let script = setup_script(&spec(&l, image, &mounts, None, true)).expect("script");
        assert!(
            script.contains("L='/state/images/sha256/ab/rootfs'"),
            "{script}"
        );
        assert!(script.contains(
            "mount -t overlay simnode-root -o \"lowerdir=$L,upperdir=$S/upper,workdir=$S/work\" \"$R\""
        ));
        assert!(script.contains(
            "/usr/sbin/chroot \"$R\" /.simnode-setup/lib/'ld-linux-x86-64.so.2' --library-path /.simnode-setup/lib"
        ), "{script}");
        assert!(script.contains("mount --bind '/usr/lib/x86_64-linux-gnu' \"$H/lib\""));
        // No host system dirs and no executable bind.
        assert!(!script.contains("mount --bind /usr \"$R/usr\""));
        assert!(!script.contains("/image/bin"));
        // The tools leave before the command starts; the root turns read-only last.
        let tools_gone = script
            .find("/usr/bin/rmdir \"$H/lib\"")
            .expect("tools removed");
        let vol = script.find("vol '/state/v/data'").expect("vol");
        let ro_root = script.find("ro \"$R\"\n").expect("read-only root");
        let start = script.find(": > ").expect("marker");
        assert!(
            vol < tools_gone && tools_gone < ro_root && ro_root < start,
            "{script}"
        );
        let no_loader = HostLayout {
            loader: None,
            ..layout()
        };
        assert!(setup_script(&spec(&no_loader, image, &[], None, false))
            .unwrap_err()
            .contains("dynamic loader"));
    }

    #[test]
    fn a_read_only_host_root_is_a_mount_made_read_only_last() {
        let l = layout();
        let exe = RootSource::Executable(Path::new("/target/debug/demo-app"));
        let script = setup_script(&spec(&l, exe, &[], None, true)).expect("script");
        let bind = script
            .find("/usr/bin/mount --bind \"$R\" \"$R\"\n")
            .expect("the root bound on itself");
        let workdir = script.find("inroot mkdir -p -- '/data'").expect("workdir");
        let ro = script.find("ro \"$R\"\n").expect("read-only root");
        assert!(bind < workdir && workdir < ro, "{script}");
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
            gid: 1001,
            groups: vec![2000, 2001],
        };
        let exe = RootSource::Executable(Path::new("/work/target/debug/demo-app"));
        let script = setup_script(&spec(&l, exe, &[], Some(&user), false)).expect("script");
        let last = script.lines().last().unwrap();
        assert!(
            last.ends_with(&format!(
                "{INIT_MARKER} /usr/bin/setpriv --regid=1001 --groups=2000,2001 -- \
                 /usr/bin/unshare --root=\"$R\" --wd='/data' --setuid=1000 -- \"$@\""
            )),
            "{last}"
        );
        let lone = RunAs {
            uid: 5,
            gid: 6,
            groups: vec![],
        };
        let script = setup_script(&spec(&l, exe, &[], Some(&lone), false)).expect("script");
        assert!(script.contains("--regid=6 --clear-groups --"), "{script}");
    }
}
