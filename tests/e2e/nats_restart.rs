//! NATS restarts: open streams continue with no gap and no repeat, readiness follows the
//! connection, and a relay started before NATS becomes ready when it arrives.

use crate::support::*;

both_modes! {
async fn streams_survive_a_nats_restart_exactly_once(mode) {
    let mut nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let subject = deployment("d-restart");

    let mut published = Vec::new();
    for i in 0..30 {
        let id = format!("before-{i}");
        published.push(
            publisher
                .publish_until_acked(&subject, &numbered(i), &id)
                .await,
        );
    }
    let url = relay.url("/v1/deployments/d-restart/events");
    let mut from_start = SseClient::connect(&url, None).await;
    let mut received = from_start.events(30).await;
    // A second client resumed at the tail: its consumer has delivered nothing when NATS goes
    // away, so the ordered consumer recreates itself from sequence 1. It must still only see
    // what comes after its resume point.
    let tail = *published.last().expect("published");
    let mut at_tail = SseClient::connect(&url, Some(&tail.to_string())).await;

    nats.stop().await;
    relay.wait_ready_status(503).await;
    let (status, body) = get_json(&url).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "not_ready");

    // The publisher keeps retrying (same message ids) while the server is down.
    let publishing = tokio::spawn({
        let subject = subject.clone();
        async move {
            let mut seqs = Vec::new();
            for i in 30..100 {
                let id = format!("after-{i}");
                seqs.push(
                    publisher
                        .publish_until_acked(&subject, &numbered(i), &id)
                        .await,
                );
            }
            seqs
        }
    });
    nats.restart().await;
    relay.wait_ready_status(200).await;
    published.extend(publishing.await.expect("publisher"));

    received.extend(from_start.events(70).await);
    assert_exactly_once(&received, &published);

    let after_tail = at_tail.events(70).await;
    assert_eq!(
        ids(&after_tail),
        published[30..].to_vec(),
        "no replay below the resume point"
    );
}
}

both_modes! {
/// `RELAY_STREAM_MANAGE=false` with no stream yet: the relay is alive, not ready, and warns that
/// the stream is missing (in shared mode the live tail too, once its first quiet retries are
/// spent); when another replica creates the stream it becomes ready and serves. A replica that
/// manages the stream starts without a single warning, though its live tail may first try the
/// stream before the health watcher has created it.
async fn a_missing_stream_is_waited_for_and_a_managed_one_starts_quietly(mode) {
    let nats = Nats::start().await;
    let unmanaged = Relay::spawn_in(mode, &nats.url(), &[("RELAY_STREAM_MANAGE", "false")]).await;
    let missing = unmanaged.wait_warning("stream unreachable").await;
    assert!(missing.contains("stream not found"), "{missing}");
    if mode == Fanout::Shared {
        let tail = unmanaged
            .wait_warning("live tail cannot follow the stream yet")
            .await;
        assert!(tail.contains("stream not found"), "{tail}");
    }
    let (status, body) = get_json(&unmanaged.admin_url("/readyz")).await;
    assert_eq!((status, &body["reason"]), (503, &serde_json::json!("stream_unreachable")));

    let managing = Relay::start_in(mode, &nats.url(), &[]).await;
    assert_eq!(managing.warnings(), Vec::<String>::new());
    unmanaged.wait_ready_status(200).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let seq = publisher.deploy("d-1", r#"{"hello":1}"#).await;
    for relay in [&unmanaged, &managing] {
        let mut client = SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await;
        let event = client.next_event().await;
        assert_eq!((event.id, event.data), (Some(seq.to_string()), r#"{"hello":1}"#.to_owned()));
    }
    assert_eq!(managing.warnings(), Vec::<String>::new());
}
}

both_modes! {
async fn a_relay_without_nats_is_alive_but_not_ready(mode) {
    let mut nats = Nats::start().await;
    nats.stop().await;
    let relay = Relay::spawn_in(mode, &nats.url(), &[]).await;

    let (status, _) = get_json(&relay.url("/healthz")).await;
    assert_eq!(status, 200);
    let (status, body) = get_json(&relay.url("/readyz")).await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "nats_disconnected");
    let response = http()
        .get(relay.url("/v1/deployments/d-1/events"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"], "not_ready");

    // NATS arrives: the relay connects, provisions the stream and serves.
    nats.restart().await;
    relay.wait_ready_status(200).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let seq = publisher.deploy("d-1", r#"{"hello":1}"#).await;
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await;
    assert_eq!(client.next_event().await.id, Some(seq.to_string()));
}
}
