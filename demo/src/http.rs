//! The HTTP surface: routes, handlers, the fault middleware and the JSON error type.

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::db::{Item, ItemInput, Store, StoreError};
use crate::faults::{FaultState, Faults, FaultsPatch};
use crate::metrics::{self, Metrics};
use crate::proxy::Proxy;

/// What the handlers share.
#[derive(Debug)]
pub struct Shared {
    /// Running app version.
    pub version: u32,
    /// Live fault switches.
    pub faults: FaultState,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The database, set once it is open and migrated (never in the proxy role).
    pub store: OnceLock<Arc<Store>>,
    /// The upstream, in the proxy role.
    pub proxy: Option<Proxy>,
    /// Set after SIGTERM while the shutdown delay runs: `/readyz` answers 503.
    pub draining: std::sync::atomic::AtomicBool,
    /// In the proxy role: false until the upstream's database was migrated as
    /// `--migrate-upstream` asks (true when it asks nothing); `/readyz` waits for it.
    pub upstream_migrated: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// `store` or `proxy`.
    pub fn role(&self) -> &'static str {
        if self.proxy.is_some() {
            "proxy"
        } else {
            "store"
        }
    }
}

/// The answer of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VersionInfo {
    /// Running app version.
    pub version: u32,
    /// Schema version of the open database; `null` before it is open and in the proxy role.
    pub schema_version: Option<u32>,
    /// `store` (owns the data) or `proxy` (forwards to an upstream).
    pub role: String,
    /// The upstream base URL, in the proxy role.
    pub upstream: Option<String>,
}

/// A failed API request, answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No such item.
    #[error("item {0} not found")]
    NotFound(i64),
    /// The request was malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The service cannot answer yet.
    #[error("{0}")]
    Unavailable(String),
    /// The fault switch answered for us.
    #[error("injected fault: error_rate")]
    Injected,
    /// The upstream failed.
    #[error("{0}")]
    BadGateway(String),
    /// A bug or a database failure.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadRequest(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Injected | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        };
        if let ApiError::Internal(msg) | ApiError::BadGateway(msg) = &self {
            tracing::error!(error = %msg, "request failed");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// Builds the router for the given shared state.
pub fn router(state: Arc<Shared>) -> Router {
    let mut app = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/version", get(version))
        .route("/admin/faults", get(get_faults).post(post_faults))
        .route("/admin/migrate", axum::routing::post(post_migrate));
    app = if state.proxy.is_some() {
        app.route("/api", any(proxied))
            .route("/api/{*rest}", any(proxied))
    } else {
        app.route("/api/items", get(list_items).post(create_item))
            .route(
                "/api/items/{id}",
                get(get_item).put(update_item).delete(delete_item),
            )
    };
    let metrics = state.metrics.clone();
    app.layer(middleware::from_fn_with_state(state.clone(), inject_faults))
        // Outermost, so injected errors and latency are counted like real ones.
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
        .with_state(state)
}

/// Applies the latency and error-rate faults to `/` and `/api/*` only, so probes and
/// scrapes keep telling the truth about a misbehaving release.
async fn inject_faults(State(state): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let api = path == "/api" || path.starts_with("/api/");
    if api {
        if let Some(d) = state.faults.added_latency() {
            tokio::time::sleep(d).await;
        }
    }
    if (api || path == "/") && state.faults.should_fail() {
        return ApiError::Injected.into_response();
    }
    next.run(req).await
}

async fn root(State(state): State<Arc<Shared>>) -> String {
    format!("demo-app version {} ({})\n", state.version, state.role())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<Shared>>) -> (StatusCode, String) {
    let unready = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    };
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return unready("shutting down".into());
    }
    if state.faults.get().never_ready {
        return unready("fault never_ready is set".into());
    }
    if let Some(proxy) = &state.proxy {
        if !state
            .upstream_migrated
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return unready("migrating the upstream's database".into());
        }
        if let Err(why) = proxy.check_ready().await {
            return unready(why);
        }
    } else if state.store.get().is_none() {
        return unready("database not open and migrated yet".into());
    }
    (StatusCode::OK, "ready\n".into())
}

async fn metrics_text(State(state): State<Arc<Shared>>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => ApiError::Internal("encoding metrics failed".into()).into_response(),
    }
}

async fn version(State(state): State<Arc<Shared>>) -> Json<VersionInfo> {
    Json(VersionInfo {
        version: state.version,
        schema_version: state.store.get().map(|s| s.schema()),
        role: state.role().into(),
        upstream: state.proxy.as_ref().map(|p| p.base().to_string()),
    })
}

async fn get_faults(State(state): State<Arc<Shared>>) -> Json<Faults> {
    Json(state.faults.get())
}

async fn post_faults(
    State(state): State<Arc<Shared>>,
    patch: Result<Json<FaultsPatch>, JsonRejection>,
) -> Result<Json<Faults>, ApiError> {
    let Json(patch) = patch?;
    let next = state
        .faults
        .apply(&patch)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(faults = ?next, "fault switches changed");
    Ok(Json(next))
}

/// The body of `POST /admin/migrate`: the app version whose schema the database should
/// reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateRequest {
    /// App version (its schema is `schema_for_version(app_version)`).
    pub app_version: u32,
}

/// The answer of `POST /admin/migrate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MigrateReport {
    /// Schema version before.
    pub from: u32,
    /// Schema version now.
    pub to: u32,
}

/// Migrates the store's database for another app version, as a release of a client that
/// runs its own migrations against a shared database does (Flyway, Alembic, Rails).
async fn post_migrate(
    State(state): State<Arc<Shared>>,
    req: Result<Json<MigrateRequest>, JsonRejection>,
) -> Result<Json<MigrateReport>, ApiError> {
    let Json(req) = req?;
    if state.proxy.is_some() {
        return Err(ApiError::BadRequest(
            "this process keeps no data (role proxy); migrate its upstream".into(),
        ));
    }
    let report = with_store(&state, move |s| s.migrate_to(req.app_version)).await?;
    tracing::info!(
        from = report.from,
        to = report.to,
        app_version = req.app_version,
        "database migrated on request"
    );
    Ok(Json(MigrateReport {
        from: report.from,
        to: report.to,
    }))
}

async fn proxied(State(state): State<Arc<Shared>>, req: Request) -> Result<Response, ApiError> {
    let proxy = state
        .proxy
        .as_ref()
        .ok_or_else(|| ApiError::Internal("proxy route without an upstream".into()))?;
    proxy
        .forward(req)
        .await
        .map_err(|e| ApiError::BadGateway(e.to_string()))
}

/// Runs a store call off the async workers; SQLite calls block.
async fn with_store<T, F>(state: &Shared, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = state
        .store
        .get()
        .cloned()
        .ok_or_else(|| ApiError::Unavailable("database not open and migrated yet".into()))?;
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
        .map_err(ApiError::from)
}

async fn list_items(State(state): State<Arc<Shared>>) -> Result<Json<Vec<Item>>, ApiError> {
    with_store(&state, |s| s.list()).await.map(Json)
}

async fn get_item(
    State(state): State<Arc<Shared>>,
    Path(id): Path<i64>,
) -> Result<Json<Item>, ApiError> {
    with_store(&state, move |s| s.get(id))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound(id))
}

async fn create_item(
    State(state): State<Arc<Shared>>,
    input: Result<Json<ItemInput>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(input) = input?;
    input.validate().map_err(ApiError::BadRequest)?;
    let (item, count) = with_store(&state, move |s| Ok((s.create(&input)?, s.count()?))).await?;
    state.metrics.set_items(count);
    let location = format!("/api/items/{}", item.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(item),
    )
        .into_response())
}

async fn update_item(
    State(state): State<Arc<Shared>>,
    Path(id): Path<i64>,
    input: Result<Json<ItemInput>, JsonRejection>,
) -> Result<Json<Item>, ApiError> {
    let Json(input) = input?;
    input.validate().map_err(ApiError::BadRequest)?;
    with_store(&state, move |s| s.update(id, &input))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound(id))
}

async fn delete_item(
    State(state): State<Arc<Shared>>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let (deleted, count) = with_store(&state, move |s| Ok((s.delete(id)?, s.count()?))).await?;
    state.metrics.set_items(count);
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(id))
    }
}
