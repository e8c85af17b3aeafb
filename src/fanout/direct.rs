//! Direct writes: while a client's task waits — nothing queued, nothing of its own left to
//! write — the live tail's writers (`writers.rs`) write the client's next frames to its socket
//! themselves, one non-blocking write each, instead of waking the task for every event. A
//! delivery then costs what the socket write costs, as in the benchmark's floor.
//!
//! The socket has one writer at a time. The client's task gives it to the tail when it goes idle
//! ([`DirectOut::arm`]) and takes it back first thing whenever it wakes ([`DirectOut::disarm`]),
//! both under the client's queue lock, which a writer holds while it writes. A write the socket
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
    Whole,
    /// Partly: the rest waits for the task, which must be woken.
    Part,
    /// The socket took nothing (full, or failed): the event stays queued for the task, which
    /// must be woken.
    Refused,
    /// The tail may not write (the task has the socket): the task takes the event.
    NotArmed,
    /// The client has it already.
    Already,
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

    /// Whether the tail may write now.
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// Writes `delivery` to the socket if the tail may; see [`Written`].
    pub(super) fn try_deliver(&mut self, delivery: &Delivery, tally: &mut Tally) -> Written {
        if !self.armed {
            return Written::NotArmed;
        }
        if delivery.event.seq <= self.sent {
            return Written::Already;
        }
        let frame = &delivery.frame;
        match self.socket.try_write(frame) {
            Ok(0) | Err(_) => {
                // Full (or failed): the task writes it, under the stall guard, or sees the error.
                self.armed = false;
                Written::Refused
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

    /// The tail must not write any more (the stream ended for the client, or its queue
    /// overflowed): the task takes over.
    pub(super) fn stop(&mut self) {
        self.armed = false;
    }
}

/// Direct writes counted per event, for the delivered counter and the lag histograms as a
/// client's task counts its own deliveries (`http::stream_body`); the lag is read once per event.
pub(super) struct Tally<'a> {
    live_lag: &'a LiveLag,
    /// The event being counted: its sequence, when it was first written and its lag then.
    current: Option<(u64, Instant, f64)>,
    all: u64,
    live: u64,
}

impl<'a> Tally<'a> {
    pub(super) fn new(live_lag: &'a LiveLag) -> Self {
        Self {
            live_lag,
            current: None,
            all: 0,
            live: 0,
        }
    }

    fn count(&mut self, delivery: &Delivery, live: bool) -> Instant {
        let seq = delivery.event.seq;
        if self.current.is_some_and(|(counted, _, _)| counted != seq) {
            self.flush();
        }
        let (_, now, _) = *self
            .current
            .get_or_insert_with(|| (seq, Instant::now(), delivery.event.lag_seconds()));
        self.all += 1;
        self.live += u64::from(live);
        now
    }

    /// Adds the current event's counts to the replica's metrics and live lag.
    fn flush(&mut self) {
        let Some((_, _, lag)) = self.current.take() else {
            return;
        };
        let (all, live) = (
            std::mem::take(&mut self.all),
            std::mem::take(&mut self.live),
        );
        counter!(EVENTS_DELIVERED).increment(all);
        counter!(EVENTS_WRITTEN_DIRECTLY).increment(all);
        histogram!(DELIVERY_LAG).record_many(lag, all as usize);
        if live > 0 {
            histogram!(LIVE_LAG).record_many(lag, live as usize);
            self.live_lag.add_many(lag, live);
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}
