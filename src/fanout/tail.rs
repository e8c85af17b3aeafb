//! The live tail: one ordered consumer over the whole stream per replica (the firehose). Each
//! event is framed once, kept in the [`Ring`], and offered to the bounded queue of every local
//! client of its subject; a client whose queue is full is marked lagging and catches up again
//! from its own cursor, so the relay's memory stays flat whatever the clients do.
//!
//! NATS reconnects, stream leader changes and node loss re-create the one consumer after the
//! last sequence taken in (see [`crate::jetstream::EventFeed`]); clients notice nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use futures::future::{Fuse, FusedFuture};
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::catch_up::ReadPages;
use super::client::SharedFeed;
use super::registry::Registry;
use super::Delivery;
use crate::jetstream::{EventStore, FeedError, StartPlan, StoreError, TimelineEvent, TimelinePage};
use crate::shedding::LiveLag;
use crate::subject::{ResumePoint, Subject, SubjectSet};
use crate::telemetry::metrics::{LIVE_SOURCES, RING_HITS, RING_MISSES};

/// Sizes of the shared mode (`RELAY_RING_EVENTS`, `RELAY_RING_BYTES`, `RELAY_CLIENT_BACKLOG`).
#[derive(Debug, Clone, Copy)]
pub struct TailSettings {
    /// Recent events the ring holds (all subjects)...
    pub ring_events: usize,
    /// ...and the most memory they may take.
    pub ring_bytes: usize,
    /// Live events one client may have queued before it counts as lagging.
    pub client_backlog: usize,
}

/// First and longest pause before the firehose is opened again.
const START_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(1);
/// How long failed opens are logged at debug only when the relay starts: the health watcher is
/// usually still provisioning the stream the tail tries to follow.
const QUIET_START: Duration = Duration::from_secs(3);

/// How often the tail checks the stream: that it is still the one it follows (the ordered
/// consumer keeps retrying on a deleted stream without an error), and that the tail keeps up.
const STREAM_CHECK: Duration = Duration::from_secs(1);

/// How often, and how much at a time, the tail reads the stream with direct gets while its
/// consumer is being (re)created.
const BRIDGE_EVERY: Duration = Duration::from_millis(250);
const BRIDGE_BATCH: usize = 1000;

/// Messages the firehose pulls at a time.
const TAIL_PULL_BATCH: i64 = 1000;

/// The firehose's longest pull: its idle heartbeat comes every second, so a consumer lost with a
/// NATS node is re-created by the client library after about two seconds. One consumer per
/// replica can afford what a consumer per client could not.
const TAIL_PULL_EXPIRES: Duration = Duration::from_secs(2);

/// The replica's shared live tail; cheap to clone.
#[derive(Clone)]
pub struct LiveTail {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    registry: Arc<Registry>,
    /// The store, as its clients' catch-ups read it.
    pages: Arc<dyn ReadPages>,
}

/// What the tail saw at its last stream check.
#[derive(Debug, Default)]
struct Progress {
    /// The last sequence taken in then.
    taken: u64,
    /// Whether the stream was ahead of it then.
    behind: bool,
}

/// What a bridge read found.
enum Bridged {
    Following,
    Recreated,
}

enum StreamCheck {
    Following,
    Recreated,
    Stalled,
}

/// Helper threads for direct writes: one per core beyond the first, at most three.
fn direct_helpers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .min(3)
}

impl LiveTail {
    /// A tail over `store`; its direct writes count their lag in `live_lag`.
    pub fn new(store: EventStore, settings: TailSettings, live_lag: Arc<LiveLag>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pages: Arc::new(store.clone()),
                store,
                registry: Arc::new(Registry::new(settings, live_lag, direct_helpers())),
            }),
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.inner.store
    }

    /// Follows the stream until `shutdown`, re-opening the firehose after any failure from the
    /// last sequence taken in. `on_started` is called once the tail knows where it starts
    /// (clients can be served from then on).
    pub async fn run(self, shutdown: CancellationToken, on_started: impl FnOnce() + Send) {
        let inner = &self.inner;
        let mut on_started = Some(on_started);
        let mut delay = START_RETRY;
        let quiet_until = Instant::now() + QUIET_START;
        'open: loop {
            let opened = async {
                let (after, created) = inner.start_point().await?;
                inner
                    .store
                    .follow_stream(after, created, TAIL_PULL_BATCH, TAIL_PULL_EXPIRES)
                    .await
            };
            tokio::pin!(opened);
            // While the consumer is being (re)created — which needs JetStream's meta leader, gone
            // for seconds when its node dies — the tail bridges with direct gets, which any
            // stream replica answers.
            let mut bridge = tokio::time::interval(BRIDGE_EVERY);
            bridge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let opened = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    opened = &mut opened => break opened,
                    _ = bridge.tick() => match inner.bridge().await {
                        Ok(Bridged::Following) => {}
                        Ok(Bridged::Recreated) => {
                            tracing::warn!("the stream was recreated; the live tail starts over");
                            inner.registry.start_over();
                            continue 'open;
                        }
                        Err(err) => tracing::debug!(error = %err, "live tail bridge read failed"),
                    }
                }
            };
            let mut feed = match opened {
                Ok(feed) => feed,
                Err(err) => {
                    if on_started.is_none() || Instant::now() > quiet_until {
                        tracing::warn!(error = %err, "live tail cannot follow the stream yet");
                    } else {
                        tracing::debug!(error = %err, "live tail cannot follow the stream yet");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY);
                    continue;
                }
            };
            tracing::info!(after = feed.floor(), "live tail following the stream");
            if let Some(started) = on_started.take() {
                started();
            }
            gauge!(LIVE_SOURCES).set(1.0);
            delay = START_RETRY;
            let mut progress = Progress::default();
            let mut check = tokio::time::interval(STREAM_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The check's request runs beside the feed, not in its way: while the stream has no
            // leader it waits out the API timeout, and the feed may be delivering all along.
            let checking = Fuse::terminated();
            tokio::pin!(checking);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        gauge!(LIVE_SOURCES).set(0.0);
                        return;
                    }
                    _ = check.tick(), if checking.is_terminated() => {
                        checking.set(inner.store.stream_info().fuse());
                    }
                    info = &mut checking => match inner.check_stream(info, &mut progress) {
                        StreamCheck::Following => {}
                        StreamCheck::Recreated => {
                            tracing::warn!("the stream was recreated; the live tail starts over");
                            inner.registry.start_over();
                            break;
                        }
                        StreamCheck::Stalled => {
                            tracing::warn!(
                                last_seq = progress.taken,
                                "the live tail stalled behind the stream; re-opening it"
                            );
                            break;
                        }
                    },
                    item = feed.next() => match item {
                        Some(Ok(event)) => inner.registry.take_in(Arc::new(Delivery::new(event))),
                        Some(Err(FeedError::StreamRecreated)) => {
                            tracing::warn!("the stream was recreated; the live tail starts over");
                            inner.registry.start_over();
                            break;
                        }
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "live tail lost the stream; re-opening");
                            break;
                        }
                        None => break,
                    },
                }
            }
            gauge!(LIVE_SOURCES).set(0.0);
        }
    }

    /// Registers a client for `subjects` and plans its catch-up after `resume`, checked against
    /// the stream's state (gap, reset, first retained event) as read after the registration.
    pub async fn open(
        &self,
        subjects: &SubjectSet,
        resume: Option<ResumePoint>,
    ) -> Result<(StartPlan, SharedFeed), StoreError> {
        let inner = &self.inner;
        let registration = inner.registry.register(subjects.nats_subjects())?;
        let registered = Instant::now();
        // Read after the registration: every event above it reaches the client's queue.
        let stream = inner.store.stream_state_since(registered).await?;
        let plan = StartPlan::new(resume, &stream.state);
        let feed = SharedFeed::new(
            inner.registry.clone(),
            inner.pages.clone(),
            registration,
            plan.after,
        );
        Ok((plan, feed))
    }

    /// A timeline page: from the ring when it reaches back to `after`, else one batched direct
    /// get; no consumer either way.
    pub async fn timeline(
        &self,
        subject: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<TimelinePage, StoreError> {
        let nats_subject = subject.nats_subject();
        let from_ring = self
            .inner
            .registry
            .timeline_page(&nats_subject, after, limit);
        let store = &self.inner.store;
        let (events, last_seq) = match from_ring {
            Some((events, Some(last))) => {
                counter!(RING_HITS).increment(1);
                (events, last)
            }
            Some((events, None)) => {
                counter!(RING_HITS).increment(1);
                (events, store.direct_last_seq(&nats_subject).await?)
            }
            None => {
                counter!(RING_MISSES).increment(1);
                let page = store
                    .direct_batch(&nats_subject, after.saturating_add(1), limit)
                    .await?;
                let last = match page.events.last() {
                    Some(e) if page.pending == 0 => e.seq,
                    _ => store.direct_last_seq(&nats_subject).await?,
                };
                let events = page
                    .events
                    .into_iter()
                    .map(TimelineEvent::from_event)
                    .collect();
                (events, last)
            }
        };
        Ok(TimelinePage::new(events, after, last_seq))
    }
}

impl Inner {
    /// Where the firehose (re)starts — after the last event taken in; the first time, far
    /// enough back to fill the ring with the stream's most recent events — and when the stream
    /// it follows was created.
    async fn start_point(&self) -> Result<(u64, time::OffsetDateTime), StoreError> {
        if let Some(position) = self.registry.position() {
            return Ok(position);
        }
        let info = self.store.stream_info().await?;
        let stream = info.state;
        let after = stream.first_sequence.saturating_sub(1).max(
            stream
                .last_sequence
                .saturating_sub(self.registry.settings().ring_events as u64),
        );
        Ok(self.registry.start_at(after, info.created))
    }

    /// Compares the stream, as one request read it, with what the tail has taken in (a failed
    /// request says nothing): another creation time means the stream was recreated; a stream
    /// ahead of a tail that made no progress since the last check that already saw it ahead
    /// means the tail's consumer stalled (e.g. re-created on a NATS node that is gone).
    fn check_stream(
        &self,
        info: Result<stream::Info, StoreError>,
        progress: &mut Progress,
    ) -> StreamCheck {
        let Ok(info) = info else {
            return StreamCheck::Following;
        };
        let Some((taken, created)) = self.registry.position() else {
            // Starting over: nothing to compare with.
            return StreamCheck::Following;
        };
        if created != info.created {
            return StreamCheck::Recreated;
        }
        let behind = info.state.last_sequence > taken;
        let stalled = behind && progress.behind && progress.taken == taken;
        *progress = Progress { taken, behind };
        if stalled {
            StreamCheck::Stalled
        } else {
            StreamCheck::Following
        }
    }

    /// Takes in what the stream holds after the last event taken in, read with batched direct
    /// gets (whole stream, in sequence order). A replica's store is a prefix of the stream, so
    /// a replica that lags a few writes behind returns fewer events, never a gap. Nothing
    /// before the tail knows where it starts. A page is taken in only once the stream, read
    /// after it, is found to be the one the tail follows (same creation time).
    async fn bridge(&self) -> Result<Bridged, StoreError> {
        loop {
            let Some((after, created)) = self.registry.position() else {
                return Ok(Bridged::Following);
            };
            let page = self
                .store
                .direct_batch(">", after.saturating_add(1), BRIDGE_BATCH)
                .await?;
            if page.events.is_empty() {
                return Ok(Bridged::Following);
            }
            if self.store.stream_info().await?.created != created {
                return Ok(Bridged::Recreated);
            }
            let more = page.pending > 0;
            for event in page.events {
                self.registry.take_in(Arc::new(Delivery::new(event)));
            }
            if !more {
                return Ok(Bridged::Following);
            }
        }
    }
}
