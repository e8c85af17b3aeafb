//! Reading stored messages without a consumer: JetStream direct gets (ADR-31), single and
//! batched (`batch`, nats-server 2.11 or newer). The stream must allow direct access
//! (`allow_direct: true`, as `nats/stream.json` has it).
//!
//! async-nats 0.51 has single direct gets only, so the batched form is spoken here: one request
//! to `$JS.API.DIRECT.GET.<stream>` with a fresh inbox as reply subject; the server answers with
//! one message per stored message, then an end-of-batch status message (`NATS/1.0 204 EOB`,
//! headers `Nats-Num-Pending` and `Nats-Last-Sequence`), or with a single `404` when nothing
//! matches. async-nats hands status messages to a plain subscriber as any other message: the code
//! in `Message::status`, the text after it (`EOB`) in `Message::description`, and the header
//! lines in `Message::headers`.
//!
//! Unlike the stream API's message get, a direct get may be answered by any replica of the
//! stream, including one that has not applied the latest writes yet.

use async_nats::header::{self, HeaderName};
use async_nats::{HeaderMap, Message, StatusCode, Subscriber};
use futures::StreamExt;

use super::{EventStore, RelayEvent, StoreError, API_TIMEOUT};

/// Most messages one batched direct get returns.
const MAX_BATCH: usize = 1000;

/// Set on every reply of a batched direct get and on its end-of-batch message; a server older
/// than 2.11 ignores `batch`, answers with one message without it and sends nothing more.
const NUM_PENDING: HeaderName = HeaderName::from_static("Nats-Num-Pending");

/// `Nats-Last-Sequence` of a batch reply: the sequence of the message sent before it in the same
/// batch (0 for the first); of the end-of-batch message: the last one sent. Not the stream's last
/// sequence.
const PREVIOUS_SEQUENCE: HeaderName = header::NATS_LAST_SEQUENCE;

/// The headers a direct get adds to the stored message's own; removed so that an event read
/// here carries the same headers as one delivered by a consumer.
const DIRECT_GET_HEADERS: [HeaderName; 6] = [
    header::NATS_STREAM,
    header::NATS_SUBJECT,
    header::NATS_SEQUENCE,
    header::NATS_TIME_STAMP,
    NUM_PENDING,
    PREVIOUS_SEQUENCE,
];

/// A page read with one batched direct get.
#[derive(Debug)]
pub struct DirectPage {
    /// Matching messages with sequence >= the start, ascending (at most `batch`).
    pub events: Vec<RelayEvent>,
    /// Matching messages still stored after the last one returned (the end-of-batch
    /// `Nats-Num-Pending`); 0 when the page is empty.
    pub pending: u64,
}

impl EventStore {
    /// Up to `batch` messages (clamped to 1..=1000) whose subject matches `subject` (a NATS
    /// subject, wildcards allowed) with stream sequence >= `start_seq`, ascending, in one
    /// request/reply round and without a consumer. Bounded by [`API_TIMEOUT`].
    ///
    /// Needs nats-server 2.11 or newer: an older server's answer is an error, not a short page.
    pub async fn direct_batch(
        &self,
        subject: &str,
        start_seq: u64,
        batch: usize,
    ) -> Result<DirectPage, StoreError> {
        if subject.is_empty() {
            // Without `next_by_subj` the server would page through every subject of the stream.
            return Err(StoreError::unavailable("direct get: empty subject"));
        }
        let batch = batch.clamp(1, MAX_BATCH);
        let request = serde_json::json!({
            "seq": start_seq,
            "next_by_subj": subject,
            "batch": batch,
        });
        tokio::time::timeout(API_TIMEOUT, async {
            let replies = self.direct_request(&request).await?;
            read_batch(replies, start_seq, batch).await
        })
        .await
        .map_err(|_| {
            StoreError::unavailable(format!("direct get timed out after {API_TIMEOUT:?}"))
        })?
    }

    /// The sequence of the last stored message on `subject` (exact subject), 0 if there is none;
    /// one direct get, no consumer. Bounded by [`API_TIMEOUT`].
    pub async fn direct_last_seq(&self, subject: &str) -> Result<u64, StoreError> {
        if subject.is_empty() {
            return Err(StoreError::unavailable("direct get: empty subject"));
        }
        let request = serde_json::json!({ "last_by_subj": subject });
        tokio::time::timeout(API_TIMEOUT, async {
            let mut replies = self.direct_request(&request).await?;
            let message = next_reply(&mut replies).await?;
            match message.status {
                None => {
                    let headers = message.headers.as_ref();
                    number_header(headers, &header::NATS_SEQUENCE)
                }
                Some(StatusCode::NOT_FOUND) => Ok(0),
                Some(status) => Err(status_error(status, message.description.as_deref())),
            }
        })
        .await
        .map_err(|_| {
            StoreError::unavailable(format!("direct get timed out after {API_TIMEOUT:?}"))
        })?
    }

    /// The first stored message on `subject` with sequence >= `start_seq`, as the stream's
    /// leader has it (`STREAM.MSG.GET`, not a direct get): what a direct get answered by a
    /// replica that lags behind cannot tell. `None` when there is none. Bounded by
    /// [`API_TIMEOUT`].
    pub async fn leader_next(
        &self,
        subject: &str,
        start_seq: u64,
    ) -> Result<Option<RelayEvent>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as RawMessageErrorKind;
        let got = tokio::time::timeout(API_TIMEOUT, async {
            let stream = self
                .js
                .get_stream_no_info(&*self.stream_name)
                .await
                .map_err(StoreError::unavailable)?;
            match stream
                .get_first_raw_message_by_subject(subject, start_seq)
                .await
            {
                Ok(message) => Ok(Some(message)),
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(err) => Err(StoreError::unavailable(err)),
            }
        })
        .await
        .map_err(|_| {
            StoreError::unavailable(format!("message get timed out after {API_TIMEOUT:?}"))
        })??;
        Ok(got.map(|message| RelayEvent {
            seq: message.sequence,
            subject: message.subject,
            payload: message.payload,
            published: message.time,
            headers: (!message.headers.is_empty()).then_some(message.headers),
            // Replayed, not received live.
            received: None,
        }))
    }

    /// Subscribes to a fresh inbox and sends `request` to the stream's direct get endpoint with
    /// that inbox as reply subject. The subscription is registered before the request is sent
    /// (both travel in order on the one connection); dropping it unsubscribes.
    async fn direct_request(&self, request: &serde_json::Value) -> Result<Subscriber, StoreError> {
        let inbox = self.client.new_inbox();
        let replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(StoreError::unavailable)?;
        let body = serde_json::to_vec(request).map_err(StoreError::unavailable)?;
        self.js
            .send_request(
                format!("DIRECT.GET.{}", self.stream_name),
                async_nats::Request::new().inbox(inbox).payload(body.into()),
            )
            .await
            .map_err(StoreError::unavailable)?;
        Ok(replies)
    }
}

/// Collects a batch's replies up to its end-of-batch message.
async fn read_batch(
    mut replies: Subscriber,
    start_seq: u64,
    batch: usize,
) -> Result<DirectPage, StoreError> {
    let mut events: Vec<RelayEvent> = Vec::new();
    loop {
        let message = next_reply(&mut replies).await?;
        // The sequence of the previous reply of this batch, as the server numbers them.
        let previous = events.last().map_or(0, |e| e.seq);
        match message.status {
            None => {
                if events.len() == batch {
                    return Err(StoreError::unavailable(format!(
                        "direct get: more than the {batch} messages asked for"
                    )));
                }
                let event = batch_event(message, previous)?;
                if event.seq < start_seq || event.seq <= previous {
                    return Err(StoreError::unavailable(format!(
                        "direct get: sequence {} out of order (start {start_seq}, previous \
                         {previous})",
                        event.seq
                    )));
                }
                events.push(event);
            }
            Some(status) if status == END_OF_BATCH => {
                let headers = message.headers.as_ref();
                let last_sent = number_header(headers, &PREVIOUS_SEQUENCE)?;
                if last_sent != previous {
                    return Err(lost_replies(last_sent, previous));
                }
                let pending = number_header(headers, &NUM_PENDING)?;
                return Ok(DirectPage { events, pending });
            }
            // Nothing matched at all; after some replies it would be a protocol error.
            Some(StatusCode::NOT_FOUND) if events.is_empty() => {
                return Ok(DirectPage { events, pending: 0 });
            }
            Some(status) => return Err(status_error(status, message.description.as_deref())),
        }
    }
}

/// `NATS/1.0 204 EOB`; async-nats 0.51 has no constant for it.
const END_OF_BATCH: u16 = 204;

/// One stored message of a batch; `previous` is the sequence of the reply before it.
fn batch_event(message: Message, previous: u64) -> Result<RelayEvent, StoreError> {
    let Some(headers) = message.headers else {
        return Err(StoreError::unavailable("direct get: reply without headers"));
    };
    if headers.get_last(NUM_PENDING).is_none() {
        return Err(StoreError::unavailable(
            "direct get: reply without Nats-Num-Pending; batched direct gets need nats-server \
             2.11 or newer",
        ));
    }
    let sent_after = number_header(Some(&headers), &PREVIOUS_SEQUENCE)?;
    if sent_after != previous {
        return Err(lost_replies(sent_after, previous));
    }
    let seq = number_header(Some(&headers), &header::NATS_SEQUENCE)?;
    let published = text_header(Some(&headers), &header::NATS_TIME_STAMP)
        .and_then(|text| async_nats::datetime::parse_rfc3339(text).map_err(bad_header(text)))?;
    let subject = async_nats::Subject::from(text_header(Some(&headers), &header::NATS_SUBJECT)?);
    Ok(RelayEvent {
        seq,
        subject,
        payload: message.payload,
        published,
        headers: stored_headers(&headers),
        // A catch-up page: replayed, not received live.
        received: None,
    })
}

/// The stored message's own headers: the reply's, less those the direct get added.
fn stored_headers(reply: &HeaderMap) -> Option<HeaderMap> {
    let mut own = HeaderMap::new();
    for (name, values) in reply.iter() {
        if DIRECT_GET_HEADERS.contains(name) {
            continue;
        }
        for value in values {
            own.append(name.clone(), value.clone());
        }
    }
    (!own.is_empty()).then_some(own)
}

async fn next_reply(replies: &mut Subscriber) -> Result<Message, StoreError> {
    replies
        .next()
        .await
        .ok_or_else(|| StoreError::unavailable("direct get: reply subscription closed"))
}

fn text_header<'a>(
    headers: Option<&'a HeaderMap>,
    name: &HeaderName,
) -> Result<&'a str, StoreError> {
    headers
        .and_then(|h| h.get_last(name.clone()))
        .map(|v| v.as_str())
        .ok_or_else(|| StoreError::unavailable(format!("direct get: reply without {name}")))
}

fn number_header(headers: Option<&HeaderMap>, name: &HeaderName) -> Result<u64, StoreError> {
    let text = text_header(headers, name)?;
    text.trim().parse().map_err(bad_header(text))
}

fn bad_header<E: std::fmt::Display>(text: &str) -> impl FnOnce(E) -> StoreError + '_ {
    move |err| StoreError::unavailable(format!("direct get: bad header value {text:?}: {err}"))
}

fn status_error(status: StatusCode, description: Option<&str>) -> StoreError {
    if status == StatusCode::NO_RESPONDERS {
        return StoreError::unavailable(
            "direct get: no responders (stream missing, or it does not allow direct gets)",
        );
    }
    StoreError::unavailable(format!(
        "direct get failed: {status} {}",
        description.unwrap_or("")
    ))
}

/// The server numbered a reply after one this subscription never received (dropped as a slow
/// consumer, for instance): the page would have a hole.
fn lost_replies(server_previous: u64, received_previous: u64) -> StoreError {
    StoreError::unavailable(format!(
        "direct get: replies lost (server sent {server_previous} before, last received \
         {received_previous})"
    ))
}
