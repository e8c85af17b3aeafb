//! Cross-cutting request handling: request counting by route and status, size limits, a timeout
//! for non-streaming routes, and panics turned into a JSON 500.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::error::ApiError;
use crate::telemetry::metrics::HTTP_REQUESTS;
use crate::telemetry::{self, propagation};

/// Longest query string accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Most header bytes (names and values) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Time limit for routes that are not streams.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Counts every request as `relay_http_requests_total{route, status}`; the route is the matched
/// template (`/v1/deployments/{id}/events`), so ids never become labels.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    ::metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status).increment(1);
    response
}

/// One server span per request (`GET /v1/deployments/{id}/events`), continuing the caller's
/// trace when the request carries `traceparent`. Only the path is recorded, never the query
/// (it may hold an access token).
pub async fn trace_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if telemetry::exporting() {
        if let Some(parent) = propagation::extract_from_http(request.headers()) {
            // Before the span is first entered, or the parent cannot be set.
            let _ = span.set_parent(parent);
        }
        if let Some(id) = propagation::trace_id(&span) {
            span.record("trace_id", id);
        }
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// Refuses oversized queries and header sets before any handler runs.
pub async fn limit_sizes(request: Request, next: Next) -> Response {
    if request.uri().query().map_or(0, str::len) > MAX_QUERY_BYTES {
        return ApiError::TooLarge {
            status: StatusCode::URI_TOO_LONG,
            what: "query string",
        }
        .into_response();
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::TooLarge {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            what: "headers",
        }
        .into_response();
    }
    next.run(request).await
}

/// Bounds a non-streaming request.
pub async fn request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// A panic in a handler is logged and answered with a JSON 500; the worker lives on.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %detail, "handler panicked");
    ApiError::Internal.into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;
    use tower_http::catch_panic::CatchPanicLayer;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_a_json_500() {
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .layer(CatchPanicLayer::custom(panic_response));
        let request = axum::http::Request::get("/boom")
            .body(Body::empty())
            .expect("request");
        let response = app
            .oneshot(request)
            .await
            .expect("a response, not a dead worker");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"], "internal");
    }
}
