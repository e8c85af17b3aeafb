//! Ephemeral ordered consumers and their leases: one is created per feed (a client's in
//! `RELAY_FANOUT=consumer`, the replica's live tail in `shared`), and deleted as soon as the
//! feed is dropped.
//!
//! Dropping an async-nats ordered consumer does not delete the server-side consumer (that
//! lingers for its 30 s inactivity threshold); [`ConsumerLease`] deletes it, following the
//! `<name>_<n>` names of its recreations.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self};
use metrics::counter;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::{EventStore, StoreError, API_TIMEOUT};
use crate::telemetry::metrics::{CONSUMERS_CREATED, CONSUMERS_DELETED};

/// What a feed follows: the subjects it filters on (none: the whole stream), how many messages
/// one pull may bring, and how long a pull may wait (its idle heartbeat is half of that; two
/// missed heartbeats make the client library re-create the consumer).
#[derive(Debug, Clone)]
pub(super) struct ConsumerSpec {
    pub filters: Vec<String>,
    pub batch: i64,
    pub expires: Duration,
}

/// What a client's consumer pulls at a time, in bytes of the stream's average message: the
/// most the relay buffers for a client that has stopped reading is about one and a half pulls
/// (the next pull goes out when half of one is left); JetStream keeps the rest. Bounded by
/// count, not with the pull's `max_bytes`: a message larger than that would never be delivered.
const CLIENT_PULL_BYTES: u64 = 20 * 1024;
/// The fewest and most messages a client's pull asks for.
const CLIENT_PULL_MESSAGES: (i64, i64) = (2, 100);

/// Messages a client's consumer pulls at a time on a stream holding `messages` in `bytes`:
/// [`CLIENT_PULL_BYTES`] of its average message, within [`CLIENT_PULL_MESSAGES`].
pub(super) fn client_pull_batch(messages: u64, bytes: u64) -> i64 {
    let (fewest, most) = CLIENT_PULL_MESSAGES;
    let average = bytes.checked_div(messages).unwrap_or(0).max(1);
    i64::try_from(CLIENT_PULL_BYTES / average)
        .unwrap_or(most)
        .clamp(fewest, most)
}

/// Re-sizes a client's pull from the events its consumer delivers. The stream's average, read
/// when the client opened, can be far off (an empty stream, or other subjects' events of another
/// size), and what a client that stops reading holds is its pulls' worth of its own events.
///
/// The events delivered since the last re-size are averaged (halved now and then, so the average
/// follows a change). A pull is shrunk as soon as that average asks for half the batch or less,
/// from the first event on: a client that never reads takes only a few events into its socket
/// before it stalls, and must not be left holding big pulls. It grows only when the average asks
/// for four times the batch or more over four pulls' worth of events and at least
/// [`GROW_AFTER_EVENTS`]: a growth re-creates the consumer for speed alone, so a mix of small and
/// large events does not swing it back and forth.
#[derive(Debug, Default)]
pub(super) struct PullSizing {
    events: u64,
    bytes: u64,
}

/// The fewest events a growth is judged on.
const GROW_AFTER_EVENTS: u64 = 64;
/// Past this many events the count and bytes are halved.
const EVENTS_AVERAGED: u64 = 1024;

impl PullSizing {
    /// Notes an event of `bytes` delivered under a pull of `batch`; the batch to re-create the
    /// consumer with, if it should change.
    pub(super) fn delivered(&mut self, batch: i64, bytes: usize) -> Option<i64> {
        self.events += 1;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        let pull = u64::try_from(batch).unwrap_or(1).max(1);
        let fits = client_pull_batch(self.events, self.bytes);
        let shrink = fits.saturating_mul(2) <= batch;
        let grow = fits >= batch.saturating_mul(4)
            && self.events >= pull.saturating_mul(4).max(GROW_AFTER_EVENTS);
        if shrink || grow {
            *self = PullSizing::default();
            return Some(fits);
        }
        if self.events >= EVENTS_AVERAGED {
            self.events /= 2;
            self.bytes /= 2;
        }
        None
    }
}

/// A client's longest pull: bounds the idle heartbeat to half of it, so a consumer lost with its
/// server is noticed (two missed heartbeats) within about this long even when no other signal
/// arrives.
pub(super) const CLIENT_PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How long a failed consumer is re-created before the feed gives up (a client is then left to
/// reconnect, to this or another replica, with its Last-Event-ID).
pub(super) const REOPEN_FOR: Duration = Duration::from_secs(30);

/// Consumer creations one replica has in flight at most.
const CREATIONS_IN_FLIGHT: usize = 64;
/// Consumer deletions one replica has in flight at most (not urgent: an unreached consumer is
/// removed by its inactivity threshold).
const DELETIONS_IN_FLIGHT: usize = 32;

/// Slots for consumer API requests, creations apart from deletions so that a backlog of
/// deletions never delays a client's consumer.
#[derive(Clone)]
pub(super) struct RequestSlots {
    creations: Arc<Semaphore>,
    deletions: Arc<Semaphore>,
}

impl Default for RequestSlots {
    fn default() -> Self {
        Self {
            creations: Arc::new(Semaphore::new(CREATIONS_IN_FLIGHT)),
            deletions: Arc::new(Semaphore::new(DELETIONS_IN_FLIGHT)),
        }
    }
}

/// Where a (re)created consumer starts: after the last sequence its feed has.
fn deliver_after(after: u64) -> DeliverPolicy {
    if after == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: after.saturating_add(1),
        }
    }
}

impl EventStore {
    /// Creates one ordered consumer starting after `after` and checks the server applied its
    /// filters. The returned lease deletes it when dropped (also when the filter check fails).
    pub(super) async fn open_consumer(
        &self,
        spec: &ConsumerSpec,
        after: u64,
    ) -> Result<(Ordered, ConsumerLease), StoreError> {
        let name = format!(
            "{}-{}",
            self.replica_id,
            self.next_consumer
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut config = OrderedConfig {
            name: Some(name.clone()),
            deliver_policy: deliver_after(after),
            max_batch: spec.batch,
            max_expires: spec.expires,
            ..Default::default()
        };
        match spec.filters.as_slice() {
            [] => {}
            [one] => config.filter_subject = one.clone(),
            many => config.filter_subjects = many.to_vec(),
        }
        let lease = ConsumerLease {
            js: self.js.clone(),
            deletions: self.deletions.clone(),
            deletion_slots: self.consumer_requests.deletions.clone(),
            stream: self.stream_name.to_string(),
            name_prefix: name,
            serial: 0,
        };
        let filters = &spec.filters;
        // Never closed, so acquiring cannot fail.
        let _slot = self
            .consumer_requests
            .creations
            .acquire()
            .await
            .map_err(StoreError::unavailable)?;
        let messages = tokio::time::timeout(API_TIMEOUT, async {
            let stream = self.js.get_stream_no_info(&*self.stream_name).await?;
            let consumer: jetstream::consumer::Consumer<OrderedConfig> =
                stream.create_consumer(config).await?;
            let echoed = &consumer.cached_info().config;
            let applied: Vec<String> = if echoed.filter_subjects.is_empty() {
                Some(echoed.filter_subject.clone())
                    .filter(|f| !f.is_empty())
                    .into_iter()
                    .collect()
            } else {
                echoed.filter_subjects.clone()
            };
            if &applied != filters {
                return Ok(Err(StoreError::FilterIgnored));
            }
            Ok::<_, async_nats::Error>(Ok(consumer.messages().await?))
        })
        .await
        .map_err(StoreError::unavailable)?
        .map_err(StoreError::unavailable)??;
        counter!(CONSUMERS_CREATED).increment(1);
        Ok((messages, lease))
    }

    /// Opens a consumer again after `after`, retrying while NATS is away.
    pub(super) async fn reopen_consumer(
        self,
        spec: ConsumerSpec,
        after: u64,
    ) -> Result<(Ordered, ConsumerLease), StoreError> {
        let mut delay = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + REOPEN_FOR;
        loop {
            match self.open_consumer(&spec, after).await {
                Ok(opened) => return Ok(opened),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Owns the server-side consumer of one feed and deletes it when dropped.
pub(super) struct ConsumerLease {
    js: jetstream::Context,
    deletions: TaskTracker,
    deletion_slots: Arc<Semaphore>,
    stream: String,
    /// The first consumer's name; recreations are `<prefix>_<n>`.
    name_prefix: String,
    /// `n` of the last consumer seen delivering.
    serial: u64,
}

/// How many recreations past the last one seen the lease looks for when deleting.
const RECREATIONS_TO_PROBE: u64 = 3;

impl ConsumerLease {
    fn name(&self, serial: u64) -> String {
        if serial == 0 {
            self.name_prefix.clone()
        } else {
            format!("{}_{serial}", self.name_prefix)
        }
    }

    /// Notes which recreation of the consumer delivered (its name is in the message's info);
    /// `true` when it is a later one than the last seen (the client library re-created it).
    pub(super) fn seen(&mut self, consumer: &str) -> bool {
        match self.serial_of(consumer) {
            Some(serial) if serial > self.serial => {
                self.serial = serial;
                true
            }
            _ => false,
        }
    }

    fn serial_of(&self, consumer: &str) -> Option<u64> {
        let rest = consumer.strip_prefix(self.name_prefix.as_str())?;
        if rest.is_empty() {
            return Some(0);
        }
        rest.strip_prefix('_')?.parse().ok()
    }
}

impl Drop for ConsumerLease {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // Shutting down: the inactivity threshold removes it.
        };
        let js = self.js.clone();
        let slots = self.deletion_slots.clone();
        let stream = std::mem::take(&mut self.stream);
        let names: Vec<String> = (self.serial..=self.serial + RECREATIONS_TO_PROBE)
            .map(|serial| self.name(serial))
            .collect();
        self.deletions.spawn_on(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            // The live consumer is the last seen or a later recreation; earlier ones were
            // deleted by the recreation itself. Stop at the first that exists.
            for name in names {
                match tokio::time::timeout(
                    API_TIMEOUT,
                    js.delete_consumer_from_stream(&name, &stream),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        counter!(CONSUMERS_DELETED).increment(1);
                        tracing::debug!(consumer = %name, "consumer deleted");
                        return;
                    }
                    Ok(Err(err)) if is_not_found(&err) => continue,
                    Ok(Err(err)) => {
                        tracing::debug!(consumer = %name, error = %err, "consumer not deleted; its inactivity threshold will");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(consumer = %name, "consumer delete timed out; its inactivity threshold will");
                        return;
                    }
                }
            }
        }, &runtime);
    }
}

fn is_not_found(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        err.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_pulls_about_twenty_kib_of_average_messages() {
        assert_eq!(client_pull_batch(0, 0), 100, "an empty stream: the most");
        assert_eq!(client_pull_batch(1000, 200 * 1000), 100, "200 B events");
        assert_eq!(client_pull_batch(1000, 4096 * 1000), 5, "4 KiB events");
        assert_eq!(
            client_pull_batch(10, 100 * 1024 * 10),
            2,
            "100 KiB events: the fewest"
        );
    }

    /// Feeds `sizes` to a fresh sizing under `batch`, applying each re-size; the batches taken.
    fn resized(mut batch: i64, sizes: impl IntoIterator<Item = usize>) -> Vec<i64> {
        let mut sizing = PullSizing::default();
        let mut taken = Vec::new();
        for size in sizes {
            if let Some(next) = sizing.delivered(batch, size) {
                batch = next;
                taken.push(next);
            }
        }
        taken
    }

    #[test]
    fn a_pull_sized_for_small_events_shrinks_at_the_first_big_one() {
        // An empty stream gave 100: the first 4 KiB event asks for 5.
        assert_eq!(resized(100, [4096; 200]), vec![5]);
        assert_eq!(resized(100, [64 * 1024]), vec![2]);
        // Small events keep it.
        assert_eq!(resized(100, [200; 1000]), Vec::<i64>::new());
        // 20 KiB / 2.5 KiB = 8 under a batch of 16: half, shrunk; 10 under 16: kept.
        assert_eq!(resized(16, [2560]), vec![8]);
        assert_eq!(resized(16, [2048; 100]), Vec::<i64>::new());
    }

    #[test]
    fn a_pull_grows_back_for_small_events_over_four_pulls_and_64_events() {
        assert_eq!(resized(2, [200; 63]), Vec::<i64>::new());
        assert_eq!(resized(2, [200; 64]), vec![100]);
        // 20 KiB / 3 KiB = 6 under a batch of 5: within the band, kept.
        assert_eq!(resized(5, [3 * 1024; 1000]), Vec::<i64>::new());
    }

    #[test]
    fn a_mix_of_small_and_large_events_settles_without_swinging() {
        // Nine events of 200 B, then one of 64 KiB, over and over: shrunk once, at the first
        // large one (an average of 6.6 KiB asks for 3), then kept.
        let mix = (0..2000).map(|i| if i % 10 == 9 { 64 * 1024 } else { 200 });
        assert_eq!(resized(100, mix), vec![3]);
    }

    #[test]
    fn the_average_follows_a_lasting_change_of_size() {
        // 4 KiB events, then 100 B ones: shrunk to 5, then grown in steps as the average falls.
        let sizes = std::iter::repeat_n(4096, 1000).chain(std::iter::repeat_n(100, 5000));
        assert_eq!(resized(100, sizes), vec![5, 20, 100]);
    }
}
