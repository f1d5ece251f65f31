//! Running the service: start-up order, graceful shutdown and the crash faults.
//!
//! The listener is bound before the database is opened, so `/healthz` answers while the
//! migrations run and `/readyz` says 503 until they are done, as a probe would see it on a
//! real release. A migration failure stops the server and ends the process non-zero.

use std::future::pending;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use reqwest::Url;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::config::{ServeArgs, VersionParseError, VersionSource};
use crate::db::{Store, StoreError};
use crate::faults::{FaultState, Faults};
use crate::http::{self, Shared};
use crate::metrics::Metrics;
use crate::migrations::{schema_for_version, MigrationError};
use crate::proxy::Proxy;

/// Exit code: a runtime failure (I/O, database, bind).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad flags or env (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: an injected crash (`crash_on_start`, `crash_after_secs`).
pub const EXIT_CRASH: u8 = 3;
/// Exit code: the database's schema is newer than this version supports.
pub const EXIT_SCHEMA_TOO_NEW: u8 = 4;

/// Everything `serve` needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Directory holding `app.db`.
    pub data_dir: PathBuf,
    /// App version to run.
    pub version: u32,
    /// Where [`ServeConfig::version`] came from.
    pub version_source: VersionSource,
    /// Items to seed a new database with.
    pub seed: u32,
    /// Upstream base URL (proxy role).
    pub upstream: Option<Url>,
    /// Proxy role: migrate the upstream's database for this app version at start.
    pub migrate_upstream: Option<u32>,
    /// Fault switches at start.
    pub faults: Faults,
    /// How long to drain after SIGTERM before closing the listener.
    pub shutdown_delay: std::time::Duration,
}

impl ServeConfig {
    /// Resolves the version and checks the fault switches.
    pub fn from_args(args: ServeArgs) -> Result<Self, RunError> {
        let (version, version_source) = args.version.resolve()?;
        let faults = Faults::from(args.faults);
        faults
            .validate()
            .map_err(|e| RunError::Config(e.to_string()))?;
        Ok(ServeConfig {
            listen: args.listen,
            data_dir: args.data_dir,
            version,
            version_source,
            seed: args.seed,
            upstream: args.upstream,
            migrate_upstream: args.migrate_upstream,
            faults,
            shutdown_delay: std::time::Duration::from_millis(args.shutdown_delay_ms),
        })
    }

    /// A store-role configuration for `version` on `data_dir`, listening on an ephemeral
    /// port of 127.0.0.1, without faults (handy in tests).
    pub fn local(data_dir: impl Into<PathBuf>, version: u32) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            version,
            version_source: VersionSource::Explicit,
            seed: 0,
            upstream: None,
            migrate_upstream: None,
            faults: Faults::default(),
            shutdown_delay: std::time::Duration::ZERO,
        }
    }
}

/// Why the service stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Flags or env were invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The `crash_on_start` fault.
    #[error("injected fault crash_on_start: exiting right after start")]
    CrashOnStart,
    /// The `crash_after_secs` fault.
    #[error("injected fault crash_after_secs: crashing now")]
    Crash,
    /// The listen address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upstream HTTP client could not be built.
    #[error("building the upstream client: {0}")]
    Proxy(#[from] reqwest::Error),
    /// The HTTP server stopped on its own.
    #[error("HTTP server failed: {0}")]
    Server(String),
}

impl From<VersionParseError> for RunError {
    fn from(e: VersionParseError) -> Self {
        RunError::Config(e.to_string())
    }
}

impl RunError {
    /// The process exit code for this error (see the `EXIT_*` constants).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => EXIT_USAGE,
            RunError::CrashOnStart | RunError::Crash => EXIT_CRASH,
            RunError::Store(StoreError::Migration(MigrationError::SchemaTooNew { .. })) => {
                EXIT_SCHEMA_TOO_NEW
            }
            _ => EXIT_FAILURE,
        }
    }
}

/// A running service.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Server {
    /// Logs the start line, applies `crash_on_start`, binds, and starts serving while the
    /// database is opened and migrated in the background.
    pub async fn start(cfg: ServeConfig) -> Result<Server, RunError> {
        let role = if cfg.upstream.is_some() {
            "proxy"
        } else {
            "store"
        };
        tracing::info!(
            version = cfg.version,
            version_from = %cfg.version_source,
            schema = schema_for_version(cfg.version),
            role,
            data_dir = %cfg.data_dir.display(),
            listen = %cfg.listen,
            upstream = cfg.upstream.as_ref().map(|u| u.as_str()),
            faults = %serde_json::to_string(&cfg.faults).unwrap_or_default(),
            "demo-app starting"
        );
        if cfg.faults.crash_on_start {
            return Err(RunError::CrashOnStart);
        }
        let proxy = cfg.upstream.clone().map(Proxy::new).transpose()?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| RunError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RunError::Bind {
            addr: cfg.listen,
            source,
        })?;
        tracing::info!(%addr, "listening");
        let shared = Arc::new(Shared {
            version: cfg.version,
            faults: FaultState::new(cfg.faults.clone()),
            metrics: Arc::new(Metrics::new(cfg.version)),
            store: OnceLock::new(),
            proxy,
            draining: Default::default(),
            upstream_migrated: cfg.migrate_upstream.is_none().into(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(listener, shared.clone(), cfg, shutdown_rx));
        Ok(Server {
            addr,
            shared,
            shutdown,
            task,
        })
    }

    /// The bound address (the real port when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state the handlers share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Asks for a graceful shutdown: stop accepting, finish in-flight requests, close the
    /// database.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until the service has stopped.
    pub async fn wait(self) -> Result<(), RunError> {
        join(self.task.await)
    }

    /// [`shutdown`](Server::shutdown) and [`wait`](Server::wait).
    pub async fn stop(self) -> Result<(), RunError> {
        self.shutdown();
        self.wait().await
    }
}

fn join(r: Result<Result<(), RunError>, tokio::task::JoinError>) -> Result<(), RunError> {
    r.map_err(|e| RunError::Server(format!("supervisor task: {e}")))?
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(cfg: ServeConfig) -> Result<(), RunError> {
    let delay = cfg.shutdown_delay;
    // Listening for the signals before anything is served: registered only once the
    // server was up, a SIGTERM that came in between (a busy machine, a pod deleted as it
    // starts) killed the process with no graceful shutdown.
    let signals = TerminationSignals::register();
    let mut server = Server::start(cfg).await?;
    tokio::select! {
        res = &mut server.task => return join(res),
        signal = signals.next() => {
            tracing::info!(signal, drain_ms = delay.as_millis() as u64, "shutting down gracefully");
        }
    }
    if !delay.is_zero() {
        // Unready first, so the endpoints controller takes this pod out of rotation
        // while it still answers the requests already routed to it.
        server
            .shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::select! {
            res = &mut server.task => return join(res),
            _ = tokio::time::sleep(delay) => {}
        }
    }
    server.shutdown();
    server.wait().await
}

/// SIGTERM and SIGINT, listened for from the moment this is made.
struct TerminationSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl TerminationSignals {
    fn register() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => TerminationSignals(Some((t, i))),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for signals; only a kill stops this");
                TerminationSignals(None)
            }
        }
    }

    /// The name of the first signal that arrives.
    async fn next(mut self) -> &'static str {
        let Some((term, int)) = self.0.as_mut() else {
            return pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => sleep_until(d).await,
        None => pending().await,
    }
}

type OpenResult = Result<(Store, crate::db::StartReport), StoreError>;

/// Owns the server task, the start-up of the store and the crash timer, and decides how the
/// service ends.
async fn supervise(
    listener: TcpListener,
    shared: Arc<Shared>,
    cfg: ServeConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let (drain, mut drain_rx) = watch::channel(false);
    let app = http::router(shared.clone());
    let mut serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = drain_rx.wait_for(|d| *d).await;
            })
            .await
    });

    if let (Some(proxy), Some(app_version)) = (shared.proxy.clone(), cfg.migrate_upstream) {
        let shared = shared.clone();
        tokio::spawn(async move {
            use backon::{ConstantBuilder, Retryable};
            // Until the upstream answers: it may start after this process.
            let every = ConstantBuilder::default()
                .with_delay(std::time::Duration::from_millis(500))
                .without_max_times();
            let migrated = (|| proxy.migrate_upstream(app_version))
                .retry(every)
                .notify(|e, _| tracing::warn!(error = %e, "migrating the upstream's database; retrying"))
                .await;
            if let Ok((from, to)) = migrated {
                tracing::info!(from, to, app_version, "upstream database migrated");
                shared
                    .upstream_migrated
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let mut init: Option<JoinHandle<OpenResult>> = shared.proxy.is_none().then(|| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            Store::open(
                &cfg.data_dir,
                cfg.version,
                cfg.seed,
                cfg.faults.corrupt_data,
            )
        })
    });
    let mut crash = shared.faults.crash_deadline();

    let outcome = loop {
        let deadline = *crash.borrow_and_update();
        tokio::select! {
            res = async { init.as_mut().expect("guarded by the branch condition").await },
                if init.is_some() =>
            {
                init = None;
                match res {
                    Ok(Ok((store, report))) => {
                        if report.corrupted > 0 {
                            tracing::warn!(rows = report.corrupted,
                                "injected fault corrupt_data: overwrote rows with garbage");
                        }
                        tracing::info!(
                            schema = report.migration.to,
                            migrated_from = report.migration.from,
                            seeded = report.migration.seeded,
                            items = report.items,
                            db = %store.path().display(),
                            "database ready"
                        );
                        shared.metrics.set_items(report.items);
                        let _ = shared.store.set(Arc::new(store));
                    }
                    Ok(Err(e)) => break Err(RunError::Store(e)),
                    Err(e) => break Err(RunError::Server(format!("start-up task: {e}"))),
                }
            }
            () = sleep_until_opt(deadline) => {
                // A crash: no draining, no clean close, like a process that falls over.
                serve.abort();
                return Err(RunError::Crash);
            }
            _ = crash.changed() => {}
            _ = shutdown.wait_for(|s| *s) => break Ok(()),
            res = &mut serve => {
                let why = match res {
                    Ok(Ok(())) => "stopped without being asked".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(RunError::Server(why));
            }
        }
    };

    drain.send_replace(true);
    if let Ok(Err(e)) = serve.await {
        tracing::warn!(error = %e, "HTTP server ended with an error while draining");
    }
    // A migration cannot be interrupted half-way; let it finish so the file is consistent.
    if let Some(init) = init {
        if let Ok(Ok((store, _))) = init.await {
            let _ = shared.store.set(Arc::new(store));
        }
    }
    if let Some(store) = shared.store.get() {
        match store.close() {
            Ok(()) => tracing::info!("database closed"),
            Err(e) => tracing::warn!(error = %e, "closing the database failed"),
        }
    }
    outcome
}
