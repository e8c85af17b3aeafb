//! One SSE client's view of the stream: an ephemeral ordered consumer filtered to its subjects,
//! started at its resume point, deleted as soon as the client goes away.
//!
//! The async-nats ordered consumer recreates itself after missed heartbeats, a NATS restart or
//! a deleted consumer, continuing from the last sequence it delivered. Two of its edges are
//! handled here:
//! - recreated before its first message, it starts from sequence 1; the feed therefore never
//!   yields a sequence at or below the last one it yielded (or the resume point);
//! - dropping it does not delete the server-side consumer (that lingers for its 30 s inactivity
//!   threshold); [`ConsumerLease`] deletes it, following the `<name>_<n>` names of recreations.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use futures::{Stream, StreamExt};
use metrics::counter;
use tokio_util::task::TaskTracker;

use super::{EventStore, StoreError, API_TIMEOUT, EVENT_TYPE_HEADER};
use crate::sse::DEFAULT_EVENT;
use crate::subject::{ResumePoint, SubjectSet};
use crate::telemetry::metrics::{CONSUMERS_CREATED, CONSUMERS_DELETED};

/// One stored message, as the relay forwards it. Built by moving the message's parts, so the
/// per-event cost is no copy of subject, headers or payload.
#[derive(Debug, Clone)]
pub struct RelayEvent {
    /// The JetStream stream sequence: the SSE `id:`.
    pub seq: u64,
    pub subject: async_nats::Subject,
    /// Verbatim.
    pub payload: Bytes,
    /// When JetStream stored it.
    pub published: time::OffsetDateTime,
    /// All headers (the event type and the trace context travel here).
    pub headers: Option<HeaderMap>,
}

impl RelayEvent {
    pub(super) fn from_message(
        seq: u64,
        published: time::OffsetDateTime,
        message: async_nats::Message,
    ) -> Self {
        Self {
            seq,
            subject: message.subject,
            payload: message.payload,
            published,
            headers: message.headers,
        }
    }

    /// From the `Relay-Event-Type` header; `message` if absent or empty.
    pub fn event_type(&self) -> &str {
        self.headers
            .as_ref()
            .and_then(|h| h.get(EVENT_TYPE_HEADER))
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_EVENT)
    }
}

/// What the client must be told before the first event, decided once when the stream opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// The resume point is older than the stream retains; delivery continues from what is left.
    Gap {
        requested: u64,
        first_available: u64,
    },
    /// The resume point is beyond the stream's last sequence (the stream was recreated);
    /// every retained event follows.
    Reset { requested: u64, last_seq: u64 },
}

/// An opened subscription.
pub struct Subscription {
    pub opening: Option<Opening>,
    pub feed: EventFeed,
}

/// The consumer failed in a way its own recovery does not cover; the client should reconnect.
#[derive(Debug, thiserror::Error)]
#[error("consumer failed: {0}")]
pub struct FeedError(String);

impl EventStore {
    /// Opens an ordered consumer for `subjects` after `resume` (or from the start).
    pub async fn subscribe(
        &self,
        subjects: &SubjectSet,
        resume: Option<ResumePoint>,
    ) -> Result<Subscription, StoreError> {
        let state = self.stream_state().await?;
        let (deliver_policy, opening, floor) = plan_start(resume, &state);
        let filters = subjects.nats_subjects();
        let (messages, lease) = self.open_consumer(&filters, deliver_policy).await?;
        Ok(Subscription {
            opening,
            feed: EventFeed {
                state: FeedState::Streaming(Box::new(messages)),
                floor,
                reconnected: self.next_reset(),
                connection_id: lease.name_prefix.clone(),
                lease,
                store: self.clone(),
                filters,
            },
        })
    }

    /// Creates one ordered consumer and checks the server applied its filters. The returned
    /// lease deletes it when dropped (also when the filter check fails).
    async fn open_consumer(
        &self,
        filters: &[String],
        deliver_policy: DeliverPolicy,
    ) -> Result<(Ordered, ConsumerLease), StoreError> {
        let name = format!(
            "{}-{}",
            self.replica_id,
            self.next_consumer
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut config = OrderedConfig {
            name: Some(name.clone()),
            deliver_policy,
            max_batch: PULL_BATCH,
            max_expires: PULL_EXPIRES,
            ..Default::default()
        };
        match filters {
            [one] => config.filter_subject = one.clone(),
            _ => config.filter_subjects = filters.to_vec(),
        }
        let lease = ConsumerLease {
            js: self.js.clone(),
            deletions: self.deletions.clone(),
            stream: self.stream_name.to_string(),
            name_prefix: name,
            serial: 0,
        };
        let messages = tokio::time::timeout(API_TIMEOUT, async {
            let stream = self.js.get_stream_no_info(&*self.stream_name).await?;
            let consumer: jetstream::consumer::Consumer<OrderedConfig> =
                stream.create_consumer(config).await?;
            let echoed = &consumer.cached_info().config;
            let applied = if echoed.filter_subjects.is_empty() {
                vec![echoed.filter_subject.clone()]
            } else {
                echoed.filter_subjects.clone()
            };
            if applied != filters {
                return Ok(Err(StoreError::FilterIgnored));
            }
            Ok::<_, async_nats::Error>(Ok(consumer.messages().await?))
        })
        .await
        .map_err(StoreError::unavailable)?
        .map_err(StoreError::unavailable)??;
        counter!(CONSUMERS_CREATED).increment(1);
        Ok((messages, lease))
    }

    /// Opens a consumer again after the last delivered sequence, retrying while NATS is away.
    async fn reopen(
        self,
        filters: Vec<String>,
        floor: u64,
    ) -> Result<(Ordered, ConsumerLease), FeedError> {
        let policy = if floor == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: floor.saturating_add(1),
            }
        };
        let mut delay = Duration::from_millis(100);
        let mut last_error = String::new();
        let deadline = tokio::time::Instant::now() + REOPEN_FOR;
        while tokio::time::Instant::now() < deadline {
            match self.open_consumer(&filters, policy).await {
                Ok(opened) => return Ok(opened),
                Err(err) => last_error = err.to_string(),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        Err(FeedError(last_error))
    }
}

/// Messages one consumer pulls at a time: the most the relay buffers for a client that has
/// stopped reading (JetStream keeps the rest).
const PULL_BATCH: i64 = 100;

/// Longest pull: bounds the idle heartbeat to half of it, so a consumer lost with its server is
/// noticed (two missed heartbeats) within about this long even when no other signal arrives.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How long a failed consumer is re-created before the stream gives up and the client is left to
/// reconnect (to this or another replica) with its Last-Event-ID.
const REOPEN_FOR: Duration = Duration::from_secs(30);

/// Where the consumer starts, what to tell the client first, and the highest sequence the
/// client already has.
fn plan_start(
    resume: Option<ResumePoint>,
    state: &stream::State,
) -> (DeliverPolicy, Option<Opening>, u64) {
    let Some(ResumePoint(requested)) = resume else {
        return (DeliverPolicy::All, None, 0);
    };
    if requested > state.last_sequence {
        let opening = Opening::Reset {
            requested,
            last_seq: state.last_sequence,
        };
        return (DeliverPolicy::All, Some(opening), 0);
    }
    // requested <= last_sequence < u64::MAX, so +1 cannot overflow.
    let start = requested + 1;
    let opening = (start < state.first_sequence).then_some(Opening::Gap {
        requested,
        first_available: state.first_sequence,
    });
    (
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        opening,
        requested,
    )
}

/// The events of one subscription, in stream order, each once.
pub struct EventFeed {
    // Declared before `lease`: the consumer's pull task stops before the lease deletes it.
    state: FeedState,
    lease: ConsumerLease,
    /// The highest sequence the client has (resume point or last yielded).
    floor: u64,
    /// Resolves at the next consumer reset (reconnection, leader election, peer lost).
    reconnected: BoxFuture<'static, ()>,
    store: EventStore,
    filters: Vec<String>,
    connection_id: String,
}

type Reopening = BoxFuture<'static, Result<(Ordered, ConsumerLease), FeedError>>;

enum FeedState {
    Streaming(Box<Ordered>),
    /// The ordered consumer surfaced an error instead of recovering (after a NATS restart its
    /// pull fails with "consumer not found"); a new one is opened after `floor`.
    Reopening(Reopening),
    Failed,
}

impl Stream for EventFeed {
    type Item = Result<RelayEvent, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.reconnected.poll_unpin(cx).is_ready() {
            this.reconnected = this.store.next_reset();
            if matches!(this.state, FeedState::Streaming(_)) {
                tracing::debug!(
                    floor = this.floor,
                    "NATS reconnected or stream leader changed; re-creating consumer"
                );
                this.reopen();
            }
        }
        loop {
            let messages = match &mut this.state {
                FeedState::Streaming(messages) => messages,
                FeedState::Reopening(opening) => match opening.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((messages, lease))) => {
                        tracing::info!(floor = this.floor, "consumer re-created");
                        this.state = FeedState::Streaming(Box::new(messages));
                        this.lease = lease;
                        continue;
                    }
                    Poll::Ready(Err(err)) => {
                        this.state = FeedState::Failed;
                        return Poll::Ready(Some(Err(err)));
                    }
                },
                FeedState::Failed => return Poll::Ready(None),
            };
            let message = match messages.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(err))) => {
                    tracing::warn!(error = %err, floor = this.floor, "consumer failed; re-creating it");
                    this.reopen();
                    continue;
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            let info = match message.info() {
                Ok(info) => info,
                Err(err) => return Poll::Ready(Some(Err(FeedError(err.to_string())))),
            };
            let seq = info.stream_sequence;
            let published = info.published;
            if let Some(serial) = this.lease.serial_of(info.consumer) {
                this.lease.serial = serial;
            }
            if seq <= this.floor {
                // A recreated consumer replaying from the start: the client has these.
                continue;
            }
            this.floor = seq;
            let (message, _no_ack) = message.split();
            return Poll::Ready(Some(Ok(RelayEvent::from_message(seq, published, message))));
        }
    }
}

impl EventFeed {
    /// The first consumer's name (`<replica>-<n>`): unique, so it also names the connection.
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// Replaces the consumer with a new one starting after `floor`. Dropping the old consumer
    /// stream stops its pull task; the new lease replaces (and so deletes) the old one.
    fn reopen(&mut self) {
        let reopen = self.store.clone().reopen(self.filters.clone(), self.floor);
        self.state = FeedState::Reopening(Box::pin(reopen));
    }
}

/// Owns the server-side consumer of one subscription and deletes it when dropped.
struct ConsumerLease {
    js: jetstream::Context,
    deletions: TaskTracker,
    stream: String,
    /// The first consumer's name; recreations are `<prefix>_<n>`.
    name_prefix: String,
    /// `n` of the last consumer seen delivering.
    serial: u64,
}

/// How many recreations past the last one seen the lease looks for when deleting.
const RECREATIONS_TO_PROBE: u64 = 3;

impl ConsumerLease {
    fn name(&self, serial: u64) -> String {
        if serial == 0 {
            self.name_prefix.clone()
        } else {
            format!("{}_{serial}", self.name_prefix)
        }
    }

    fn serial_of(&self, consumer: &str) -> Option<u64> {
        let rest = consumer.strip_prefix(self.name_prefix.as_str())?;
        if rest.is_empty() {
            return Some(0);
        }
        rest.strip_prefix('_')?.parse().ok()
    }
}

impl Drop for ConsumerLease {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Shutting down: the inactivity threshold removes it.
        };
        let js = self.js.clone();
        let stream = std::mem::take(&mut self.stream);
        let names: Vec<String> = (self.serial..=self.serial + RECREATIONS_TO_PROBE)
            .map(|serial| self.name(serial))
            .collect();
        self.deletions.spawn_on(async move {
            // The live consumer is the last seen or a later recreation; earlier ones were
            // deleted by the recreation itself. Stop at the first that exists.
            for name in names {
                match tokio::time::timeout(
                    API_TIMEOUT,
                    js.delete_consumer_from_stream(&name, &stream),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        counter!(CONSUMERS_DELETED).increment(1);
                        tracing::debug!(consumer = %name, "consumer deleted");
                        return;
                    }
                    Ok(Err(err)) if is_not_found(&err) => continue,
                    Ok(Err(err)) => {
                        tracing::debug!(consumer = %name, error = %err, "consumer not deleted; its inactivity threshold will");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(consumer = %name, "consumer delete timed out; its inactivity threshold will");
                        return;
                    }
                }
            }
        }, &runtime);
    }
}

fn is_not_found(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        err.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(first: u64, last: u64) -> stream::State {
        let messages = if last >= first { last - first + 1 } else { 0 };
        serde_json::from_value(serde_json::json!({
            "messages": messages, "bytes": 0, "first_seq": first,
            "first_ts": "2026-11-23T00:00:00Z", "last_seq": last,
            "last_ts": "2026-11-23T00:00:00Z", "consumer_count": 0
        }))
        .expect("valid state")
    }

    #[test]
    fn no_resume_point_delivers_everything() {
        let (policy, opening, floor) = plan_start(None, &state(5, 10));
        assert_eq!(policy, DeliverPolicy::All);
        assert_eq!(opening, None);
        assert_eq!(floor, 0);
    }

    #[test]
    fn resume_inside_the_stream_starts_after_it() {
        let (policy, opening, floor) = plan_start(Some(ResumePoint(7)), &state(5, 10));
        assert_eq!(policy, DeliverPolicy::ByStartSequence { start_sequence: 8 });
        assert_eq!(opening, None);
        assert_eq!(floor, 7);
        // Exactly at the end: nothing to replay, no reset.
        let (_, opening, _) = plan_start(Some(ResumePoint(10)), &state(5, 10));
        assert_eq!(opening, None);
        // Just before the first retained one: no gap either.
        let (_, opening, _) = plan_start(Some(ResumePoint(4)), &state(5, 10));
        assert_eq!(opening, None);
    }

    #[test]
    fn resume_before_the_retained_start_is_a_gap() {
        let (_, opening, floor) = plan_start(Some(ResumePoint(2)), &state(5, 10));
        assert_eq!(
            opening,
            Some(Opening::Gap {
                requested: 2,
                first_available: 5
            })
        );
        assert_eq!(floor, 2);
    }

    #[test]
    fn resume_beyond_the_end_is_a_reset() {
        let (policy, opening, floor) = plan_start(Some(ResumePoint(11)), &state(5, 10));
        assert_eq!(policy, DeliverPolicy::All);
        assert_eq!(
            opening,
            Some(Opening::Reset {
                requested: 11,
                last_seq: 10
            })
        );
        assert_eq!(floor, 0);
        let (_, opening, _) = plan_start(Some(ResumePoint(u64::MAX)), &state(0, 0));
        assert!(matches!(opening, Some(Opening::Reset { .. })));
    }
}
