//! HTTP: routing, request validation, auth, limits, SSE and timeline handlers, health and
//! metrics. Handlers are thin; JetStream work lives in [`crate::jetstream`], the wire format in
//! [`crate::sse`].

mod admission;
mod auth;
mod board;
mod error;
mod events;
mod extract;
mod health;
mod lean;
mod limits;
mod middleware;
mod poll_rate;
mod presence;
mod serve;
mod stall;
mod stream_body;
mod timeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, Uri};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;
pub use limits::ConnectionLimits;
pub use poll_rate::PollRate;
pub use serve::{serve, ServeSettings};
pub use stall::StallGuardedListener;

use crate::config::{Config, ConfigError};
use crate::fanout::Fanout;
use crate::presence::Presence;
use crate::readiness::Readiness;
use crate::shedding::{LiveLag, OpenStreams};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// Where clients' events come from (`RELAY_FANOUT`).
    pub fanout: Fanout,
    /// Numbers this replica's connections (`<replica>-c<n>` names them in spans and logs).
    pub next_connection: Arc<AtomicU64>,
    pub readiness: Arc<Readiness>,
    pub limits: Arc<ConnectionLimits>,
    /// Timeline polls per client.
    pub poll_rate: Arc<PollRate>,
    pub authorizer: Arc<auth::Authorizer>,
    /// The open streams, each of which the shedder may end (`relay.drain`).
    pub streams: Arc<OpenStreams>,
    /// How late live events reach this replica's clients.
    pub live_lag: Arc<LiveLag>,
    /// Who watches what, over the replicas; `None` with `RELAY_PRESENCE=false`.
    pub presence: Option<Arc<Presence>>,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        fanout: Fanout,
        readiness: Arc<Readiness>,
        live_lag: Arc<LiveLag>,
    ) -> Result<Self, ConfigError> {
        let authorizer = Arc::new(auth::Authorizer::from_config(&config)?);
        let address_header = (!config.client_address_header.is_empty())
            .then(|| HeaderName::try_from(config.client_address_header.as_str()))
            .transpose()
            .map_err(|e| ConfigError::new("RELAY_CLIENT_ADDRESS_HEADER", e.to_string()))?;
        let poll_rate = Arc::new(PollRate::new(
            config.timeline_rate,
            config.timeline_burst,
            address_header,
        ));
        Ok(Self {
            poll_rate,
            limits: ConnectionLimits::new(config.max_connections, config.max_connections_per_key),
            streams: OpenStreams::new(config.max_connection_age),
            live_lag,
            presence: config
                .presence
                .then(|| Presence::new(fanout.store().replica_id(), config.presence_interval)),
            config,
            fanout,
            next_connection: Arc::new(AtomicU64::new(1)),
            readiness,
            authorizer,
        })
    }
}

impl AppState {
    /// A new connection's id: the replica's id and a number.
    pub fn connection_id(&self) -> String {
        let n = self.next_connection.fetch_add(1, Ordering::Relaxed);
        format!("{}-c{n}", self.fanout.store().replica_id())
    }
}

pub fn router(state: AppState) -> Router {
    let streams = Router::new()
        .route("/v1/events", get(events::multi_events))
        .route(
            "/v1/deployments/{id}/events",
            get(events::deployment_events),
        )
        .route("/v1/pavilions/{id}/events", get(events::pavilion_events));
    let requests = Router::new()
        .route("/", get(board::board))
        .route("/client.js", get(board::client_js))
        .route("/client.d.ts", get(board::client_types))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/v1/deployments/{id}/timeline",
            get(timeline::deployment_timeline),
        )
        .route(
            "/v1/pavilions/{id}/timeline",
            get(timeline::pavilion_timeline),
        )
        .route(
            "/v1/deployments/{id}/presence",
            get(presence::deployment_presence),
        )
        .route(
            "/v1/pavilions/{id}/presence",
            get(presence::pavilion_presence),
        )
        .layer(axum::middleware::from_fn(middleware::request_timeout));
    let cors = cors_layer(&state.config.cors_origins());
    let mut app = streams
        .merge(requests)
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(middleware::count_requests))
        .layer(axum::middleware::from_fn(middleware::trace_requests));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app.layer(axum::middleware::from_fn(middleware::limit_sizes))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .with_state(state)
}

/// The admin listener's routes (`RELAY_ADMIN_LISTEN`, `docs/api.md` §3): metrics and probes,
/// kept off the public port so an Ingress never exposes `/metrics`. The probes answer on the
/// public port too, for load balancers that check the port they send traffic to.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(middleware::limit_sizes))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .with_state(state)
}

/// Cross-origin access for the listed origins only, with credentials (cookies carry tokens).
/// No origins: no CORS headers, so browsers allow same-origin use only.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET])
            .allow_headers([
                header::AUTHORIZATION,
                header::CACHE_CONTROL,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Unknown paths are 404, except an API path whose id segment is empty or contains a `/`
/// (`/v1/deployments//events`): that is a bad id, not a missing route.
async fn fallback(method: Method, uri: Uri) -> ApiError {
    if method != Method::GET {
        return ApiError::NotFound;
    }
    let path = uri.path();
    for prefix in ["/v1/deployments/", "/v1/pavilions/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            if ["/events", "/timeline", "/presence"]
                .iter()
                .any(|end| rest.ends_with(end))
            {
                return ApiError::InvalidId("id must be 1 to 128 of A-Z a-z 0-9 _ -".into());
            }
        }
    }
    ApiError::NotFound
}
