//! The SSE endpoints: validate, open a client feed at the resume point, stream frames.

use std::collections::VecDeque;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use metrics::counter;

use super::error::ApiError;
use super::extract::{resume_point, PathKey, QueryPairs};
use super::limits::{ConnectionPermit, LimitExceeded};
use super::stream_body::{BodySettings, OpenConnection, SseBody};
use super::AppState;
use crate::fanout::Opened;
use crate::jetstream::Opening;
use crate::readiness::NotReady;
use crate::sse;
use crate::subject::{ResumePoint, Subject, SubjectSet};
use crate::telemetry::metrics::{CONNECTIONS_REJECTED, RESUMES};
use crate::telemetry::{self, propagation};

pub async fn deployment_events(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    open_stream(
        state,
        SubjectSet::one(Subject::deployment(key)),
        &query,
        &headers,
    )
    .await
}

pub async fn pavilion_events(
    State(state): State<AppState>,
    PathKey(key): PathKey,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    open_stream(
        state,
        SubjectSet::one(Subject::pavilion(key)),
        &query,
        &headers,
    )
    .await
}

pub async fn multi_events(
    State(state): State<AppState>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let subjects = query.subject_set()?;
    open_stream(state, subjects, &query, &headers).await
}

async fn open_stream(
    state: AppState,
    subjects: SubjectSet,
    query: &QueryPairs,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let resume = resume_point(headers, query)?;
    let opened = admit_and_subscribe(&state, &subjects, query, headers, resume).await;
    let (permit, opened) = opened.inspect_err(|err| {
        if let Some(reason) = rejection_reason(err) {
            counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
        }
    })?;
    if resume.is_some() {
        counter!(RESUMES).increment(1);
    }
    tracing::debug!(subjects = ?subjects.nats_subjects(), resume = ?resume, "stream opened");

    let mut first = VecDeque::new();
    first.push_back(sse::retry_frame(sse::jittered_retry_ms(state.config.retry)));
    if let Some(opening) = opened.opening {
        first.push_back(opening_frame(opening));
    }
    let connection_id = state.connection_id();
    // Only built when spans are exported: nobody would see it otherwise.
    let connection_span = if !telemetry::exporting() {
        tracing::Span::none()
    } else {
        tracing::info_span!(
        "sse.connection",
        otel.kind = "internal",
        relay.connection_id = %connection_id,
        relay.subjects = %subjects.nats_subjects().join(","),
        relay.resume_point = resume.map(|r| r.0),
        relay.events_delivered = tracing::field::Empty,
        relay.end_reason = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        )
    };
    if let Some(id) = propagation::trace_id(&connection_span) {
        connection_span.record("trace_id", id);
    }
    let open = OpenConnection::new(
        permit,
        subjects.kind_label(),
        connection_span,
        connection_id,
    );
    let settings = BodySettings {
        heartbeat: state.config.heartbeat,
        retry: state.config.retry,
        draining: state.draining.clone(),
        drain_delay: state.drain_spread.mul_f64(rand::random::<f64>()),
    };
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

/// Auth, readiness and limits, in that order, then the consumer: a refused request never
/// touches NATS, and the permit is taken before the consumer is created.
async fn admit_and_subscribe(
    state: &AppState,
    subjects: &SubjectSet,
    query: &QueryPairs,
    headers: &HeaderMap,
    resume: Option<ResumePoint>,
) -> Result<(ConnectionPermit, Opened), ApiError> {
    state.authorizer.authorize(headers, query, subjects)?;
    state.readiness.check().map_err(|why| match why {
        NotReady::Draining => ApiError::Draining,
        NotReady::Unavailable => ApiError::NotReady("NATS or the stream is unreachable".into()),
        NotReady::LiveTailPending => ApiError::NotReady("the live tail is starting".into()),
    })?;
    let permit = state.limits.acquire(subjects).map_err(|over| {
        let (reason, message, subject) = match over {
            LimitExceeded::Replica => (
                "limit",
                "this replica holds its maximum of connections".to_owned(),
                subjects.subjects()[0].clone(),
            ),
            LimitExceeded::Key(subject) => (
                "key_limit",
                format!("too many connections for {subject} on this replica"),
                subject,
            ),
        };
        let after = resume.map_or(0, |r| r.0);
        ApiError::TooManyConnections {
            reason,
            message: format!("{message}; poll the timeline meanwhile"),
            poll: format!("{}?after={after}", subject.timeline_path()),
        }
    })?;
    let opened = state.fanout.open(subjects, resume).await?;
    Ok((permit, opened))
}

fn rejection_reason(err: &ApiError) -> Option<&'static str> {
    Some(match err {
        ApiError::TooManyConnections { reason, .. } => reason,
        ApiError::NotReady(_) => "not_ready",
        ApiError::Draining => "draining",
        ApiError::Unauthorized(_) => "unauthorized",
        ApiError::Forbidden(_) => "forbidden",
        _ => return None,
    })
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
