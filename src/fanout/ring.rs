//! The replica's memory of recent events: every event of the stream the live tail took in,
//! newest last, bounded by count. A client whose cursor the ring covers catches up from here,
//! without a request to NATS; a reconnect storm after a replica dies therefore costs nats-server
//! nothing. Bounded by count and by bytes, so its memory does not depend on the stream's history.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Delivery;

#[derive(Debug)]
pub struct Ring {
    events: VecDeque<Arc<Delivery>>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Every stream message with a sequence from here up to the newest is held.
    complete_from: u64,
}

impl Ring {
    /// An empty ring of at most `capacity` events and `max_bytes` that will hold every event
    /// after `after`.
    pub fn new(capacity: usize, max_bytes: usize, after: u64) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            complete_from: after.saturating_add(1),
        }
    }

    /// Appends the next event of the stream (sequences ascending), evicting the oldest ones
    /// while over either bound (an event larger than the byte bound is not kept at all).
    pub fn push(&mut self, event: Arc<Delivery>) {
        self.bytes += event.size();
        self.events.push_back(event);
        while self.events.len() > self.capacity || self.bytes > self.max_bytes {
            let Some(evicted) = self.events.pop_front() else {
                break;
            };
            self.bytes -= evicted.size();
            self.complete_from = evicted.event.seq + 1;
        }
    }

    /// The sequence before the oldest one held completely: every event after it is here.
    pub fn horizon(&self) -> u64 {
        self.complete_from - 1
    }

    /// Whether every event after `after` (up to the newest) is here.
    pub fn covers(&self, after: u64) -> bool {
        after.saturating_add(1) >= self.complete_from
    }

    /// The events after `after` whose subject is one of `subjects`, ascending; `None` when the
    /// ring does not reach back that far.
    pub fn after<'a>(
        &'a self,
        after: u64,
        subjects: &'a [String],
    ) -> Option<impl Iterator<Item = &'a Arc<Delivery>> + 'a> {
        if !self.covers(after) {
            return None;
        }
        let start = self.events.partition_point(|d| d.event.seq <= after);
        Some(
            self.events
                .range(start..)
                .filter(move |d| subjects.iter().any(|s| s == d.event.subject.as_str())),
        )
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.events.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(capacity: usize, after: u64, events: &[(u64, &str)]) -> Ring {
        let mut ring = Ring::new(capacity, usize::MAX, after);
        for &(seq, subject) in events {
            ring.push(Arc::new(Delivery::for_test(seq, subject)));
        }
        ring
    }

    fn seqs(ring: &Ring, after: u64, subjects: &[&str]) -> Option<Vec<u64>> {
        let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        ring.after(after, &subjects)
            .map(|it| it.map(|d| d.event.seq).collect())
    }

    #[test]
    fn serves_only_what_it_holds_completely() {
        let ring = ring_of(
            3,
            10,
            &[(11, "deploy.a"), (12, "deploy.b"), (14, "deploy.a")],
        );
        assert_eq!(seqs(&ring, 10, &["deploy.a"]), Some(vec![11, 14]));
        assert_eq!(
            seqs(&ring, 11, &["deploy.a", "deploy.b"]),
            Some(vec![12, 14])
        );
        assert_eq!(seqs(&ring, 14, &["deploy.a"]), Some(vec![]));
        assert_eq!(
            seqs(&ring, 9, &["deploy.a"]),
            None,
            "10 was before the ring"
        );
        assert_eq!(seqs(&ring, 20, &["deploy.a"]), Some(vec![]));
    }

    #[test]
    fn eviction_moves_the_horizon() {
        let ring = ring_of(2, 0, &[(1, "deploy.a"), (2, "deploy.a"), (5, "deploy.a")]);
        assert_eq!(ring.len(), 2);
        assert!(!ring.covers(0));
        assert!(ring.covers(1));
        assert_eq!(seqs(&ring, 1, &["deploy.a"]), Some(vec![2, 5]));
        // Sequences 3 and 4 are not in the stream (or of no subject): still complete from 2.
        assert_eq!(seqs(&ring, 3, &["deploy.a"]), Some(vec![5]));
    }

    #[test]
    fn bytes_bound_the_ring_too() {
        let one = Delivery::for_test(1, "deploy.a").size();
        let mut ring = Ring::new(100, 2 * one, 0);
        for seq in 1..=5 {
            ring.push(Arc::new(Delivery::for_test(seq, "deploy.a")));
        }
        assert_eq!(ring.len(), 2);
        assert!(ring.covers(3) && !ring.covers(2));
        let mut tiny = Ring::new(100, one - 1, 0);
        tiny.push(Arc::new(Delivery::for_test(1, "deploy.a")));
        assert!(tiny.is_empty());
        assert!(tiny.covers(1) && !tiny.covers(0));
    }
}
