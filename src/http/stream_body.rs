//! The body of one SSE response: opening frames, then each delivery's frame, heartbeats while
//! idle, and `relay.drain` when the replica ends the stream on purpose (`docs/api.md` §5, §10).
//!
//! Written as an `http_body::Body` by hand rather than a stream of futures: it is polled once
//! per delivered event on every connection, so what it does per poll is what a delivery costs.
//! A delivery is one queue pop, one or two histogram samples and the frame's bytes; the stream's
//! switch is one atomic load, the heartbeat timer is looked at only when the feed has nothing to
//! give, and the shared counters are added to when the connection goes idle (or every
//! [`REPORT_EVERY`] deliveries), not per event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body::Frame;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use opentelemetry::trace::TraceContextExt;
use tokio::time::{Instant, Sleep};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::limits::ConnectionPermit;
use crate::fanout::ClientFeed;
use crate::jetstream::RelayEvent;
use crate::presence::Attendance;
use crate::shedding::{LagWindow, LiveLag, ShedReason, StreamTicket};
use crate::sse;
use crate::subject::{ResumePoint, SubjectSet};
use crate::telemetry::metrics::{CONNECTIONS, DELIVERY_LAG, EVENTS_DELIVERED, LIVE_LAG};
use crate::telemetry::{self, propagation};

/// Deliveries after which a busy connection adds to the shared counters even if never idle.
const REPORT_EVERY: u64 = 256;

/// What an open connection holds besides its feed: its limit slots, its place in the
/// connection gauge and its span. Dropped with the body, however the stream ends.
pub struct OpenConnection {
    _permit: ConnectionPermit,
    gauge: Gauge,
    delivered: Counter,
    /// Deliveries not yet added to `delivered`.
    unreported: u64,
    lag: Histogram,
    live_lag: Histogram,
    /// Events above this sequence are live; those up to it a replay.
    live_after: u64,
    /// The replica's live lag, and this connection's share not yet added to it.
    live: Arc<LiveLag>,
    live_counts: LagWindow,
    span: tracing::Span,
    connection_id: String,
    events: u64,
    /// Why the stream ended; a stream dropped without one ended because the client left.
    end_reason: &'static str,
    /// Counts the stream in presence while it is open.
    _attendance: Option<Attendance>,
}

impl OpenConnection {
    /// A connection of `subjects` from `resume`, holding `permit`, whose events above
    /// `live_after` are live (their lag counts towards `live`); counted in the connection
    /// gauge, and with a span of its own when spans are exported (nobody would see it otherwise).
    pub fn new(
        permit: ConnectionPermit,
        subjects: &SubjectSet,
        resume: Option<ResumePoint>,
        connection_id: String,
        live: Arc<LiveLag>,
        live_after: u64,
        attendance: Option<Attendance>,
    ) -> Self {
        let span = if !telemetry::exporting() {
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
        if let Some(id) = propagation::trace_id(&span) {
            span.record("trace_id", id);
        }
        let gauge = gauge!(CONNECTIONS, "kind" => subjects.kind_label());
        gauge.increment(1.0);
        Self {
            _permit: permit,
            gauge,
            delivered: counter!(EVENTS_DELIVERED),
            unreported: 0,
            lag: histogram!(DELIVERY_LAG),
            live_lag: histogram!(LIVE_LAG),
            live_after,
            live,
            live_counts: LagWindow::default(),
            span,
            connection_id,
            events: 0,
            end_reason: "client_closed",
            _attendance: attendance,
        }
    }

    fn record_delivery(&mut self, event: &RelayEvent) {
        self.unreported += 1;
        self.events += 1;
        let lag = event.lag_seconds();
        self.lag.record(lag);
        if event.seq > self.live_after {
            self.live_lag.record(lag);
            self.live.classify(lag, &mut self.live_counts);
        }
        if self.unreported >= REPORT_EVERY {
            self.report();
        }
        if telemetry::exporting() {
            self.trace_delivery(event, lag);
        }
    }

    /// Adds the deliveries since the last report to the shared counter: one atomic update per
    /// burst rather than one per event, from every connection on every core.
    fn report(&mut self) {
        if self.unreported > 0 {
            self.delivered.increment(self.unreported);
            self.unreported = 0;
            self.live.add(&mut self.live_counts);
        }
    }

    /// One short span per delivered event, a child of the relay's `receive` span of the message
    /// (itself the publisher's child; a replayed message has none and the delivery is the
    /// publisher's child directly, its context travelling in the message headers), linked to
    /// this connection's span; a child of the connection span when the publisher sent no context.
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
        let parent = event
            .received
            .clone()
            .or_else(|| propagation::extract_from_nats(event.headers.as_ref()));
        match parent {
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
        self.report();
        self.gauge.decrement(1.0);
        self.span.record("relay.events_delivered", self.events);
        self.span.record("relay.end_reason", self.end_reason);
    }
}

/// The body of one SSE response.
pub struct SseBody {
    first: VecDeque<Bytes>,
    feed: ClientFeed,
    heartbeat: Duration,
    retry: Duration,
    /// The stream's place among the open ones, and its switch.
    ticket: StreamTicket,
    presence: Option<BoxStream<'static, Bytes>>,
    /// Fires at the earliest moment a heartbeat may be due; re-armed only when it fires, not per
    /// frame (a timer-wheel update per delivered event costs more than reading the clock).
    idle: Pin<Box<Sleep>>,
    /// When the last frame was handed out.
    last_frame: Instant,
    open: OpenConnection,
    done: bool,
}

/// How an [`SseBody`] behaves.
pub struct BodySettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    /// Ends the stream on purpose (`relay.drain`).
    pub ticket: StreamTicket,
    /// `relay.presence` frames, for a stream opened with `?presence=1`.
    pub presence: Option<BoxStream<'static, Bytes>>,
}

impl SseBody {
    /// `first` goes out before any event (`retry:`, a `relay.gap` or `relay.reset`).
    pub fn new(
        first: VecDeque<Bytes>,
        feed: ClientFeed,
        open: OpenConnection,
        settings: BodySettings,
    ) -> Self {
        Self {
            first,
            feed,
            heartbeat: settings.heartbeat,
            retry: settings.retry,
            ticket: settings.ticket,
            presence: settings.presence,
            idle: Box::pin(tokio::time::sleep(settings.heartbeat)),
            last_frame: Instant::now(),
            open,
            done: false,
        }
    }

    fn frame(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.last_frame = Instant::now();
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn end(&mut self, reason: &'static str) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.done = true;
        self.open.end_reason = reason;
        Poll::Ready(None)
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        // The socket is this task's again (if the live tail had it): first what the tail began.
        if let Some(report) = this.feed.disarm() {
            this.open.events += report.written;
            if let Some(at) = report.last_write {
                this.last_frame = this.last_frame.max(at);
            }
            if let Some(rest) = report.rest {
                return this.frame(rest);
            }
        }
        if let Some(frame) = this.first.pop_front() {
            return this.frame(frame);
        }
        if let Some(reason) = this.ticket.switch.reason() {
            return this.drained(reason);
        }
        if let Some(presence) = &mut this.presence {
            match presence.poll_next_unpin(cx) {
                Poll::Ready(Some(frame)) => return this.frame(frame),
                // The replica stopped its presence: the events go on without it.
                Poll::Ready(None) => this.presence = None,
                Poll::Pending => {}
            }
        }
        match this.feed.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(delivery))) => {
                this.open.record_delivery(&delivery.event);
                return this.frame(delivery.frame.clone());
            }
            Poll::Ready(Some(Err(err))) => {
                this.open.span.in_scope(|| {
                    tracing::warn!(error = %err, "ending stream; the client will resume");
                });
                return this.end("consumer_failed");
            }
            Poll::Ready(None) => return this.end("feed_ended"),
            Poll::Pending => {}
        }
        // Idle: the connection's deliveries so far are counted, and the drain and the heartbeat
        // timer are what can wake it next.
        this.open.report();
        if let Poll::Ready(reason) = this.ticket.switch.poll_ended(cx) {
            return this.drained(reason);
        }
        while this.idle.as_mut().poll(cx).is_ready() {
            let due = this.last_frame + this.heartbeat;
            let now = Instant::now();
            if now >= due {
                this.idle.as_mut().reset(now + this.heartbeat);
                return this.frame(Bytes::from_static(sse::HEARTBEAT));
            }
            this.idle.as_mut().reset(due);
        }
        // Everything yielded so far has been written (on the lean path): the tail may write
        // this client's next events itself while it waits.
        this.feed.arm();
        Poll::Pending
    }
}

impl SseBody {
    /// `relay.drain`, then a jittered `retry:` so drained clients do not return as one herd.
    fn drained(&mut self, reason: ShedReason) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // A client cut off with its replica has heard nothing for a while: it comes back a little
        // sooner (¾ of RELAY_RETRY ±50 %; the closes are spread too). The others are served
        // well until their turn and take the usual advice.
        let base = match reason {
            ShedReason::Unavailable => self.retry.mul_f64(0.75),
            _ => self.retry,
        };
        let retry_ms = sse::jittered_retry_ms(base);
        let mut frame = sse::control_frame(
            "relay.drain",
            &serde_json::json!({"reason": reason.as_str(), "retry_ms": retry_ms}).to_string(),
        )
        .to_vec();
        frame.extend_from_slice(&sse::retry_frame(retry_ms));
        self.done = true;
        self.open.end_reason = reason.as_str();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(frame)))))
    }
}
