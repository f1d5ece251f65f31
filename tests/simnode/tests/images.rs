//! Pulled images on the simulated node, against the real control plane and a real registry
//! (Debian's `docker-registry`, started by the harness). The images are built here with
//! `umoci`, once per run: a distroless-like root filesystem (the `demo-app` binary, the
//! shared libraries `ldd` lists, `/etc/passwd` with user `app` 65532, no shell), under a
//! few image configurations, pushed with `skopeo`.
//!
//! What the demo app cannot show (its uid, working dir, environment, command line, root
//! filesystem) is read from the host in `/proc` of the container's process, found by an
//! environment variable each pod sets (`TEST_ID=<namespace>/<pod>`) and its command name.
//!
//! Covered: a pod by tag runs and reports the pushed digest; `Always` follows a re-pushed
//! tag at the next container start while `IfNotPresent` keeps its image; `Never` without
//! the image; an unknown repository and a registry the node would reach over HTTPS; the
//! entrypoint/cmd/command/args rules, and exec probes in an image with no shell; the image's user, `runAsNonRoot` with a numeric, a
//! named and a root image user; `readOnlyRootFilesystem`; writes to `/` private to a
//! container and gone after its restart; SIGTERM forwarded and exit codes reported by the
//! init; two pods pulling one image download it once; a
//! corrupted layer is refused and nothing of it is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use deployctl_harness::{
    apply_yaml, require_sim_node, shared_with_registry, wait_for, RegistryEndpoint, SharedEnv,
    TestNamespace,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

const FIELD_MANAGER: &str = "images-test";
/// How long a pod may take to run: the first pull of an image included.
const START: Duration = Duration::from_secs(90);

/// The OCI layout with every test image, built once.
struct Fixture {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    registry: RegistryEndpoint,
    /// `demo:v1`, pushed before any test runs.
    v1_digest: String,
}

static FIXTURE: OnceCell<Fixture> = OnceCell::const_new();

/// Fails the run, saying what to install, when a tool the images are built with is missing.
fn require_tool(tool: &str, package: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is needed to build the test images: install Debian's {package} package \
         (scripts/install-platform.sh installs the image tools)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies `src` (following symlinks) to the same absolute path under `root`.
fn copy_into(root: &Path, src: &Path) {
    let dest = root.join(src.strip_prefix("/").expect("absolute path"));
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::copy(src, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
}

/// The root filesystem of the demo image: `/app/demo-app`, its libraries and loader at
/// the paths `ldd` gives, users and groups, `/srv` and `/home/app` owned by `app`.
fn demo_rootfs(root: &Path) {
    let demo = deployctl_harness::workspace_images()
        .remove("deployctl.dev/demo-app")
        .expect("the demo-app binary is built (cargo build -p demo-app --bins)");
    std::fs::create_dir_all(root.join("app")).expect("mkdir app");
    // Debug info is not needed to run, and the layer gets 3x smaller.
    let stripped = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&demo)
        .arg(root.join("app/demo-app"))
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&demo, root.join("app/demo-app")).expect("copy demo-app");
    }
    let ldd = run(Command::new("ldd").arg(&demo));
    for line in ldd.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(path) = path {
            copy_into(root, &path);
        }
    }
    std::fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/sbin/nologin\napp:x:65532:65532:app:/home/app:/sbin/nologin\n",
    )
    .expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:65532:\n").expect("group");
    for dir in ["srv", "home/app"] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).expect("mkdir");
        std::os::unix::fs::chown(&path, Some(65532), Some(65532)).expect("chown");
    }
}

/// `umoci config` of `base` into `tag`.
fn config(layout: &Path, base: &str, tag: &str, args: &[&str]) {
    run(Command::new("umoci")
        .arg("config")
        .arg("--image")
        .arg(format!("{}:{base}", layout.display()))
        .arg("--tag")
        .arg(tag)
        .args(args));
}

fn build_layout(dir: &Path) -> PathBuf {
    require_tool("umoci", "umoci");
    require_tool("ldd", "libc-bin");
    let layout = dir.join("layout");
    let image = |tag: &str| format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    for (base, fill) in [
        ("base", demo_rootfs as fn(&Path)),
        ("tinybase", |root: &Path| {
            std::fs::create_dir_all(root.join("etc")).expect("mkdir");
            let unique = format!("made at {:?}\n", std::time::SystemTime::now());
            std::fs::write(root.join("etc/hello"), unique).expect("write");
        }),
    ] {
        run(Command::new("umoci")
            .arg("new")
            .arg("--image")
            .arg(image(base)));
        let bundle = dir.join(format!("bundle-{base}"));
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(image(base))
            .arg(&bundle));
        fill(&bundle.join("rootfs"));
        run(Command::new("umoci")
            .arg("repack")
            .arg("--image")
            .arg(image(base))
            .arg(&bundle));
    }
    let common = [
        "--config.entrypoint",
        "/app/demo-app",
        "--config.cmd",
        "--listen",
        "--config.cmd",
        "0.0.0.0:8080",
        "--config.env",
        "PATH=/app:/usr/bin",
        "--config.env",
        "DATA_DIR=/srv",
        "--config.workingdir",
        "/srv",
    ];
    for (tag, extra) in [
        (
            "v1",
            [
                "--config.env",
                "GREETING=hello-v1",
                "--config.user",
                "65532:65532",
            ],
        ),
        (
            "v2",
            [
                "--config.env",
                "GREETING=hello-v2",
                "--config.user",
                "65532:65532",
            ],
        ),
        (
            "named",
            ["--config.env", "GREETING=named", "--config.user", "app"],
        ),
        (
            "twins",
            ["--config.env", "GREETING=twins", "--config.user", "65532"],
        ),
    ] {
        let args: Vec<&str> = common.iter().chain(extra.iter()).copied().collect();
        config(&layout, "base", tag, &args);
    }
    // No User: root.
    let args: Vec<&str> = common
        .iter()
        .chain(["--config.env", "GREETING=root"].iter())
        .copied()
        .collect();
    config(&layout, "base", "root", &args);
    config(
        &layout,
        "tinybase",
        "tiny",
        &["--config.entrypoint", "/nothing"],
    );
    layout
}

async fn fixture() -> Option<&'static Fixture> {
    let env = shared_with_registry();
    require_sim_node!(env, None);
    Some(
        FIXTURE
            .get_or_init(|| async {
                let registry = env
                    .registry()
                    .expect("the shared cluster's registry")
                    .clone();
                let started = Instant::now();
                let dir = tempfile::tempdir().expect("temp dir");
                let layout = build_layout(dir.path());
                let v1_digest = registry
                    .push_layout(&layout, "v1", "demo:v1")
                    .await
                    .expect("push demo:v1");
                eprintln!("test images built and pushed in {:.1?}", started.elapsed());
                Fixture {
                    _dir: dir,
                    layout,
                    registry,
                    v1_digest,
                }
            })
            .await,
    )
}

/// One test's namespace, client and the images.
struct Ctx {
    env: &'static SharedEnv,
    ns: TestNamespace,
    client: kube::Client,
    fx: &'static Fixture,
}

impl Ctx {
    async fn new(prefix: &str) -> Option<Self> {
        let fx = fixture().await?;
        let env = shared_with_registry();
        let ns = env.namespace(prefix).await;
        let client = env.client().await;
        Some(Self {
            env,
            ns,
            client,
            fx,
        })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// `127.0.0.1:PORT/<repo>`.
    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}", self.fx.registry.host())
    }

    async fn push(&self, layout_tag: &str, dest: &str) -> String {
        self.fx
            .registry
            .push_layout(&self.fx.layout, layout_tag, dest)
            .await
            .unwrap_or_else(|e| panic!("pushing {layout_tag} as {dest}: {e}"))
    }

    /// Creates a one-container pod (restartPolicy Always) with `container` (more YAML
    /// lines of the container) and `pod` (more lines of the pod spec).
    async fn pod(&self, name: &str, image: &str, container: &str, pod: &str) {
        self.pod_env(name, image, "", container, pod).await;
    }

    /// [`Ctx::pod`] with more `env` items (`{name: A, value: b}, ...`).
    async fn pod_env(&self, name: &str, image: &str, env: &str, container: &str, pod: &str) {
        let more = if env.is_empty() {
            String::new()
        } else {
            format!(", {env}")
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n{pod}  containers:\n  - name: c\n    \
             image: \"{image}\"\n    env: [{{name: TEST_ID, value: \"{}/{name}\"}}{more}]\n{container}",
            self.ns()
        );
        apply_yaml(&self.client, &yaml, "images test", FIELD_MANAGER, self.ns())
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}\n{yaml}"));
    }

    async fn get(&self, name: &str) -> Result<Pod, String> {
        Api::<Pod>::namespaced(self.client.clone(), self.ns())
            .get_opt(name)
            .await
            .map_err(|e| format!("reading pod {name}: {e}"))?
            .ok_or_else(|| format!("pod {name} does not exist"))
    }

    /// Waits until `name` runs with its container ready and (if given) at least `restarts`
    /// restarts; returns its container status.
    async fn running(&self, name: &str, restarts: i32) -> ContainerStatus {
        wait_for(&format!("pod {name} to run"), START, || async {
            let pod = self.get(name).await?;
            match status(&pod) {
                Some(c)
                    if c.ready
                        && c.restart_count >= restarts
                        && c.state.as_ref().is_some_and(|s| s.running.is_some()) =>
                {
                    Ok(c)
                }
                _ => Err(summary(&pod)),
            }
        })
        .await
    }

    /// Waits until the container of `name` waits with `reason`; returns its message.
    async fn waiting(&self, name: &str, reason: &str) -> String {
        wait_for(
            &format!("pod {name} to wait with {reason}"),
            START,
            || async {
                let pod = self.get(name).await?;
                let waiting = status(&pod)
                    .and_then(|c| c.state)
                    .and_then(|s| s.waiting)
                    .filter(|w| w.reason.as_deref() == Some(reason));
                match waiting {
                    Some(w) => Ok(w.message.unwrap_or_default()),
                    None => Err(summary(&pod)),
                }
            },
        )
        .await
    }

    /// `(reason, message)` of the events about `pod`.
    async fn events(&self, pod: &str) -> Vec<(String, String)> {
        Api::<Event>::namespaced(self.client.clone(), self.ns())
            .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for an event about `pod` with `reason` whose message contains `text`.
    async fn event(&self, pod: &str, reason: &str, text: &str) -> String {
        wait_for(
            &format!("a {reason} event about {pod} saying {text:?}"),
            Duration::from_secs(30),
            || async {
                let events = self.events(pod).await;
                events
                    .iter()
                    .find(|(r, m)| r == reason && m.contains(text))
                    .map(|(_, m)| m.clone())
                    .ok_or_else(|| format!("{events:?}"))
            },
        )
        .await
    }

    /// The host pid of the demo app in pod `name` (a new one after a restart).
    async fn process(&self, name: &str) -> Proc {
        let id = format!("TEST_ID={}/{name}", self.ns());
        wait_for(
            &format!("the demo-app process of {name}"),
            Duration::from_secs(30),
            || async { Proc::find(&id).ok_or_else(|| "no such process yet".to_owned()) },
        )
        .await
    }

    /// The node's unpacked copy of the image `digest`.
    fn stored_rootfs(&self, digest: &str) -> PathBuf {
        self.env
            .data_dir()
            .expect("a cluster of this run")
            .join("node/images/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .join("rootfs")
    }
}

/// A container's process, seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc(u32);

impl Proc {
    /// The process whose command name is `demo-app` with `id` in its environment.
    fn find(id: &str) -> Option<Proc> {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .map(Proc)
            .find(|p| p.read("comm").trim() == "demo-app" && p.environ().iter().any(|v| v == id))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.0)).unwrap_or_default()
    }

    fn split0(&self, file: &str) -> Vec<String> {
        std::fs::read(format!("/proc/{}/{file}", self.0))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    fn environ(&self) -> Vec<String> {
        self.split0("environ")
    }

    fn env(&self, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.environ()
            .into_iter()
            .find_map(|v| v.strip_prefix(&prefix).map(str::to_owned))
    }

    fn cmdline(&self) -> Vec<String> {
        self.split0("cmdline")
    }

    /// `(real uid, real gid)` from `status`.
    fn ids(&self) -> (u32, u32) {
        let status = self.read("status");
        let first = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX)
        };
        (first("Uid:"), first("Gid:"))
    }

    /// The working dir as the container sees it: the kernel prints both the cwd and the
    /// root as paths of the container's mount namespace, the root's a prefix of the cwd's.
    fn cwd(&self) -> PathBuf {
        let link = |name: &str| std::fs::read_link(format!("/proc/{}/{name}", self.0));
        match (link("cwd"), link("root")) {
            (Ok(cwd), Ok(root)) => match cwd.strip_prefix(&root) {
                Ok(rel) => Path::new("/").join(rel),
                Err(_) => cwd,
            },
            _ => PathBuf::new(),
        }
    }

    /// A path in the container's root filesystem, reached from the host.
    fn root(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.0))
    }

    fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn status(pod: &Pod) -> Option<ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn summary(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    format!(
        "pod {} phase={:?} containers={}",
        pod.metadata.name.as_deref().unwrap_or("?"),
        status.phase,
        serde_json::to_string(&status.container_statuses).unwrap_or_default(),
    )
}

/// The body of `GET http://<ip>:<port><path>` (HTTP/1.0, the connection closes).
async fn http_get(ip: &str, port: u16, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("connecting to {ip}:{port}: {e}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(text.clone(), |(_, b)| b.to_owned()))
}

const READY_8080: &str =
    "    readinessProbe: {httpGet: {path: /readyz, port: 8080}, periodSeconds: 1}\n";

#[tokio::test]
async fn a_pod_by_tag_runs_the_pushed_image_as_its_user() {
    let Some(ctx) = Ctx::new("img-tag").await else {
        return;
    };
    let image = format!("{}:v1", ctx.image("demo"));
    ctx.pod("tagged", &image, READY_8080, "").await;
    let c = ctx.running("tagged", 0).await;
    assert_eq!(c.image, image);
    assert_eq!(
        c.image_id,
        format!("{}@{}", ctx.image("demo"), ctx.fx.v1_digest)
    );
    let pod = ctx.get("tagged").await.expect("pod");
    let ip = pod.status.and_then(|s| s.pod_ip).expect("pod IP");
    let version = http_get(&ip, 8080, "/version").await.expect("GET /version");
    assert!(version.contains("\"version\":1"), "{version}");

    // The image's user, working dir, environment and command, from the host.
    let p = ctx.process("tagged").await;
    assert_eq!(p.ids(), (65532, 65532));
    assert_eq!(p.cwd(), PathBuf::from("/srv"));
    assert_eq!(p.env("GREETING").as_deref(), Some("hello-v1"));
    assert_eq!(p.env("PATH").as_deref(), Some("/app:/usr/bin"));
    assert_eq!(p.env("HOME").as_deref(), Some("/home/app"));
    assert_eq!(p.cmdline(), ["/app/demo-app", "--listen", "0.0.0.0:8080"]);
    // Distroless: no shell, and none of the host's system dirs.
    assert!(!p.root("/bin/sh").exists());
    assert!(!p.root("/usr/bin").exists());
    assert!(
        p.root("/srv/app.db").exists(),
        "the app's database is in its image's /srv"
    );

    // Pulled once, with kubelet-like events.
    ctx.event("tagged", "Pulling", &format!("Pulling image \"{image}\""))
        .await;
    let pulled = ctx
        .event("tagged", "Pulled", "Successfully pulled image")
        .await;
    assert!(
        pulled.contains("including waiting). Image size: ") && pulled.ends_with(" bytes."),
        "{pulled}"
    );
}

#[tokio::test]
async fn always_follows_a_re_pushed_tag_and_if_not_present_keeps_its_image() {
    let Some(ctx) = Ctx::new("img-policy").await else {
        return;
    };
    let repo = format!("moving-{}", ctx.ns());
    let first = ctx.push("v1", &format!("{repo}:t")).await;
    let image = format!("{}:t", ctx.image(&repo));
    let always = format!("{READY_8080}    imagePullPolicy: Always\n");
    let if_not = format!("{READY_8080}    imagePullPolicy: IfNotPresent\n");
    ctx.pod("always", &image, &always, "").await;
    ctx.pod("ifnot", &image, &if_not, "").await;
    let id = |digest: &str| format!("{}@{digest}", ctx.image(&repo));
    assert_eq!(ctx.running("always", 0).await.image_id, id(&first));
    assert_eq!(ctx.running("ifnot", 0).await.image_id, id(&first));

    let second = ctx.push("v2", &format!("{repo}:t")).await;
    assert_ne!(first, second);
    for pod in ["always", "ifnot"] {
        ctx.process(pod).await.kill();
    }
    let a = ctx.running("always", 1).await;
    assert_eq!(a.image_id, id(&second), "Always resolves the tag again");
    let b = ctx.running("ifnot", 1).await;
    assert_eq!(b.image_id, id(&first), "IfNotPresent keeps the local image");
    assert_eq!(
        ctx.process("always").await.env("GREETING").as_deref(),
        Some("hello-v2")
    );
    assert_eq!(
        ctx.process("ifnot").await.env("GREETING").as_deref(),
        Some("hello-v1")
    );
    ctx.event(
        "ifnot",
        "Pulled",
        &format!("Container image \"{image}\" already present on machine"),
    )
    .await;
}

#[tokio::test]
async fn never_without_a_local_image_does_not_pull() {
    let Some(ctx) = Ctx::new("img-never").await else {
        return;
    };
    let image = format!("{}:v1", ctx.image("never-pushed"));
    ctx.pod("never", &image, "    imagePullPolicy: Never\n", "")
        .await;
    let message = ctx.waiting("never", "ErrImageNeverPull").await;
    assert_eq!(
        message,
        format!("Container image \"{image}\" is not present with pull policy of Never")
    );
    ctx.event("never", "ErrImageNeverPull", "is not present")
        .await;
    assert!(
        !ctx.events("never")
            .await
            .iter()
            .any(|(reason, _)| reason == "Pulling"),
        "Never must not pull"
    );
}

#[tokio::test]
async fn pull_errors_carry_the_registry_answer() {
    let Some(ctx) = Ctx::new("img-errors").await else {
        return;
    };
    let image = format!("{}:v1", ctx.image("no-such-repo"));
    ctx.pod("unknown", &image, "", "").await;
    let message = ctx.waiting("unknown", "ErrImagePull").await;
    assert!(message.contains(&image), "{message}");
    // distribution's own words for a repository it does not have.
    assert!(
        message.contains("unknown to registry") || message.contains("manifest unknown"),
        "{message}"
    );
    let back_off = ctx.waiting("unknown", "ImagePullBackOff").await;
    assert_eq!(back_off, format!("Back-off pulling image \"{image}\""));
    ctx.event(
        "unknown",
        "Failed",
        &format!("Failed to pull image \"{image}\""),
    )
    .await;
    ctx.event("unknown", "BackOff", "Back-off pulling image")
        .await;
    ctx.event("unknown", "Failed", "Error: ErrImagePull").await;
    ctx.event("unknown", "Failed", "Error: ImagePullBackOff")
        .await;

    // A registry that is not among the node's insecure ones is reached over HTTPS; nothing
    // listens on port 1 of loopback, and the message says which protocol was used.
    let https = "127.0.0.1:1/app:v1";
    ctx.pod("https", https, "", "").await;
    let message = ctx.waiting("https", "ErrImagePull").await;
    assert!(message.contains("https://127.0.0.1:1/"), "{message}");
    assert!(message.contains("pulled over HTTPS"), "{message}");
}

#[tokio::test]
async fn entrypoint_cmd_command_and_args_follow_kubernetes_rules() {
    let Some(ctx) = Ctx::new("img-argv").await else {
        return;
    };
    let image = format!("{}:v1", ctx.image("demo"));
    let probe = |port: u16| {
        format!(
            "    readinessProbe: {{httpGet: {{path: /readyz, port: {port}}}, periodSeconds: 1}}\n"
        )
    };
    let cases: [(&str, String, Vec<&str>); 4] = [
        (
            "image-defaults",
            probe(8080),
            vec!["/app/demo-app", "--listen", "0.0.0.0:8080"],
        ),
        (
            "args-only",
            format!("    args: [--listen, 0.0.0.0:8081]\n{}", probe(8081)),
            vec!["/app/demo-app", "--listen", "0.0.0.0:8081"],
        ),
        (
            // Also an exec probe: it runs in the image's root, found on the image's PATH.
            "command-only",
            "    command: [/app/demo-app]\n    readinessProbe: {exec: {command: [demo-app, --version]}, periodSeconds: 1}\n".to_owned(),
            vec!["/app/demo-app"],
        ),
        (
            // Found on the image's PATH; $(PORT) expanded from the container's env.
            "command-and-args",
            format!(
                "    command: [demo-app]\n    args: [--listen, \"0.0.0.0:$(PORT)\"]\n{}",
                probe(8082)
            ),
            vec!["demo-app", "--listen", "0.0.0.0:8082"],
        ),
    ];
    for (name, container, _) in &cases {
        let env = if *name == "command-and-args" {
            "{name: PORT, value: \"8082\"}"
        } else {
            ""
        };
        ctx.pod_env(name, &image, env, container, "").await;
    }
    for (name, _, argv) in &cases {
        ctx.running(name, 0).await;
        assert_eq!(&ctx.process(name).await.cmdline(), argv, "pod {name}");
    }
}

#[tokio::test]
async fn image_users_and_run_as_non_root() {
    let Some(ctx) = Ctx::new("img-users").await else {
        return;
    };
    for tag in ["named", "root"] {
        ctx.push(tag, &format!("demo:{tag}")).await;
    }
    let non_root = "  securityContext: {runAsNonRoot: true}\n";
    ctx.pod(
        "numeric",
        &format!("{}:v1", ctx.image("demo")),
        READY_8080,
        non_root,
    )
    .await;
    ctx.pod(
        "named",
        &format!("{}:named", ctx.image("demo")),
        READY_8080,
        "",
    )
    .await;
    ctx.pod(
        "named-nonroot",
        &format!("{}:named", ctx.image("demo")),
        "",
        non_root,
    )
    .await;
    ctx.pod(
        "root-nonroot",
        &format!("{}:root", ctx.image("demo")),
        "",
        non_root,
    )
    .await;
    ctx.pod_env(
        "overridden",
        &format!("{}:named", ctx.image("demo")),
        // The image's /srv belongs to app: this user keeps its data in /tmp.
        "{name: DATA_DIR, value: /tmp}",
        &format!("{READY_8080}    securityContext: {{runAsUser: 4242, runAsGroup: 4343}}\n    workingDir: /tmp\n"),
        "  securityContext: {fsGroup: 5000}\n",
    )
    .await;

    ctx.running("numeric", 0).await;
    assert_eq!(ctx.process("numeric").await.ids(), (65532, 65532));
    ctx.running("named", 0).await;
    let named = ctx.process("named").await;
    assert_eq!(
        named.ids(),
        (65532, 65532),
        "the name comes from the image's passwd"
    );
    assert_eq!(named.env("HOME").as_deref(), Some("/home/app"));

    let message = ctx
        .waiting("named-nonroot", "CreateContainerConfigError")
        .await;
    assert_eq!(
        message,
        "container has runAsNonRoot and image has non-numeric user (app), cannot verify user \
         is non-root"
    );
    let message = ctx
        .waiting("root-nonroot", "CreateContainerConfigError")
        .await;
    assert_eq!(
        message,
        "container has runAsNonRoot and image will run as root"
    );

    // The securityContext wins over the image's user; the container's workingDir over the
    // image's; fsGroup is a supplementary group.
    ctx.running("overridden", 0).await;
    let p = ctx.process("overridden").await;
    assert_eq!(p.ids(), (4242, 4343));
    assert_eq!(p.cwd(), PathBuf::from("/tmp"));
    let groups = p.read("status");
    let groups = groups
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap_or_default();
    assert!(groups.split_whitespace().any(|g| g == "5000"), "{groups}");
}

#[tokio::test]
async fn root_filesystem_writes_are_private_and_read_only_when_asked() {
    let Some(ctx) = Ctx::new("img-rootfs").await else {
        return;
    };
    let image = format!("{}:v1", ctx.image("demo"));
    ctx.pod("one", &image, READY_8080, "").await;
    ctx.pod("two", &image, READY_8080, "").await;
    ctx.pod(
        "readonly",
        &image,
        &format!(
            "{READY_8080}    securityContext: {{readOnlyRootFilesystem: true}}\n    \
             volumeMounts: [{{name: data, mountPath: /srv}}]\n"
        ),
        "  volumes: [{name: data, emptyDir: {}}]\n",
    )
    .await;
    ctx.running("one", 0).await;
    ctx.running("two", 0).await;
    ctx.running("readonly", 0).await;

    let one = ctx.process("one").await;
    let two = ctx.process("two").await;
    std::fs::write(one.root("/marker"), "one was here").expect("write to one's /");
    assert!(one.root("/marker").exists());
    assert!(
        !two.root("/marker").exists(),
        "another container never sees it"
    );
    let stored = ctx.stored_rootfs(&ctx.fx.v1_digest);
    assert!(stored.join("app/demo-app").exists(), "{}", stored.display());
    assert!(!stored.join("marker").exists(), "the image stays untouched");
    assert!(
        !stored.join("srv/app.db").exists(),
        "the app's writes stay in its container"
    );

    // A new container starts from the image again.
    one.kill();
    ctx.running("one", 1).await;
    let again = ctx.process("one").await;
    assert_ne!(again, one);
    assert!(
        !again.root("/marker").exists(),
        "writes vanish with the container"
    );

    let ro = ctx.process("readonly").await;
    let err = std::fs::write(ro.root("/marker"), "x").expect_err("a read-only root");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    assert!(ro.root("/srv/app.db").exists(), "volumes stay writable");
    std::fs::write(ro.root("/tmp/scratch"), "x").expect("/tmp stays writable");
}

#[tokio::test]
async fn the_init_forwards_sigterm_and_reports_exit_codes() {
    let Some(ctx) = Ctx::new("img-signals").await else {
        return;
    };
    ctx.pod("sig", &format!("{}:v1", ctx.image("demo")), READY_8080, "")
        .await;
    ctx.running("sig", 0).await;
    ctx.process("sig").await.kill();
    let c = ctx.running("sig", 1).await;
    let last = c
        .last_state
        .and_then(|s| s.terminated)
        .expect("the killed run's state");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("Error"))
    );

    // Deleting the pod: SIGTERM reaches the app through the init (no shell in the image).
    let pod = ctx.get("sig").await.expect("pod");
    let uid = pod.metadata.uid.clone().expect("uid");
    Api::<Pod>::namespaced(ctx.client.clone(), ctx.ns())
        .delete("sig", &Default::default())
        .await
        .expect("delete");
    let log = ctx
        .env
        .data_dir()
        .expect("cluster dir")
        .join(format!("node/pods/{}_sig_{uid}/c.log", ctx.ns()));
    wait_for("the app's graceful shutdown in its log", START, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("shutting down gracefully") && text.contains("SIGTERM") {
            Ok(())
        } else {
            Err(text.lines().rev().take(3).collect::<Vec<_>>().join(" | "))
        }
    })
    .await;
}

#[tokio::test]
async fn two_pods_pulling_one_image_download_it_once() {
    let Some(ctx) = Ctx::new("img-twins").await else {
        return;
    };
    let repo = format!("twins-{}", ctx.ns());
    let digest = ctx.push("twins", &format!("{repo}:v1")).await;
    let image = format!("{}:v1", ctx.image(&repo));
    // Applied back to back: both workers ask for the image before either pull ends.
    ctx.pod("twin-a", &image, READY_8080, "").await;
    ctx.pod("twin-b", &image, READY_8080, "").await;
    for pod in ["twin-a", "twin-b"] {
        let c = ctx.running(pod, 0).await;
        assert_eq!(c.image_id, format!("{}@{digest}", ctx.image(&repo)));
        ctx.event(pod, "Pulled", "Successfully pulled image").await;
    }
    let log = std::fs::read_to_string(ctx.fx.registry.log().expect("registry log"))
        .expect("read the registry log");
    let mut gets: BTreeMap<String, usize> = BTreeMap::new();
    let prefix = format!("\"GET /v2/{repo}/blobs/");
    for line in log.lines().filter(|l| l.contains(&prefix)) {
        let blob = line
            .split(&prefix)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default();
        *gets.entry(blob.to_owned()).or_default() += 1;
    }
    assert_eq!(gets.len(), 2, "a config and a layer: {gets:?}");
    assert!(gets.values().all(|n| *n == 1), "each blob once: {gets:?}");
}

#[tokio::test]
async fn a_corrupted_layer_is_refused_and_nothing_is_kept() {
    let Some(ctx) = Ctx::new("img-corrupt").await else {
        return;
    };
    let repo = format!("corrupt-{}", ctx.ns());
    let digest = ctx.push("tiny", &format!("{repo}:v1")).await;
    // The layer blob as the registry stores it: overwrite it, keeping its length.
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ctx.fx
                .layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .expect("manifest in the layout"),
    )
    .expect("manifest JSON");
    let layer = index["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .trim_start_matches("sha256:")
        .to_owned();
    let data = ctx
        .fx
        .registry
        .dir()
        .expect("registry dir")
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&layer[..2])
        .join(&layer)
        .join("data");
    let len = std::fs::metadata(&data).expect("stored layer").len();
    std::fs::write(&data, vec![b'x'; usize::try_from(len).expect("size")]).expect("corrupt");

    ctx.pod("corrupt", &format!("{}:v1", ctx.image(&repo)), "", "")
        .await;
    let message = ctx.waiting("corrupt", "ErrImagePull").await;
    assert!(message.contains(&format!("sha256:{layer}")), "{message}");
    assert!(message.to_lowercase().contains("digest"), "{message}");
    let node = ctx.env.data_dir().expect("cluster dir").join("node/images");
    assert!(
        !ctx.stored_rootfs(&digest).exists(),
        "no image from a bad layer"
    );
    // The node names a pull's temp dir after the image digest.
    let ours = format!("pull-{}-", &digest.trim_start_matches("sha256:")[..12]);
    let leftovers: Vec<_> = std::fs::read_dir(node.join("tmp"))
        .expect("tmp dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(&ours))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
