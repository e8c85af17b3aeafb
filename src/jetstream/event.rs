//! The event type every path of the relay carries: one stored JetStream message.

use async_nats::HeaderMap;
use bytes::Bytes;

use super::EVENT_TYPE_HEADER;
use crate::sse::DEFAULT_EVENT;

/// One stored message, as the relay forwards it. Built by moving the message's parts, so the
/// per-event cost is no copy of subject, headers or payload.
#[derive(Debug, Clone)]
pub struct RelayEvent {
    /// The JetStream stream sequence: the SSE `id:`.
    pub seq: u64,
    pub subject: async_nats::Subject,
    /// Verbatim.
    pub payload: Bytes,
    /// When JetStream stored it.
    pub published: time::OffsetDateTime,
    /// All headers (the event type and the trace context travel here).
    pub headers: Option<HeaderMap>,
    /// The relay's `receive` span of a live message (spans exported and the publisher traced):
    /// what its deliveries are parented on.
    pub received: Option<opentelemetry::Context>,
}

impl RelayEvent {
    pub(super) fn from_message(
        seq: u64,
        published: time::OffsetDateTime,
        message: async_nats::Message,
    ) -> Self {
        Self {
            seq,
            subject: message.subject,
            payload: message.payload,
            published,
            headers: message.headers,
            received: None,
        }
    }

    /// [`RelayEvent::from_message`] for a message a consumer delivered: with its `receive` span
    /// when spans are exported.
    pub(super) fn received(
        seq: u64,
        published: time::OffsetDateTime,
        message: async_nats::Message,
    ) -> Self {
        let mut event = Self::from_message(seq, published, message);
        event.received = crate::telemetry::propagation::receive_span(
            &event.subject,
            seq,
            event.headers.as_ref(),
        );
        event
    }

    /// An event of `subject` at `seq` with the payload `{}`, for tests.
    #[cfg(test)]
    pub fn for_test(seq: u64, subject: &str) -> Self {
        Self {
            seq,
            subject: subject.into(),
            payload: Bytes::from_static(b"{}"),
            published: time::OffsetDateTime::UNIX_EPOCH,
            headers: None,
            received: None,
        }
    }

    /// Seconds from JetStream storing it until now (0 if the clocks disagree): a delivery's lag.
    pub fn lag_seconds(&self) -> f64 {
        (time::OffsetDateTime::now_utc() - self.published)
            .as_seconds_f64()
            .max(0.0)
    }

    /// From the `Relay-Event-Type` header; `message` if absent or empty.
    pub fn event_type(&self) -> &str {
        self.headers
            .as_ref()
            .and_then(|h| h.get(EVENT_TYPE_HEADER))
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_EVENT)
    }
}
