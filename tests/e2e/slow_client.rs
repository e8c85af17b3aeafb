//! Slow clients: one that reads nothing is disconnected; relay memory stays flat (consumer mode:
//! JetStream holds the backlog; shared mode: the client's queue is emptied when full and the
//! ring has a byte budget); a normal client of the same deployment gets everything meanwhile.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const EVENT_BYTES: usize = 10 * 1024;
const EVENTS: usize = 2048; // 20 MiB
/// Stated bound on relay RSS growth while 20 MiB flow past a stalled client...
const RSS_GROWTH_BOUND_KIB: u64 = 8 * 1024;
/// ...plus, in shared mode, the ring's byte budget (set here; the default is 32 MiB).
const RING_BYTES: u64 = 2 * 1024 * 1024;

both_modes! {
async fn a_stalled_client_is_cut_off_without_growing_the_relay(mode) {
    let nats = Nats::start().await;
    let ring_bytes = RING_BYTES.to_string();
    let relay = Relay::start_in(
        mode,
        &nats.url(),
        &[("RELAY_WRITE_TIMEOUT", "2s"), ("RELAY_RING_BYTES", &ring_bytes)],
    )
    .await;
    let bound = match mode {
        Fanout::Consumer => RSS_GROWTH_BOUND_KIB,
        Fanout::Shared => RSS_GROWTH_BOUND_KIB + RING_BYTES / 1024,
    };
    let connections = r#"relay_connections{kind="deployment"}"#;

    // A client that sends its request and never reads.
    let mut stalled = TcpStream::connect(relay.addr).await.expect("connect");
    stalled
        .write_all(b"GET /v1/deployments/d-slow/events HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .expect("request");
    let mut normal = SseClient::connect(&relay.url("/v1/deployments/d-slow/events"), None).await;
    relay.wait_metric(connections, 2.0).await;
    let rss_before = relay.rss_kib();
    // Read from /proc: 0 would mean it could not be, and every growth below would read as none.
    assert!(rss_before > 0, "the relay's RSS is readable");

    let publisher = Publisher::connect(&nats.url()).await;
    let reading = tokio::spawn(async move {
        let events = normal.events(EVENTS).await;
        (
            ids(&events),
            events.iter().all(|e| e.data.len() == EVENT_BYTES),
            normal,
        )
    });
    let mut published = Vec::new();
    let mut peak = rss_before;
    for i in 0..EVENTS {
        let payload = format!("{i:08}{}", "x".repeat(EVENT_BYTES - 8));
        published.push(publisher.deploy("d-slow", &payload).await);
        if i % 128 == 0 {
            peak = peak.max(relay.rss_kib());
        }
    }
    let (got, sizes_ok, _normal) = reading.await.expect("normal client");
    assert_eq!(got, published, "the normal client received everything");
    assert!(sizes_ok);
    peak = peak.max(relay.rss_kib());

    // The stalled client's connection is gone; the normal client's remains.
    relay.wait_metric(connections, 1.0).await;
    peak = peak.max(relay.rss_kib());
    let growth = peak.saturating_sub(rss_before);
    eprintln!("relay RSS {rss_before} KiB before, peak {peak} KiB: growth {growth} KiB");
    assert!(
        growth < bound,
        "relay RSS grew {growth} KiB (bound {bound} KiB) while 20 MiB passed a stalled client"
    );
    // Reading now drains what the kernel buffered, then the closed connection ends.
    let mut sink = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(WAIT, stalled.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the stalled connection was not closed"),
        }
    }
    assert!(
        total < EVENTS * EVENT_BYTES,
        "the stalled client did not get everything"
    );
    let m = relay.metrics().await;
    assert_eq!(sample(&m, r#"relay_connections{kind="deployment"}"#), 1.0);
}
}

/// Consumer mode: a client's pull is sized from the stream when it opens (an empty stream gives
/// the most, 100 events) and re-sized to the events it gets: a 4 KiB event brings it to 5, so a
/// client that stops reading holds about 20 KiB of them, not 400. The consumer is replaced
/// after the last event the client has, so every event arrives once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_pull_is_resized_to_the_events_it_gets() {
    use futures::TryStreamExt;
    const EVENTS: usize = 40;
    const EVENT_BYTES: usize = 4096;
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Consumer, &nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-pull/events"), None).await;
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, 1.0)
        .await;

    // Published at once, so the first consumer's pull of 100 may have taken events past the
    // first (where the re-size is judged) when it is replaced: those would be dropped with it
    // and delivered again by its successor.
    let publisher = Publisher::connect(&nats.url()).await;
    let payloads = sized_payloads(EVENTS, EVENT_BYTES);
    let sequences =
        futures::future::join_all(payloads.iter().map(|p| publisher.deploy("d-pull", p))).await;
    let mut published: Vec<(u64, &str)> = sequences
        .into_iter()
        .zip(payloads.iter().map(String::as_str))
        .collect();
    published.sort_unstable();
    let events = client.events(EVENTS).await;
    let got: Vec<(u64, &str)> = ids(&events)
        .into_iter()
        .zip(events.iter().map(|e| e.data.as_str()))
        .collect();
    assert_eq!(got, published, "every event once, in order");

    // The first consumer (a pull of 100) is deleted; its replacement pulls 5 at a time.
    nats.wait_consumer_count(&js, 1, WAIT).await;
    let stream = js.get_stream(STREAM).await.expect("stream");
    let consumers: Vec<_> = stream
        .consumers()
        .try_collect()
        .await
        .expect("consumer list");
    let batches: Vec<i64> = consumers.iter().map(|c| c.config.max_batch).collect();
    assert_eq!(
        batches,
        vec![5],
        "the client's consumer pulls 5 events of 4 KiB"
    );
    relay
        .wait_metric("relay_consumers_deleted_total", 1.0)
        .await;
    let m = relay.metrics().await;
    assert_eq!(sample(&m, "relay_consumers_created_total"), 2.0);
}
