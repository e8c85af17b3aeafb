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

use super::catch_up::read_page;
use super::handover::HandOver;
use super::tail::{Inner, Queued, Registration, Resync};
use super::Delivery;
use crate::jetstream::FeedError;
use crate::telemetry::metrics::{CATCH_UP_PAGES, HANDOVERS};

/// Failed catch-up reads in a row before the client is left to reconnect.
const CATCH_UP_ATTEMPTS: u32 = 5;

/// A client's events in shared mode.
pub struct SharedFeed {
    inner: BoxStream<'static, Result<Arc<Delivery>, FeedError>>,
}

impl SharedFeed {
    pub(super) fn new(tail: Arc<Inner>, registration: Registration, after: u64) -> Self {
        let client = Client {
            tail,
            registration,
            handover: HandOver::new(after),
            out: VecDeque::new(),
            catch_up: None,
            needs_resync: true,
        };
        Self {
            inner: futures::stream::unfold(client, Client::next).boxed(),
        }
    }
}

impl Stream for SharedFeed {
    type Item = Result<Arc<Delivery>, FeedError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

struct Client {
    tail: Arc<Inner>,
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
                let page = Box::pin(read_page(
                    self.tail.store(),
                    subjects,
                    catch_up.from,
                    catch_up.until,
                ));
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
            // Live: straight from the queue.
            let slot = &self.registration.slot;
            match poll_fn(|cx| slot.poll_next(cx)).await {
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
        let resync = self.tail.resync(
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
