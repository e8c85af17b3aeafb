//! What the live tail shares with the clients of its replica: the ring, the tail's position,
//! and the registry of local clients by subject, each with its bounded queue of live events.
//! One lock guards them together, so a (re-)registering client notes the tail's position and
//! every later event reaches its queue.
//!
//! The registry is a slab per subject: a client registers and leaves in O(1), so a mass
//! disconnect costs linear time. A client waiting idle on a socket the tail may write is not
//! woken at all: once the lock is released its queue is written there (`direct.rs`), by the
//! taking-in thread or a helper (`writers.rs`). The others are woken after the lock is released,
//! and only when their queue goes from empty to not empty (a client with queued events is
//! already on its way).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use metrics::counter;
use slab::Slab;

use super::direct::{DirectOut, DirectReport, FrameSocket, Tally, Written};
use super::ring::Ring;
use super::writers::{DirectWriters, WriteQueued};
use super::{Delivery, TailSettings};
use crate::jetstream::{StoreError, TimelineEvent};
use crate::shedding::LiveLag;
use crate::telemetry::metrics::{CLIENTS_LAGGED, RING_HITS, RING_MISSES};

/// The tail's shared state and its clients; see the module's documentation.
pub(super) struct Registry {
    settings: TailSettings,
    state: Mutex<State>,
    next_slot: AtomicU64,
    /// Who writes idle clients' queues to their sockets.
    writers: DirectWriters<Slot>,
}

struct State {
    /// `None` until the tail knows where it starts.
    ring: Option<Ring>,
    /// The highest sequence the tail has taken in: every later event will be offered to every
    /// client registered now.
    last_seq: u64,
    /// Local clients by NATS subject.
    clients: HashMap<String, Slab<Arc<Slot>>>,
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
    /// The client's socket, when the tail may write to it.
    direct: Option<DirectOut>,
}

/// What a client finds in its queue.
pub(super) enum Queued {
    Event(Arc<Delivery>),
    /// It fell a whole backlog behind; its queue was emptied.
    Lagged,
    /// The stream was recreated; the client must reconnect (and is told `relay.reset`).
    Closed,
}

/// What offering an event to a client's queue calls for.
enum Offered {
    /// Nothing more: the client is on its way to its queue, or lagged.
    Queued,
    /// Wake the client: its queue was empty, or it overflowed.
    Wake(Waker),
    /// Write the client's queue to its socket (it waits idle on it).
    Write,
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

impl Slot {
    fn queue(&self) -> MutexGuard<'_, SlotQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a live event; a full queue is emptied at once (the relay's memory does not wait
    /// for a stalled socket) and the client marked lagging. A client waiting idle on a socket the
    /// tail may write is not woken: its queue is to be written there ([`Slot::write_queued`]).
    fn offer(&self, delivery: &Arc<Delivery>) -> Offered {
        let mut queue = self.queue();
        if queue.lagged {
            return Offered::Queued;
        }
        let was_empty = queue.events.is_empty();
        if queue.events.len() >= self.capacity {
            queue.events = VecDeque::new();
            queue.lagged = true;
            if let Some(direct) = &mut queue.direct {
                direct.stop();
            }
            counter!(CLIENTS_LAGGED).increment(1);
            drop(queue);
            return self.waker.take().map_or(Offered::Queued, Offered::Wake);
        }
        queue.events.push_back(delivery.clone());
        if queue.direct.as_ref().is_some_and(DirectOut::armed) {
            return Offered::Write;
        }
        drop(queue);
        match self.waker.take() {
            // Its queue was empty: it may be parked on it.
            Some(waker) if was_empty => Offered::Wake(waker),
            _ => Offered::Queued,
        }
    }

    /// The next queued event, or word that the client lagged; pending while the queue is empty.
    /// The client has been given everything up to `sent`: while it waits here the tail may
    /// write later events to its socket.
    pub(super) fn poll_next(&self, cx: &mut Context<'_>, sent: u64) -> Poll<Queued> {
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
            None => {
                if let Some(direct) = &mut queue.direct {
                    direct.wait(sent);
                }
                Poll::Pending
            }
        }
    }

    /// The tail may write this client's live events to `socket` while the client waits
    /// (`live_after` as for its own deliveries).
    pub(super) fn write_directly(&self, socket: Arc<dyn FrameSocket>, live_after: u64) {
        self.queue().direct = Some(DirectOut::new(socket, live_after));
    }

    /// The client's task has written everything and goes idle: the tail may write from now on
    /// if the feed waits on its empty queue.
    pub(super) fn arm(&self) {
        let mut queue = self.queue();
        if queue.events.is_empty() && !queue.lagged && !queue.closed {
            if let Some(direct) = &mut queue.direct {
                direct.arm();
            }
        }
    }

    /// The client's task takes its socket back; what the tail did meanwhile.
    pub(super) fn disarm(&self) -> Option<DirectReport> {
        self.queue().direct.as_mut().map(DirectOut::disarm)
    }

    /// The highest sequence the tail wrote to the client's socket (0 if none).
    pub(super) fn written_up_to(&self) -> u64 {
        self.queue().direct.as_ref().map_or(0, DirectOut::sent)
    }

    /// Empties the queue and clears the lag (under the registry's lock: nothing arrives
    /// meanwhile).
    fn reset(&self) {
        let mut queue = self.queue();
        queue.events = VecDeque::new();
        queue.lagged = false;
    }

    fn close(&self) -> Option<Waker> {
        {
            let mut queue = self.queue();
            queue.events = VecDeque::new();
            queue.closed = true;
            if let Some(direct) = &mut queue.direct {
                direct.stop();
            }
        }
        self.waker.take()
    }
}

impl WriteQueued for Slot {
    /// Writes the queued events to the client's socket while the tail may (see `direct.rs`);
    /// the client's waker when its task must take over: the socket took a frame only in part,
    /// or nothing.
    fn write_queued(&self, tally: &mut Tally<'_>) -> Option<Waker> {
        let mut queue = self.queue();
        let SlotQueue { events, direct, .. } = &mut *queue;
        let direct = direct.as_mut()?;
        while let Some(delivery) = events.front() {
            match direct.try_deliver(delivery, tally) {
                Written::Whole | Written::Already => {
                    events.pop_front();
                }
                Written::Part => {
                    events.pop_front();
                    break;
                }
                Written::Refused => break,
                // The task has the socket, and takes the queue too.
                Written::NotArmed => return None,
            }
        }
        if events.is_empty() && direct.armed() {
            return None;
        }
        drop(queue);
        self.waker.take()
    }
}

/// A client's entry in the registry, removed when dropped.
pub(super) struct Registration {
    registry: Arc<Registry>,
    pub(super) slot: Arc<Slot>,
    /// The NATS subjects it follows...
    pub(super) subjects: Vec<String>,
    /// ...and its key in each one's slab.
    keys: Vec<usize>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.registry.lock();
        for (subject, key) in self.subjects.iter().zip(&self.keys) {
            let Some(slots) = state.clients.get_mut(subject) else {
                continue;
            };
            // After a start-over the key may hold another client's slot.
            if slots.get(*key).is_some_and(|s| s.id == self.slot.id) {
                slots.remove(*key);
            }
            if slots.is_empty() {
                state.clients.remove(subject);
            }
        }
    }
}

/// Wakes clients once dropped, after the lock it is declared before has been released.
#[derive(Default)]
struct Wakers(Vec<Waker>);

impl Drop for Wakers {
    fn drop(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

impl Registry {
    /// A registry whose direct writes are shared by the taking-in thread and `helpers` threads
    /// of their own, and count their lag in `live_lag`.
    pub(super) fn new(settings: TailSettings, live_lag: Arc<LiveLag>, helpers: usize) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                ring: None,
                last_seq: 0,
                clients: HashMap::new(),
                stream_created: None,
            }),
            next_slot: AtomicU64::new(1),
            writers: DirectWriters::new(live_lag, helpers),
        }
    }

    pub(super) fn settings(&self) -> TailSettings {
        self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is one push or
        // one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a client for `subjects` at the tail's position; an error before the tail knows
    /// where it starts.
    pub(super) fn register(
        self: &Arc<Self>,
        subjects: Vec<String>,
    ) -> Result<Registration, StoreError> {
        let slot = Arc::new(Slot {
            id: self.next_slot.fetch_add(1, Ordering::Relaxed),
            queue: Mutex::default(),
            capacity: self.settings.client_backlog.max(1),
            waker: AtomicWaker::new(),
        });
        let mut keys = Vec::with_capacity(subjects.len());
        {
            let mut state = self.lock();
            if state.ring.is_none() {
                return Err(StoreError::unavailable("the live tail has not started"));
            }
            for subject in &subjects {
                keys.push(
                    state
                        .clients
                        .entry(subject.clone())
                        .or_default()
                        .insert(slot.clone()),
                );
            }
        }
        Ok(Registration {
            registry: self.clone(),
            slot,
            subjects,
            keys,
        })
    }

    /// Where the tail stands — the last sequence taken in and when the followed stream was
    /// created — once it knows where it starts.
    pub(super) fn position(&self) -> Option<(u64, time::OffsetDateTime)> {
        let state = self.lock();
        match (&state.ring, state.stream_created) {
            (Some(_), Some(created)) => Some((state.last_seq, created)),
            _ => None,
        }
    }

    /// The tail starts after `after` in the stream created at `created`, unless it already
    /// knows where it stands; returns where it stands.
    pub(super) fn start_at(
        &self,
        after: u64,
        created: time::OffsetDateTime,
    ) -> (u64, time::OffsetDateTime) {
        let mut state = self.lock();
        if state.ring.is_none() {
            state.ring = Some(Ring::new(
                self.settings.ring_events,
                self.settings.ring_bytes,
                after,
            ));
            state.last_seq = after;
            state.stream_created = Some(created);
        }
        (state.last_seq, state.stream_created.unwrap_or(created))
    }

    /// Forgets the old stream: the ring, the position, and every client (whose streams end, so
    /// they reconnect with their Last-Event-ID and are told `relay.reset`).
    pub(super) fn start_over(&self) {
        let mut wake = Wakers::default();
        let mut state = self.lock();
        state.ring = None;
        state.last_seq = 0;
        state.stream_created = None;
        for (_, slots) in state.clients.drain() {
            wake.0
                .extend(slots.into_iter().filter_map(|(_, slot)| slot.close()));
        }
    }

    /// One event from the firehose: into the ring, then to the queue of every local client of
    /// its subject, under the lock a (re-)registering client takes to note the tail position.
    /// Once the lock is released, clients are woken and the queues of clients waiting idle on
    /// their sockets are written there, shared among the direct writers.
    pub(super) fn take_in(&self, delivery: Arc<Delivery>) {
        // Declared first, so dropped last: after the lock.
        let mut wake = Wakers::default();
        let mut write = Vec::new();
        {
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
                for (_, slot) in slots {
                    match slot.offer(&delivery) {
                        Offered::Queued => {}
                        Offered::Wake(waker) => wake.0.push(waker),
                        Offered::Write => write.push(slot.clone()),
                    }
                }
            }
        }
        // Clients the writers do not write are woken first, not after every socket write.
        wake.0.drain(..).for_each(Waker::wake);
        self.writers.write(write, &mut wake.0);
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

    /// A timeline page of `subject` after `after` from the ring, when it reaches back that far:
    /// up to `limit` events and the last sequence of the subject it holds, if any.
    pub(super) fn timeline_page(
        &self,
        subject: &str,
        after: u64,
        limit: usize,
    ) -> Option<(Vec<TimelineEvent>, Option<u64>)> {
        let state = self.lock();
        let ring = state.ring.as_ref()?;
        let subjects = [subject.to_owned()];
        let all: Vec<&Arc<Delivery>> = ring.after(after, &subjects)?.collect();
        let last = all.last().map(|d| d.event.seq);
        let page = all
            .into_iter()
            .take(limit)
            .map(|d| TimelineEvent::from_event(d.event.clone()))
            .collect();
        Some((page, last))
    }

    /// Registered clients (all subjects), for tests.
    #[cfg(test)]
    pub(super) fn clients(&self) -> usize {
        self.lock().clients.values().map(Slab::len).sum()
    }
}
