//! `/healthz` (the process is alive) and `/readyz` (send it traffic).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use crate::readiness::NotReady;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(why) => {
            let reason = match why {
                NotReady::Draining => "draining",
                NotReady::Unavailable if !state.readiness.nats_connected() => "nats_disconnected",
                NotReady::Unavailable => "stream_unreachable",
                NotReady::LiveTailPending => "live_tail_starting",
                NotReady::Lagging => "lagging",
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": reason})),
            )
        }
    }
}

/// Prometheus text format.
pub async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics::render(),
    )
}
