//! Everything that touches NATS JetStream: connecting, provisioning the stream, ordered-consumer
//! feeds (one per SSE client, or one per replica for the shared live tail), direct gets, the
//! polling timeline and publishing. Nothing above this module knows
//! about consumers, acks or headers.

mod connect;
mod consumer;
mod direct;
mod event;
mod feed;
mod health;
mod presence;
mod provision;
mod publish;
mod start;
mod timeline;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use connect::{
    check_server_version, connect, MinServer, ServerTooOld, CONSUMER_MODE_SERVER,
    SHARED_MODE_SERVER,
};
pub use direct::DirectPage;
pub use event::RelayEvent;
pub use feed::{EventFeed, FeedError, Subscription};
pub use health::watch_stream;
pub use presence::{bucket_name, PresenceBucket, PresenceEntry, BUCKET_MAX_AGE, REFRESH_AFTER};
pub use provision::{stream_definition, StreamSettings};
pub use publish::{PublishOutcome, EVENT_TYPE_HEADER};
pub use start::{Opening, StartPlan};
pub use timeline::{TimelineEvent, TimelinePage};

/// How long one JetStream API call may take before the relay answers "not ready".
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed JetStream operation, reduced to what callers act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS or the stream cannot be reached now; try again later. The cause is kept as the
    /// error's source, so logs and `?` chains show it.
    #[error("JetStream unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The server accepted a consumer but did not apply its subject filters (nats-server < 2.10);
    /// following it would leak other subjects.
    #[error("server ignored the consumer's subject filters")]
    FilterIgnored,
}

/// Any error, kept with its type and source chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// `Unavailable` because of `cause` (an error, or a message where there is none).
    pub(crate) fn unavailable(cause: impl Into<BoxError>) -> Self {
        StoreError::Unavailable(cause.into())
    }
}

/// JetStream access for one relay process: the stream it serves and the names of the consumers
/// it creates (`<replica>-<n>`, unique per process, so a lost one can be found and deleted).
#[derive(Clone)]
pub struct EventStore {
    client: async_nats::Client,
    /// Counts events after which consumers may be gone: (re)connections, stream leader
    /// elections, stream peers going offline. Open feeds re-create their consumers when it
    /// changes, because a failed or restarted server has lost the ones it hosted (in-memory, R1)
    /// and the client library only notices after missed heartbeats or a failed pull.
    resets: Arc<watch::Sender<u64>>,
    js: jetstream::Context,
    stream_name: Arc<str>,
    replica_id: Arc<str>,
    next_consumer: Arc<AtomicU64>,
    /// Consumer deletions in flight, awaited at shutdown.
    deletions: TaskTracker,
    /// Bounds this replica's consumer creations (and, apart, deletions) in flight. When every
    /// feed re-creates its consumer at once (a stream leader lost under thousands of clients),
    /// unbounded requests all wait in the server's API queue, all time out and are all retried;
    /// bounded, they are served in turn, each timed from when it is sent.
    consumer_requests: consumer::RequestSlots,
    /// The last stream state read for a client's start or a feed's check, and when its request
    /// was sent: clients that arrived before then share it, so a reconnect storm costs a few
    /// requests, not one each.
    last_state: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, StreamSnapshot)>>>,
}

/// The stream as one `STREAM.INFO` request read it.
#[derive(Debug, Clone)]
pub struct StreamSnapshot {
    pub state: jetstream::stream::State,
    /// When the stream was created: another value means it was deleted and created again, and
    /// its sequences started over — a cursor of the old stream means nothing in the new one.
    pub created: time::OffsetDateTime,
}

impl EventStore {
    /// Connects (see [`connect`]) and re-creates the feeds' consumers after reconnections and
    /// stream leader elections.
    pub async fn connect<F>(
        config: &crate::config::Config,
        on_event: F,
    ) -> Result<Self, std::io::Error>
    where
        F: Fn(async_nats::Event) + Send + Sync + 'static,
    {
        let resets = Arc::new(watch::channel(0).0);
        let client = connect(config, {
            let resets = resets.clone();
            move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    resets.send_modify(|n| *n += 1);
                }
                on_event(event);
            }
        })
        .await?;
        let store = Self::with_resets(client, &config.stream, resets);
        // A new stream leader means a node of the stream failed or stepped down; the consumers
        // it hosted are gone without this client's connection noticing.
        let advisory = format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}", config.stream);
        let mut elections = store
            .client
            .subscribe(advisory)
            .await
            .map_err(std::io::Error::other)?;
        let on_election = store.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            while elections.next().await.is_some() {
                on_election.reset_consumers("stream leader elected");
            }
        });
        Ok(store)
    }

    /// Wraps an existing client (publishers, tests); its feeds rely on the client library alone
    /// to recover consumers unless [`EventStore::reset_consumers`] is called.
    pub fn new(client: async_nats::Client, stream_name: &str) -> Self {
        Self::with_resets(client, stream_name, Arc::new(watch::channel(0).0))
    }

    fn with_resets(
        client: async_nats::Client,
        stream_name: &str,
        resets: Arc<watch::Sender<u64>>,
    ) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            resets,
            js,
            stream_name: stream_name.into(),
            replica_id: new_replica_id().into(),
            next_consumer: Arc::new(AtomicU64::new(1)),
            deletions: TaskTracker::new(),
            consumer_requests: consumer::RequestSlots::default(),
            last_state: Arc::default(),
        }
    }

    /// Makes every open feed re-create its consumer after the last sequence it delivered.
    pub fn reset_consumers(&self, reason: &str) {
        tracing::info!(reason, "re-creating consumers");
        self.resets.send_modify(|n| *n += 1);
    }

    /// Resolves at the next consumer reset after now.
    fn next_reset(&self) -> futures::future::BoxFuture<'static, ()> {
        let mut resets = self.resets.subscribe();
        Box::pin(async move {
            if resets.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// Random per process; prefixes this replica's consumer names.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// Whether the client is connected to a server right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Waits (at most until `deadline`) for the deletions of consumers whose clients left.
    pub async fn finish_deletions(&self, deadline: tokio::time::Instant) {
        self.deletions.close();
        if tokio::time::timeout_at(deadline, self.deletions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = self.deletions.len(),
                "consumer deletions still pending; their inactivity threshold will remove them"
            );
        }
    }

    /// The stream's state as read by a request sent at or after `since` (a client's arrival):
    /// shared with every client that arrived before that request was sent. A later state than
    /// the client's own request would have read is as good for planning its start: its resume
    /// point was already stored when it arrived.
    pub async fn stream_state_since(
        &self,
        since: tokio::time::Instant,
    ) -> Result<StreamSnapshot, StoreError> {
        let mut last = self.last_state.lock().await;
        if let Some((sent, snapshot)) = &*last {
            if *sent >= since {
                return Ok(snapshot.clone());
            }
        }
        let sent = tokio::time::Instant::now();
        let info = self.stream_info().await?;
        let snapshot = StreamSnapshot {
            state: info.state,
            created: info.created,
        };
        *last = Some((sent, snapshot.clone()));
        Ok(snapshot)
    }

    /// The stream's state and cluster placement (one API request).
    pub async fn stream_info(&self) -> Result<jetstream::stream::Info, StoreError> {
        let info = tokio::time::timeout(API_TIMEOUT, async {
            let stream = self.js.get_stream_no_info(&*self.stream_name).await?;
            stream.get_info().await.map_err(async_nats::Error::from)
        })
        .await
        .map_err(StoreError::unavailable)?
        .map_err(StoreError::unavailable)?;
        Ok(info)
    }
}

fn new_replica_id() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("sser{n:08x}")
}
