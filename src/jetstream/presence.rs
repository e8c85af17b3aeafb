//! The presence bucket: a JetStream key-value bucket beside the event stream where each replica
//! keeps its own counts of who watches which subject (`docs/api.md` §12). `crate::presence`
//! decides what goes in it; this module only reads and writes it.
//!
//! A plain bucket (history 1, `max_age`) rather than per-key TTLs: those need nats-server 2.11,
//! and the relay runs on 2.10. A replica that dies is dropped by its peers when it falls silent,
//! not by the server; `max_age` only bounds what a dead replica leaves behind, so a live one
//! re-writes its unchanged keys every [`REFRESH_AFTER`].

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::{EventStore, StoreError, API_TIMEOUT};

/// How long the bucket keeps a key nobody re-wrote.
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(3600);

/// A replica re-writes a key it has not changed for this long, so it outlives `max_age`.
pub const REFRESH_AFTER: Duration = Duration::from_secs(1800);

/// Largest value a replica writes: 100 users of up to 256 bytes, and the rest.
const MAX_VALUE_SIZE: i32 = 64 * 1024;

/// The bucket's name for a relay stream: `<stream>_presence`, with any character a bucket name
/// cannot hold replaced by `_`, so relays of different streams on one NATS never share one.
pub fn bucket_name(stream: &str) -> String {
    let safe: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}_presence")
}

/// One change read from the bucket.
#[derive(Debug, Clone)]
pub struct PresenceEntry {
    pub key: String,
    /// `None`: the key was deleted.
    pub value: Option<Bytes>,
    /// When JetStream stored it.
    pub stored: time::OffsetDateTime,
    /// False while the watch is still reading what the bucket held when it started.
    pub current: bool,
}

/// The bucket, opened.
#[derive(Clone)]
pub struct PresenceBucket {
    store: kv::Store,
}

impl EventStore {
    /// Opens the presence bucket, creating it (with `replicas` copies) if it does not exist.
    pub async fn presence_bucket(&self, replicas: usize) -> Result<PresenceBucket, StoreError> {
        let bucket = bucket_name(self.stream_name());
        let opened = tokio::time::timeout(API_TIMEOUT, async {
            match self.js.get_key_value(&bucket).await {
                Ok(store) => Ok(store),
                Err(err)
                    if err.kind()
                        == async_nats::jetstream::context::KeyValueErrorKind::GetBucket =>
                {
                    self.js
                        .create_key_value(kv::Config {
                            bucket: bucket.clone(),
                            description: "sse-relay presence: each replica's watcher counts".into(),
                            history: 1,
                            max_age: BUCKET_MAX_AGE,
                            max_value_size: MAX_VALUE_SIZE,
                            storage: async_nats::jetstream::stream::StorageType::File,
                            num_replicas: replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(StoreError::unavailable)
                }
                Err(err) => Err(StoreError::unavailable(err)),
            }
        })
        .await
        .map_err(StoreError::unavailable)??;
        Ok(PresenceBucket { store: opened })
    }
}

impl PresenceBucket {
    /// Writes `value` under `key` (waits for JetStream's acknowledgement).
    pub async fn put(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        tokio::time::timeout(API_TIMEOUT, self.store.put(key, value))
            .await
            .map_err(StoreError::unavailable)?
            .map_err(StoreError::unavailable)?;
        Ok(())
    }

    /// Deletes `key` (a delete marker its watchers see).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        tokio::time::timeout(API_TIMEOUT, self.store.delete(key))
            .await
            .map_err(StoreError::unavailable)?
            .map_err(StoreError::unavailable)?;
        Ok(())
    }

    /// Every key's latest value, then every change, as it happens. The watch is an ordered
    /// consumer: it re-creates itself after a gap or a server restart.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<PresenceEntry, StoreError>> + Send + 'static, StoreError>
    {
        // Last per key first (`watch_all` would start with new writes only, and a replica that
        // starts would not see its peers' unchanged keys).
        let watch = tokio::time::timeout(API_TIMEOUT, self.store.watch_with_history(">"))
            .await
            .map_err(StoreError::unavailable)?
            .map_err(StoreError::unavailable)?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(StoreError::unavailable)?;
            Ok(PresenceEntry {
                value: (entry.operation == kv::Operation::Put).then_some(entry.value),
                key: entry.key,
                stored: entry.created,
                current: entry.seen_current,
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_the_stream_and_stay_valid() {
        assert_eq!(bucket_name("DEPLOY_EVENTS"), "DEPLOY_EVENTS_presence");
        assert_eq!(bucket_name("team-a:events"), "team-a_events_presence");
    }
}
