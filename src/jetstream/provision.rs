//! The stream definition (`nats/stream.json`, the one source of its defaults) and its
//! provisioning at start-up.

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::stream;

use super::{EventStore, StoreError, API_TIMEOUT};
use crate::config::Config;

/// `nats/stream.json`, compiled in: operators apply the same file with `nats stream add`.
const STREAM_JSON: &str = include_str!("../../nats/stream.json");

/// The stream as `nats/stream.json` defines it.
pub fn stream_definition() -> &'static stream::Config {
    static DEFINITION: OnceLock<stream::Config> = OnceLock::new();
    DEFINITION.get_or_init(|| {
        // The file is part of the source tree and checked by a unit test; a broken one is a
        // build defect, not an input error.
        serde_json::from_str(STREAM_JSON).expect("nats/stream.json is a valid stream config")
    })
}

/// What configuration may change of the definition.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    pub replicas: usize,
    pub max_age: Duration,
    pub max_msgs_per_subject: i64,
    pub max_consumers: i32,
}

impl StreamSettings {
    /// The configuration's overrides merged with `nats/stream.json`.
    pub fn from_config(config: &Config) -> Self {
        let definition = stream_definition();
        Self {
            name: config.stream.clone(),
            replicas: config.stream_replicas.unwrap_or(definition.num_replicas),
            max_age: config.stream_max_age.unwrap_or(definition.max_age),
            max_msgs_per_subject: config
                .stream_max_msgs_per_subject
                .unwrap_or(definition.max_messages_per_subject),
            max_consumers: config
                .stream_max_consumers
                .unwrap_or(definition.max_consumers),
        }
    }

    /// The definition with these settings applied.
    pub fn to_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            num_replicas: self.replicas,
            max_age: self.max_age,
            max_messages_per_subject: self.max_msgs_per_subject,
            max_consumers: self.max_consumers,
            ..stream_definition().clone()
        }
    }
}

impl EventStore {
    /// Creates the stream, or updates it to the settings if it exists.
    pub async fn provision(&self, settings: &StreamSettings) -> Result<(), StoreError> {
        let config = settings.to_stream_config();
        tokio::time::timeout(API_TIMEOUT, self.js.create_or_update_stream(config))
            .await
            .map_err(StoreError::unavailable)?
            .map_err(StoreError::unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_json_holds_the_documented_defaults() {
        let def = stream_definition();
        assert_eq!(def.name, "DEPLOY_EVENTS");
        assert_eq!(def.subjects, vec!["deploy.*", "pavilion.*"]);
        assert_eq!(def.storage, stream::StorageType::File);
        assert_eq!(def.num_replicas, 1);
        assert_eq!(def.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(def.max_messages_per_subject, 10_000);
        assert!(def.duplicate_window > Duration::ZERO);
        // nats-server 2.15 caps streams without an explicit limit at 1000 consumers.
        assert!(def.max_consumers >= 100_000);
    }

    #[test]
    fn unset_configuration_takes_the_files_values() {
        let defaults = StreamSettings::from_config(&Config::default());
        assert_eq!(defaults.name, stream_definition().name);
        assert_eq!(defaults.name, crate::config::DEFAULT_STREAM);
        assert_eq!(defaults.replicas, 1);
        assert_eq!(defaults.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(defaults.max_msgs_per_subject, 10_000);
        assert_eq!(defaults.max_consumers, 100_000);
        let set = StreamSettings::from_config(&Config {
            stream_replicas: Some(3),
            stream_max_age: Some(Duration::from_secs(60)),
            ..Config::default()
        });
        assert_eq!((set.replicas, set.max_age), (3, Duration::from_secs(60)));
        assert_eq!(set.max_msgs_per_subject, 10_000);
    }

    #[test]
    fn settings_override_only_what_they_name() {
        let settings = StreamSettings {
            name: "OTHER".into(),
            replicas: 3,
            max_age: Duration::from_secs(60),
            max_msgs_per_subject: 5,
            max_consumers: 7,
        };
        let config = settings.to_stream_config();
        assert_eq!(config.name, "OTHER");
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.max_age, Duration::from_secs(60));
        assert_eq!(config.max_messages_per_subject, 5);
        assert_eq!(config.max_consumers, 7);
        assert_eq!(config.subjects, stream_definition().subjects);
        assert_eq!(
            config.duplicate_window,
            stream_definition().duplicate_window
        );
    }
}
