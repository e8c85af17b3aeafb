//! The live tail: one ordered consumer over the whole stream per replica (the firehose). Each
//! event is framed once, kept in the [`Ring`], and offered to the bounded queue of every local
//! client of its subject; a client whose queue is full is marked lagging and catches up again
//! from its own cursor, so the relay's memory stays flat whatever the clients do.
//!
//! NATS reconnects, stream leader changes and node loss re-create the one consumer after the
//! last sequence taken in (see [`crate::jetstream::EventFeed`]); clients notice nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;

use async_nats::jetstream::stream;
use futures::future::{Fuse, FusedFuture};
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::SharedFeed;
use super::ring::Ring;
use super::Delivery;
use crate::jetstream::{EventStore, FeedError, StartPlan, StoreError, TimelineEvent, TimelinePage};
use crate::subject::{ResumePoint, Subject, SubjectSet};
use crate::telemetry::metrics::{CLIENTS_LAGGED, LIVE_SOURCES, RING_HITS, RING_MISSES};

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

pub(super) struct Inner {
    store: EventStore,
    settings: TailSettings,
    state: Mutex<TailState>,
    next_slot: AtomicU64,
}

struct TailState {
    /// `None` until the tail knows where it starts.
    ring: Option<Ring>,
    /// The highest sequence the tail has taken in: every later event will be offered to every
    /// client registered now.
    last_seq: u64,
    /// Local clients by NATS subject.
    clients: HashMap<String, Vec<Arc<Slot>>>,
    /// When the followed stream was created: a different value means it was deleted and
    /// created again, and its sequences started over.
    stream_created: Option<time::OffsetDateTime>,
}

/// One client's place in the registry: its queue of live events, which the tail fills and the
/// client's feed empties.
pub(super) struct Slot {
    id: u64,
    queue: Mutex<SlotQueue>,
    capacity: usize,
    waker: AtomicWaker,
}

#[derive(Default)]
struct SlotQueue {
    events: VecDeque<Arc<Delivery>>,
    /// The queue overflowed and was emptied: the client must catch up from its cursor.
    lagged: bool,
    /// The stream was recreated: the client's cursor means nothing any more.
    closed: bool,
}

/// What a client finds in its queue.
pub(super) enum Queued {
    Event(Arc<Delivery>),
    /// It fell a whole backlog behind; its queue was emptied.
    Lagged,
    /// The stream was recreated; the client must reconnect (and is told `relay.reset`).
    Closed,
}

impl Slot {
    fn queue(&self) -> MutexGuard<'_, SlotQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a live event; a full queue is emptied at once (the relay's memory does not wait
    /// for a stalled socket) and the client marked lagging.
    fn offer(&self, delivery: &Arc<Delivery>) {
        {
            let mut queue = self.queue();
            if queue.lagged {
                return;
            }
            if queue.events.len() >= self.capacity {
                queue.events = VecDeque::new();
                queue.lagged = true;
                counter!(CLIENTS_LAGGED).increment(1);
            } else {
                queue.events.push_back(delivery.clone());
            }
        }
        self.waker.wake();
    }

    /// The next queued event, or word that the client lagged; pending while the queue is empty.
    pub(super) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Queued> {
        self.waker.register(cx.waker());
        let mut queue = self.queue();
        if queue.closed {
            return Poll::Ready(Queued::Closed);
        }
        if queue.lagged {
            return Poll::Ready(Queued::Lagged);
        }
        match queue.events.pop_front() {
            Some(delivery) => Poll::Ready(Queued::Event(delivery)),
            None => Poll::Pending,
        }
    }

    /// Empties the queue and clears the lag (under the tail's lock: nothing arrives meanwhile).
    fn reset(&self) {
        let mut queue = self.queue();
        queue.events = VecDeque::new();
        queue.lagged = false;
    }

    fn close(&self) {
        {
            let mut queue = self.queue();
            queue.events = VecDeque::new();
            queue.closed = true;
        }
        self.waker.wake();
    }
}

/// Removes a client from the registry when dropped.
pub(super) struct Registration {
    tail: Arc<Inner>,
    pub(super) slot: Arc<Slot>,
    pub(super) subjects: Vec<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.tail.lock();
        for subject in &self.subjects {
            if let Some(slots) = state.clients.get_mut(subject) {
                slots.retain(|s| s.id != self.slot.id);
                if slots.is_empty() {
                    state.clients.remove(subject);
                }
            }
        }
    }
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

/// Where a (re-)registered client stands.
pub(super) enum Resync {
    /// The ring covers its cursor: these are its events up to the tail position.
    Ring(Vec<Arc<Delivery>>),
    /// The ring does not reach back to its cursor: it must read up to the ring's `horizon` (the
    /// sequence before the oldest event the ring holds completely) from JetStream.
    Miss { horizon: u64 },
    /// The stream was recreated: the client must reconnect.
    Closed,
}

impl LiveTail {
    pub fn new(store: EventStore, settings: TailSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                settings,
                state: Mutex::new(TailState {
                    ring: None,
                    last_seq: 0,
                    clients: HashMap::new(),
                    stream_created: None,
                }),
                next_slot: AtomicU64::new(1),
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
                            inner.start_over();
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
                            inner.start_over();
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
                        Some(Ok(event)) => inner.take_in(Arc::new(Delivery::new(event))),
                        Some(Err(FeedError::StreamRecreated)) => {
                            tracing::warn!("the stream was recreated; the live tail starts over");
                            inner.start_over();
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
        let subjects = subjects.nats_subjects();
        let slot = Arc::new(Slot {
            id: inner.next_slot.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::default(),
            capacity: inner.settings.client_backlog.max(1),
            waker: AtomicWaker::new(),
        });
        {
            let mut state = inner.lock();
            if state.ring.is_none() {
                return Err(StoreError::unavailable("the live tail has not started"));
            }
            for subject in &subjects {
                state
                    .clients
                    .entry(subject.clone())
                    .or_default()
                    .push(slot.clone());
            }
        }
        let registered = Instant::now();
        let registration = Registration {
            tail: inner.clone(),
            slot,
            subjects,
        };
        // Read after the registration: every event above it reaches the client's queue.
        let stream = inner.store.stream_state_since(registered).await?;
        let plan = StartPlan::new(resume, &stream.state);
        let feed = SharedFeed::new(inner.clone(), registration, plan.after);
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
        let from_ring = {
            let state = self.inner.lock();
            state.ring.as_ref().and_then(|ring| {
                let all: Vec<&Arc<Delivery>> = ring
                    .after(after, std::slice::from_ref(&nats_subject))?
                    .collect();
                let last = all.last().map(|d| d.event.seq);
                let page: Vec<TimelineEvent> = all
                    .into_iter()
                    .take(limit)
                    .map(|d| TimelineEvent::from_event(d.event.clone()))
                    .collect();
                Some((page, last))
            })
        };
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
    fn lock(&self) -> MutexGuard<'_, TailState> {
        // A panic while holding the lock leaves consistent data (every update is one push or
        // one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the firehose (re)starts — after the last event taken in; the first time, far
    /// enough back to fill the ring with the stream's most recent events — and when the stream
    /// it follows was created.
    async fn start_point(&self) -> Result<(u64, time::OffsetDateTime), StoreError> {
        {
            let state = self.lock();
            if let (Some(_), Some(created)) = (&state.ring, state.stream_created) {
                return Ok((state.last_seq, created));
            }
        }
        let info = self.store.stream_info().await?;
        let stream = info.state;
        let after = stream.first_sequence.saturating_sub(1).max(
            stream
                .last_sequence
                .saturating_sub(self.settings.ring_events as u64),
        );
        let mut state = self.lock();
        if state.ring.is_none() {
            state.ring = Some(Ring::new(
                self.settings.ring_events,
                self.settings.ring_bytes,
                after,
            ));
            state.last_seq = after;
            state.stream_created = Some(info.created);
        }
        Ok((state.last_seq, state.stream_created.unwrap_or(info.created)))
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
        let (created, taken) = {
            let state = self.lock();
            (state.stream_created, state.last_seq)
        };
        if created.is_some_and(|created| created != info.created) {
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

    /// Forgets the old stream: the ring, the position, and every client (whose streams end, so
    /// they reconnect with their Last-Event-ID and are told `relay.reset`).
    fn start_over(&self) {
        let mut state = self.lock();
        state.ring = None;
        state.last_seq = 0;
        state.stream_created = None;
        for (_, slots) in state.clients.drain() {
            for slot in slots {
                slot.close();
            }
        }
    }

    /// One event from the firehose: into the ring, then to the queue of every local client of
    /// its subject, under the lock a (re-)registering client takes to note the tail position.
    fn take_in(&self, delivery: Arc<Delivery>) {
        let mut state = self.lock();
        if delivery.event.seq <= state.last_seq {
            // Already taken in by a bridge read (or a re-created consumer replaying).
            return;
        }
        state.last_seq = delivery.event.seq;
        if let Some(ring) = &mut state.ring {
            ring.push(delivery.clone());
        }
        if let Some(slots) = state.clients.get(delivery.event.subject.as_str()) {
            for slot in slots {
                slot.offer(&delivery);
            }
        }
    }

    /// Takes in what the stream holds after the last event taken in, read with batched direct
    /// gets (whole stream, in sequence order). A replica's store is a prefix of the stream, so
    /// a replica that lags a few writes behind returns fewer events, never a gap. Nothing
    /// before the tail knows where it starts. A page is taken in only once the stream, read
    /// after it, is found to be the one the tail follows (same creation time).
    async fn bridge(&self) -> Result<Bridged, StoreError> {
        loop {
            let (after, created) = {
                let state = self.lock();
                match (&state.ring, state.stream_created) {
                    (Some(_), Some(created)) => (state.last_seq, created),
                    _ => return Ok(Bridged::Following),
                }
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
                self.take_in(Arc::new(Delivery::new(event)));
            }
            if !more {
                return Ok(Bridged::Following);
            }
        }
    }

    /// Re-registers a client at the tail's current position: its queue is emptied (everything
    /// in it is at or below that position) and its catch-up after `after` planned.
    pub(super) fn resync(&self, slot: &Slot, after: u64, subjects: &[String]) -> Resync {
        let state = self.lock();
        if slot.queue().closed {
            return Resync::Closed;
        }
        slot.reset();
        let from_ring = state
            .ring
            .as_ref()
            .and_then(|ring| ring.after(after, subjects))
            .map(|events| events.cloned().collect());
        match from_ring {
            Some(events) => {
                counter!(RING_HITS).increment(1);
                Resync::Ring(events)
            }
            None => {
                counter!(RING_MISSES).increment(1);
                Resync::Miss {
                    horizon: state.ring.as_ref().map_or(state.last_seq, Ring::horizon),
                }
            }
        }
    }

    pub(super) fn store(&self) -> &EventStore {
        &self.store
    }
}
