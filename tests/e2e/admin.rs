//! The admin listener (`RELAY_ADMIN_LISTEN`): metrics and probes apart from the public API, and
//! configuration typos named at start-up.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_the_admin_listener_only() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    assert_ne!(relay.addr.port(), relay.admin.port());

    let response = http()
        .get(relay.admin_url("/metrics"))
        .send()
        .await
        .expect("admin /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("body");
    assert!(
        sample_opt(&text, "relay_nats_connected") == Some(1.0),
        "{text}"
    );

    // The public listener does not serve metrics: an Ingress in front of it cannot leak them.
    let (status, body) = get_json(&relay.url("/metrics")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    // Probes answer on both; the API only on the public one.
    for url in [
        relay.admin_url("/healthz"),
        relay.admin_url("/readyz"),
        relay.url("/healthz"),
        relay.url("/readyz"),
    ] {
        assert_eq!(get_json(&url).await.0, 200, "{url}");
    }
    let (status, body) = get_json(&relay.admin_url("/v1/deployments/d-1/timeline")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");
    let (status, _) = get_json(&relay.url("/v1/deployments/d-1/timeline")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_says_so_on_the_admin_listener() {
    let nats = Nats::start().await;
    let mut relay = Relay::start(&nats.url(), &[("RELAY_DRAIN_TIMEOUT", "4s")]).await;
    // Open streams keep the drain going long enough to read /readyz during it: each ends at a
    // random point of the 3 s spread, and the drain lasts until the last one has (one stream
    // alone ended within 21 ms once, and the process was gone before /readyz was asked).
    const STREAMS: usize = 20;
    let mut clients = Vec::new();
    for _ in 0..STREAMS {
        clients.push(SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await);
    }
    relay
        .wait_metric("relay_connections{kind=\"deployment\"}", STREAMS as f64)
        .await;
    relay.sigterm();
    relay.wait_ready_status(503).await;
    let (status, body) = get_json(&relay.admin_url("/readyz")).await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("draining")));
    // Every client is told to go elsewhere, then the process exits cleanly.
    for client in &mut clients {
        loop {
            match client.next_item().await {
                Some(SseItem::Event(e)) if e.event == "relay.drain" => break,
                Some(_) => continue,
                None => panic!("stream ended without relay.drain"),
            }
        }
    }
    assert!(relay.wait_exit().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_variable_is_named_with_the_closest_known_one() {
    // Its public port taken: the relay warns about the typo, then fails to listen and exits.
    let logs = serve_until_listen_fails("warn", &[("RELAY_HEARTBEATS", "5s")], |_| {}).await;
    let warning = logs
        .iter()
        .find(|v| v["variable"] == "RELAY_HEARTBEATS")
        .unwrap_or_else(|| panic!("no warning naming RELAY_HEARTBEATS in {logs:#?}"));
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["closest"], "RELAY_HEARTBEAT");
    let message = warning["message"].as_str().expect("message");
    assert!(
        message.contains("RELAY_HEARTBEATS") && message.contains("did you mean RELAY_HEARTBEAT?"),
        "{message}"
    );
}
