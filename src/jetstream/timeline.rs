//! The polling fallback: a page of one subject's events after a sequence, read with a
//! short-lived pull consumer (create, fetch what is there, delete).

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{EventStore, RelayEvent, StoreError, API_TIMEOUT};
use crate::subject::Subject;

/// One event of a timeline page (`docs/api.md` §4, timeline).
#[derive(Debug, Serialize)]
pub struct TimelineEvent {
    pub seq: u64,
    pub subject: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// RFC 3339, when JetStream stored it.
    pub time: String,
    /// The payload as JSON (verbatim); a payload that is not JSON is given as a string.
    pub data: Box<RawValue>,
}

/// A page: events after `after`, ascending, and where to continue.
#[derive(Debug, Serialize)]
pub struct TimelinePage {
    pub events: Vec<TimelineEvent>,
    /// Poll again with `after=next_after`.
    pub next_after: u64,
    /// The subject's last sequence when the page was read (0 if it has none): more pages remain
    /// while `next_after < last_seq`.
    pub last_seq: u64,
}

impl TimelinePage {
    /// A page of `events` (ascending) read after `after`.
    pub fn new(events: Vec<TimelineEvent>, after: u64, last_seq: u64) -> Self {
        let next_after = events.last().map_or(after, |e| e.seq);
        Self {
            events,
            next_after,
            last_seq,
        }
    }
}

impl TimelineEvent {
    pub fn from_event(event: RelayEvent) -> Self {
        let data = std::str::from_utf8(&event.payload)
            .ok()
            .and_then(|text| RawValue::from_string(text.to_owned()).ok())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&event.payload);
                RawValue::from_string(serde_json::Value::from(text).to_string())
                    .unwrap_or_else(|_| RawValue::NULL.to_owned())
            });
        let time = event
            .published
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            seq: event.seq,
            subject: event.subject.to_string(),
            event_type: event.event_type().to_owned(),
            time,
            data,
        }
    }
}

impl EventStore {
    /// Up to `limit` events of `subject` with sequence > `after`.
    pub async fn timeline(
        &self,
        subject: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<TimelinePage, StoreError> {
        tokio::time::timeout(API_TIMEOUT, self.read_timeline(subject, after, limit))
            .await
            .map_err(StoreError::unavailable)?
            .map_err(StoreError::unavailable)
    }

    async fn read_timeline(
        &self,
        subject: &Subject,
        after: u64,
        limit: usize,
    ) -> Result<TimelinePage, async_nats::Error> {
        let nats_subject = subject.nats_subject();
        let stream = self.js.get_stream_no_info(&*self.stream_name).await?;
        let last_seq = match stream.get_last_raw_message_by_subject(&nats_subject).await {
            Ok(message) => message.sequence,
            Err(err)
                if err.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                0
            }
            Err(err) => return Err(err.into()),
        };
        let mut events = Vec::new();
        if last_seq > after {
            let consumer = stream
                .create_consumer(pull::Config {
                    filter_subject: nats_subject,
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: after.saturating_add(1),
                    },
                    ack_policy: AckPolicy::None,
                    memory_storage: true,
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                })
                .await?;
            let wanted = limit.min(consumer.cached_info().num_pending as usize);
            let result = fetch(&consumer, wanted, &mut events).await;
            let name = consumer.cached_info().name.clone();
            stream.delete_consumer(&name).await.ok();
            result?;
        }
        Ok(TimelinePage::new(events, after, last_seq))
    }
}

async fn fetch(
    consumer: &async_nats::jetstream::consumer::Consumer<pull::Config>,
    wanted: usize,
    events: &mut Vec<TimelineEvent>,
) -> Result<(), async_nats::Error> {
    while events.len() < wanted {
        let before = events.len();
        let mut batch = consumer
            .fetch()
            .max_messages(wanted - events.len())
            .messages()
            .await?;
        while let Some(message) = batch.next().await {
            let message = message?;
            let info = message.info()?;
            let (seq, published) = (info.stream_sequence, info.published);
            let event = RelayEvent::from_message(seq, published, message.split().0);
            events.push(TimelineEvent::from_event(event));
        }
        if events.len() == before {
            break; // Nothing more is there (retention removed it meanwhile).
        }
    }
    Ok(())
}
