//! HTTP and SSE clients speaking to a relay over real sockets.

use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::sse::{SseEvent, SseItem, SseParser};
use crate::WAIT;

/// A client builder. reqwest is built with rustls and no crypto provider of its own (the relay's
/// OTLP client shares NATS' ring), so every client needs the process-wide provider installed.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// An HTTP client whose every request is bounded by [`WAIT`].
pub fn http() -> reqwest::Client {
    client_builder().timeout(WAIT).build().expect("http client")
}

/// GET returning status and JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = http().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

/// A streaming SSE response, parsed.
pub struct SseClient {
    response: reqwest::Response,
    parser: SseParser,
}

impl SseClient {
    /// Connects as a browser would while a replica recovers: a `503` (with `Retry-After`) is
    /// retried until [`WAIT`] has passed; any other refusal panics.
    pub async fn connect_retrying(url: &str, last_event_id: Option<&str>) -> SseClient {
        let deadline = Instant::now() + WAIT;
        loop {
            let response = Self::request(url, last_event_id).await;
            if response.status().as_u16() == 503 && Instant::now() < deadline {
                assert!(response.headers().contains_key("retry-after"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Self::stream(url, response);
        }
    }

    /// Connects; the status when the answer is not 200 (a refusal).
    pub async fn try_connect(url: &str, last_event_id: Option<&str>) -> Result<SseClient, u16> {
        let response = Self::request(url, last_event_id).await;
        match response.status().as_u16() {
            200 => Ok(Self::stream(url, response)),
            status => Err(status),
        }
    }

    /// Connects; panics unless the answer is a 200 event stream.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseClient {
        Self::stream(url, Self::request(url, last_event_id).await)
    }

    async fn request(url: &str, last_event_id: Option<&str>) -> reqwest::Response {
        // No overall timeout: a stream lives as long as the test reads it; each read is bounded.
        let client = client_builder().build().expect("http client");
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        timeout(WAIT, request.send())
            .await
            .expect("response in time")
            .expect("request")
    }

    /// The client of `response`; panics unless it is a 200 event stream.
    fn stream(url: &str, response: reqwest::Response) -> SseClient {
        assert_eq!(response.status().as_u16(), 200, "SSE status for {url}");
        assert_eq!(
            response.headers()["content-type"].to_str().ok(),
            Some("text/event-stream")
        );
        SseClient {
            response,
            parser: SseParser::new(),
        }
    }

    /// The next frame, or `None` when the stream ended.
    pub async fn next_item(&mut self) -> Option<SseItem> {
        loop {
            if let Some(item) = self.parser.next_item() {
                return Some(item);
            }
            let chunk = timeout(WAIT, self.response.chunk())
                .await
                .expect("SSE frame in time");
            match chunk {
                Ok(Some(bytes)) => self.parser.feed(&bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event (retry advice and comments skipped); panics if the stream ends.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            match self.next_item().await.expect("stream ended early") {
                SseItem::Event(event) => return event,
                SseItem::Retry(_) | SseItem::Comment(_) => continue,
            }
        }
    }

    pub async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_event().await);
        }
        out
    }
}
