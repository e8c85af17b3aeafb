//! One client's feed in shared mode. Registered with the live tail, it replays what it missed
//! from the ring, then takes its live events; a cursor older than the ring is first read from
//! JetStream with batched direct gets up to the ring's horizon (old data, which every stream
//! replica holds — a direct get may be answered by a follower that lags by a few writes). Falling
//! a whole backlog behind the tail sends it back to the ring (or JetStream) from its cursor. The
//! [`HandOver`] emits each sequence once, ascending.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use metrics::counter;

use super::catch_up::ReadPages;
use super::direct::{DirectReport, FrameSocket};
use super::handover::HandOver;
use super::registry::{Queued, Registration, Registry, Resync, Slot};
use super::Delivery;
use crate::jetstream::FeedError;
use crate::telemetry::metrics::{CATCH_UP_PAGES, HANDOVERS};

/// Failed catch-up reads in a row before the client is left to reconnect.
const CATCH_UP_ATTEMPTS: u32 = 5;

/// A client's events in shared mode.
pub struct SharedFeed {
    inner: BoxStream<'static, Result<Arc<Delivery>, FeedError>>,
    /// Its place in the registry, for direct writes.
    slot: Arc<Slot>,
}

impl SharedFeed {
    pub(super) fn new(
        registry: Arc<Registry>,
        pages: Arc<dyn ReadPages>,
        registration: Registration,
        after: u64,
    ) -> Self {
        let slot = registration.slot.clone();
        let client = Client {
            registry,
            pages,
            registration,
            handover: HandOver::new(after),
            out: VecDeque::new(),
            catch_up: None,
            needs_resync: true,
        };
        Self {
            inner: futures::stream::unfold(client, Client::next).boxed(),
            slot,
        }
    }

    /// While the feed waits live and its reader has written everything, the tail may write the
    /// client's events to `socket` itself (`direct.rs`). Its reader must then [`arm`] when it goes
    /// idle and [`disarm`] whenever it is polled, before anything else.
    ///
    /// [`arm`]: SharedFeed::arm
    /// [`disarm`]: SharedFeed::disarm
    pub fn write_directly(&self, socket: Arc<dyn FrameSocket>, live_after: u64) {
        self.slot.write_directly(socket, live_after);
    }

    /// The reader has written everything it was given and waits.
    pub fn arm(&self) {
        self.slot.arm();
    }

    /// The reader takes its socket back: what the tail wrote meanwhile, and the end of a frame
    /// to write before anything else.
    pub fn disarm(&self) -> Option<DirectReport> {
        self.slot.disarm()
    }
}

impl Stream for SharedFeed {
    type Item = Result<Arc<Delivery>, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct Client {
    registry: Arc<Registry>,
    /// Where catch-ups older than the ring are read.
    pages: Arc<dyn ReadPages>,
    registration: Registration,
    handover: HandOver,
    /// Events ready to go out, ascending.
    out: VecDeque<Arc<Delivery>>,
    /// Reading `(handover.sent(), until]` from JetStream.
    catch_up: Option<CatchUp>,
    /// Register again at the tail's position: at the start, after a catch-up from JetStream,
    /// and after falling behind.
    needs_resync: bool,
}

struct CatchUp {
    /// Every event of the client's subjects up to here has been read.
    from: u64,
    until: u64,
    failures: u32,
}

impl Client {
    async fn next(mut self) -> Option<(Result<Arc<Delivery>, FeedError>, Self)> {
        loop {
            if let Some(delivery) = self.out.pop_front() {
                return Some((Ok(delivery), self));
            }
            if self.needs_resync {
                if !self.resync() {
                    return None;
                }
                continue;
            }
            if let Some(catch_up) = &mut self.catch_up {
                let subjects = &self.registration.subjects;
                // Boxed: an idle client's future then holds a pointer, not the read's state.
                let page = self
                    .pages
                    .read_page(subjects, catch_up.from, catch_up.until);
                match page.await {
                    Ok(page) => {
                        counter!(CATCH_UP_PAGES).increment(1);
                        catch_up.failures = 0;
                        catch_up.from = page.covered;
                        for event in page.events {
                            let delivery = Arc::new(Delivery::new(event));
                            self.out.extend(self.handover.catch_up(delivery));
                        }
                        if page.done {
                            // The rest is in the ring (or the stream has nothing more).
                            self.handover.covered(page.covered);
                            self.catch_up = None;
                            self.needs_resync = true;
                        }
                    }
                    Err(err) => {
                        catch_up.failures += 1;
                        if catch_up.failures >= CATCH_UP_ATTEMPTS {
                            return Some((Err(FeedError::CatchUp(err)), self));
                        }
                        tracing::debug!(error = %err, "catch-up read failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200) * catch_up.failures).await;
                    }
                }
                continue;
            }
            // Live: straight from the queue (or, while it waits, written by the tail).
            let slot = &self.registration.slot;
            let sent = self.handover.sent();
            match poll_fn(|cx| slot.poll_next(cx, sent)).await {
                Queued::Event(delivery) => {
                    if let Some(delivery) = self.handover.live(delivery) {
                        return Some((Ok(delivery), self));
                    }
                }
                Queued::Lagged => self.needs_resync = true,
                Queued::Closed => return None,
            }
        }
    }

    /// Registers again at the tail's position and plans the catch-up from the cursor; `false`
    /// when the feed must end (the stream was recreated).
    fn resync(&mut self) -> bool {
        self.needs_resync = false;
        self.handover.restart();
        // What the tail wrote to the client's socket itself, it has.
        self.handover
            .covered(self.registration.slot.written_up_to());
        let resync = self.registry.resync(
            &self.registration.slot,
            self.handover.sent(),
            &self.registration.subjects,
        );
        match resync {
            Resync::Ring(events) => {
                for delivery in events {
                    self.out.extend(self.handover.catch_up(delivery));
                }
                self.handover.caught_up();
                counter!(HANDOVERS).increment(1);
            }
            Resync::Miss { horizon } => {
                self.catch_up = Some(CatchUp {
                    from: self.handover.sent(),
                    until: horizon,
                    failures: 0,
                })
            }
            Resync::Closed => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    //! The hand-over through the real parts: a [`Registry`] with its ring and bounded queues,
    //! the [`SharedFeed`] a client reads, and catch-ups older than the ring read from an
    //! in-memory stream; the tail's steps and the client's polls interleaved at random.

    use std::task::{Context, Poll};

    use futures::future::BoxFuture;
    use futures::task::noop_waker;
    use proptest::prelude::*;

    use super::*;
    use crate::fanout::catch_up::Page;
    use crate::fanout::TailSettings;
    use crate::jetstream::{RelayEvent, StoreError};

    const MINE: &str = "deploy.mine";
    const OTHER: &str = "deploy.other";

    /// The whole stream, read `page` events at a time (what JetStream's direct gets give).
    struct Stream {
        events: Vec<RelayEvent>,
        page: usize,
    }

    impl ReadPages for Stream {
        fn read_page<'a>(
            &'a self,
            subjects: &'a [String],
            from: u64,
            until: u64,
        ) -> BoxFuture<'a, Result<Page, StoreError>> {
            let mut events: Vec<RelayEvent> = self
                .events
                .iter()
                .filter(|e| e.seq > from && e.seq <= until)
                .filter(|e| subjects.iter().any(|s| s == e.subject.as_str()))
                .take(self.page)
                .cloned()
                .collect();
            let covered = if events.len() == self.page {
                events.last().map_or(until, |e| e.seq)
            } else {
                until
            };
            events.retain(|e| e.seq <= covered);
            Box::pin(async move {
                Ok(Page {
                    events,
                    covered,
                    done: covered >= until,
                })
            })
        }
    }

    /// One client and the stream around it.
    #[derive(Debug, Clone)]
    struct Scenario {
        /// The stream: whether each event (sequence = index + 1) is the client's subject's.
        mine: Vec<bool>,
        cursor: u64,
        /// The tail has taken in this many events when the client registers.
        taken_at_start: usize,
        ring: usize,
        backlog: usize,
        page: usize,
        /// true: the tail takes in the next event; false: the client is polled once.
        schedule: Vec<bool>,
        /// With direct writes: what the socket does with each write the tail tries, in turn.
        socket: Option<Vec<Take>>,
    }

    /// A waker that notes it was woken.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl Woken {
        /// Whether it was woken since last asked.
        fn take(&self) -> bool {
            self.0.swap(false, std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// What the socket takes of a frame the tail writes.
    #[derive(Debug, Clone, Copy)]
    enum Take {
        Whole,
        Part,
        Nothing,
        Fails,
    }

    fn scenario() -> impl Strategy<Value = Scenario> {
        let take = prop_oneof![
            3 => Just(Take::Whole),
            1 => Just(Take::Part),
            1 => Just(Take::Nothing),
            1 => Just(Take::Fails),
        ];
        (
            proptest::collection::vec(any::<bool>(), 0..80),
            0u64..90,
            any::<prop::sample::Index>(),
            1usize..20,
            1usize..8,
            1usize..5,
            proptest::collection::vec(any::<bool>(), 0..300),
            proptest::option::of(proptest::collection::vec(take, 1..40)),
        )
            .prop_map(
                |(mine, cursor, at, ring, backlog, page, schedule, socket)| Scenario {
                    taken_at_start: at.index(mine.len() + 1),
                    mine,
                    cursor,
                    ring,
                    backlog,
                    page,
                    schedule,
                    socket,
                },
            )
    }

    /// The client's socket: every byte written to it, by the tail or the client's task.
    struct Socket {
        takes: Vec<Take>,
        state: std::sync::Mutex<(usize, Vec<u8>)>,
        /// Notified on every write, for a test to wait on.
        written: std::sync::Condvar,
        /// Writes made by a helper thread of the registry's writers.
        by_helper: std::sync::atomic::AtomicUsize,
    }

    impl Socket {
        /// A socket doing with each write what `takes` says, in turn.
        fn new(takes: Vec<Take>) -> Arc<Socket> {
            Arc::new(Socket {
                takes,
                state: Default::default(),
                written: Default::default(),
                by_helper: Default::default(),
            })
        }

        fn write_all(&self, frame: &[u8]) {
            self.lock().1.extend_from_slice(frame);
            self.written.notify_all();
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Vec<u8>)> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    impl FrameSocket for Socket {
        fn try_write(&self, frame: &[u8]) -> std::io::Result<usize> {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("direct-writer"))
            {
                self.by_helper
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let mut state = self.lock();
            let take = self.takes[state.0 % self.takes.len()];
            state.0 += 1;
            let n = match take {
                Take::Whole => frame.len(),
                Take::Part => frame.len() / 2,
                Take::Nothing => return Err(std::io::ErrorKind::WouldBlock.into()),
                Take::Fails => return Err(std::io::ErrorKind::BrokenPipe.into()),
            };
            state.1.extend_from_slice(&frame[..n]);
            self.written.notify_all();
            Ok(n)
        }
    }

    /// The bytes the client receives, driven as the scenario says, with the client's task doing
    /// what the lean path's does (`http::stream_body`): take the socket back and write the rest
    /// of a frame first, write every event the feed yields, and give the socket to the tail when
    /// it waits. `None` if the feed ended before the client had every event.
    fn run(s: &Scenario) -> Option<Vec<u8>> {
        let stream: Vec<RelayEvent> = s
            .mine
            .iter()
            .enumerate()
            .map(|(i, &mine)| RelayEvent::for_test(i as u64 + 1, if mine { MINE } else { OTHER }))
            .collect();
        let want: usize = stream
            .iter()
            .filter(|e| e.subject.as_str() == MINE && e.seq > s.cursor)
            .map(|e| Delivery::new(e.clone()).frame.len())
            .sum();
        let registry = Arc::new(Registry::new(
            TailSettings {
                ring_events: s.ring,
                ring_bytes: usize::MAX,
                client_backlog: s.backlog,
            },
            Arc::new(crate::shedding::LiveLag::new(std::time::Duration::ZERO)),
            0,
        ));
        registry.start_at(0, time::OffsetDateTime::UNIX_EPOCH);
        let take_in = |i: usize| registry.take_in(Arc::new(Delivery::new(stream[i].clone())));
        (0..s.taken_at_start).for_each(take_in);
        let registration = registry.register(vec![MINE.to_owned()]).ok()?;
        let pages = Arc::new(Stream {
            events: stream.clone(),
            page: s.page,
        });
        let mut feed = SharedFeed::new(registry.clone(), pages, registration, s.cursor);
        let socket = Socket::new(s.socket.clone().unwrap_or_default());
        if s.socket.is_some() {
            feed.write_directly(socket.clone(), s.cursor);
        }
        // The client's task runs only when woken, as under a runtime: a hand-back the tail does
        // not wake it for is never written.
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut parked = false;
        let mut taken = s.taken_at_start;
        let mut steps = s.schedule.iter().copied().chain(std::iter::repeat(false));
        let mut idle_polls = 0;
        while idle_polls < 3 && socket.lock().1.len() <= want {
            if steps.next().unwrap_or(false) && taken < stream.len() {
                take_in(taken);
                taken += 1;
                continue;
            }
            if parked && !woken.take() {
                // Asleep: the tail moves on.
            } else if let Some(rest) = feed.disarm().and_then(|report| report.rest) {
                parked = false;
                idle_polls = 0;
                socket.write_all(&rest);
                continue;
            } else {
                match feed.poll_next_unpin(&mut cx) {
                    Poll::Ready(Some(Ok(delivery))) => {
                        parked = false;
                        idle_polls = 0;
                        socket.write_all(&delivery.frame);
                        continue;
                    }
                    Poll::Ready(_) => return None,
                    Poll::Pending => {
                        // The tail may take in an event between the feed's answer and the arming.
                        if steps.next().unwrap_or(false) && taken < stream.len() {
                            take_in(taken);
                            taken += 1;
                        }
                        feed.arm();
                        parked = true;
                    }
                }
            }
            // Nothing for the client's task now: the tail moves on.
            if taken < stream.len() {
                take_in(taken);
                taken += 1;
            } else {
                idle_polls += 1;
            }
        }
        drop(feed);
        assert_eq!(registry.clients(), 0, "the registration left with the feed");
        let received = std::mem::take(&mut socket.lock().1);
        Some(received)
    }

    /// Many idle clients, their events written by the taking-in thread and a helper thread at
    /// once (shares of one event's clients): every socket gets every frame once, in order.
    #[test]
    fn shared_out_direct_writes_keep_every_socket_in_order() {
        const CLIENTS: usize = 64;
        const EVENTS: u64 = 300;
        let registry = Arc::new(Registry::new(
            TailSettings {
                ring_events: 16,
                ring_bytes: usize::MAX,
                client_backlog: 1000,
            },
            Arc::new(crate::shedding::LiveLag::new(std::time::Duration::ZERO)),
            1,
        ));
        registry.start_at(0, time::OffsetDateTime::UNIX_EPOCH);
        let pages = Arc::new(Stream {
            events: Vec::new(),
            page: 10,
        });
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let registration = registry.register(vec![MINE.to_owned()]).expect("started");
            let mut feed = SharedFeed::new(registry.clone(), pages.clone(), registration, 0);
            let socket = Socket::new(vec![Take::Whole]);
            feed.write_directly(socket.clone(), 0);
            assert!(feed.poll_next_unpin(&mut cx).is_pending());
            feed.arm();
            clients.push((feed, socket));
        }
        let mut want = Vec::new();
        for seq in 1..=EVENTS {
            let delivery = Delivery::new(RelayEvent::for_test(seq, MINE));
            want.extend_from_slice(&delivery.frame);
            registry.take_in(Arc::new(delivery));
        }
        // The helper writes its shares on its own thread: wait for them, boundedly.
        for (_, socket) in &clients {
            let state = socket.lock();
            let (state, waited) = socket
                .written
                .wait_timeout_while(state, std::time::Duration::from_secs(10), |s| {
                    s.1.len() < want.len()
                })
                .unwrap_or_else(|p| p.into_inner());
            assert!(!waited.timed_out(), "direct writes stalled");
            assert!(
                state.1 == want,
                "a socket's frames out of order or repeated"
            );
        }
        let by_helper: usize = clients
            .iter()
            .map(|(_, s)| s.by_helper.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        assert!(
            by_helper > 0,
            "the helper wrote nothing: the test did not test it"
        );
    }

    proptest! {
        // No regression files: a test never writes into the source tree.
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Whatever the interleaving of the tail and the client, the ring's size, the client's
        /// backlog (overflows send it back to its cursor), where its cursor is (in the ring
        /// or before it) and what its socket takes of the tail's direct writes, the client
        /// receives every event of its subject after the cursor once, ascending, each frame whole.
        #[test]
        fn every_event_after_the_cursor_exactly_once_ascending(s in scenario()) {
            let want: Vec<u8> = s
                .mine
                .iter()
                .enumerate()
                .filter(|(i, &mine)| mine && *i as u64 + 1 > s.cursor)
                .flat_map(|(i, _)| {
                    let event = RelayEvent::for_test(i as u64 + 1, MINE);
                    Delivery::new(event).frame.to_vec()
                })
                .collect();
            let got = run(&s).map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            prop_assert_eq!(got, Some(String::from_utf8_lossy(&want).into_owned()));
        }
    }
}
