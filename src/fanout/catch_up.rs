//! A shared-mode client's catch-up from JetStream, for a cursor older than the ring: pages of
//! `(from, until]` read with batched direct gets (no consumer), one per subject, merged by
//! sequence up to the point every subject has been read to.
//!
//! A direct get may be answered by a stream replica that has not applied the latest writes. Its
//! "nothing more on this subject" (`Nats-Num-Pending: 0`) therefore says nothing about the
//! sequences it has not reached: such a read is taken as covering its subject only up to the
//! next event the stream's leader has on it (or up to `until` when the leader has none there).

use futures::future::BoxFuture;

use crate::jetstream::{EventStore, RelayEvent, StoreError};

/// Where a client's catch-up older than the ring is read: JetStream (an in-memory stream in the
/// feed's tests).
pub(super) trait ReadPages: Send + Sync {
    /// The next page of `(from, until]` for `subjects`.
    fn read_page<'a>(
        &'a self,
        subjects: &'a [String],
        from: u64,
        until: u64,
    ) -> BoxFuture<'a, Result<Page, StoreError>>;
}

impl ReadPages for EventStore {
    fn read_page<'a>(
        &'a self,
        subjects: &'a [String],
        from: u64,
        until: u64,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(read_page(self, subjects, from, until))
    }
}

/// Messages one direct get may return per subject.
const CATCH_UP_PAGE: usize = 256;

/// One step of a catch-up.
pub(super) struct Page {
    /// The client's events in `(from, covered]`, ascending.
    pub events: Vec<RelayEvent>,
    /// Every event of the client's subjects up to here has been read.
    pub covered: u64,
    /// `covered` reached `until`.
    pub done: bool,
}

/// What one subject's read established.
#[derive(Debug)]
struct SubjectRead {
    /// The subject's events after the page's start, ascending.
    events: Vec<RelayEvent>,
    /// Every event of the subject up to here is in `events` (so `events` may go beyond it).
    read_to: u64,
}

/// Reads the next page of `(from, until]` for `subjects`.
async fn read_page(
    store: &EventStore,
    subjects: &[String],
    from: u64,
    until: u64,
) -> Result<Page, StoreError> {
    let mut reads = Vec::with_capacity(subjects.len());
    for subject in subjects {
        reads.push(read_subject(store, subject, from, until).await?);
    }
    Ok(merge(reads, until))
}

/// One subject's events after `from`: a page from whichever replica answers, confirmed with the
/// leader when that replica had nothing more before `until`.
async fn read_subject(
    store: &EventStore,
    subject: &str,
    from: u64,
    until: u64,
) -> Result<SubjectRead, StoreError> {
    let page = store
        .direct_batch(subject, from.saturating_add(1), CATCH_UP_PAGE)
        .await?;
    match judge(page.events, page.pending, from, until) {
        Answer::Read(read) => Ok(read),
        Answer::Unconfirmed { events, last } => {
            let next = store.leader_next(subject, last.saturating_add(1)).await?;
            Ok(confirmed(events, next, until))
        }
    }
}

/// What a replica's page of one subject establishes on its own.
enum Answer {
    Read(SubjectRead),
    /// The replica had nothing after `last` (before `until`); it may lag behind the stream.
    Unconfirmed {
        events: Vec<RelayEvent>,
        last: u64,
    },
}

/// Judges a replica's page of one subject after `from`: `pending` more were stored after it.
fn judge(events: Vec<RelayEvent>, pending: u64, from: u64, until: u64) -> Answer {
    let last = events.last().map_or(from, |e| e.seq);
    if pending > 0 && last > from {
        // More stored after the page's last event: read to there.
        return Answer::Read(SubjectRead {
            events,
            read_to: last,
        });
    }
    if last >= until {
        return Answer::Read(SubjectRead {
            events,
            read_to: until,
        });
    }
    Answer::Unconfirmed { events, last }
}

/// A replica's complete answer (`events`, nothing more after them) and the leader's next event
/// after them: if the leader has one by `until`, the replica lagged and the read covers up to
/// that event (which it now includes); otherwise it covers `until`.
fn confirmed(mut events: Vec<RelayEvent>, next: Option<RelayEvent>, until: u64) -> SubjectRead {
    match next {
        Some(next) if next.seq <= until => {
            let read_to = next.seq;
            events.push(next);
            SubjectRead { events, read_to }
        }
        _ => SubjectRead {
            events,
            read_to: until,
        },
    }
}

/// Merges the subjects' reads of `(from, until]`: every event up to the lowest point all of them
/// were read to, ascending. Pure.
fn merge(reads: Vec<SubjectRead>, until: u64) -> Page {
    let covered = reads
        .iter()
        .map(|read| read.read_to)
        .min()
        .unwrap_or(until)
        .min(until);
    let mut events: Vec<RelayEvent> = reads
        .into_iter()
        .flat_map(|read| read.events)
        .filter(|event| event.seq <= covered)
        .collect();
    events.sort_by_key(|event| event.seq);
    Page {
        events,
        covered,
        done: covered >= until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `read_subject` against a model: a replica holding the stream up to `replica_last` (a
    /// prefix) answers at most `page` events; the leader holds all of it.
    fn read_from(
        stream: &[RelayEvent],
        subject: &str,
        (from, until): (u64, u64),
        replica_last: u64,
        page: usize,
    ) -> SubjectRead {
        let mine = || {
            stream
                .iter()
                .filter(move |e| e.subject.as_str() == subject && e.seq > from)
        };
        let held: Vec<RelayEvent> = mine()
            .filter(|e| e.seq <= replica_last)
            .take(page)
            .cloned()
            .collect();
        let last = held.last().map_or(from, |e| e.seq);
        let pending = mine()
            .filter(|e| e.seq > last && e.seq <= replica_last)
            .count() as u64;
        match judge(held, pending, from, until) {
            Answer::Read(read) => read,
            Answer::Unconfirmed { events, last } => {
                let next = mine().find(|e| e.seq > last).cloned();
                confirmed(events, next, until)
            }
        }
    }

    proptest! {
        /// Through any sequence of pages, whatever replica answers each subject's read (however
        /// far behind), the catch-up yields exactly the stream's events of the client's subjects
        /// in `(from, until]`, ascending, each once, and every page makes progress.
        #[test]
        fn pages_yield_every_event_once_whatever_replica_answers(
            subjects_of in proptest::collection::vec(0usize..4, 1..120),
            watched in proptest::collection::btree_set(0usize..4, 1..4),
            from_at in 0usize..60,
            lags in proptest::collection::vec(0u64..80, 64),
            page in 1usize..6,
        ) {
            let names = ["deploy.a", "deploy.b", "deploy.c", "pavilion.p"];
            let stream: Vec<RelayEvent> = subjects_of
                .iter()
                .enumerate()
                .map(|(i, s)| RelayEvent::for_test(i as u64 + 1, names[*s]))
                .collect();
            let until = stream.len() as u64;
            let from = (from_at as u64).min(until);
            let subjects: Vec<&str> = watched.iter().map(|s| names[*s]).collect();
            let want: Vec<u64> = stream
                .iter()
                .filter(|e| e.seq > from && subjects.contains(&e.subject.as_str()))
                .map(|e| e.seq)
                .collect();
            let mut got = Vec::new();
            let mut at = from;
            let mut lag = lags.iter().cycle();
            for _ in 0..(2 * stream.len() + 2) {
                let reads = subjects
                    .iter()
                    .map(|s| {
                        let replica_last = until.saturating_sub(*lag.next().unwrap_or(&0));
                        read_from(&stream, s, (at, until), replica_last, page)
                    })
                    .collect();
                let page = merge(reads, until);
                prop_assert!(page.covered > at || page.covered == until, "progress");
                prop_assert!(page.events.iter().all(|e| e.seq > at && e.seq <= page.covered));
                got.extend(page.events.iter().map(|e| e.seq));
                at = page.covered;
                if page.done {
                    break;
                }
            }
            prop_assert_eq!(at, until, "reached until");
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_lagging_replica_s_nothing_more_covers_only_up_to_the_leader_s_next_event() {
        // The replica answered events 3 and 5 and nothing more; the leader has 9.
        let read = confirmed(
            vec![RelayEvent::for_test(3, "a"), RelayEvent::for_test(5, "a")],
            Some(RelayEvent::for_test(9, "a")),
            20,
        );
        assert_eq!(read.read_to, 9);
        let page = merge(vec![read], 20);
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 5, 9]
        );
        assert_eq!((page.covered, page.done), (9, false));
        // The leader's next one is past `until`, or there is none: the read covers `until`.
        assert_eq!(
            confirmed(Vec::new(), Some(RelayEvent::for_test(21, "a")), 20).read_to,
            20
        );
        assert_eq!(confirmed(Vec::new(), None, 20).read_to, 20);
    }

    #[test]
    fn pages_merge_up_to_the_subject_read_least_far() {
        let a = SubjectRead {
            events: vec![
                RelayEvent::for_test(2, "a"),
                RelayEvent::for_test(6, "a"),
                RelayEvent::for_test(8, "a"),
            ],
            read_to: 8,
        };
        let b = SubjectRead {
            events: vec![RelayEvent::for_test(3, "b"), RelayEvent::for_test(4, "b")],
            read_to: 4,
        };
        let page = merge(vec![a, b], 10);
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!((page.covered, page.done), (4, false));
    }
}
