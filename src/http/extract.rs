//! Request parsing: ids, subject lists and resume points are validated here, before any handler
//! (and so before NATS) sees them.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::ApiError;
use crate::subject::{ResumePoint, Subject, SubjectKey, SubjectKind, SubjectSet};

/// The id of a `/v1/{deployments|pavilions}/{id}/...` path, validated. Percent-encoded forms are
/// decoded first, so `%2A` is refused like `*`.
pub struct PathKey(pub SubjectKey);

impl<S: Send + Sync> FromRequestParts<S> for PathKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidId("id is not valid UTF-8".into()))?;
        SubjectKey::parse(&raw)
            .map(PathKey)
            .map_err(|e| ApiError::InvalidId(e.to_string()))
    }
}

/// The query string as decoded pairs (repeated keys kept: `deployment=a&deployment=b`).
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        Ok(QueryPairs(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

impl QueryPairs {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The subjects of a multi-subject request: every `deployment=` and `pavilion=`.
    pub fn subject_set(&self) -> Result<SubjectSet, ApiError> {
        let mut subjects = Vec::new();
        for (key, value) in &self.0 {
            let kind = match key.as_str() {
                "deployment" => SubjectKind::Deployment,
                "pavilion" => SubjectKind::Pavilion,
                _ => continue,
            };
            let id = SubjectKey::parse(value)
                .map_err(|e| ApiError::InvalidId(format!("{key} '{}': {e}", truncate(value))))?;
            subjects.push(Subject::new(kind, id));
        }
        SubjectSet::new(subjects).map_err(|e| ApiError::InvalidQuery(e.to_string()))
    }

    /// An optional on/off parameter: `1` or `true` is on; absent, empty, `0` or `false` off.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("" | "0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(_) => Err(ApiError::InvalidQuery(format!("{key} must be 1 or 0"))),
        }
    }

    /// An optional unsigned integer parameter.
    pub fn u64_param(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                ResumePoint::parse(v).map(|p| p.0).map_err(|_| {
                    ApiError::InvalidQuery(format!("{key} must be an unsigned integer"))
                })
            })
            .transpose()
    }
}

/// The resume point: the `Last-Event-ID` header, else the `last_event_id` query parameter (a
/// browser's reconnect sends the header while the page URL keeps its old query). Empty values
/// count as absent, as an `EventSource` with no id sends none.
pub fn resume_point(
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Option<ResumePoint>, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::InvalidLastEventId("Last-Event-ID is not ASCII".into()))
        })
        .transpose()?;
    let raw = header
        .filter(|v| !v.is_empty())
        .or_else(|| query.get("last_event_id").filter(|v| !v.is_empty()));
    raw.map(|v| ResumePoint::parse(v).map_err(|e| ApiError::InvalidLastEventId(e.to_string())))
        .transpose()
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The TCP peer of the request, as the server loop recorded it (none in a test that calls the
/// router directly).
pub struct Peer(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0),
        ))
    }
}
