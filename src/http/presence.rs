//! `GET /v1/{deployments|pavilions}/{id}/presence` (`docs/api.md` §12): who watches a subject
//! over every replica, summed from this replica's cache (no NATS request).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::error::ApiError;
use super::extract::{PathKey, QueryPairs};
use super::AppState;
use crate::subject::{Subject, SubjectSet};

pub async fn deployment_presence(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    presence(state, Subject::deployment(key), query, headers)
}

pub async fn pavilion_presence(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    presence(state, Subject::pavilion(key), query, headers)
}

/// The same grant as the subject's stream; 404 when presence is off.
fn presence(
    state: AppState,
    subject: Subject,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(presence) = &state.presence else {
        return Err(ApiError::NotFound);
    };
    state
        .authorizer
        .authorize(&headers, &query, &SubjectSet::one(subject.clone()))?;
    let watching = presence.watching(&subject);
    Ok(Json(crate::presence::body(&subject, &watching)))
}
