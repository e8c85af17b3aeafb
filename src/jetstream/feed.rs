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
//!   (reconnection, leader election, stream peer offline) and on every error;
//! - a consumer re-created (by the library or here) after the stream was deleted and created
//!   again would go on from the old last sequence in the new stream, whose sequences mean other
//!   events: the first message of every re-created consumer is held until the stream's creation
//!   time is read and found unchanged; a changed one ends the feed ([`FeedError::StreamRecreated`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::jetstream::consumer::pull::Ordered;
use async_nats::jetstream::Message;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::{Stream, StreamExt};

use super::consumer::{
    client_pull_batch, ConsumerLease, ConsumerSpec, PullSizing, CLIENT_PULL_EXPIRES, REOPEN_FOR,
};
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
    /// The stream was deleted and created again under the feed: its sequences started over.
    #[error("the stream was deleted and created again")]
    StreamRecreated,
}

impl EventStore {
    /// Opens an ordered consumer for `subjects` after `resume` (or from the start).
    pub async fn subscribe(
        &self,
        subjects: &SubjectSet,
        resume: Option<ResumePoint>,
    ) -> Result<Subscription, StoreError> {
        let stream = self.stream_state_since(tokio::time::Instant::now()).await?;
        let plan = StartPlan::new(resume, &stream.state);
        let spec = ConsumerSpec {
            filters: subjects.nats_subjects(),
            batch: client_pull_batch(stream.state.messages, stream.state.bytes),
            expires: CLIENT_PULL_EXPIRES,
        };
        // The stream was read just before the consumer is created: its first one is trusted.
        let sizing = Some(PullSizing::default());
        let feed = self
            .follow(spec, plan.after, stream.created, false, sizing)
            .await?;
        Ok(Subscription {
            opening: plan.opening,
            feed,
            live_after: plan.live_after,
        })
    }

    /// Follows the whole stream created at `created` after `after`, pulling up to `batch`
    /// messages at a time, each pull waiting at most `expires`. Even its first consumer's first
    /// message waits for the stream's creation time to be checked: the follower may have read
    /// `created` long before.
    pub async fn follow_stream(
        &self,
        after: u64,
        created: time::OffsetDateTime,
        batch: i64,
        expires: std::time::Duration,
    ) -> Result<EventFeed, StoreError> {
        let spec = ConsumerSpec {
            filters: Vec::new(),
            batch,
            expires,
        };
        self.follow(spec, after, created, true, None).await
    }

    async fn follow(
        &self,
        spec: ConsumerSpec,
        after: u64,
        created: time::OffsetDateTime,
        check_first: bool,
        sizing: Option<PullSizing>,
    ) -> Result<EventFeed, StoreError> {
        let (messages, lease) = self.open_consumer(&spec, after).await?;
        Ok(EventFeed {
            state: FeedState::Streaming(Box::new(messages)),
            lease,
            floor: after,
            created,
            unchecked: check_first,
            reconnected: self.next_reset(),
            store: self.clone(),
            spec,
            sizing,
        })
    }

    /// Whether the stream is still the one created at `created`, as read by a request sent
    /// after `since` (shared with clients' starts); retried while it cannot be read.
    async fn confirm_stream(
        self,
        created: time::OffsetDateTime,
        since: tokio::time::Instant,
    ) -> Result<(), FeedError> {
        let deadline = tokio::time::Instant::now() + REOPEN_FOR;
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match self.stream_state_since(since).await {
                Ok(stream) if stream.created == created => return Ok(()),
                Ok(_) => return Err(FeedError::StreamRecreated),
                Err(err) if tokio::time::Instant::now() >= deadline => {
                    return Err(FeedError::Reopen(err))
                }
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(2));
        }
    }
}

/// The events of one consumer, in stream order, each once.
pub struct EventFeed {
    // Declared before `lease`: the consumer's pull task stops before the lease deletes it.
    state: FeedState,
    lease: ConsumerLease,
    /// The highest sequence the feed's reader has (its start or the last yielded).
    floor: u64,
    /// When the stream the feed follows was created.
    created: time::OffsetDateTime,
    /// The current consumer has not delivered since it was (re-)created.
    unchecked: bool,
    /// Resolves at the next consumer reset (reconnection, leader election, peer lost).
    reconnected: BoxFuture<'static, ()>,
    store: EventStore,
    spec: ConsumerSpec,
    /// A client's feed re-sizes its pull to the events it gets (`None`: the live tail's keeps
    /// its batch).
    sizing: Option<PullSizing>,
}

type Reopening = BoxFuture<'static, Result<(Ordered, ConsumerLease), StoreError>>;

enum FeedState {
    Streaming(Box<Ordered>),
    /// A re-created consumer's first event, held until the stream is known to be the same one.
    Checking {
        messages: Box<Ordered>,
        held: Box<RelayEvent>,
        check: BoxFuture<'static, Result<(), FeedError>>,
    },
    /// A new consumer is being opened after `floor`; `resized`: only to change its pull.
    Reopening {
        opening: Reopening,
        resized: bool,
    },
    Failed,
}

impl Stream for EventFeed {
    type Item = Result<RelayEvent, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.reconnected.poll_unpin(cx).is_ready() {
            this.reconnected = this.store.next_reset();
            if matches!(
                this.state,
                FeedState::Streaming(_) | FeedState::Checking { .. }
            ) {
                tracing::debug!(
                    floor = this.floor,
                    "NATS reconnected or stream leader changed; re-creating consumer"
                );
                // A held event is above `floor`: the new consumer delivers it again.
                this.reopen();
            }
        }
        loop {
            match std::mem::replace(&mut this.state, FeedState::Failed) {
                FeedState::Failed => return Poll::Ready(None),
                FeedState::Reopening {
                    mut opening,
                    resized,
                } => match opening.poll_unpin(cx) {
                    Poll::Pending => {
                        this.state = FeedState::Reopening { opening, resized };
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok((messages, lease))) => {
                        if resized {
                            tracing::debug!(
                                floor = this.floor,
                                batch = this.spec.batch,
                                "consumer re-created with another pull size"
                            );
                        } else {
                            tracing::info!(floor = this.floor, "consumer re-created");
                        }
                        this.state = FeedState::Streaming(Box::new(messages));
                        this.lease = lease;
                        this.unchecked = true;
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(FeedError::Reopen(err)))),
                },
                FeedState::Checking {
                    messages,
                    held,
                    mut check,
                } => match check.poll_unpin(cx) {
                    Poll::Pending => {
                        this.state = FeedState::Checking {
                            messages,
                            held,
                            check,
                        };
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {
                        this.yielded(messages, &held);
                        return Poll::Ready(Some(Ok(*held)));
                    }
                    Poll::Ready(Err(err)) => {
                        if matches!(err, FeedError::StreamRecreated) {
                            tracing::warn!(
                                floor = this.floor,
                                "the stream was deleted and created again; ending the feed"
                            );
                        }
                        return Poll::Ready(Some(Err(err)));
                    }
                },
                FeedState::Streaming(mut messages) => {
                    let message = match messages.poll_next_unpin(cx) {
                        Poll::Pending => {
                            this.state = FeedState::Streaming(messages);
                            return Poll::Pending;
                        }
                        Poll::Ready(None) => return Poll::Ready(None),
                        Poll::Ready(Some(Err(err))) => {
                            tracing::warn!(error = %err, floor = this.floor, "consumer failed; re-creating it");
                            this.reopen();
                            continue;
                        }
                        Poll::Ready(Some(Ok(message))) => message,
                    };
                    match this.take(message) {
                        Err(err) => {
                            this.state = FeedState::Streaming(messages);
                            return Poll::Ready(Some(Err(err)));
                        }
                        // A recreated consumer replaying from the start: the reader has these.
                        Ok(None) => this.state = FeedState::Streaming(messages),
                        Ok(Some(event)) if this.unchecked => {
                            this.unchecked = false;
                            let check = this
                                .store
                                .clone()
                                .confirm_stream(this.created, tokio::time::Instant::now());
                            this.state = FeedState::Checking {
                                messages,
                                held: Box::new(event),
                                check: Box::pin(check),
                            };
                        }
                        Ok(Some(event)) => {
                            this.yielded(messages, &event);
                            return Poll::Ready(Some(Ok(event)));
                        }
                    }
                }
            }
        }
    }
}

impl EventFeed {
    /// The highest sequence yielded (or the start).
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The event a message carries, `None` if the reader already has it. Notes which
    /// re-creation of the consumer delivered it: a new one's first event must be checked.
    fn take(&mut self, message: Message) -> Result<Option<RelayEvent>, FeedError> {
        let info = message.info().map_err(FeedError::Metadata)?;
        let seq = info.stream_sequence;
        let published = info.published;
        if self.lease.seen(info.consumer) {
            self.unchecked = true;
        }
        if seq <= self.floor {
            return Ok(None);
        }
        let (message, _no_ack) = message.split();
        Ok(Some(RelayEvent::received(seq, published, message)))
    }

    /// `event` is being yielded from `messages`: it is the new floor, and a client's consumer
    /// whose pull no longer fits its events is replaced by one with a pull that does (the
    /// messages the old one pulled ahead are dropped with it, and delivered again).
    fn yielded(&mut self, messages: Box<Ordered>, event: &RelayEvent) {
        self.floor = event.seq;
        let batch = self.spec.batch;
        match self
            .sizing
            .as_mut()
            .and_then(|s| s.delivered(batch, event.payload.len()))
        {
            Some(batch) => {
                self.spec.batch = batch;
                self.reopen_for(true);
            }
            None => self.state = FeedState::Streaming(messages),
        }
    }

    /// Replaces the consumer with a new one starting after `floor`. Dropping the old consumer
    /// stream stops its pull task; the new lease replaces (and so deletes) the old one.
    fn reopen(&mut self) {
        self.reopen_for(false);
    }

    fn reopen_for(&mut self, resized: bool) {
        let opening = Box::pin(
            self.store
                .clone()
                .reopen_consumer(self.spec.clone(), self.floor),
        );
        self.state = FeedState::Reopening { opening, resized };
    }
}
