//! The replica's open streams, each with a switch that ends it on purpose (`relay.drain`):
//! the shedder picks which streams end and when; a stream's body only reads its switch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use rand::seq::IteratorRandom;
use rand::Rng;
use tokio::time::Instant;

/// Why a replica ends a stream on purpose: the `reason` of `relay.drain` (`docs/api.md` §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ShedReason {
    /// SIGTERM: the replica is going away.
    Shutdown = 1,
    /// NATS or the stream unreachable for `RELAY_SHED_UNREACHABLE_AFTER`.
    Unavailable = 2,
    /// Live lag above `RELAY_SHED_LAG`, sustained.
    Overloaded = 3,
    /// `RELAY_MAX_CONNECTION_AGE` reached.
    Rebalance = 4,
}

impl ShedReason {
    pub const ALL: [ShedReason; 4] = [
        ShedReason::Shutdown,
        ShedReason::Unavailable,
        ShedReason::Overloaded,
        ShedReason::Rebalance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Shutdown => "shutdown",
            ShedReason::Unavailable => "unavailable",
            ShedReason::Overloaded => "overloaded",
            ShedReason::Rebalance => "rebalance",
        }
    }

    fn from_u8(n: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u8 == n)
    }
}

/// One open stream's switch: set once, with the reason; the stream's body is woken to end.
#[derive(Debug, Default)]
pub struct StreamSwitch {
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl StreamSwitch {
    /// Why the stream must end, if it must (one atomic load: read on every poll of the body).
    pub fn reason(&self) -> Option<ShedReason> {
        ShedReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// Like [`StreamSwitch::reason`], registering `cx` to be woken when the switch is set.
    pub fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<ShedReason> {
        if let Some(reason) = self.reason() {
            return Poll::Ready(reason);
        }
        self.waker.register(cx.waker());
        // Set between the first look and the registration: it woke nobody.
        match self.reason() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
        }
    }

    /// Ends the stream for `reason`; `false` if it was already ending.
    fn end(&self, reason: ShedReason) -> bool {
        let set = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if set {
            self.waker.wake();
        }
        set
    }
}

/// The open streams of this replica.
#[derive(Debug)]
pub struct OpenStreams {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    /// `RELAY_MAX_CONNECTION_AGE`; zero: unlimited.
    max_age: Duration,
}

#[derive(Debug)]
struct Entry {
    switch: Arc<StreamSwitch>,
    /// When it ends for `rebalance` (its age, jittered ±10 %).
    expires: Option<Instant>,
}

/// A stream's place among the open ones; leaving it (dropping) removes the stream.
#[derive(Debug)]
pub struct StreamTicket {
    streams: Arc<OpenStreams>,
    id: u64,
    pub switch: Arc<StreamSwitch>,
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

impl OpenStreams {
    pub fn new(max_age: Duration) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::default(),
            next_id: AtomicU64::new(1),
            max_age,
        })
    }

    /// Adds a stream opened now.
    pub fn register(self: &Arc<Self>) -> StreamTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let switch = Arc::new(StreamSwitch::default());
        let expires = (!self.max_age.is_zero()).then(|| {
            let jitter = rand::rng().random_range(0.9..=1.1);
            Instant::now() + self.max_age.mul_f64(jitter)
        });
        self.lock().insert(
            id,
            Entry {
                switch: switch.clone(),
                expires,
            },
        );
        StreamTicket {
            streams: self.clone(),
            id,
            switch,
        }
    }

    /// Streams open and not yet told to end.
    pub fn running(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| e.switch.reason().is_none())
            .count()
    }

    /// Ends up to `n` streams, chosen at random among those still running; how many it ended.
    pub fn end_random(&self, n: usize, reason: ShedReason) -> usize {
        if n == 0 {
            return 0;
        }
        let entries = self.lock();
        // choose_multiple allocates room for `n`: at most every entry.
        let chosen = entries
            .values()
            .filter(|e| e.switch.reason().is_none())
            .choose_multiple(&mut rand::rng(), n.min(entries.len()));
        chosen.iter().filter(|e| e.switch.end(reason)).count()
    }

    /// Ends every stream whose age has run out (`rebalance`); how many it ended.
    pub fn end_expired(&self, now: Instant) -> usize {
        self.lock()
            .values()
            .filter(|e| e.expires.is_some_and(|at| at <= now))
            .filter(|e| e.switch.end(ShedReason::Rebalance))
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Every update is one insert or remove: a panic cannot leave it half-done.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    #[test]
    fn a_switch_is_set_once_and_wakes_its_stream() {
        let streams = OpenStreams::new(Duration::ZERO);
        let ticket = streams.register();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(ticket.switch.poll_ended(&mut cx).is_pending());
        assert_eq!(streams.end_random(5, ShedReason::Overloaded), 1);
        assert_eq!(ticket.switch.reason(), Some(ShedReason::Overloaded));
        // Already ending: a later reason does not replace the first.
        assert!(!ticket.switch.end(ShedReason::Shutdown));
        assert_eq!(
            ticket.switch.poll_ended(&mut cx),
            Poll::Ready(ShedReason::Overloaded)
        );
        assert_eq!(streams.running(), 0);
        drop(ticket);
        assert_eq!(streams.lock().len(), 0, "the ticket removes its stream");
    }

    #[test]
    fn end_random_ends_distinct_running_streams() {
        let streams = OpenStreams::new(Duration::ZERO);
        let tickets: Vec<_> = (0..10).map(|_| streams.register()).collect();
        assert_eq!(streams.end_random(3, ShedReason::Overloaded), 3);
        assert_eq!(streams.running(), 7);
        assert_eq!(streams.end_random(usize::MAX, ShedReason::Unavailable), 7);
        let reasons: Vec<_> = tickets.iter().filter_map(|t| t.switch.reason()).collect();
        assert_eq!(reasons.len(), 10);
        assert_eq!(
            reasons
                .iter()
                .filter(|r| **r == ShedReason::Overloaded)
                .count(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn streams_expire_within_ten_percent_of_their_age() {
        let streams = OpenStreams::new(Duration::from_secs(100));
        let tickets: Vec<_> = (0..50).map(|_| streams.register()).collect();
        let start = Instant::now();
        assert_eq!(streams.end_expired(start + Duration::from_secs(89)), 0);
        assert_eq!(streams.end_expired(start + Duration::from_secs(111)), 50);
        assert!(tickets
            .iter()
            .all(|t| t.switch.reason() == Some(ShedReason::Rebalance)));
        let unlimited = OpenStreams::new(Duration::ZERO);
        let _t = unlimited.register();
        assert_eq!(
            unlimited.end_expired(start + Duration::from_secs(1 << 30)),
            0
        );
    }
}
