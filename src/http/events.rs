//! The SSE endpoints: validate, open a client feed at the resume point, stream frames.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use opentelemetry::trace::TraceContextExt;
use tokio::time::{Instant, Sleep};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::error::ApiError;
use super::extract::{resume_point, PathKey, QueryPairs};
use super::limits::{ConnectionPermit, LimitExceeded};
use super::AppState;
use crate::fanout::{ClientFeed, Opened};
use crate::jetstream::{Opening, RelayEvent};
use crate::readiness::NotReady;
use crate::sse;
use crate::subject::{ResumePoint, Subject, SubjectSet};
use crate::telemetry::metrics::{
    CONNECTIONS, CONNECTIONS_REJECTED, DELIVERY_LAG, EVENTS_DELIVERED, RESUMES,
};
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
    let drain_delay = state.drain_spread.mul_f64(rand::random::<f64>());
    let drain = state
        .draining
        .clone()
        .cancelled_owned()
        .then(move |()| tokio::time::sleep(drain_delay));
    let body = FrameStream {
        first,
        feed: opened.feed,
        heartbeat: state.config.heartbeat,
        retry: state.config.retry,
        drain: Box::pin(drain),
        open,
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

/// What an open connection holds besides its feed: its limit slots, its place in the
/// connection gauge and its span. Dropped with the body, however the stream ends.
struct OpenConnection {
    _permit: ConnectionPermit,
    gauge: Gauge,
    delivered: Counter,
    lag: Histogram,
    span: tracing::Span,
    connection_id: String,
    events: u64,
    /// Why the stream ended; a stream dropped without one ended because the client left.
    end_reason: &'static str,
}

impl OpenConnection {
    fn new(
        permit: ConnectionPermit,
        kind: &'static str,
        span: tracing::Span,
        connection_id: String,
    ) -> Self {
        let gauge = gauge!(CONNECTIONS, "kind" => kind);
        gauge.increment(1.0);
        Self {
            _permit: permit,
            gauge,
            delivered: counter!(EVENTS_DELIVERED),
            lag: histogram!(DELIVERY_LAG),
            span,
            connection_id,
            events: 0,
            end_reason: "client_closed",
        }
    }

    fn record_delivery(&mut self, event: &RelayEvent) {
        self.delivered.increment(1);
        self.events += 1;
        let lag = (time::OffsetDateTime::now_utc() - event.published)
            .as_seconds_f64()
            .max(0.0);
        self.lag.record(lag);
        if telemetry::exporting() {
            self.trace_delivery(event, lag);
        }
    }

    /// One short span per delivered event, a child of the publisher's span (its trace context
    /// travels in the message headers) and linked to this connection's span; a child of the
    /// connection span when the publisher sent no context.
    fn trace_delivery(&self, event: &RelayEvent, lag_seconds: f64) {
        let span = tracing::info_span!(
            parent: None,
            "deliver",
            otel.name = %format_args!("deliver {}", event.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "receive",
            messaging.destination.name = %event.subject,
            relay.stream_sequence = event.seq,
            relay.connection_id = %self.connection_id,
            relay.delivery_lag_ms = lag_seconds * 1000.0,
        );
        let connection = self.span.context();
        match propagation::extract_from_nats(event.headers.as_ref()) {
            Some(publisher) => {
                let _ = span.set_parent(publisher);
                span.add_link(connection.span().span_context().clone());
            }
            None => {
                let _ = span.set_parent(connection);
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        self.span.record("relay.events_delivered", self.events);
        self.span.record("relay.end_reason", self.end_reason);
    }
}

/// The body of one SSE response: opening frames, then events with heartbeats while idle, ending
/// when the consumer fails for good (the client reconnects with its Last-Event-ID) or when this
/// connection's turn in the drain comes.
struct FrameStream {
    first: VecDeque<Bytes>,
    feed: ClientFeed,
    heartbeat: Duration,
    retry: Duration,
    /// Resolves at this connection's (randomly spread) moment in a drain.
    drain: BoxFuture<'static, ()>,
    open: OpenConnection,
}

struct Running {
    stream: FrameStream,
    /// Fires at the earliest moment a heartbeat may be due; re-armed only when it fires, not per
    /// frame (a timer-wheel update per delivered event costs more than reading the clock).
    idle: Pin<Box<Sleep>>,
    /// When the last frame was written.
    last_frame: Instant,
    done: bool,
}

impl FrameStream {
    fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
        let idle = Box::pin(tokio::time::sleep(self.heartbeat));
        let running = Running {
            stream: self,
            idle,
            last_frame: Instant::now(),
            done: false,
        };
        futures::stream::unfold(running, |mut run| async move {
            if run.done {
                return None;
            }
            if let Some(frame) = run.stream.first.pop_front() {
                return Some((Ok(frame), run));
            }
            let frame = loop {
                tokio::select! {
                biased;
                _ = &mut run.stream.drain => {
                    run.done = true;
                    run.stream.open.end_reason = "drain";
                    break drain_frame(run.stream.retry);
                }
                item = run.stream.feed.next() => match item {
                    Some(Ok(delivery)) => {
                        run.stream.open.record_delivery(&delivery.event);
                        break delivery.frame.clone();
                    }
                    Some(Err(err)) => {
                        run.stream.open.span.in_scope(|| {
                            tracing::warn!(error = %err, "ending stream; the client will resume");
                        });
                        run.stream.open.end_reason = "consumer_failed";
                        drop(run); // records the reason on the connection span
                        return None;
                    }
                    None => {
                        run.stream.open.end_reason = "feed_ended";
                        drop(run);
                        return None;
                    }
                },
                _ = run.idle.as_mut() => {
                    let due = run.last_frame + run.stream.heartbeat;
                    let now = Instant::now();
                    if now >= due {
                        run.idle.as_mut().reset(now + run.stream.heartbeat);
                        break Bytes::from_static(sse::HEARTBEAT);
                    }
                    run.idle.as_mut().reset(due);
                }
                }
            };
            run.last_frame = Instant::now();
            Some((Ok(frame), run))
        })
    }
}

/// `relay.drain`, then a jittered `retry:` so drained clients do not return as one herd.
fn drain_frame(retry: Duration) -> Bytes {
    let retry_ms = sse::jittered_retry_ms(retry);
    let mut frame = sse::control_frame(
        "relay.drain",
        &serde_json::json!({"reason": "shutdown", "retry_ms": retry_ms}).to_string(),
    )
    .to_vec();
    frame.extend_from_slice(&sse::retry_frame(retry_ms));
    Bytes::from(frame)
}
