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
