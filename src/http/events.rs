//! The SSE endpoints: validate, open a subscription at the resume point, stream frames.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::extract::{resume_point, PathKey, QueryPairs};
use super::AppState;
use crate::jetstream::{EventFeed, Opening};
use crate::readiness::NotReady;
use crate::sse;
use crate::subject::{Subject, SubjectSet};

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
    state.readiness.check().map_err(|why| match why {
        NotReady::Draining => ApiError::Draining,
        NotReady::Unavailable => ApiError::NotReady("NATS or the stream is unreachable".into()),
    })?;
    let subscription = state.store.subscribe(&subjects, resume).await?;
    tracing::debug!(subjects = ?subjects.nats_subjects(), resume = ?resume, "stream opened");

    let mut first = VecDeque::new();
    first.push_back(sse::retry_frame(sse::jittered_retry_ms(state.config.retry)));
    if let Some(opening) = subscription.opening {
        first.push_back(opening_frame(opening));
    }
    let body = FrameStream {
        first,
        feed: subscription.feed,
        heartbeat: state.config.heartbeat,
        retry: state.config.retry,
        shutdown: state.shutdown.clone(),
    }
    .into_stream();

    let mut response = Body::from_stream(body).into_response();
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

/// The body of one SSE response: opening frames, then events with heartbeats while idle, ending
/// when the consumer fails (the client reconnects with its Last-Event-ID) or the relay shuts down.
struct FrameStream {
    first: VecDeque<Bytes>,
    feed: EventFeed,
    heartbeat: Duration,
    retry: Duration,
    shutdown: CancellationToken,
}

struct Running {
    stream: FrameStream,
    idle: Pin<Box<Sleep>>,
    done: bool,
}

impl FrameStream {
    fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        let idle = Box::pin(tokio::time::sleep(self.heartbeat));
        let running = Running {
            stream: self,
            idle,
            done: false,
        };
        futures::stream::unfold(running, |mut run| async move {
            if run.done {
                return None;
            }
            if let Some(frame) = run.stream.first.pop_front() {
                return Some((Ok(frame), run));
            }
            let frame = tokio::select! {
                biased;
                _ = run.stream.shutdown.cancelled() => {
                    run.done = true;
                    let mut frame = sse::control_frame("relay.drain", r#"{"reason":"shutdown"}"#).to_vec();
                    frame.extend_from_slice(&sse::retry_frame(sse::jittered_retry_ms(run.stream.retry)));
                    Bytes::from(frame)
                }
                item = run.stream.feed.next() => match item {
                    Some(Ok(event)) => sse::event_frame(event.seq, &event.event_type, &event.payload),
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "ending stream; the client will resume");
                        return None;
                    }
                    None => return None,
                },
                _ = run.idle.as_mut() => Bytes::from_static(sse::HEARTBEAT),
            };
            let next = Instant::now() + run.stream.heartbeat;
            run.idle.as_mut().reset(next);
            Some((Ok(frame), run))
        })
    }
}
