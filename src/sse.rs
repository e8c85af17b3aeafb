//! The Server-Sent Events wire format: the frames the relay writes (the client-side parser the
//! tests and the benchmark read them with is in the test kit, `testkit/src/sse.rs`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
