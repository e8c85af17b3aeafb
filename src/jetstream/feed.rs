//! A feed: the events of one ordered consumer, in stream order, each once, surviving NATS
//! reconnects and stream leader changes. In `RELAY_FANOUT=consumer` every SSE client has one;
//! in `shared` the replica's live tail is one (over the whole stream).
//!
//! The async-nats ordered consumer recreates itself after missed heartbeats or a deleted
//! consumer, continuing from the last sequence it delivered. Two of its edges are handled here:
//! - recreated before its first message, it starts from sequence 1; the feed therefore never
//!   yields a sequence at or below the last one it yielded (or its start);
//! - after a NATS restart its pull fails with "consumer not found" instead of recovering, and a
//!   failed server takes its consumers along without the client noticing for a while: the feed
//!   re-creates its consumer after the last sequence it yielded on every store reset
//!   (reconnection, leader election, stream peer offline) and on every error.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::consumer::pull::Ordered;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::{Stream, StreamExt};

use super::consumer::{ConsumerLease, ConsumerSpec, CLIENT_PULL_BATCH, CLIENT_PULL_EXPIRES};
use super::{EventStore, Opening, RelayEvent, StartPlan, StoreError};
use crate::subject::{ResumePoint, SubjectSet};

/// An opened subscription: what to tell the client first, then its events.
pub struct Subscription {
    pub opening: Option<Opening>,
    pub feed: EventFeed,
    /// Events above this sequence are live (stored after the client opened).
    pub live_after: u64,
}

/// A feed failed in a way its own recovery does not cover; the client should reconnect.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The consumer could not be re-created within its retry window.
    #[error("consumer could not be re-created: {0}")]
    Reopen(#[source] StoreError),
    /// A catch-up read kept failing (shared mode).
    #[error("catch-up failed: {0}")]
    CatchUp(#[source] StoreError),
    /// A delivered message had no JetStream metadata.
    #[error("message without JetStream metadata: {0}")]
    Metadata(#[source] async_nats::Error),
}

impl EventStore {
    /// Opens an ordered consumer for `subjects` after `resume` (or from the start).
    pub async fn subscribe(
        &self,
        subjects: &SubjectSet,
        resume: Option<ResumePoint>,
    ) -> Result<Subscription, StoreError> {
        let state = self.stream_state_since(tokio::time::Instant::now()).await?;
        let plan = StartPlan::new(resume, &state);
        let spec = ConsumerSpec {
            filters: subjects.nats_subjects(),
            batch: CLIENT_PULL_BATCH,
            expires: CLIENT_PULL_EXPIRES,
        };
        let feed = self.follow(spec, plan.after).await?;
        Ok(Subscription {
            opening: plan.opening,
            feed,
            live_after: plan.live_after,
        })
    }

    /// Follows the whole stream after `after`, pulling up to `batch` messages at a time, each
    /// pull waiting at most `expires`.
    pub async fn follow_stream(
        &self,
        after: u64,
        batch: i64,
        expires: std::time::Duration,
    ) -> Result<EventFeed, StoreError> {
        let spec = ConsumerSpec {
            filters: Vec::new(),
            batch,
            expires,
        };
        self.follow(spec, after).await
    }

    async fn follow(&self, spec: ConsumerSpec, after: u64) -> Result<EventFeed, StoreError> {
        let (messages, lease) = self.open_consumer(&spec, after).await?;
        Ok(EventFeed {
            state: FeedState::Streaming(Box::new(messages)),
            lease,
            floor: after,
            reconnected: self.next_reset(),
            store: self.clone(),
            spec,
        })
    }
}

/// The events of one consumer, in stream order, each once.
pub struct EventFeed {
    // Declared before `lease`: the consumer's pull task stops before the lease deletes it.
    state: FeedState,
    lease: ConsumerLease,
    /// The highest sequence the feed's reader has (its start or the last yielded).
    floor: u64,
    /// Resolves at the next consumer reset (reconnection, leader election, peer lost).
    reconnected: BoxFuture<'static, ()>,
    store: EventStore,
    spec: ConsumerSpec,
}

type Reopening = BoxFuture<'static, Result<(Ordered, ConsumerLease), StoreError>>;

enum FeedState {
    Streaming(Box<Ordered>),
    /// A new consumer is being opened after `floor`.
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
                        return Poll::Ready(Some(Err(FeedError::Reopen(err))));
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
                Err(err) => return Poll::Ready(Some(Err(FeedError::Metadata(err)))),
            };
            let seq = info.stream_sequence;
            let published = info.published;
            this.lease.seen(info.consumer);
            if seq <= this.floor {
                // A recreated consumer replaying from the start: the reader has these.
                continue;
            }
            this.floor = seq;
            let (message, _no_ack) = message.split();
            return Poll::Ready(Some(Ok(RelayEvent::received(seq, published, message))));
        }
    }
}

impl EventFeed {
    /// The highest sequence yielded (or the start).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Replaces the consumer with a new one starting after `floor`. Dropping the old consumer
    /// stream stops its pull task; the new lease replaces (and so deletes) the old one.
    fn reopen(&mut self) {
        let reopen = self
            .store
            .clone()
            .reopen_consumer(self.spec.clone(), self.floor);
        self.state = FeedState::Reopening(Box::pin(reopen));
    }
}
