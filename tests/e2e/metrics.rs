//! Metrics: after a known scenario the scraped values are exactly as expected.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_scenario_scrapes_exactly() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[("RELAY_MAX_CONNECTIONS_PER_KEY", "2")]).await;
    let before = relay.metrics().await;
    assert_eq!(sample(&before, "relay_nats_connected"), 1.0);
    assert_eq!(sample(&before, "relay_draining"), 0.0);
    assert_eq!(sample(&before, "relay_events_delivered_total"), 0.0);
    // The self-healing series are there from the start (docs/api.md §9).
    assert_eq!(sample(&before, "relay_max_connections"), 10_000.0);
    let info = format!(
        r#"relay_info{{version="{}",fanout="consumer"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&before, &info), 1.0, "{info}");
    relay.wait_metric("relay_ready", 1.0).await;
    assert_eq!(sample(&before, "relay_live_lag_seconds_count"), 0.0);
    for reason in ["shutdown", "unavailable", "overloaded", "rebalance"] {
        let series = format!(r#"relay_streams_shed_total{{reason="{reason}"}}"#);
        assert_eq!(sample(&before, &series), 0.0, "{series}");
    }

    // k = 3 connections (two plain, one resumed), one 429, n = 5 events to d-1.
    let d1 = relay.url("/v1/deployments/d-1/events");
    let mut c1 = SseClient::connect(&d1, None).await;
    let mut c2 = SseClient::connect(&d1, None).await;
    let _c3 = SseClient::connect(&relay.url("/v1/pavilions/p-1/events"), Some("0")).await;
    let refused = http().get(&d1).send().await.expect("request");
    assert_eq!(refused.status().as_u16(), 429);
    let publisher = Publisher::connect(&nats.url()).await;
    for i in 0..5 {
        publisher.deploy("d-1", &format!("{{\"i\":{i}}}")).await;
    }
    assert_eq!(ids(&c1.events(5).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&c2.events(5).await), vec![1, 2, 3, 4, 5]);

    // Connections add their deliveries to the counter when they go idle: wait for it.
    relay
        .wait_metric("relay_events_delivered_total", 10.0)
        .await;
    let m = relay.metrics().await;
    assert_eq!(sample(&m, r#"relay_connections{kind="deployment"}"#), 2.0);
    assert_eq!(sample(&m, r#"relay_connections{kind="pavilion"}"#), 1.0);
    assert_eq!(sample(&m, r#"relay_connections{kind="multi"}"#), 0.0);
    assert_eq!(
        sample(
            &m,
            r#"relay_connections_rejected_total{reason="key_limit"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"relay_connections_rejected_total{reason="limit"}"#),
        0.0
    );
    assert_eq!(sample(&m, "relay_events_delivered_total"), 10.0);
    assert_eq!(sample(&m, "relay_resumes_total"), 1.0);
    assert_eq!(sample(&m, "relay_consumers_created_total"), 3.0);
    assert_eq!(sample(&m, "relay_consumers_deleted_total"), 0.0);
    assert_eq!(sample(&m, "relay_delivery_lag_seconds_count"), 10.0);
    // Published after both d-1 streams opened: live.
    assert_eq!(sample(&m, "relay_live_lag_seconds_count"), 10.0);
    assert_eq!(
        sample(&m, r#"relay_delivery_lag_seconds_bucket{le="+Inf"}"#),
        10.0
    );
    assert_eq!(sample(&m, "relay_nats_connected"), 1.0);
    assert_eq!(
        sample(
            &m,
            r#"relay_http_requests_total{route="/v1/deployments/{id}/events",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &m,
            r#"relay_http_requests_total{route="/v1/deployments/{id}/events",status="429"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"relay_http_requests_total{route="/v1/pavilions/{id}/events",status="200"}"#
        ),
        1.0
    );

    // A client leaves: its gauge and its consumer go.
    drop(c1);
    relay
        .wait_metric("relay_consumers_deleted_total", 1.0)
        .await;
    let m = relay.metrics().await;
    assert_eq!(sample(&m, r#"relay_connections{kind="deployment"}"#), 1.0);
}

/// Shared mode: the live-tail series after a known scenario — one live source, catch-ups from
/// the ring (two streams, one timeline page), no JetStream catch-up, no lagging client, and
/// one consumer created (the tail's) however many clients there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_modes_series_scrape_exactly() {
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Shared, &nats.url(), &[]).await;
    let before = relay.metrics().await;
    assert_eq!(sample(&before, "relay_live_sources"), 1.0);
    let publisher = Publisher::connect(&nats.url()).await;
    for i in 0..3 {
        publisher.deploy("d-s", &numbered(i)).await;
    }
    let url = relay.url("/v1/deployments/d-s/events");
    let mut fresh = SseClient::connect(&url, None).await;
    let mut resumed = SseClient::connect(&url, Some("1")).await;
    assert_eq!(ids(&fresh.events(3).await), vec![1, 2, 3]);
    assert_eq!(ids(&resumed.events(2).await), vec![2, 3]);
    let (status, page) = get_json(&relay.url("/v1/deployments/d-s/timeline?after=1")).await;
    assert_eq!(status, 200);
    assert_eq!(page["next_after"], 3);

    relay.wait_metric("relay_events_delivered_total", 5.0).await;
    let m = relay.metrics().await;
    assert_eq!(sample(&m, "relay_live_sources"), 1.0);
    assert_eq!(sample(&m, "relay_ring_hits_total"), 3.0);
    assert_eq!(sample(&m, "relay_ring_misses_total"), 0.0);
    assert_eq!(sample(&m, "relay_catch_up_pages_total"), 0.0);
    assert_eq!(sample(&m, "relay_handovers_total"), 2.0);
    assert_eq!(sample(&m, "relay_clients_lagged_total"), 0.0);
    assert_eq!(sample(&m, "relay_consumers_created_total"), 1.0);
    assert_eq!(sample(&m, "relay_events_delivered_total"), 5.0);
    assert_eq!(sample(&m, "relay_resumes_total"), 1.0);
    assert_eq!(sample(&m, r#"relay_connections{kind="deployment"}"#), 2.0);
}
