//! Direct writes: while a client's task waits — nothing queued, nothing of its own left to
//! write — the live tail writes the client's next frames to its socket itself, one non-blocking
//! write each, instead of queueing every event and waking the task for it. A delivery then costs
//! what the socket write costs, as in the benchmark's floor.
//!
//! The socket has one writer at a time. The client's task gives it to the tail when it goes idle
//! ([`DirectOut::arm`]) and takes it back first thing whenever it wakes ([`DirectOut::disarm`]),
//! both under the client's queue lock, which the tail holds while it writes. A write the socket
//! does not take whole (`WouldBlock`, a short write, an error) hands the socket back: the event
//! (or the rest of its frame) is left for the task, which is woken and writes it with the usual
//! stall guard. Exactness and order are the hand-over's: the tail writes only above the cursor the
//! task had when it went idle, and the task's cursor moves past what the tail wrote.
//!
//! Only connections whose writer writes everything the body yields before polling it again may
//! be armed (the lean path); hyper queues frames of its own, so its connections never are.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use metrics::{counter, histogram};
use tokio::time::Instant;

use super::Delivery;
use crate::shedding::LiveLag;
use crate::telemetry::metrics::{
    DELIVERY_LAG, EVENTS_DELIVERED, EVENTS_WRITTEN_DIRECTLY, LIVE_LAG,
};

/// A socket that can be written without waiting.
pub trait FrameSocket: Send + Sync {
    /// Writes what of `frame` the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, frame: &[u8]) -> io::Result<usize>;
}

impl FrameSocket for tokio::net::TcpStream {
    fn try_write(&self, frame: &[u8]) -> io::Result<usize> {
        tokio::net::TcpStream::try_write(self, frame)
    }
}

/// A client's socket as its registry slot holds it, and who may write to it.
pub(super) struct DirectOut {
    socket: Arc<dyn FrameSocket>,
    /// Events above this sequence are live (their lag counts towards the replica's live lag).
    live_after: u64,
    /// The client's feed waits on its empty queue, live (set by the feed, cleared when the
    /// task takes the socket back).
    waiting: bool,
    /// The tail may write: the feed waits and the client's task has written all it had.
    armed: bool,
    /// The highest sequence the client has been given, as far as the tail knows.
    sent: u64,
    /// The part of a frame the socket did not take: the task writes it before anything else.
    rest: Option<Bytes>,
    /// Frames the tail wrote since the task last took the socket back, and when the last went.
    written: u64,
    last_write: Option<Instant>,
}

/// What a client's task learns when it takes its socket back.
#[derive(Debug, Default)]
pub struct DirectReport {
    /// The end of a frame the socket did not take whole: to be written first.
    pub rest: Option<Bytes>,
    /// Frames written by the tail meanwhile...
    pub written: u64,
    /// ...and when the last of them was.
    pub last_write: Option<Instant>,
}

/// How a direct write went.
pub(super) enum Written {
    /// Not attempted or nothing taken: the event goes to the queue.
    No,
    Whole,
    /// Partly: the rest waits for the task, which must be woken.
    Part,
}

impl DirectOut {
    pub(super) fn new(socket: Arc<dyn FrameSocket>, live_after: u64) -> Self {
        Self {
            socket,
            live_after,
            waiting: false,
            armed: false,
            sent: 0,
            rest: None,
            written: 0,
            last_write: None,
        }
    }

    /// The feed waits live on its empty queue, having given the client everything up to `sent`.
    pub(super) fn wait(&mut self, sent: u64) {
        self.waiting = true;
        self.sent = self.sent.max(sent);
    }

    /// The task goes idle with everything written: the tail may write if the feed waits too.
    pub(super) fn arm(&mut self) {
        self.armed = self.waiting;
    }

    /// The task takes the socket back.
    pub(super) fn disarm(&mut self) -> DirectReport {
        self.armed = false;
        self.waiting = false;
        DirectReport {
            rest: self.rest.take(),
            written: std::mem::take(&mut self.written),
            last_write: self.last_write.take(),
        }
    }

    /// The highest sequence given to the client by the tail (or known when the feed last waited).
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Writes `delivery` to the socket if the tail may; see [`Written`].
    pub(super) fn try_deliver(&mut self, delivery: &Delivery, tally: &mut Tally) -> Written {
        if !self.armed || delivery.event.seq <= self.sent {
            return Written::No;
        }
        let frame = &delivery.frame;
        match self.socket.try_write(frame) {
            Ok(0) | Err(_) => {
                // Full (or failed): the task writes it, under the stall guard, or sees the error.
                self.armed = false;
                Written::No
            }
            Ok(n) => {
                self.sent = delivery.event.seq;
                self.written += 1;
                self.last_write = Some(tally.count(delivery, delivery.event.seq > self.live_after));
                if n == frame.len() {
                    Written::Whole
                } else {
                    self.rest = Some(frame.slice(n..));
                    self.armed = false;
                    Written::Part
                }
            }
        }
    }

    /// The stream ended for the client: the tail must not write any more.
    pub(super) fn close(&mut self) {
        self.armed = false;
    }
}

/// The direct writes of one event, counted once for all of them: the delivered counter and the
/// lag histograms as a client's task counts its own deliveries (`http::stream_body`).
#[derive(Default)]
pub(super) struct Tally {
    /// When the first write was, and the event's lag then.
    stamp: Option<(Instant, f64)>,
    all: u64,
    live: u64,
}

impl Tally {
    fn count(&mut self, delivery: &Delivery, live: bool) -> Instant {
        let (now, _) = *self.stamp.get_or_insert_with(|| {
            let lag = (time::OffsetDateTime::now_utc() - delivery.event.published)
                .as_seconds_f64()
                .max(0.0);
            (Instant::now(), lag)
        });
        self.all += 1;
        self.live += u64::from(live);
        now
    }

    /// Adds the counts to the replica's metrics and live lag.
    pub(super) fn report(self, live_lag: &LiveLag) {
        let Some((_, lag)) = self.stamp else {
            return;
        };
        counter!(EVENTS_DELIVERED).increment(self.all);
        counter!(EVENTS_WRITTEN_DIRECTLY).increment(self.all);
        histogram!(DELIVERY_LAG).record_many(lag, self.all as usize);
        if self.live > 0 {
            histogram!(LIVE_LAG).record_many(lag, self.live as usize);
            live_lag.add_many(lag, self.live);
        }
    }
}
