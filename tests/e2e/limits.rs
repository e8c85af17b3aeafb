//! Connection limits: 429 with Retry-After and the timeline to poll, slots freed on disconnect.

use std::time::Duration;

use crate::support::*;

async fn refused(url: &str, last_event_id: Option<&str>) -> (Option<String>, serde_json::Value) {
    let mut request = http().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status().as_u16(), 429, "{url}");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (retry_after, response.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_and_replica_limits_refuse_with_a_poll_url() {
    let nats = Nats::start().await;
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_MAX_CONNECTIONS", "3"),
            ("RELAY_MAX_CONNECTIONS_PER_KEY", "2"),
        ],
    )
    .await;
    let js = nats.jetstream().await;
    let d1 = relay.url("/v1/deployments/d-1/events");

    let a1 = SseClient::connect(&d1, None).await;
    let _a2 = SseClient::connect(&d1, None).await;
    // The third client of the key.
    let (retry_after, body) = refused(&d1, Some("7")).await;
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(body["error"], "too_many_connections");
    assert_eq!(body["poll"], "/v1/deployments/d-1/timeline?after=7");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("deploy.d-1")));

    // The fourth overall.
    let _b = SseClient::connect(&relay.url("/v1/pavilions/p-1/events"), None).await;
    let (retry_after, body) = refused(&relay.url("/v1/deployments/d-3/events"), None).await;
    assert!(retry_after.is_some());
    assert_eq!(body["error"], "too_many_connections");
    assert_eq!(body["poll"], "/v1/deployments/d-3/timeline?after=0");
    assert_eq!(
        nats.consumer_count(&js).await,
        3,
        "refusals created no consumer"
    );

    // The suggested poll works.
    let (status, page) = get_json(&relay.url("/v1/deployments/d-3/timeline?after=0")).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"], serde_json::json!([]));

    // One disconnects: a new client of that key gets in.
    drop(a1);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = http().get(&d1).send().await.expect("request");
        if response.status().as_u16() == 200 {
            break;
        }
        assert_eq!(response.status().as_u16(), 429);
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_subject_request_needs_a_slot_on_every_key() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[("RELAY_MAX_CONNECTIONS_PER_KEY", "1")]).await;
    let _held = SseClient::connect(&relay.url("/v1/pavilions/p-1/events"), None).await;
    let (_, body) = refused(&relay.url("/v1/events?deployment=d-9&pavilion=p-1"), None).await;
    assert_eq!(body["poll"], "/v1/pavilions/p-1/timeline?after=0");
    // The refused request took nothing: d-9 alone is still free.
    let _d9 = SseClient::connect(&relay.url("/v1/deployments/d-9/events"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_send_a_request_are_closed() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[("RELAY_HEADER_READ_TIMEOUT", "1s")]).await;
    // Half a request head, then nothing; nothing at all; a finished poll left idle on keep-alive.
    let mut partial = raw_connection(
        relay.addr,
        b"GET /v1/deployments/d-1/events HTTP/1.1\r\nHost: relay\r\n",
    )
    .await;
    let mut silent = raw_connection(relay.addr, b"").await;
    let mut idle = raw_connection(
        relay.addr,
        b"GET /v1/deployments/d-1/timeline HTTP/1.1\r\nHost: relay\r\n\r\n",
    )
    .await;
    let partial = read_until_closed(&mut partial).await;
    assert!(!partial.contains("200 OK"), "{partial}");
    assert!(!partial.contains("text/event-stream"), "{partial}");
    assert_eq!(read_until_closed(&mut silent).await, "");
    let idle = read_until_closed(&mut idle).await;
    assert!(
        idle.starts_with("HTTP/1.1 200 OK"),
        "the poll was answered: {idle}"
    );
    assert!(idle.contains(r#""events":[]"#), "{idle}");
    // A real client is unaffected.
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let seq = publisher.deploy("d-1", r#"{"n":1}"#).await;
    assert_eq!(
        client.next_event().await.id.as_deref(),
        Some(&*seq.to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_listeners_bound_get_503() {
    let nats = Nats::start().await;
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_MAX_CONNECTIONS", "2"),
            ("RELAY_MAX_PENDING_CONNECTIONS", "3"),
            ("RELAY_HEADER_READ_TIMEOUT", "60s"),
        ],
    )
    .await;
    // Five slow clients take every place (2 streams + 3 pending): accepted in order, they hold
    // their permits before the sixth is accepted.
    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(raw_connection(relay.addr, b"GET / HTTP/1.1\r\n").await);
    }
    let mut sixth = raw_connection(relay.addr, b"").await;
    let refused = read_until_closed(&mut sixth).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 5"),
        "{refused}"
    );
    let body = refused.split("\r\n\r\n").nth(1).expect("body");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(body["error"], "not_ready");
    relay
        .wait_metric(
            r#"relay_connections_rejected_total{reason="connection_limit"}"#,
            1.0,
        )
        .await;
    // The admin listener has its own bound: probes still answer.
    assert_eq!(relay.readyz().await, 200);
    // Two slow clients leave: their places free up for a stream (retried until the relay has
    // seen them go — a bounded wait on the relay's own accounting).
    slow.truncate(3);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = http()
            .get(relay.url("/v1/deployments/d-1/events"))
            .send()
            .await;
        if let Ok(response) = response {
            if response.status() == 200 {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no place freed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_polls_are_limited_per_client() {
    let nats = Nats::start().await;
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_TIMELINE_RATE", "1"),
            ("RELAY_TIMELINE_BURST", "3"),
            ("RELAY_CLIENT_ADDRESS_HEADER", "x-forwarded-for"),
        ],
    )
    .await;
    let url = relay.url("/v1/deployments/d-1/timeline?after=0");
    let poll = |client: &'static str| {
        http()
            .get(&url)
            .header("x-forwarded-for", format!("198.51.100.9, {client}"))
            .send()
    };
    // Invalid requests are refused before they spend anything.
    for _ in 0..5 {
        let (status, body) = get_json(&relay.url("/v1/deployments/d-1/timeline?limit=0")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_query"))
        );
    }
    for n in 0..3 {
        let response = poll("192.0.2.1").await.expect("poll");
        assert_eq!(
            response.status().as_u16(),
            200,
            "poll {n} is within the burst"
        );
    }
    let refused = poll("192.0.2.1").await.expect("poll");
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"], "too_many_requests");
    // Another client behind the same proxy has its own budget.
    assert_eq!(
        poll("192.0.2.2").await.expect("poll").status().as_u16(),
        200
    );
}
