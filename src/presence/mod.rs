//! Presence: who watches each subject, over every replica (`docs/api.md` §12).
//!
//! Lazy and batched, so NATS work grows with replicas and subjects, never with connections:
//! streams opening and closing only change this replica's counts in memory; once per
//! `RELAY_PRESENCE_INTERVAL` the replica writes the subjects whose figures changed to the
//! presence bucket (one key per replica and subject), or a keep-alive when none did. Every
//! replica watches the bucket into a cache, so `GET .../presence` is a sum in memory, and
//! streams opened with `?presence=1` are sent the sum when it changed, at most once an interval.
//! A replica that stops deletes its keys; one that dies is left out once its peers have not
//! heard from it for two of its intervals.

pub mod tally;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use metrics::{counter, gauge};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jetstream::{EventStore, PresenceBucket, PresenceEntry, REFRESH_AFTER};
use crate::sse;
use crate::subject::{Subject, SubjectSet};
use crate::telemetry::metrics::{PRESENCE_PUBLISHED, PRESENCE_RECEIVED, PRESENCE_REPLICAS};
use tally::{LocalCount, Peers, PresenceKey, Record, Watching};

/// Writes in flight at once when many subjects changed in one interval.
const CONCURRENT_WRITES: usize = 64;

/// One replica's presence: its own counts, its peers', and the streams that follow the sums.
pub struct Presence {
    replica: String,
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    local: HashMap<Subject, LocalCount>,
    /// Subjects whose local figures changed since they were last written.
    changed: HashSet<Subject>,
    /// The keys this replica holds in the bucket: when each was last written, and with what.
    written: HashMap<Subject, (Instant, Watching)>,
    peers: Peers,
    listeners: HashMap<Subject, Listener>,
}

/// One followed subject: the sum its `?presence=1` streams were last sent (held by the channel).
struct Listener {
    sender: watch::Sender<Option<Arc<Sum>>>,
    /// A stream started following since the last tick: it is sent the sum even if unchanged.
    fresh: bool,
}

/// A subject's sum, with its `relay.presence` frame.
struct Sum {
    watching: Watching,
    frame: Bytes,
}

impl Presence {
    /// The presence of replica `replica`, which writes every `interval`.
    pub fn new(replica: &str, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            replica: replica.to_owned(),
            interval,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a stream of `subjects` (of `user`, under JWT) until the returned value is dropped.
    pub fn join(self: &Arc<Self>, subjects: &SubjectSet, user: Option<String>) -> Attendance {
        let mut state = self.state();
        for subject in subjects.subjects() {
            state
                .local
                .entry(subject.clone())
                .or_default()
                .join(user.as_deref());
            state.changed.insert(subject.clone());
        }
        Attendance {
            presence: self.clone(),
            subjects: subjects.subjects().to_vec(),
            user,
        }
    }

    fn leave(&self, subjects: &[Subject], user: Option<&str>) {
        let mut state = self.state();
        for subject in subjects {
            if let Some(count) = state.local.get_mut(subject) {
                if !count.leave(user) {
                    state.local.remove(subject);
                }
            }
            state.changed.insert(subject.clone());
        }
    }

    /// Who watches `subject` over every replica: this one's streams now, its peers' as last
    /// written.
    pub fn watching(&self, subject: &Subject) -> Watching {
        let state = self.state();
        state.sum(subject, Instant::now())
    }

    /// `relay.presence` frames for `subjects`: the sum at the next tick, then whenever it changed
    /// (at most once an interval).
    pub fn follow(&self, subjects: &SubjectSet) -> BoxStream<'static, Bytes> {
        let mut state = self.state();
        let receivers: Vec<_> = subjects
            .subjects()
            .iter()
            .map(|subject| {
                let listener = state
                    .listeners
                    .entry(subject.clone())
                    .or_insert_with(|| Listener {
                        sender: watch::channel(None).0,
                        fresh: true,
                    });
                listener.fresh = true;
                listener.sender.subscribe()
            })
            .collect();
        futures::stream::select_all(receivers.into_iter().map(frames)).boxed()
    }

    /// Writes this replica's figures and reads its peers' until `stop`, then deletes its keys.
    pub async fn run(self: Arc<Self>, store: EventStore, replicas: usize, stop: CancellationToken) {
        let Some(bucket) = self.open_bucket(&store, replicas, &stop).await else {
            return;
        };
        let watcher = tokio::spawn(self.clone().watch(bucket.clone(), stop.clone()));
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            self.write(&bucket).await;
            self.tick(Instant::now());
        }
        watcher.abort();
        self.withdraw(&bucket).await;
    }

    async fn open_bucket(
        &self,
        store: &EventStore,
        replicas: usize,
        stop: &CancellationToken,
    ) -> Option<PresenceBucket> {
        let mut warned = false;
        loop {
            match store.presence_bucket(replicas).await {
                Ok(bucket) => {
                    tracing::info!("presence bucket open");
                    return Some(bucket);
                }
                Err(err) if !warned => {
                    warned = true;
                    tracing::warn!(error = %err, "presence bucket unavailable; retrying");
                }
                Err(err) => tracing::debug!(error = %err, "presence bucket still unavailable"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// Follows the bucket into the peers' figures; re-opens the watch if it fails.
    async fn watch(self: Arc<Self>, bucket: PresenceBucket, stop: CancellationToken) {
        loop {
            match bucket.watch().await {
                Ok(mut entries) => {
                    while let Some(entry) = entries.next().await {
                        match entry {
                            Ok(entry) => self.receive(entry),
                            Err(err) => {
                                tracing::warn!(error = %err, "presence watch failed; re-opening");
                                break;
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "presence watch unavailable; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    fn receive(&self, entry: PresenceEntry) {
        counter!(PRESENCE_RECEIVED).increment(1);
        let Some(key) = PresenceKey::parse(&entry.key) else {
            tracing::debug!(key = entry.key, "presence key of no relay ignored");
            return;
        };
        if key.replica() == self.replica {
            return;
        }
        let record = match entry.value.as_deref().map(serde_json::from_slice::<Record>) {
            None => None,
            Some(Ok(record)) => Some(record),
            Some(Err(err)) => {
                tracing::debug!(key = entry.key, error = %err, "presence value ignored");
                return;
            }
        };
        // Read at start-up, a write counts from when JetStream stored it, so a replica that died
        // before this one started is silent already; later ones count from now, whatever the
        // clocks say.
        let now = Instant::now();
        let heard = if entry.current {
            now
        } else {
            let age = time::OffsetDateTime::now_utc() - entry.stored;
            match now.checked_sub(age.try_into().unwrap_or(Duration::ZERO)) {
                Some(heard) => heard,
                None => return,
            }
        };
        self.state().peers.apply(key, record, heard);
    }

    /// Writes the subjects whose figures changed (and those about to outlive the bucket's
    /// `max_age`), or a keep-alive when there are none. A failed write is tried again at the
    /// next tick.
    async fn write(&self, bucket: &PresenceBucket) {
        let now = Instant::now();
        let writes: Vec<(Subject, Option<Watching>)> = {
            let mut state = self.state();
            let mut due: HashSet<Subject> = std::mem::take(&mut state.changed);
            due.extend(
                state
                    .written
                    .iter()
                    .filter(|(_, (at, _))| now.duration_since(*at) >= REFRESH_AFTER)
                    .map(|(s, _)| s.clone()),
            );
            due.into_iter()
                .filter_map(|subject| {
                    let value = state.local.get(&subject).map(LocalCount::watching);
                    let unchanged = match (state.written.get(&subject), &value) {
                        (Some((at, last)), Some(value)) => {
                            last == value && now.duration_since(*at) < REFRESH_AFTER
                        }
                        (None, None) => true,
                        _ => false,
                    };
                    (!unchanged).then_some((subject, value))
                })
                .collect()
        };
        if writes.is_empty() {
            let alive = PresenceKey::alive(&self.replica);
            if bucket.put(&alive, self.record(0, Vec::new())).await.is_ok() {
                counter!(PRESENCE_PUBLISHED).increment(1);
            }
            return;
        }
        let results: Vec<(Subject, Option<Watching>, bool)> = futures::stream::iter(writes)
            .map(|(subject, value)| async move {
                let key = PresenceKey::subject(&self.replica, &subject);
                let done = match &value {
                    Some(w) => {
                        bucket
                            .put(&key, self.record(w.connections, w.users.clone()))
                            .await
                    }
                    None => bucket.delete(&key).await,
                };
                if let Err(err) = &done {
                    tracing::debug!(key, error = %err, "presence write failed; retrying next tick");
                }
                (subject, value, done.is_ok())
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        let mut state = self.state();
        for (subject, value, done) in results {
            if !done {
                state.changed.insert(subject);
                continue;
            }
            counter!(PRESENCE_PUBLISHED).increment(1);
            match value {
                Some(value) => state.written.insert(subject, (now, value)),
                None => state.written.remove(&subject),
            };
        }
    }

    fn record(&self, connections: u64, users: Vec<String>) -> Bytes {
        let record = Record {
            connections,
            users,
            interval_ms: self.interval.as_millis().try_into().unwrap_or(u64::MAX),
        };
        Bytes::from(serde_json::to_vec(&record).unwrap_or_default())
    }

    /// Forgets silent peers and sends each followed subject's sum if it changed.
    fn tick(&self, now: Instant) {
        let mut state = self.state();
        let peers = state.peers.forget_silent(now);
        gauge!(PRESENCE_REPLICAS).set((peers + 1) as f64);
        let subjects: Vec<Subject> = state.listeners.keys().cloned().collect();
        for subject in subjects {
            let sum = state.sum(&subject, now);
            let Some(listener) = state.listeners.get_mut(&subject) else {
                continue;
            };
            if listener.sender.receiver_count() == 0 {
                state.listeners.remove(&subject);
                continue;
            }
            let unchanged = listener
                .sender
                .borrow()
                .as_ref()
                .is_some_and(|sent| sent.watching == sum);
            if unchanged && !listener.fresh {
                continue;
            }
            listener.fresh = false;
            let frame = sse::control_frame("relay.presence", &body(&subject, &sum).to_string());
            listener.sender.send_replace(Some(Arc::new(Sum {
                watching: sum,
                frame,
            })));
        }
    }

    /// Deletes this replica's keys, so its peers stop counting it at once.
    async fn withdraw(&self, bucket: &PresenceBucket) {
        let keys: Vec<String> = {
            let state = self.state();
            state
                .written
                .keys()
                .map(|subject| PresenceKey::subject(&self.replica, subject))
                .chain([PresenceKey::alive(&self.replica)])
                .collect()
        };
        let deleted = futures::stream::iter(keys)
            .map(|key| async move { bucket.delete(&key).await.is_ok() })
            .buffer_unordered(CONCURRENT_WRITES)
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;
        counter!(PRESENCE_PUBLISHED).increment(deleted as u64);
        tracing::info!(deleted, "presence withdrawn");
    }
}

impl State {
    fn sum(&self, subject: &Subject, now: Instant) -> Watching {
        let mut sum = self
            .local
            .get(subject)
            .map(LocalCount::watching)
            .unwrap_or_default();
        self.peers.sum_into(subject, now, &mut sum);
        sum
    }
}

/// The presence endpoint's JSON, and a `relay.presence` event's data.
pub fn body(subject: &Subject, watching: &Watching) -> serde_json::Value {
    let as_of = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "subject": subject.nats_subject(),
        "connections": watching.connections,
        "users": watching.users,
        "as_of": as_of,
    })
}

/// One subject's frames, each sum sent once: a tick that only welcomes a new follower sends the
/// others nothing new.
fn frames(receiver: watch::Receiver<Option<Arc<Sum>>>) -> BoxStream<'static, Bytes> {
    futures::stream::unfold(
        (receiver, None::<Watching>),
        |(mut receiver, mut last)| async move {
            loop {
                receiver.changed().await.ok()?;
                let sum = receiver.borrow_and_update().clone();
                if let Some(sum) = sum {
                    if last.as_ref() != Some(&sum.watching) {
                        last = Some(sum.watching.clone());
                        return Some((sum.frame.clone(), (receiver, last)));
                    }
                }
            }
        },
    )
    .boxed()
}

/// A stream counted in presence; dropped with the stream.
pub struct Attendance {
    presence: Arc<Presence>,
    subjects: Vec<Subject>,
    user: Option<String>,
}

impl Drop for Attendance {
    fn drop(&mut self) {
        self.presence.leave(&self.subjects, self.user.as_deref());
    }
}
