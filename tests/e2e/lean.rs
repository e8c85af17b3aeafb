//! The lean path (`src/http/lean.rs`): an event stream's first request is parsed by the relay
//! and its answer written straight to the socket, closed-delimited; every other request, and an
//! event stream asked for in a way the lean path leaves alone, is served by hyper — with the same
//! answers.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Reads from `socket` until `needle` has arrived; what arrived.
async fn read_until(socket: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains(needle) {
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// The lean answer: the stream's headers with the date and `connection: close`, no chunked
/// framing, frames as they come; a client that closes its socket is gone from the relay's
/// connections at once (no write needed to notice), and its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_written_straight_to_its_socket() {
    let nats = Nats::start().await;
    // No heartbeat within the test: the relay must notice the close without writing.
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_MAX_CONNECTIONS_PER_KEY", "1"),
            ("RELAY_HEARTBEAT", "300s"),
        ],
    )
    .await;
    let publisher = Publisher::connect(&nats.url()).await;
    let seq = publisher.deploy("d-lean", r#"{"n":1}"#).await;
    let mut socket = raw_connection(
        relay.addr,
        b"GET /v1/deployments/d-lean/events HTTP/1.1\r\nHost: relay\r\n\r\n",
    )
    .await;
    let answer = read_until(&mut socket, "\n\n").await;
    let answer = read_until_more(&mut socket, answer, &format!("id: {seq}\n")).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "x-accel-buffering: no",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(line), "{line} in {head}");
    }
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(body.starts_with("retry: "), "{body}");
    assert!(
        body.contains(&format!("id: {seq}\nevent: stage\ndata: {{\"n\":1}}\n\n")),
        "{body}"
    );
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, 1.0)
        .await;
    drop(socket);
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, 0.0)
        .await;
    // The key's one place is free again.
    let mut again = SseClient::connect(&relay.url("/v1/deployments/d-lean/events"), None).await;
    assert_eq!(again.next_event().await.id, Some(seq.to_string()));
}

/// What arrived so far plus what `socket` sends until `needle` is in it.
async fn read_until_more(
    socket: &mut tokio::net::TcpStream,
    mut so_far: String,
    needle: &str,
) -> String {
    if !so_far.contains(needle) {
        so_far.push_str(&read_until(socket, needle).await);
    }
    so_far
}

/// An error on the lean path is the relay's usual JSON error, with its length, and closes the
/// connection: a bad id (400) and a refusal by the per-key limit (429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_gets_the_usual_error_and_the_connection_closes() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[("RELAY_MAX_CONNECTIONS_PER_KEY", "1")]).await;
    let _held = SseClient::connect(&relay.url("/v1/deployments/d-held/events"), None).await;
    for (path, status, error) in [
        (
            "/v1/deployments/d*bad/events",
            "400 bad request",
            "invalid_id",
        ),
        (
            "/v1/deployments/d-held/events",
            "429 too many requests",
            "too_many_connections",
        ),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n");
        let mut socket = raw_connection(relay.addr, request.as_bytes()).await;
        let answer = read_until_closed(&mut socket).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        let head = head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("http/1.1 {status}\r\n")),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["error"], error, "{path}");
    }
}

/// Event streams asked for in a way the lean path leaves alone — over HTTP/1.0, or with another
/// request sent right behind the head — are served by hyper, exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_lean_path_leaves_alone_are_served_by_hyper() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let seq = publisher.deploy("d-old", r#"{"n":1}"#).await;
    for request in [
        &b"GET /v1/deployments/d-old/events HTTP/1.0\r\nHost: relay\r\n\r\n"[..],
        &b"GET /v1/deployments/d-old/events HTTP/1.1\r\nHost: relay\r\n\r\nGET /healthz HTTP/1.1\r\n"[..],
    ] {
        let mut socket = raw_connection(relay.addr, request).await;
        let answer = read_until(&mut socket, &format!("id: {seq}\n")).await;
        assert!(answer.starts_with("HTTP/1."), "{answer}");
        assert!(answer.contains(" 200 OK\r\n"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("content-type: text/event-stream"),
            "{answer}"
        );
        assert!(answer.contains(r#"data: {"n":1}"#), "{answer}");
    }
}

/// The slow-header cut-off holds on the lean path: half an event stream's head, then the rest
/// after the timeout, gets nothing but a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_head_is_cut_off_on_the_lean_path_too() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[("RELAY_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut socket =
        raw_connection(relay.addr, b"GET /v1/deployments/d-1/events HTTP/1.1\r\n").await;
    let answer = read_until_closed(&mut socket).await;
    assert_eq!(answer, "", "closed without an answer");
    // Writing after the cut-off fails or goes nowhere; a whole head in time is served.
    let _ = socket.write_all(b"Host: relay\r\n\r\n").await;
    let _ok = SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await;
}

both_modes! {
/// Clients reading while events of 16 KB flow: in shared mode the live tail writes to idle
/// clients' sockets itself; every byte of every event arrives once, in order. Consumer mode has
/// no direct writes. (Frames a socket takes only in part: `shared_fanout`'s fall-behind test.)
async fn events_written_by_the_live_tail_arrive_whole_and_in_order(mode) {
    const CLIENTS: usize = 6;
    const EVENTS: usize = 300;
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = NarrowReader::connect(&relay, "/v1/deployments/d-direct/events").await;
        readers.push(tokio::spawn(async move { client.events(EVENTS).await }));
    }
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, CLIENTS as f64)
        .await;
    let (published, payloads) = publish_sized(&publisher, "d-direct", EVENTS, 16 * 1024).await;
    for reader in readers {
        assert_received(&reader.await.expect("reader"), &published, &payloads);
    }
    relay
        .wait_metric("relay_events_delivered_total", (CLIENTS * EVENTS) as f64)
        .await;
    let direct = sample(&relay.metrics().await, "relay_events_written_directly_total");
    match mode {
        Fanout::Shared => assert!(direct >= 1.0, "no direct write: the test did not test them"),
        Fanout::Consumer => assert_eq!(direct, 0.0),
    }
}
}
