//! The pod worker: one task per pod bound to a simulated node, driving it through the
//! kubelet's lifecycle. Sandbox (network namespace) → volumes → init containers in order
//! → app containers, each restarted per `restartPolicy` with back-off; probes; status
//! written (strategic merge on the `status` subresource) only when it changed; on deletion
//! the `preStop` hook then SIGTERM, SIGKILL at the end of the grace period, sandbox
//! teardown, then the pod object is deleted with grace period 0 as a kubelet does.
//!
//! Everything the worker learns arrives as a message (pod updates from the node's watch,
//! run and probe events from the tasks it started), so its state has one owner and no
//! locks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::{self, BackOff};
use crate::context::{Ctx, NodeHandle};
use crate::env::{self, Lookups, PodFacts};
use crate::image::{self, ImageRef, PullPolicy};
use crate::network::{PodSandbox, API_SERVICE_IP};
use crate::probe::{self, ProbeKind, ProbeReport, ProbeSet, ProbeTarget};
use crate::rootfs::{self, MountSpec, RootSource, RootSpec};
use crate::runner::{self, Launch, RunEvent, RunHandle, Stop};
use crate::status::{self, CState, ContainerView, Phase, PodView, RestartPolicy, Terminated};
use crate::store::{Pulled, StoredImage};
use crate::volumes::{self, PreparedVolume, VolumeContext};

/// From the node's pod watch to a worker.
#[derive(Debug)]
pub(crate) enum PodMsg {
    /// The pod object changed.
    Update(Arc<Pod>),
    /// The pod object is gone from the API.
    Gone,
}

/// From the worker's run and probe tasks.
#[derive(Debug)]
enum WorkerEvent {
    Run {
        slot: usize,
        run: u64,
        event: RunEvent,
    },
    Probe {
        slot: usize,
        run: u64,
        report: ProbeReport,
    },
    /// An image pull started for a slot ended.
    Pulled {
        slot: usize,
        image: ImageRef,
        result: Result<Box<Pulled>, String>,
    },
}

/// The image a container is created from.
#[derive(Debug, Clone)]
enum RootImage {
    /// A repository of the executable map: the host's system dirs and this executable.
    Executable(PathBuf),
    /// An image from the store.
    Stored(ImageRef, Box<StoredImage>),
}

/// How long `ErrImagePull` shows before `ImagePullBackOff`.
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(2);
/// Retry delay for sandbox, volume and container-config errors (doubles up to 1 min).
const SETUP_RETRY: Duration = Duration::from_secs(2);
const SETUP_RETRY_MAX: Duration = Duration::from_secs(60);
/// Default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: i64 = 30;
/// How long a hard stop waits for processes to die.
const HARD_STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Run {
    id: u64,
    handle: RunHandle,
    container_id: String,
    spawned: Instant,
    started_at: Option<Timestamp>,
    env: Vec<(String, String)>,
    /// Host pid of the container's init, once started (0 if it exited at once).
    pid1: Option<u32>,
    probes: Option<JoinHandle<()>>,
    kill_at: Option<Instant>,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(p) = self.probes.take() {
            p.abort();
        }
    }
}

#[derive(Debug)]
struct Slot {
    spec: Container,
    init: bool,
    image_id: String,
    container_id: Option<String>,
    state: CState,
    last_state: Option<Terminated>,
    restart_count: i32,
    runs: u32,
    ready: bool,
    started: bool,
    run: Option<Run>,
    restart_backoff: BackOff,
    pull_backoff: BackOff,
    /// Earliest time of the next start attempt.
    next_start: Option<Instant>,
    /// When `ErrImagePull` turns into `ImagePullBackOff`.
    pull_backoff_shown_at: Option<Instant>,
    config_retry: Duration,
    /// Will not run again (init container done, or not restarted by policy).
    done: bool,
    /// An image pull for the next start is in flight.
    pulling: bool,
    /// The image a finished pull delivered, for the next start.
    pulled: Option<(ImageRef, Box<StoredImage>)>,
}

impl Slot {
    fn new(spec: Container, init: bool, waiting_reason: &str) -> Self {
        Self {
            spec,
            init,
            image_id: String::new(),
            container_id: None,
            state: CState::Waiting {
                reason: waiting_reason.into(),
                message: None,
            },
            last_state: None,
            restart_count: 0,
            runs: 0,
            ready: false,
            started: false,
            run: None,
            restart_backoff: BackOff::default(),
            pull_backoff: BackOff::default(),
            next_start: None,
            pull_backoff_shown_at: None,
            config_retry: SETUP_RETRY,
            done: false,
            pulling: false,
            pulled: None,
        }
    }

    fn image(&self) -> &str {
        self.spec.image.as_deref().unwrap_or_default()
    }

    fn view(&self) -> ContainerView {
        ContainerView {
            name: self.spec.name.clone(),
            image: self.image().to_owned(),
            image_id: self.image_id.clone(),
            container_id: self.container_id.clone(),
            state: self.state.clone(),
            last_state: self.last_state.clone(),
            ready: self.ready,
            started: self.started,
            restart_count: self.restart_count,
        }
    }

    fn failed_for_good(&self) -> bool {
        self.done && matches!(&self.state, CState::Terminated(t) if t.exit_code != 0)
    }

    fn config_error(&mut self, now: Instant, reason: &str, message: String) {
        self.state = CState::Waiting {
            reason: reason.into(),
            message: Some(message),
        };
        self.next_start = Some(now + self.config_retry);
        self.config_retry = (self.config_retry * 2).min(SETUP_RETRY_MAX);
    }
}

/// One pod's worker.
#[derive(Debug)]
pub(crate) struct Worker {
    ctx: Arc<Ctx>,
    node: Arc<NodeHandle>,
    pod: Arc<Pod>,
    uid: String,
    namespace: String,
    name: String,
    dir: PathBuf,
    policy: RestartPolicy,
    host_network: bool,
    sandbox: Option<PodSandbox>,
    volumes: Option<BTreeMap<String, PreparedVolume>>,
    setup_retry_at: Option<Instant>,
    setup_retry: Duration,
    slots: Vec<Slot>,
    start_time: Timestamp,
    terminal: Option<Phase>,
    /// Deletion in progress: when to SIGKILL what is left.
    kill_all_at: Option<Instant>,
    gone: bool,
    finished: bool,
    last_status: Option<serde_json::Value>,
    last_conditions: Vec<PodCondition>,
    status_retry_at: Option<Instant>,
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events_rx: mpsc::UnboundedReceiver<WorkerEvent>,
    next_run: u64,
    /// When this worker first saw the pod, for start-latency logs.
    seen: Instant,
}

fn grace_seconds(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE)
        .max(0)
}

fn seconds(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// The last `lines` lines of a log, at most `max` bytes (for `StartError` messages and
/// `FallbackToLogsOnError`).
fn log_tail(path: &Path, lines: usize, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    let mut out = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    if out.len() > max {
        let mut cut = out.len() - max;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
    out
}

/// Largest termination message kept, as on a kubelet.
const TERMINATION_MESSAGE_MAX: usize = 4096;

impl Worker {
    /// A worker for `pod` (already bound to `node`).
    pub(crate) fn new(ctx: Arc<Ctx>, node: Arc<NodeHandle>, pod: Arc<Pod>) -> Self {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().unwrap_or_default();
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let dir = ctx.pods_dir().join(format!("{namespace}_{name}_{uid}"));
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        let main_waiting = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let mut slots: Vec<Slot> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Slot::new(c.clone(), true, "PodInitializing"))
            .collect();
        slots.extend(
            spec.containers
                .iter()
                .map(|c| Slot::new(c.clone(), false, main_waiting)),
        );
        let terminal = Phase::parse(pod.status.as_ref().and_then(|s| s.phase.as_deref()))
            .filter(|p| p.is_terminal());
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(Timestamp::now, |t| t.0);
        let last_conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            host_network: spec.host_network.unwrap_or(false),
            ctx,
            node,
            uid,
            namespace,
            name,
            dir,
            sandbox: None,
            volumes: None,
            setup_retry_at: None,
            setup_retry: SETUP_RETRY,
            slots,
            start_time,
            terminal,
            kill_all_at: None,
            gone: false,
            finished: false,
            last_status: None,
            last_conditions,
            status_retry_at: None,
            events_tx,
            events_rx,
            next_run: 0,
            seen: Instant::now(),
            pod,
        }
    }

    /// Runs until the pod is deleted (and cleaned up) or the node stops.
    pub(crate) async fn run(
        mut self,
        mut updates: mpsc::UnboundedReceiver<PodMsg>,
        mut stop: watch::Receiver<bool>,
    ) {
        if let Some(phase) = self.terminal {
            tracing::debug!(pod = %self.name, ?phase, "pod already finished; only awaiting deletion");
        }
        loop {
            if *stop.borrow() {
                self.hard_stop().await;
                return;
            }
            self.reconcile().await;
            if self.finished {
                return;
            }
            self.write_status().await;
            let wake = self.next_wakeup();
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        self.hard_stop().await;
                        return;
                    }
                }
                msg = updates.recv() => match msg {
                    Some(PodMsg::Update(pod)) => self.pod = pod,
                    Some(PodMsg::Gone) => self.gone = true,
                    None => {
                        self.hard_stop().await;
                        return;
                    }
                },
                Some(event) = self.events_rx.recv() => self.on_event(event),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn deleting(&self) -> bool {
        self.gone || self.pod.metadata.deletion_timestamp.is_some()
    }

    fn next_wakeup(&self) -> Instant {
        let mut times: Vec<Instant> = Vec::new();
        times.extend(self.setup_retry_at);
        times.extend(self.status_retry_at);
        times.extend(self.kill_all_at);
        for slot in &self.slots {
            if slot.run.is_none() && !slot.done {
                times.extend(slot.next_start);
            }
            times.extend(slot.pull_backoff_shown_at);
            times.extend(slot.run.as_ref().and_then(|r| r.kill_at));
        }
        times
            .into_iter()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    fn pod_ip(&self) -> Option<Ipv4Addr> {
        if self.host_network {
            Some(self.node.net.node_ip())
        } else {
            self.sandbox.as_ref().map(|s| s.ip)
        }
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: self.pod_ip().map(|ip| ip.to_string()),
            host_ip: self.node.net.node_ip().to_string(),
            api_host: API_SERVICE_IP.to_string(),
            api_port: self.ctx.api_port,
        }
    }

    fn event(&self, warning: bool, reason: &str, note: String) {
        if !self.gone {
            self.node.event(&self.pod, warning, reason, note);
        }
    }

    async fn reconcile(&mut self) {
        if self.deleting() {
            self.terminate().await;
            return;
        }
        if self.terminal.is_some() {
            // A finished pod keeps no sandbox, as on a kubelet.
            if let Some(sandbox) = self.sandbox.take() {
                sandbox.destroy(&self.node.net).await;
            }
            return;
        }
        let now = Instant::now();
        if self.setup_retry_at.is_some_and(|t| t > now) {
            return;
        }
        if !self.host_network && self.sandbox.is_none() {
            let hostname: String = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| self.name.clone())
                .chars()
                .take(63)
                .collect();
            match PodSandbox::create(&self.ctx.spawner, &self.node.net, &hostname).await {
                Ok(sandbox) => self.sandbox = Some(sandbox),
                Err(e) => {
                    self.setup_failed(
                        "FailedCreatePodSandBox",
                        format!("Failed to create pod sandbox: {e}"),
                    );
                    return;
                }
            }
        }
        if self.volumes.is_none() {
            if let Err(e) = std::fs::create_dir_all(&self.dir) {
                self.setup_failed(
                    "FailedMount",
                    format!("creating {}: {e}", self.dir.display()),
                );
                return;
            }
            let pv_root = self.ctx.pv_root();
            let cx = VolumeContext {
                client: &self.ctx.client,
                ca_pem: &self.ctx.ca_pem,
                pv_root: &pv_root,
            };
            match volumes::prepare(&cx, &self.pod, &self.facts(), &self.dir).await {
                Ok(v) => self.volumes = Some(v),
                Err(message) => {
                    self.setup_failed(
                        "FailedMount",
                        format!("MountVolume.SetUp failed: {message}"),
                    );
                    return;
                }
            }
        }
        self.setup_retry_at = None;
        self.drive_containers().await;
        let phase = status::phase(&self.view());
        if phase.is_terminal() {
            self.terminal = Some(phase);
            if let Some(sandbox) = self.sandbox.take() {
                sandbox.destroy(&self.node.net).await;
            }
        }
    }

    fn setup_failed(&mut self, reason: &str, message: String) {
        tracing::debug!(pod = %self.name, %reason, %message, "pod setup failed; will retry");
        self.event(true, reason, message);
        self.setup_retry_at = Some(Instant::now() + self.setup_retry);
        self.setup_retry = (self.setup_retry * 2).min(SETUP_RETRY_MAX);
    }

    async fn drive_containers(&mut self) {
        let now = Instant::now();
        let mut backing_off = Vec::new();
        for slot in &mut self.slots {
            if slot.pull_backoff_shown_at.is_some_and(|t| t <= now) {
                slot.pull_backoff_shown_at = None;
                if matches!(&slot.state, CState::Waiting { reason, .. } if reason == "ErrImagePull")
                {
                    slot.state = CState::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(format!("Back-off pulling image \"{}\"", slot.image())),
                    };
                    backing_off.push(slot.image().to_owned());
                }
            }
            if let Some(run) = &mut slot.run {
                if run.kill_at.is_some_and(|t| t <= now) {
                    run.kill_at = None;
                    run.handle.stop(Stop::Kill);
                }
            }
        }
        for image in backing_off {
            self.event(
                false,
                "BackOff",
                format!("Back-off pulling image \"{image}\""),
            );
            self.event(true, "Failed", "Error: ImagePullBackOff".into());
        }
        let due = |slot: &Slot| {
            slot.run.is_none() && !slot.done && slot.next_start.is_none_or(|t| t <= now)
        };
        let n_init = self.slots.iter().filter(|s| s.init).count();
        for i in 0..n_init {
            let slot = &self.slots[i];
            if slot.done {
                if slot.failed_for_good() {
                    return;
                }
                continue;
            }
            if due(slot) {
                self.start_container(i).await;
            }
            return;
        }
        for i in n_init..self.slots.len() {
            if due(&self.slots[i]) {
                self.start_container(i).await;
            }
        }
    }

    async fn lookups(&self, container: &Container) -> Result<Lookups, String> {
        let (cms, secrets) = env::referenced_objects(container);
        let mut lookups = Lookups::default();
        for name in cms {
            if let Some(data) =
                volumes::fetch_config_map(&self.ctx.client, &self.namespace, &name).await?
            {
                lookups.config_maps.insert(name, data);
            }
        }
        for name in secrets {
            if let Some(data) =
                volumes::fetch_secret(&self.ctx.client, &self.namespace, &name).await?
            {
                lookups.secrets.insert(name, data);
            }
        }
        Ok(lookups)
    }

    fn mounts(
        &self,
        container: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<MountSpec>, String> {
        let volumes = self.volumes.as_ref().ok_or("volumes are not ready")?;
        let mut mounts = Vec::new();
        for vm in container.volume_mounts.iter().flatten() {
            let volume = volumes
                .get(&vm.name)
                .ok_or_else(|| format!("volume {:?} is not defined in the pod", vm.name))?;
            let target = rootfs::normalize_container_path(&vm.mount_path)?;
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(s), _) if !s.is_empty() => Some(s.clone()),
                (_, Some(expr)) if !expr.is_empty() => Some(env::expand(expr, &|n| {
                    env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                })),
                _ => None,
            };
            let source = match sub {
                Some(sub) => volumes::sub_path_source(&volume.host_path, &sub)?,
                None => volume.host_path.clone(),
            };
            mounts.push(MountSpec {
                source_is_dir: source.is_dir(),
                source,
                target,
                read_only: volume.read_only || vm.read_only.unwrap_or(false),
            });
        }
        Ok(mounts)
    }

    async fn start_container(&mut self, i: usize) {
        let now = Instant::now();
        if self.slots[i].pulling {
            return;
        }
        let root = match self.slots[i].pulled.take() {
            Some((image, stored)) => RootImage::Stored(image, stored),
            None => match self.obtain_image(i, now) {
                Some(root) => root,
                None => return,
            },
        };
        self.create_container(i, root, now).await;
    }

    /// The image of slot `i` if it can be used now, as a kubelet's image manager decides
    /// with the pull policy; otherwise starts a pull (its end arrives as
    /// [`WorkerEvent::Pulled`]) or records why it cannot, and returns `None`.
    fn obtain_image(&mut self, i: usize, now: Instant) -> Option<RootImage> {
        let written = self.slots[i].image().to_owned();
        if let Some(exe) = image::resolve(&self.ctx.images, &written) {
            return Some(RootImage::Executable(exe.to_path_buf()));
        }
        let parsed = match ImageRef::parse(&written) {
            Ok(r) => r,
            Err(message) => {
                let message = format!("Failed to apply default image tag \"{written}\": {message}");
                self.event(true, "InspectFailed", message.clone());
                self.slots[i].config_error(now, "InvalidImageName", message);
                return None;
            }
        };
        let policy = PullPolicy::of(self.slots[i].spec.image_pull_policy.as_deref(), &parsed);
        if policy != PullPolicy::Always {
            if let Some(stored) = self.ctx.store.local(&parsed) {
                self.event(
                    false,
                    "Pulled",
                    format!("Container image \"{written}\" already present on machine"),
                );
                return Some(RootImage::Stored(parsed, Box::new(stored)));
            }
        }
        if policy == PullPolicy::Never {
            let message =
                format!("Container image \"{written}\" is not present with pull policy of Never");
            self.event(true, "ErrImageNeverPull", message.clone());
            self.slots[i].config_error(now, "ErrImageNeverPull", message);
            return None;
        }
        self.event(false, "Pulling", format!("Pulling image \"{written}\""));
        self.slots[i].pulling = true;
        let store = self.ctx.store.clone();
        let tx = self.events_tx.clone();
        // Its own task: the worker goes on serving updates (a deletion, for one) meanwhile.
        tokio::spawn(async move {
            let result = store.pull(&parsed).await.map(Box::new);
            let _ = tx.send(WorkerEvent::Pulled {
                slot: i,
                image: parsed,
                result,
            });
        });
        None
    }

    fn on_pulled(&mut self, i: usize, image: ImageRef, result: Result<Box<Pulled>, String>) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        slot.pulling = false;
        if self.deleting() {
            return;
        }
        let now = Instant::now();
        match result {
            Ok(pulled) => {
                let note = format!(
                    "Successfully pulled image \"{}\" in {} ({} including waiting). Image size: {} bytes.",
                    image.written,
                    go_duration(pulled.pulling),
                    go_duration(pulled.total),
                    pulled.image.size
                );
                let slot = &mut self.slots[i];
                slot.pulled = Some((image, Box::new(pulled.image)));
                slot.next_start = None;
                self.event(false, "Pulled", note);
            }
            Err(message) => self.pull_failed(i, now, message),
        }
    }

    /// `ErrImagePull`, then `ImagePullBackOff` until the next attempt, as a kubelet shows it.
    fn pull_failed(&mut self, i: usize, now: Instant, message: String) {
        let image = self.slots[i].image().to_owned();
        let slot = &mut self.slots[i];
        let wait = slot
            .pull_backoff
            .failure(now.into_std(), Duration::ZERO)
            .max(backoff::INITIAL);
        slot.state = CState::Waiting {
            reason: "ErrImagePull".into(),
            message: Some(message.clone()),
        };
        slot.pull_backoff_shown_at = Some(now + PULL_ERROR_SHOWN);
        slot.next_start = Some(now + wait);
        self.event(
            true,
            "Failed",
            format!("Failed to pull image \"{image}\": {message}"),
        );
        self.event(true, "Failed", "Error: ErrImagePull".into());
    }

    async fn create_container(&mut self, i: usize, root: RootImage, now: Instant) {
        let spec = self.slots[i].spec.clone();
        let image = self.slots[i].image().to_owned();
        let (image_id, image_env, entrypoint, cmd, image_workdir) = match &root {
            RootImage::Executable(exe) => {
                let repository = image::repository(&image).to_owned();
                let exe_name = exe
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (
                    self.ctx.image_id(&repository, exe),
                    vec![("PATH".to_owned(), env::DEFAULT_PATH.to_owned())],
                    vec![format!("/image/bin/{exe_name}")],
                    Vec::new(),
                    None,
                )
            }
            RootImage::Stored(r, stored) => {
                let mut base = vec![("PATH".to_owned(), env::RUNTIME_DEFAULT_PATH.to_owned())];
                base.extend(stored.run.env_pairs());
                (
                    format!("{}@{}", r.repository(), stored.digest),
                    base,
                    stored.run.entrypoint.clone().unwrap_or_default(),
                    stored.run.cmd.clone().unwrap_or_default(),
                    stored.run.working_dir.clone().filter(|w| !w.is_empty()),
                )
            }
        };
        self.slots[i].image_id = image_id;
        // Whom the command runs as, and its home: from the securityContext, else the image.
        let identity = match &root {
            RootImage::Executable(_) => run_as(&self.pod, &spec).map(|u| (u, "/root".to_owned())),
            RootImage::Stored(_, stored) => image_run_as(&self.pod, &spec, stored),
        };
        let (user, home) = match identity {
            Ok(found) => found,
            Err(message) => {
                self.event(true, "Failed", format!("Error: {message}"));
                self.slots[i].config_error(now, "CreateContainerConfigError", message);
                return;
            }
        };
        let lookups = match self.lookups(&spec).await {
            Ok(l) => l,
            Err(message) => {
                self.slots[i].config_error(now, "CreateContainerConfigError", message);
                return;
            }
        };
        let defaults = env::ImageDefaults {
            env: &image_env,
            home: &home,
        };
        let env = match env::container_env(
            &self.pod,
            &spec,
            &image,
            &defaults,
            &self.facts(),
            &lookups,
        ) {
            Ok(env) => env,
            Err(message) => {
                self.event(true, "Failed", format!("Error: {message}"));
                self.slots[i].config_error(now, "CreateContainerConfigError", message);
                return;
            }
        };
        let mut mounts = match self.mounts(&spec, &env.referenceable) {
            Ok(m) => m,
            Err(message) => {
                self.event(true, "Failed", format!("Error: {message}"));
                self.slots[i].config_error(now, "CreateContainerConfigError", message);
                return;
            }
        };
        // The termination message file, bound at terminationMessagePath like a kubelet.
        let termination_log = self.termination_log_path(&spec.name);
        let termination_target = spec
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or("/dev/termination-log");
        // World-writable, as a kubelet makes it, so a non-root container can write it.
        let created = std::fs::write(&termination_log, b"").and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&termination_log, std::fs::Permissions::from_mode(0o666))
        });
        match rootfs::normalize_container_path(termination_target) {
            Ok(target) if created.is_ok() => {
                mounts.push(MountSpec {
                    source: termination_log,
                    target,
                    read_only: false,
                    source_is_dir: false,
                });
            }
            _ => {}
        }
        // The container's workingDir, else the image's, else `/`.
        let working_dir = match spec
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or(image_workdir)
        {
            None => "/".to_owned(),
            Some(w) if w == "/" => w,
            Some(w) => match rootfs::normalize_container_path(&w) {
                Ok(w) => w,
                Err(message) => {
                    self.slots[i].config_error(now, "CreateContainerConfigError", message);
                    return;
                }
            },
        };
        let argv = match env::command_line(&spec, &entrypoint, &cmd, &env.referenceable) {
            Ok(argv) => argv,
            Err(message) => {
                self.event(true, "Failed", format!("Error: {message}"));
                self.slots[i].config_error(now, "CreateContainerError", message);
                return;
            }
        };
        let read_only = spec
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem)
            .unwrap_or(false);
        let scratch = self.dir.join("rootfs").join(&spec.name);
        let script_path = self.dir.join(format!("{}.sh", spec.name));
        let marker = self.dir.join(format!("{}.started", spec.name));
        let title = format!("{}/{} container {}", self.namespace, self.name, spec.name);
        let source = match &root {
            RootImage::Executable(exe) => RootSource::Executable(exe),
            RootImage::Stored(_, stored) => RootSource::Image(&stored.rootfs),
        };
        let script = rootfs::setup_script(&RootSpec {
            title: &title,
            scratch: &scratch,
            source,
            mounts: &mounts,
            working_dir: &working_dir,
            layout: &self.ctx.layout,
            started_marker: &marker,
            user: user.as_ref(),
            read_only,
        });
        let written = script.map_err(std::io::Error::other).and_then(|script| {
            std::fs::create_dir_all(&scratch).and_then(|()| std::fs::write(&script_path, script))
        });
        if let Err(e) = written {
            self.slots[i].config_error(
                now,
                "CreateContainerError",
                format!("writing the container script: {e}"),
            );
            return;
        }
        let run_id = self.next_run;
        self.next_run += 1;
        let tx = self.events_tx.clone();
        let launch = Launch {
            holder_pid: self.sandbox.as_ref().map(PodSandbox::holder_pid),
            script: script_path,
            argv,
            env: env.vars.clone(),
            log: self.log_path(&spec.name),
            started_marker: marker,
        };
        match runner::start(&self.ctx.spawner, launch, move |event| {
            let _ = tx.send(WorkerEvent::Run {
                slot: i,
                run: run_id,
                event,
            });
        })
        .await
        {
            Ok(handle) => {
                let slot = &mut self.slots[i];
                slot.runs += 1;
                slot.config_retry = SETUP_RETRY;
                slot.next_start = None;
                let container_id = format!("simnode://{:016x}", rand::random::<u64>());
                slot.run = Some(Run {
                    id: run_id,
                    handle,
                    container_id,
                    spawned: now,
                    started_at: None,
                    env: env.vars,
                    pid1: None,
                    probes: None,
                    kill_at: None,
                });
                if slot.runs == 1 && matches!(root, RootImage::Executable(_)) {
                    self.event(
                        false,
                        "Pulled",
                        format!("Container image \"{image}\" already present on machine"),
                    );
                }
            }
            Err(e) => {
                let message = e.to_string();
                self.event(true, "Failed", format!("Error: {message}"));
                self.slots[i].config_error(now, "RunContainerError", message);
            }
        }
    }

    /// `state_dir/pods/<ns>_<name>_<uid>/<container>.log`.
    fn log_path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.log"))
    }

    fn termination_log_path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.termination-log"))
    }

    /// `terminated.message`: the termination message file, else (with
    /// `FallbackToLogsOnError` and a failure) the end of the log.
    fn termination_message(&self, spec: &Container, exit_code: i32) -> Option<String> {
        let file = std::fs::read(self.termination_log_path(&spec.name)).unwrap_or_default();
        let text = String::from_utf8_lossy(&file[..file.len().min(TERMINATION_MESSAGE_MAX)])
            .trim_end()
            .to_owned();
        if !text.is_empty() {
            return Some(text);
        }
        let fallback = spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        (fallback && exit_code != 0)
            .then(|| log_tail(&self.log_path(&spec.name), 80, 2048))
            .filter(|t| !t.is_empty())
    }

    fn on_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Run { slot, run, event } => self.on_run_event(slot, run, event),
            WorkerEvent::Probe { slot, run, report } => self.on_probe(slot, run, report),
            WorkerEvent::Pulled {
                slot,
                image,
                result,
            } => self.on_pulled(slot, image, result),
        }
    }

    fn current_run(&self, slot: usize, run: u64) -> bool {
        self.slots
            .get(slot)
            .and_then(|s| s.run.as_ref())
            .is_some_and(|r| r.id == run)
    }

    fn on_run_event(&mut self, i: usize, run_id: u64, event: RunEvent) {
        if !self.current_run(i, run_id) {
            return;
        }
        match event {
            RunEvent::Started { pid1, at } => {
                let probes = ProbeSet::of(&self.slots[i].spec);
                let pod_ip = self.pod_ip();
                let deleting = self.deleting();
                let spawner = self.ctx.spawner.clone();
                let http = self.ctx.http.clone();
                let tx = self.events_tx.clone();
                let name = self.slots[i].spec.name.clone();
                let slot = &mut self.slots[i];
                let Some(run) = slot.run.as_mut() else {
                    return;
                };
                run.started_at = Some(at);
                run.pid1 = Some(pid1);
                slot.container_id = Some(run.container_id.clone());
                if let CState::Terminated(t) = &slot.state {
                    slot.last_state = Some(t.clone());
                }
                if slot.runs > 1 {
                    slot.restart_count += 1;
                }
                slot.state = CState::Running { started_at: at };
                slot.started = probes.startup.is_none();
                slot.ready = slot.started && probes.readiness.is_none();
                if !probes.is_empty() && pid1 > 0 && !deleting {
                    let target = ProbeTarget {
                        pod_ip,
                        pid1,
                        env: run.env.clone(),
                        spawner,
                        http,
                    };
                    let report = Arc::new(move |report| {
                        let _ = tx.send(WorkerEvent::Probe {
                            slot: i,
                            run: run_id,
                            report,
                        });
                    });
                    run.probes = Some(tokio::spawn(probe::run(
                        probes,
                        target,
                        Instant::now(),
                        report,
                    )));
                }
                tracing::debug!(
                    pod = %self.name,
                    container = %name,
                    since_seen = ?self.seen.elapsed(),
                    "container started"
                );
                self.event(false, "Started", format!("Started container {name}"));
            }
            RunEvent::Exited {
                exit_code,
                started,
                at,
                ..
            } => self.on_exit(i, exit_code, started, at),
        }
    }

    fn on_exit(&mut self, i: usize, exit_code: i32, started: bool, at: Timestamp) {
        let now = Instant::now();
        let log = self.log_path(&self.slots[i].spec.name);
        let termination_message = self.termination_message(&self.slots[i].spec, exit_code);
        let deleting = self.deleting();
        let policy = self.policy;
        let (pod_name, ns, uid) = (self.name.clone(), self.namespace.clone(), self.uid.clone());
        let slot = &mut self.slots[i];
        let Some(run) = slot.run.take() else {
            return;
        };
        let (reason, message) = if !started {
            (
                "StartError",
                Some(log_tail(&log, 3, 1024)).filter(|m| !m.is_empty()),
            )
        } else if exit_code == 0 {
            ("Completed", termination_message)
        } else {
            ("Error", termination_message)
        };
        let exit_code = if started { exit_code } else { 128 };
        let term = Terminated {
            exit_code,
            // containerd reports the exit code (128 + signal), not the signal.
            signal: None,
            reason: reason.into(),
            message,
            started_at: run.started_at,
            finished_at: at,
            container_id: Some(run.container_id.clone()),
        };
        slot.container_id = Some(run.container_id.clone());
        slot.ready = false;
        slot.started = false;
        let restarts = !deleting
            && if slot.init {
                exit_code != 0 && policy != RestartPolicy::Never
            } else {
                policy.restarts(exit_code)
            };
        if !restarts {
            if let CState::Terminated(t) = &slot.state {
                slot.last_state = Some(t.clone());
            }
            slot.state = CState::Terminated(term);
            slot.done = true;
            return;
        }
        let ran_for = now.saturating_duration_since(run.spawned);
        let delay = slot.restart_backoff.failure(now.into_std(), ran_for);
        slot.next_start = Some(now + delay);
        if delay.is_zero() {
            if let CState::Terminated(t) = &slot.state {
                slot.last_state = Some(t.clone());
            }
            slot.state = CState::Terminated(term);
        } else {
            let name = slot.spec.name.clone();
            slot.last_state = Some(term);
            slot.state = CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed container={name} pod={pod_name}_{ns}({uid})",
                    delay.as_secs()
                )),
            };
            self.event(
                true,
                "BackOff",
                "Back-off restarting failed container".into(),
            );
        }
    }

    fn on_probe(&mut self, i: usize, run_id: u64, report: ProbeReport) {
        if !self.current_run(i, run_id) || self.deleting() {
            return;
        }
        let grace = grace_seconds(&self.pod);
        let name = self.slots[i].spec.name.clone();
        match report {
            ProbeReport::Started => {
                let slot = &mut self.slots[i];
                slot.started = true;
                slot.ready = slot.spec.readiness_probe.is_none();
            }
            ProbeReport::Ready(ready) => {
                let slot = &mut self.slots[i];
                slot.ready = ready && slot.started;
            }
            ProbeReport::Unhealthy { kind, message } => {
                self.event(
                    true,
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.title()),
                );
            }
            ProbeReport::Failed { kind, message } => {
                let what = match kind {
                    ProbeKind::Startup => "startup",
                    _ => "liveness",
                };
                tracing::debug!(pod = %self.name, container = %name, %message, "{what} probe failed; restarting");
                let slot = &mut self.slots[i];
                slot.ready = false;
                if let Some(run) = slot.run.as_mut() {
                    run.handle
                        .stop(if grace > 0 { Stop::Term } else { Stop::Kill });
                    run.kill_at = Some(Instant::now() + seconds(grace));
                }
                self.event(
                    false,
                    "Killing",
                    format!("Container {name} failed {what} probe, will be restarted"),
                );
            }
        }
    }

    fn view(&self) -> PodView {
        let gates_ready = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_none_or(|gates| {
                let conditions = self.pod.status.as_ref().and_then(|s| s.conditions.as_ref());
                gates.iter().all(|g| {
                    conditions.is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == g.condition_type && c.status == "True")
                    })
                })
            });
        PodView {
            init: self
                .slots
                .iter()
                .filter(|s| s.init)
                .map(Slot::view)
                .collect(),
            main: self
                .slots
                .iter()
                .filter(|s| !s.init)
                .map(Slot::view)
                .collect(),
            restart_policy: self.policy,
            pod_ip: self.pod_ip().map(|ip| ip.to_string()),
            host_ip: self.node.net.node_ip().to_string(),
            start_time: self.start_time,
            gates_ready,
        }
    }

    async fn write_status(&mut self) {
        if self.gone
            || (self.terminal.is_some()
                && self.last_status.is_none()
                && self.slots.iter().all(|s| s.runs == 0))
        {
            // Nothing to say about a pod that finished before this node saw it.
            return;
        }
        if self.status_retry_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let view = self.view();
        let mut status = status::build(&view, &self.last_conditions, Timestamp::now());
        if let Some(phase) = self.terminal {
            // Terminal phases are final, whatever a late event says.
            status.phase = Some(phase.as_str().into());
        }
        let Ok(mut value) = serde_json::to_value(&status) else {
            return;
        };
        // Conditions merge by type: an absent reason would keep the previous one.
        if let Some(conds) = value.get_mut("conditions").and_then(|c| c.as_array_mut()) {
            for cond in conds.iter_mut().filter_map(|c| c.as_object_mut()) {
                for key in ["reason", "message"] {
                    cond.entry(key).or_insert(serde_json::Value::Null);
                }
            }
        }
        if self.last_status.as_ref() == Some(&value) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let patch = serde_json::json!({ "status": value });
        match api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => {
                self.last_conditions = status.conditions.unwrap_or_default();
                self.last_status = Some(value);
                self.status_retry_at = None;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => self.gone = true,
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "writing pod status; will retry");
                self.status_retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    async fn terminate(&mut self) {
        let now = Instant::now();
        if self.kill_all_at.is_none() {
            let grace = if self.gone {
                0
            } else {
                grace_seconds(&self.pod)
            };
            self.kill_all_at = Some(now + seconds(grace));
            let pod_ip = self.pod_ip();
            let mut stopping = Vec::new();
            for slot in &mut self.slots {
                let Some(run) = slot.run.as_mut() else {
                    continue;
                };
                if let Some(p) = run.probes.take() {
                    p.abort();
                }
                stopping.push(slot.spec.name.clone());
                let pre_stop = slot
                    .spec
                    .lifecycle
                    .as_ref()
                    .and_then(|l| l.pre_stop.clone());
                match (pre_stop, run.pid1.filter(|p| *p > 0)) {
                    (Some(hook), Some(pid1)) if grace > 0 => {
                        // The hook runs inside the grace period; SIGTERM follows it.
                        let target = ProbeTarget {
                            pod_ip,
                            pid1,
                            env: run.env.clone(),
                            spawner: self.ctx.spawner.clone(),
                            http: self.ctx.http.clone(),
                        };
                        let handle = run.handle.clone();
                        let container = slot.spec.clone();
                        let node = self.node.clone();
                        let pod = self.pod.clone();
                        tokio::spawn(async move {
                            let outcome =
                                probe::run_hook(&hook, &container, &target, seconds(grace)).await;
                            if let Err(message) = outcome {
                                node.event(&pod, true, "FailedPreStopHook", message);
                            }
                            handle.stop(Stop::Term);
                        });
                    }
                    _ => run
                        .handle
                        .stop(if grace > 0 { Stop::Term } else { Stop::Kill }),
                }
            }
            for name in stopping {
                self.event(false, "Killing", format!("Stopping container {name}"));
            }
        }
        if self.kill_all_at.is_some_and(|t| t <= now) {
            for slot in &self.slots {
                if let Some(run) = &slot.run {
                    run.handle.stop(Stop::Kill);
                }
            }
        }
        if self.slots.iter().any(|s| s.run.is_some()) {
            return;
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.destroy(&self.node.net).await;
        }
        self.clean_dir();
        if !self.gone {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&self.name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(pod = %self.name, error = %e, "deleting the pod; will retry");
                    self.status_retry_at = Some(now + Duration::from_secs(1));
                    self.kill_all_at = Some(now + Duration::from_secs(1));
                    return;
                }
            }
        }
        self.finished = true;
    }

    /// Removes what the pod left in its dir except the logs.
    fn clean_dir(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("rootfs"));
        let _ = std::fs::remove_dir_all(self.dir.join("volumes"));
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .extension()
                    .is_some_and(|e| e == "sh" || e == "started")
                {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    /// The node stops: kill everything now and wait for it, without touching the API.
    async fn hard_stop(&mut self) {
        for slot in &self.slots {
            if let Some(run) = &slot.run {
                run.handle.stop(Stop::Kill);
            }
        }
        let deadline = Instant::now() + HARD_STOP_WAIT;
        while self.slots.iter().any(|s| s.run.is_some()) {
            match tokio::time::timeout_at(deadline, self.events_rx.recv()).await {
                Ok(Some(WorkerEvent::Run {
                    slot,
                    run,
                    event: RunEvent::Exited { .. },
                })) => {
                    if self.current_run(slot, run) {
                        self.slots[slot].run = None;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.destroy(&self.node.net).await;
        }
    }
}

/// The user-related settings of a container's securityContext, the container's over the
/// pod's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Security {
    uid: Option<i64>,
    gid: Option<i64>,
    non_root: bool,
    /// `fsGroup` and `supplementalGroups`, sorted.
    groups: Vec<i64>,
}

fn security(pod: &Pod, container: &Container) -> Security {
    let p = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c = container.security_context.as_ref();
    let mut groups: Vec<i64> = p
        .into_iter()
        .flat_map(|p| {
            p.fs_group
                .into_iter()
                .chain(p.supplemental_groups.iter().flatten().copied())
        })
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Security {
        uid: c
            .and_then(|c| c.run_as_user)
            .or(p.and_then(|p| p.run_as_user)),
        gid: c
            .and_then(|c| c.run_as_group)
            .or(p.and_then(|p| p.run_as_group)),
        non_root: c
            .and_then(|c| c.run_as_non_root)
            .or(p.and_then(|p| p.run_as_non_root))
            .unwrap_or(false),
        groups,
    }
}

/// Whom `container` of an executable-map image runs as, from its and its pod's
/// securityContext, as a kubelet decides: the container's settings over the pod's;
/// `fsGroup` and `supplementalGroups` as supplementary groups. Such images have no user
/// of their own: they run as root, so `runAsNonRoot` needs a non-zero `runAsUser`.
pub(crate) fn run_as(
    pod: &Pod,
    container: &Container,
) -> std::result::Result<Option<crate::rootfs::RunAs>, String> {
    let sec = security(pod, container);
    if sec.non_root && sec.uid.unwrap_or(0) == 0 {
        return Err(match sec.uid {
            Some(_) => "container's runAsUser breaks non-root policy".to_string(),
            None => "container has runAsNonRoot and image will run as root".to_string(),
        });
    }
    if sec.uid.is_none() && sec.gid.is_none() && sec.groups.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::rootfs::RunAs {
        uid: sec.uid.unwrap_or(0),
        gid: sec.gid.unwrap_or(0),
        groups: sec.groups,
    }))
}

/// The kubelet's `runAsNonRoot` check against a pulled image's `User` (it sees only the
/// config, not the image's files: a user name cannot be verified).
fn verify_non_root(sec: &Security, image_user: Option<&str>) -> std::result::Result<(), String> {
    if !sec.non_root {
        return Ok(());
    }
    match (sec.uid, image::ImageUser::of(image_user)) {
        (Some(0), _) => Err("container's runAsUser breaks non-root policy".into()),
        (Some(_), _) => Ok(()),
        (None, image::ImageUser::Uid(0)) => {
            Err("container has runAsNonRoot and image will run as root".into())
        }
        (None, image::ImageUser::Uid(_)) => Ok(()),
        (None, image::ImageUser::Name(name)) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify \
             user is non-root"
        )),
    }
}

/// Whom `container` of a pulled image runs as, and its `$HOME`: the securityContext's
/// `runAsUser`/`runAsGroup` over the image's `User`, names looked up in the image's
/// `/etc/passwd` and `/etc/group` (as runc does), the user's groups there plus `fsGroup`
/// and `supplementalGroups`. `None` is root with no extra groups.
fn image_run_as(
    pod: &Pod,
    container: &Container,
    stored: &StoredImage,
) -> std::result::Result<(Option<crate::rootfs::RunAs>, String), String> {
    let sec = security(pod, container);
    let image_user = stored.run.user.as_deref().filter(|u| !u.is_empty());
    verify_non_root(&sec, image_user)?;
    let read = |path: &str| {
        crate::store::read_in_root(&stored.rootfs, path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let passwd = image::parse_passwd(&read("/etc/passwd"));
    let group = image::parse_group(&read("/etc/group"));
    let user = image::resolve_user(image_user, sec.uid, sec.gid, &passwd, &group)?;
    let mut groups = user.groups;
    groups.extend(sec.groups);
    groups.sort_unstable();
    groups.dedup();
    let run_as =
        (user.uid != 0 || user.gid != 0 || !groups.is_empty()).then_some(crate::rootfs::RunAs {
            uid: user.uid,
            gid: user.gid,
            groups,
        });
    Ok((run_as, user.home))
}

/// A duration as Go prints a `time.Duration` truncated to milliseconds (`523ms`,
/// `1.2s`), as the kubelet's pull events show it.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (mins, rest) = (ms / 60_000, ms % 60_000);
    let secs = format!("{}.{:03}", rest / 1000, rest % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if mins > 0 {
        format!("{mins}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(pod_sc: serde_json::Value, container_sc: serde_json::Value) -> (Pod, Container) {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "image": "i", "securityContext": container_sc
        }))
        .expect("container");
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": pod_sc, "containers": [c.clone()]}
        }))
        .expect("pod");
        (p, c)
    }

    #[test]
    fn run_as_non_root_is_checked_like_the_kubelet() {
        let (p, c) = pod(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!({}),
        );
        let sec = security(&p, &c);
        assert_eq!(verify_non_root(&sec, Some("65532")), Ok(()));
        assert_eq!(verify_non_root(&sec, Some("65532:65532")), Ok(()));
        assert_eq!(
            verify_non_root(&sec, None),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        assert_eq!(
            verify_non_root(&sec, Some("0:0")),
            Err("container has runAsNonRoot and image will run as root".into())
        );
        assert_eq!(
            verify_non_root(&sec, Some("app")),
            Err(
                "container has runAsNonRoot and image has non-numeric user (app), cannot \
                 verify user is non-root"
                    .into()
            )
        );
        // A runAsUser decides, whatever the image says.
        let (p, c) = pod(
            serde_json::json!({"runAsNonRoot": true}),
            serde_json::json!({"runAsUser": 1000}),
        );
        assert_eq!(verify_non_root(&security(&p, &c), Some("app")), Ok(()));
        let (p, c) = pod(
            serde_json::json!({"runAsNonRoot": true, "runAsUser": 0}),
            serde_json::json!({}),
        );
        assert!(verify_non_root(&security(&p, &c), Some("65532")).is_err());
        // The container's settings win over the pod's.
        let (p, c) = pod(
            serde_json::json!({"runAsNonRoot": true, "fsGroup": 7, "supplementalGroups": [9, 7]}),
            serde_json::json!({"runAsNonRoot": false, "runAsGroup": 3}),
        );
        let sec = security(&p, &c);
        assert_eq!(
            sec,
            Security {
                uid: None,
                gid: Some(3),
                non_root: false,
                groups: vec![7, 9]
            }
        );
        assert_eq!(verify_non_root(&sec, None), Ok(()));
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_micros(523_900)), "523ms");
        assert_eq!(go_duration(Duration::from_millis(1200)), "1.2s");
        assert_eq!(go_duration(Duration::from_millis(2000)), "2s");
        assert_eq!(go_duration(Duration::from_millis(62_050)), "1m2.05s");
    }
}
