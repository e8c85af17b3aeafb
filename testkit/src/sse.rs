//! A client-side parser of the SSE format (WHATWG HTML §9.2.6), fed arbitrary byte chunks:
//! what the tests and the benchmark read the relay's streams with. Comments (heartbeats) and
//! `retry:` advice are reported too, which browsers hide.

use sse_relay::sse::DEFAULT_EVENT;

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
    use sse_relay::sse::{control_frame, event_frame, retry_frame, HEARTBEAT};

    fn parse_all(bytes: &[u8]) -> Vec<SseItem> {
        let mut p = SseParser::new();
        // Feed one byte at a time: framing must not depend on chunk boundaries.
        for b in bytes {
            p.feed(std::slice::from_ref(b));
        }
        std::iter::from_fn(|| p.next_item()).collect()
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
