//! The SSE endpoints, thin: each names its subjects; [`open_stream`] admits the request
//! ([`admission`]) and answers with the stream's body ([`SseBody`]).

use std::collections::VecDeque;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;

use super::admission;
use super::error::ApiError;
use super::extract::{resume_point, PathKey, QueryPairs};
use super::lean::LeanSocket;
use super::stream_body::{BodySettings, OpenConnection, SseBody};
use super::AppState;
use crate::jetstream::Opening;
use crate::sse;
use crate::subject::{Subject, SubjectSet};
use crate::telemetry;

pub async fn deployment_events(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
    socket: Option<Extension<LeanSocket>>,
) -> Result<Response, ApiError> {
    open_stream(
        state,
        SubjectSet::one(Subject::deployment(key)),
        &query,
        &headers,
        socket,
    )
    .await
}

pub async fn pavilion_events(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
    socket: Option<Extension<LeanSocket>>,
) -> Result<Response, ApiError> {
    open_stream(
        state,
        SubjectSet::one(Subject::pavilion(key)),
        &query,
        &headers,
        socket,
    )
    .await
}

pub async fn multi_events(
    State(state): State<AppState>,
    query: QueryPairs,
    headers: HeaderMap,
    socket: Option<Extension<LeanSocket>>,
) -> Result<Response, ApiError> {
    let subjects = query.subject_set()?;
    open_stream(state, subjects, &query, &headers, socket).await
}

/// What every SSE endpoint does once it knows its subjects: admission, then the response body.
async fn open_stream(
    state: AppState,
    subjects: SubjectSet,
    query: &QueryPairs,
    headers: &HeaderMap,
    socket: Option<Extension<LeanSocket>>,
) -> Result<Response, ApiError> {
    let resume = resume_point(headers, query)?;
    let follow_presence = query.flag("presence")?;
    let admission::Admitted {
        permit,
        opened,
        user,
    } = admission::admit(&state, &subjects, query, headers, resume).await?;
    tracing::debug!(subjects = ?subjects.nats_subjects(), resume = ?resume, "stream opened");
    let presence = state.presence.as_ref();
    let attendance = presence.map(|p| p.join(&subjects, user));
    let presence_frames = presence
        .filter(|_| follow_presence)
        .map(|p| p.follow(&subjects));

    let mut first = VecDeque::new();
    first.push_back(sse::retry_frame(sse::jittered_retry_ms(state.config.retry)));
    if let Some(opening) = opened.opening {
        first.push_back(opening_frame(opening));
    }
    let open = OpenConnection::new(
        permit,
        &subjects,
        resume,
        state.connection_id(),
        state.live_lag.clone(),
        opened.live_after,
        attendance,
    );
    let settings = BodySettings {
        heartbeat: state.config.heartbeat,
        retry: state.config.retry,
        ticket: state.streams.register(),
        presence: presence_frames,
    };
    // With spans exported, every delivery opens one in the connection's task: no direct writes
    // (`jaeger`'s shared-mode test finds a deliver span per client).
    if let Some(Extension(LeanSocket(socket))) = socket.filter(|_| !telemetry::exporting()) {
        opened.feed.write_directly(socket, opened.live_after);
    }
    let body = SseBody::new(first, opened.feed, open, settings);

    let mut response = Body::new(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn opening_frame(opening: Opening) -> Bytes {
    match opening {
        Opening::Gap {
            requested,
            first_available,
        } => sse::control_frame(
            "relay.gap",
            &serde_json::json!({"requested": requested, "first_available": first_available})
                .to_string(),
        ),
        Opening::Reset {
            requested,
            last_seq,
        } => sse::control_frame(
            "relay.reset",
            &serde_json::json!({"requested": requested, "last_seq": last_seq}).to_string(),
        ),
    }
}
