//! Every HTTP error the relay returns: JSON `{"error":"<code>","message":"<text>"}` (contract §6).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::jetstream::StoreError;

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_UNAVAILABLE: &str = "2";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    InvalidLastEventId(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("NATS JetStream is not available: {0}")]
    NotReady(String),
    #[error("this replica is shutting down; reconnect")]
    Draining,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidId(_)
            | ApiError::InvalidLastEventId(_)
            | ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::NotReady(_) | ApiError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidId(_) => "invalid_id",
            ApiError::InvalidLastEventId(_) => "invalid_last_event_id",
            ApiError::InvalidQuery(_) => "invalid_query",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Draining => "draining",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Internal => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_UNAVAILABLE),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(msg) => ApiError::NotReady(msg),
            StoreError::FilterIgnored => {
                tracing::error!("nats-server ignored consumer filters; refusing to stream");
                ApiError::Internal
            }
        }
    }
}
