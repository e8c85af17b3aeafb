//! Every HTTP error the relay returns: JSON `{"error":"<code>","message":"<text>"}` (`docs/api.md` §6).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::jetstream::StoreError;

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_UNAVAILABLE: &str = "2";
/// Seconds a client refused by a connection limit is told to wait (polling meanwhile).
const RETRY_AFTER_LIMIT: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    InvalidLastEventId(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    TooManyConnections {
        /// `limit` (per replica) or `key_limit` (per subject): the metrics label.
        reason: &'static str,
        message: String,
        /// The timeline URL to poll instead.
        poll: String,
    },
    #[error("too many timeline polls from this client; poll again after {retry_after_secs}s")]
    TooManyPolls { retry_after_secs: u64 },
    #[error("NATS JetStream is not available: {0}")]
    NotReady(String),
    #[error("this replica is shutting down; reconnect")]
    Draining,
    #[error("{what} too large")]
    TooLarge {
        status: StatusCode,
        what: &'static str,
    },
    #[error("the request took too long")]
    Timeout,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    poll: Option<&'a str>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidId(_)
            | ApiError::InvalidLastEventId(_)
            | ApiError::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyConnections { .. } | ApiError::TooManyPolls { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::NotReady(_) | ApiError::Draining => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge { status, .. } => *status,
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
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
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyConnections { .. } => "too_many_connections",
            ApiError::TooManyPolls { .. } => "too_many_requests",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Draining => "draining",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Timeout => "timeout",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Internal => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let poll = match &self {
            ApiError::TooManyConnections { poll, .. } => Some(poll.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            poll,
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        let retry_after = match (&self, self.status()) {
            (ApiError::TooManyPolls { retry_after_secs }, _) => {
                Some(HeaderValue::from(*retry_after_secs))
            }
            (_, StatusCode::SERVICE_UNAVAILABLE) => {
                Some(HeaderValue::from_static(RETRY_AFTER_UNAVAILABLE))
            }
            (_, StatusCode::TOO_MANY_REQUESTS) => Some(HeaderValue::from_static(RETRY_AFTER_LIMIT)),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(cause) => ApiError::NotReady(cause.to_string()),
            StoreError::FilterIgnored => {
                tracing::error!("nats-server ignored consumer filters; refusing to stream");
                ApiError::Internal
            }
        }
    }
}
