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

    #[cfg(test)]
    pub fn is_live(&self) -> bool {
        self.live
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
    use proptest::prelude::*;
    use std::collections::VecDeque;

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

    /// One client and the stream around it: the stream's events (ascending, with holes for
    /// other subjects), the client's cursor, how much the ring keeps, how big the live queue is,
    /// and a schedule interleaving the tail taking in events with the client reading.
    #[derive(Debug, Clone)]
    struct Scenario {
        events: Vec<u64>,
        cursor: u64,
        /// The tail has taken in this many events when the client registers.
        taken_at_start: usize,
        ring: usize,
        backlog: usize,
        /// true: the tail takes in the next event; false: the client takes one step.
        schedule: Vec<bool>,
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        (
            proptest::collection::btree_set(1u64..300, 0..60),
            0u64..320,
            any::<prop::sample::Index>(),
            1usize..20,
            1usize..8,
            proptest::collection::vec(any::<bool>(), 0..300),
        )
            .prop_map(|(events, cursor, at, ring, backlog, schedule)| Scenario {
                taken_at_start: at.index(events.len() + 1),
                events: events.into_iter().collect(),
                cursor,
                ring,
                backlog,
                schedule,
            })
    }

    /// The shared feed's protocol, with the stream in memory: a ring of the last `ring` events
    /// taken in, a bounded queue that is emptied when it overflows, re-registration (queue
    /// emptied, catch-up from the ring, or from "JetStream" up to the ring's horizon when the
    /// ring does not reach back far enough).
    fn run(s: &Scenario) -> Vec<u64> {
        let mut taken = s.taken_at_start;
        let mut queue: VecDeque<u64> = VecDeque::new();
        let mut lagged = false;
        let mut h = HandOver::new(s.cursor);
        let mut registered = false;
        let mut out = Vec::new();
        let ring_start = |taken: usize| taken.saturating_sub(s.ring);
        let mut steps = s.schedule.iter().copied().chain(std::iter::repeat(false));
        loop {
            let idle = registered && !lagged && h.is_live() && queue.is_empty();
            let tail_step = (steps.next().unwrap_or(false) || idle) && taken < s.events.len();
            if tail_step {
                let e = s.events[taken];
                taken += 1;
                if registered && !lagged {
                    if queue.len() >= s.backlog {
                        queue.clear();
                        lagged = true;
                    } else {
                        queue.push_back(e);
                    }
                }
                continue;
            }
            if !registered || lagged || !h.is_live() {
                // (Re-)register under the tail's lock.
                registered = true;
                lagged = false;
                queue.clear();
                h.restart();
                let complete_from = ring_start(taken);
                let horizon = complete_from.checked_sub(1).map_or(0, |i| s.events[i]);
                let ring = &s.events[complete_from..taken];
                if complete_from == 0 || h.sent() >= horizon {
                    out.extend(ring.iter().filter_map(|&e| h.catch_up(e)));
                    h.caught_up();
                } else {
                    // From JetStream up to the ring's horizon, then register again.
                    let from = h.sent();
                    let read: Vec<u64> = s.events[..complete_from]
                        .iter()
                        .copied()
                        .filter(|&e| e > from)
                        .collect();
                    out.extend(read.into_iter().filter_map(|e| h.catch_up(e)));
                    h.covered(horizon);
                }
                continue;
            }
            match queue.pop_front() {
                Some(e) => out.extend(h.live(e)),
                None if taken == s.events.len() => return out,
                None => {}
            }
        }
    }

    proptest! {
        // No regression files: a test never writes into the source tree.
        #![proptest_config(ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        #[test]
        fn every_event_after_the_cursor_exactly_once_ascending(s in scenario()) {
            let want: Vec<u64> = s.events.iter().copied().filter(|&e| e > s.cursor).collect();
            prop_assert_eq!(run(&s), want);
        }
    }
}
