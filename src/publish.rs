//! `sse-relay publish`: one event to a deployment (and its pavilion), for workers and scripts.

use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument;

use crate::config::Config;
use crate::jetstream::{self, EventStore, StoreError};
use crate::subject::{Subject, SubjectKey};

/// What the command prints, one JSON line.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PublishReport {
    pub deploy_seq: u64,
    pub pavilion_seq: Option<u64>,
    pub duplicate: bool,
}

/// Input the command refuses (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PublishInputError {
    #[error("invalid --{flag} '{value}': {reason}")]
    Id {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--data is not valid JSON: {0}")]
    Json(String),
    #[error("--type must not be empty or contain line breaks")]
    EventType,
}

/// The validated request.
pub struct PublishRequest {
    pub deployment: Subject,
    pub pavilion: Option<Subject>,
    pub event_type: String,
    pub msg_id: Option<String>,
    pub data: Bytes,
}

impl PublishRequest {
    /// Checks what a caller asks to publish (the `publish` command's flags, unchecked).
    pub fn new(
        deployment: String,
        pavilion: Option<String>,
        event_type: String,
        msg_id: Option<String>,
        data: String,
    ) -> Result<Self, PublishInputError> {
        let key = |flag: &'static str, value: String| {
            SubjectKey::parse(&value).map_err(|e| PublishInputError::Id {
                flag,
                reason: e.to_string(),
                value,
            })
        };
        let deployment = Subject::deployment(key("deployment", deployment)?);
        let pavilion = pavilion
            .map(|p| key("pavilion", p).map(Subject::pavilion))
            .transpose()?;
        serde_json::from_str::<serde::de::IgnoredAny>(&data)
            .map_err(|e| PublishInputError::Json(e.to_string()))?;
        if event_type.is_empty() || event_type.contains(['\n', '\r', '\0']) {
            return Err(PublishInputError::EventType);
        }
        Ok(Self {
            deployment,
            pavilion,
            event_type,
            msg_id: msg_id.filter(|id| !id.is_empty()),
            data: Bytes::from(data),
        })
    }
}

/// Publishes to the deployment subject, then the pavilion subject. The pavilion copy's message
/// id is `<msg-id>:pavilion`: JetStream deduplicates per stream, and the two copies are
/// different messages of one stream.
pub async fn run(config: &Config, request: PublishRequest) -> Result<PublishReport, StoreError> {
    let span = tracing::info_span!("sse-relay publish", otel.kind = "client");
    publish_all(config, request).instrument(span).await
}

async fn publish_all(
    config: &Config,
    request: PublishRequest,
) -> Result<PublishReport, StoreError> {
    let client = jetstream::connect(config, |_| {})
        .await
        .map_err(StoreError::unavailable)?;
    let store = EventStore::new(client, &config.stream);
    let deploy = store
        .publish(
            &request.deployment,
            Some(&request.event_type),
            request.msg_id.as_deref(),
            request.data.clone(),
        )
        .await?;
    let mut duplicate = deploy.duplicate;
    let pavilion_seq = match &request.pavilion {
        Some(pavilion) => {
            let msg_id = request.msg_id.as_ref().map(|id| format!("{id}:pavilion"));
            let ack = store
                .publish(
                    pavilion,
                    Some(&request.event_type),
                    msg_id.as_deref(),
                    request.data.clone(),
                )
                .await?;
            duplicate |= ack.duplicate;
            Some(ack.sequence)
        }
        None => None,
    };
    store.client().flush().await.ok();
    Ok(PublishReport {
        deploy_seq: deploy.sequence,
        pavilion_seq,
        duplicate,
    })
}
