//! The hand-over from catch-up to the live tail, as a pure state machine (no I/O, no clock).
//!
//! A client registers with the live tail first, under the tail's lock, and notes the tail's
//! position `T`: every later event reaches its queue. What it missed, `(cursor, T]`, comes from
//! the ring (or from JetStream, then the ring); then its queued live events follow. Falling a
//! whole backlog behind empties the queue and starts the same again from the cursor. Whatever
//! the interleaving, an event is emitted only above the highest sequence already emitted, so the
//! output has each sequence once, ascending. Mercure's `AddSubscriber` and Centrifuge's
//! recovery merge do the same.

/// Anything with a stream sequence.
pub trait Sequenced {
    fn seq(&self) -> u64;
}

/// One client's cursor and phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOver {
    /// Every event of the client's subjects up to here has been emitted (the SSE cursor, or
    /// beyond it where a catch-up found nothing more).
    sent: u64,
    live: bool,
}

impl HandOver {
    /// Starts catching up after `after`.
    pub fn new(after: u64) -> Self {
        Self {
            sent: after,
            live: false,
        }
    }

    /// Where the next catch-up starts.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Back to catching up (the client was re-registered).
    pub fn restart(&mut self) {
        self.live = false;
    }

    /// An event of the catch-up: emitted unless the client already has it.
    pub fn catch_up<E: Sequenced>(&mut self, event: E) -> Option<E> {
        self.admit(event)
    }

    /// A catch-up read everything of the client's subjects up to `covered`.
    pub fn covered(&mut self, covered: u64) {
        self.sent = self.sent.max(covered);
    }

    /// The catch-up reached the position noted at registration: live events follow.
    pub fn caught_up(&mut self) {
        self.live = true;
    }

    /// A live event from the queue: emitted once live, unless the client already has it.
    /// Before that the pending catch-up covers it, so it is dropped.
    pub fn live<E: Sequenced>(&mut self, event: E) -> Option<E> {
        if self.live {
            self.admit(event)
        } else {
            None
        }
    }

    fn admit<E: Sequenced>(&mut self, event: E) -> Option<E> {
        if event.seq() > self.sent {
            self.sent = event.seq();
            Some(event)
        } else {
            None
        }
    }
}

impl Sequenced for u64 {
    fn seq(&self) -> u64 {
        *self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_then_live_without_repeats() {
        let mut h = HandOver::new(3);
        assert_eq!(h.live(5u64), None, "not live yet: the catch-up covers it");
        assert_eq!(h.catch_up(4u64), Some(4));
        assert_eq!(h.catch_up(5u64), Some(5));
        h.caught_up();
        assert_eq!(h.live(5u64), None, "already emitted");
        assert_eq!(h.live(7u64), Some(7));
        assert_eq!(h.sent(), 7);
        h.restart();
        h.covered(6);
        assert_eq!(h.sent(), 7, "covered never moves the cursor back");
    }
}
