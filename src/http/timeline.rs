//! `GET /v1/{deployments|pavilions}/{id}/timeline?after=&limit=`: the polling fallback.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;

use super::error::ApiError;
use super::extract::{PathKey, Peer, QueryPairs};
use super::AppState;
use crate::jetstream::TimelinePage;
use crate::subject::{Subject, SubjectSet};

/// Events per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

pub async fn deployment_timeline(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<TimelinePage>, ApiError> {
    page(state, Subject::deployment(key), query, headers, peer).await
}

pub async fn pavilion_timeline(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<TimelinePage>, ApiError> {
    page(state, Subject::pavilion(key), query, headers, peer).await
}

async fn page(
    state: AppState,
    subject: Subject,
    query: QueryPairs,
    headers: HeaderMap,
    peer: Peer,
) -> Result<Json<TimelinePage>, ApiError> {
    let after = query.u64_param("after")?.unwrap_or(0);
    let limit = match query.u64_param("limit")? {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(_) => {
            return Err(ApiError::InvalidQuery(format!(
                "limit must be 1 to {MAX_LIMIT}"
            )))
        }
    };
    state
        .authorizer
        .authorize(&headers, &query, &SubjectSet::one(subject.clone()))?;
    // Checked once the request is known to be valid and allowed: only real polls spend budget.
    state.poll_rate.check(peer.0, &headers)?;
    if !state.readiness.nats_connected() {
        return Err(ApiError::NotReady("NATS is disconnected".into()));
    }
    state
        .fanout
        .timeline(&subject, after, limit)
        .await
        .map(Json)
        .map_err(ApiError::from)
}
