//! The Server-Sent Events wire format: frames the relay writes, and a parser for clients
//! (the tests and the benchmark read the relay with it).
//!
//! Frames are built as whole byte buffers, once per event, so the HTTP body only moves bytes.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;

/// The comment sent when a stream has been idle for a heartbeat interval.
pub const HEARTBEAT: &[u8] = b": hb\n\n";

/// SSE event name of relayed messages without a `Relay-Event-Type` header.
pub const DEFAULT_EVENT: &str = "message";

/// `retry:` advice with ±50% jitter, so clients dropped together do not return together.
pub fn jittered_retry_ms(base: Duration) -> u64 {
    let base = base.as_millis().min(u128::from(u64::MAX / 2)) as u64;
    let low = base / 2;
    let high = base + base / 2;
    rand::rng().random_range(low..=high.max(low))
}

/// `retry: <ms>` on its own.
pub fn retry_frame(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A relayed message: `id:`, `event:`, then the payload over as many `data:` lines as it has
/// lines. SSE treats `\r\n`, `\r` and `\n` alike as line ends, so each starts a new `data:` line.
pub fn event_frame(id: u64, event: &str, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + event.len() + 48);
    buf.put_slice(b"id: ");
    buf.put_slice(id.to_string().as_bytes());
    buf.put_u8(b'\n');
    put_event_and_data(&mut buf, event, payload);
    buf.freeze()
}

/// A relay control event (`relay.gap`, `relay.reset`, `relay.drain`): no `id:`, so it never
/// moves the client's cursor.
pub fn control_frame(event: &str, json: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(json.len() + event.len() + 16);
    put_event_and_data(&mut buf, event, json.as_bytes());
    buf.freeze()
}

fn put_event_and_data(buf: &mut BytesMut, event: &str, payload: &[u8]) {
    buf.put_slice(b"event: ");
    buf.put_slice(sanitize_event_name(event).as_bytes());
    buf.put_u8(b'\n');
    let mut rest = payload;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        buf.put_slice(b"data: ");
        buf.put_slice(&rest[..end]);
        buf.put_u8(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    buf.put_u8(b'\n');
}

/// An event name must stay on its line; anything that could break the framing falls back to
/// the default name.
fn sanitize_event_name(event: &str) -> &str {
    if event.is_empty() || event.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0) {
        DEFAULT_EVENT
    } else {
        event
    }
}

/// One parsed SSE event, as a browser's `EventSource` would see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// What the parser found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    Retry(u64),
    Comment(String),
}

/// Incremental parser of the SSE format (WHATWG HTML §9.2.6), fed arbitrary byte chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    ready: std::collections::VecDeque<SseItem>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete items are then available from [`SseParser::next_item`].
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line();
                }
                _ => self.line.push(b),
            }
        }
    }

    pub fn next_item(&mut self) -> Option<SseItem> {
        self.ready.pop_front()
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                self.ready.push_back(SseItem::Event(SseEvent {
                    id: self.id.take(),
                    event: self
                        .event
                        .take()
                        .unwrap_or_else(|| DEFAULT_EVENT.to_owned()),
                    data,
                }));
            } else {
                self.id = None;
                self.event = None;
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.ready
                .push_back(SseItem::Comment(comment.trim_start().to_owned()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (line.clone(), String::new()),
        };
        match field.as_str() {
            "id" => self.id = Some(value),
            "event" => self.event = Some(value),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value),
            },
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.ready.push_back(SseItem::Retry(ms));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        // Feed one byte at a time: framing must not depend on chunk boundaries.
        for b in bytes {
            p.feed(std::slice::from_ref(b));
        }
        std::iter::from_fn(|| p.next_item()).collect()
    }

    #[test]
    fn event_frame_is_exact() {
        let frame = event_frame(42, "stage", b"{\"a\":1}");
        assert_eq!(&frame[..], b"id: 42\nevent: stage\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn multiline_payloads_split_over_data_lines() {
        let frame = event_frame(7, "message", b"line1\nline2\r\nline3\rend");
        assert_eq!(
            &frame[..],
            &b"id: 7\nevent: message\ndata: line1\ndata: line2\ndata: line3\ndata: end\n\n"[..]
        );
        let frame = event_frame(8, "message", b"trailing\n");
        assert_eq!(
            &frame[..],
            &b"id: 8\nevent: message\ndata: trailing\ndata: \n\n"[..]
        );
        let frame = event_frame(9, "message", b"");
        assert_eq!(&frame[..], &b"id: 9\nevent: message\ndata: \n\n"[..]);
    }

    #[test]
    fn control_frames_have_no_id() {
        let frame = control_frame("relay.gap", r#"{"requested":1,"first_available":5}"#);
        assert_eq!(
            &frame[..],
            &b"event: relay.gap\ndata: {\"requested\":1,\"first_available\":5}\n\n"[..]
        );
    }

    #[test]
    fn event_names_cannot_break_framing() {
        let frame = event_frame(1, "evil\ndata: x", b"{}");
        assert_eq!(&frame[..], b"id: 1\nevent: message\ndata: {}\n\n");
        let frame = event_frame(1, "", b"{}");
        assert_eq!(&frame[..], b"id: 1\nevent: message\ndata: {}\n\n");
    }

    #[test]
    fn retry_jitter_stays_within_half() {
        for _ in 0..1000 {
            let ms = jittered_retry_ms(Duration::from_secs(2));
            assert!((1000..=3000).contains(&ms), "{ms}");
        }
        assert_eq!(&retry_frame(1500)[..], b"retry: 1500\n\n");
    }

    #[test]
    fn parser_round_trips_frames() {
        let payload = "first line\nzweite Zeile — ünïcödé ✓\n{\"json\":true}";
        let mut bytes = retry_frame(1234).to_vec();
        bytes.extend_from_slice(&event_frame(5, "stage", payload.as_bytes()));
        bytes.extend_from_slice(HEARTBEAT);
        bytes.extend_from_slice(&control_frame("relay.reset", "{}"));
        assert_eq!(
            parse_all(&bytes),
            vec![
                SseItem::Retry(1234),
                SseItem::Event(SseEvent {
                    id: Some("5".into()),
                    event: "stage".into(),
                    data: payload.into()
                }),
                SseItem::Comment("hb".into()),
                SseItem::Event(SseEvent {
                    id: None,
                    event: "relay.reset".into(),
                    data: "{}".into()
                }),
            ]
        );
    }

    #[test]
    fn parser_accepts_crlf_and_missing_space() {
        let items = parse_all(b"id:3\r\ndata:x\r\n\r\n");
        assert_eq!(
            items,
            vec![SseItem::Event(SseEvent {
                id: Some("3".into()),
                event: "message".into(),
                data: "x".into()
            })]
        );
    }
}
