//! Publishing stage events with the headers of contract §7.

use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{EventStore, StoreError, API_TIMEOUT};
use crate::subject::Subject;

/// Header naming the SSE event type of a message.
pub const EVENT_TYPE_HEADER: &str = "Relay-Event-Type";

/// Where a publish landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The stream sequence: the SSE id clients will see.
    pub sequence: u64,
    /// True when the message id was already in the duplicate window: nothing new was stored and
    /// `sequence` is the original's.
    pub duplicate: bool,
}

impl EventStore {
    /// Publishes one event to `subject` and waits for the stream's acknowledgement.
    ///
    /// `msg_id` becomes `Nats-Msg-Id`, so retrying with the same id stores the event once.
    pub async fn publish(
        &self,
        subject: &Subject,
        event_type: Option<&str>,
        msg_id: Option<&str>,
        payload: Bytes,
    ) -> Result<PublishOutcome, StoreError> {
        let mut headers = HeaderMap::new();
        if let Some(event_type) = event_type {
            headers.insert(EVENT_TYPE_HEADER, event_type);
        }
        // `.headers()` replaces the whole map, so it must come before `.message_id()`.
        let mut message = PublishMessage::build().payload(payload).headers(headers);
        if let Some(id) = msg_id {
            message = message.message_id(id);
        }
        let ack = tokio::time::timeout(API_TIMEOUT, async {
            self.js
                .send_publish(subject.nats_subject(), message)
                .await?
                .await
                .map_err(async_nats::Error::from)
        })
        .await
        .map_err(StoreError::unavailable)?
        .map_err(StoreError::unavailable)?;
        Ok(PublishOutcome {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
