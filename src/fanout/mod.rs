//! How events reach SSE clients, in one of two modes (`RELAY_FANOUT`, `docs/api.md` §1):
//! - `consumer`: every client follows its own ordered JetStream consumer;
//! - `shared`: the replica follows the stream once (the [`LiveTail`]), frames each event once and
//!   hands it to every local client of its subject; a client's catch-up comes from the tail's
//!   ring or, for cursors older than the ring, from JetStream direct gets.
//!
//! Both give a client the same thing — a [`ClientFeed`] of [`Delivery`]s after its resume point,
//! each once, ascending — so `http/` does not know which mode runs. Nothing here knows HTTP.

mod catch_up;
mod client;
mod direct;
mod handover;
mod registry;
mod ring;
mod tail;
mod writers;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

pub use client::SharedFeed;
pub use direct::{DirectReport, FrameSocket};
use handover::Sequenced;
pub use tail::{LiveTail, TailSettings};

use crate::jetstream::{
    EventFeed, EventStore, FeedError, Opening, RelayEvent, StoreError, TimelinePage,
};
use crate::sse;
use crate::subject::{ResumePoint, Subject, SubjectSet};

/// An event and its SSE frame, built once and shared by every client that receives it.
#[derive(Debug)]
pub struct Delivery {
    pub event: RelayEvent,
    pub frame: Bytes,
}

impl Delivery {
    pub fn new(event: RelayEvent) -> Self {
        let frame = sse::event_frame(event.seq, event.event_type(), &event.payload);
        Self { event, frame }
    }

    /// Bytes it holds (payload, frame, headers, roughly): what the ring's budget counts.
    pub fn size(&self) -> usize {
        let headers = self.event.headers.as_ref().map_or(0, |h| {
            h.iter()
                .map(|(name, values)| {
                    AsRef::<str>::as_ref(name).len()
                        + values.iter().map(|v| v.as_str().len()).sum::<usize>()
                })
                .sum()
        });
        std::mem::size_of::<Self>()
            + self.event.payload.len()
            + self.frame.len()
            + self.event.subject.len()
            + headers
    }

    #[cfg(test)]
    fn for_test(seq: u64, subject: &str) -> Self {
        Self::new(RelayEvent::for_test(seq, subject))
    }
}

impl Sequenced for Arc<Delivery> {
    fn seq(&self) -> u64 {
        self.event.seq
    }
}

/// Where clients' events come from on this replica.
#[derive(Clone)]
pub enum Fanout {
    /// One ordered consumer per client.
    Consumer(Box<EventStore>),
    /// One live tail per replica.
    Shared(LiveTail),
}

/// What a client is told first, then its events.
pub struct Opened {
    pub opening: Option<Opening>,
    pub feed: ClientFeed,
    /// Events above this sequence are live; those up to it are a replay.
    pub live_after: u64,
}

impl Fanout {
    /// Opens the events of `subjects` after `resume` (or all retained ones).
    pub async fn open(
        &self,
        subjects: &SubjectSet,
        resume: Option<ResumePoint>,
    ) -> Result<Opened, StoreError> {
        match self {
            Fanout::Consumer(store) => {
                let subscription = store.subscribe(subjects, resume).await?;
                Ok(Opened {
                    opening: subscription.opening,
                    feed: ClientFeed::Consumer(Box::new(subscription.feed)),
                    live_after: subscription.live_after,
                })
            }
            Fanout::Shared(tail) => {
                let (plan, feed) = tail.open(subjects, resume).await?;
                Ok(Opened {
                    opening: plan.opening,
                    feed: ClientFeed::Shared(feed),
                    live_after: plan.live_after,
                })
            }
        }
    }

    /// A timeline page of `subject` after `after` (`docs/api.md` §4).
    pub async fn timeline(
        &self,
        subject: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<TimelinePage, StoreError> {
        match self {
            Fanout::Consumer(store) => store.timeline(subject, after, limit).await,
            Fanout::Shared(tail) => tail.timeline(subject, after, limit).await,
        }
    }

    /// The JetStream access underneath.
    pub fn store(&self) -> &EventStore {
        match self {
            Fanout::Consumer(store) => store,
            Fanout::Shared(tail) => tail.store(),
        }
    }
}

/// One client's events, each once, ascending.
pub enum ClientFeed {
    Consumer(Box<EventFeed>),
    Shared(SharedFeed),
}

impl ClientFeed {
    /// Lets the live tail write this client's events to `socket` while the reader waits; only
    /// shared mode does (see [`SharedFeed::write_directly`] for what the reader must do).
    pub fn write_directly(&self, socket: Arc<dyn FrameSocket>, live_after: u64) {
        if let ClientFeed::Shared(feed) = self {
            feed.write_directly(socket, live_after);
        }
    }

    /// The reader has written everything and waits.
    pub fn arm(&self) {
        if let ClientFeed::Shared(feed) = self {
            feed.arm();
        }
    }

    /// The reader takes its socket back; `None` without direct writes.
    pub fn disarm(&self) -> Option<DirectReport> {
        match self {
            ClientFeed::Shared(feed) => feed.disarm(),
            ClientFeed::Consumer(_) => None,
        }
    }
}

impl Stream for ClientFeed {
    type Item = Result<Arc<Delivery>, FeedError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            ClientFeed::Consumer(feed) => feed
                .poll_next_unpin(cx)
                .map(|item| item.map(|r| r.map(|event| Arc::new(Delivery::new(event))))),
            ClientFeed::Shared(feed) => feed.poll_next_unpin(cx),
        }
    }
}
