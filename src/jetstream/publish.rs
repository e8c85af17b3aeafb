//! Publishing stage events with the headers of `docs/api.md` §8.

use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;

use tracing::Instrument;

use super::{EventStore, StoreError, API_TIMEOUT};
use crate::subject::Subject;
use crate::telemetry::{self, propagation};

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
        let nats_subject = subject.nats_subject();
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {nats_subject}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = %nats_subject,
            messaging.message.id = msg_id,
            relay.stream_sequence = tracing::field::Empty,
            relay.duplicate = tracing::field::Empty,
        );
        let mut headers = HeaderMap::new();
        if let Some(event_type) = event_type {
            headers.insert(EVENT_TYPE_HEADER, event_type);
        }
        if telemetry::exporting() {
            // The relay parents its delivery spans on this: one trace from publish to browser.
            propagation::inject_into_nats(&span, &mut headers);
        }
        // `.headers()` replaces the whole map, so it must come before `.message_id()`.
        let mut message = PublishMessage::build().payload(payload).headers(headers);
        if let Some(id) = msg_id {
            message = message.message_id(id);
        }
        let ack = tokio::time::timeout(API_TIMEOUT, async {
            self.js
                .send_publish(nats_subject, message)
                .await?
                .await
                .map_err(async_nats::Error::from)
        })
        .instrument(span.clone())
        .await
        .map_err(StoreError::unavailable)?
        .map_err(StoreError::unavailable)?;
        span.record("relay.stream_sequence", ack.sequence);
        span.record("relay.duplicate", ack.duplicate);
        Ok(PublishOutcome {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
