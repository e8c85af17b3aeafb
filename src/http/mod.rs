//! HTTP: routing, request validation, SSE and timeline handlers, health. Handlers are thin; the
//! JetStream work lives in [`crate::jetstream`], the wire format in [`crate::sse`].

mod board;
mod error;
mod events;
mod extract;
mod health;
mod timeline;

use std::sync::Arc;

use axum::http::{Method, Uri};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::config::Config;
use crate::jetstream::EventStore;
use crate::readiness::Readiness;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: EventStore,
    pub readiness: Arc<Readiness>,
    /// Cancelled when the replica shuts down: every open stream ends on it.
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(board::board))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/events", get(events::multi_events))
        .route(
            "/v1/deployments/{id}/events",
            get(events::deployment_events),
        )
        .route("/v1/pavilions/{id}/events", get(events::pavilion_events))
        .route(
            "/v1/deployments/{id}/timeline",
            get(timeline::deployment_timeline),
        )
        .route(
            "/v1/pavilions/{id}/timeline",
            get(timeline::pavilion_timeline),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
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
            if rest.ends_with("/events") || rest.ends_with("/timeline") {
                return ApiError::InvalidId("id must be 1 to 128 of A-Z a-z 0-9 _ -".into());
            }
        }
    }
    ApiError::NotFound
}
