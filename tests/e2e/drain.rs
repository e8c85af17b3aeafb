//! Graceful drain: SIGTERM spreads `relay.drain` over the open streams; every client moves to
//! another replica with its Last-Event-ID and ends with every event exactly once.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

const CLIENTS: usize = 50;
const EVENTS: usize = 300;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

both_modes! {
async fn sigterm_drains_every_client_to_another_replica(mode) {
    let nats = Nats::start().await;
    let drain = format!("{}s", DRAIN_TIMEOUT.as_secs());
    let mut a = Relay::start_in(mode, &nats.url(), &[("RELAY_DRAIN_TIMEOUT", &drain)]).await;
    let b = Relay::start_in(mode, &nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let a_url = a.url("/v1/deployments/d-drain/events");
    let b_url = b.url("/v1/deployments/d-drain/events");

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(SseClient::connect(&a_url, None).await);
    }
    let connections = r#"relay_connections{kind="deployment"}"#;
    a.wait_metric(connections, CLIENTS as f64).await;
    assert_eq!(nats.consumer_count(&js).await, mode.consumers(CLIENTS, 2));

    // Publish continuously, before, during and after the drain.
    let (sigterm_tx, sigterm_rx) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn({
        let publisher = Publisher::connect(&nats.url()).await;
        async move {
            let mut seqs = Vec::new();
            let mut sigterm = Some(sigterm_rx);
            for i in 0..EVENTS {
                if i == EVENTS / 3 {
                    if let Some(rx) = sigterm.take() {
                        rx.await.ok();
                    }
                }
                seqs.push(
                    publisher
                        .deploy("d-drain", &format!(r#"{{"i":{i}}}"#))
                        .await,
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seqs
        }
    });

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let b_url = b_url.clone();
            tokio::spawn(async move {
                // On A until the stream ends; the last frame must be relay.drain + retry.
                let mut events = Vec::new();
                let mut drained = false;
                while let Some(item) = client.next_item().await {
                    match item {
                        SseItem::Event(e) if e.event == "relay.drain" => {
                            assert_eq!(e.id, None, "control events carry no id");
                            let data: serde_json::Value =
                                serde_json::from_str(&e.data).expect("JSON");
                            assert_eq!(data["reason"], "shutdown", "{}", e.data);
                            drained = true;
                        }
                        SseItem::Event(e) => {
                            assert!(!drained, "no event after relay.drain");
                            events.push(e);
                        }
                        SseItem::Retry(ms) => assert!(!drained || ms > 0),
                        SseItem::Comment(_) => {}
                    }
                }
                assert!(drained, "stream ended without relay.drain");
                let last = ids(&events).last().map(|id| id.to_string());
                let mut on_b = SseClient::connect(&b_url, last.as_deref()).await;
                let remaining = EVENTS - events.len();
                events.extend(on_b.events(remaining).await);
                (ids(&events), on_b)
            })
        })
        .collect();

    // Once events reach every client (each of the first 100 to all 50), SIGTERM.
    a.wait_metric_at_least("relay_events_delivered_total", (CLIENTS * 100) as f64)
        .await;
    let started = Instant::now();
    a.sigterm();
    sigterm_tx.send(()).ok();
    // Draining: not ready, and new streams are refused.
    a.wait_ready_status(503).await;
    let refused = http().get(&a_url).send().await.expect("request");
    assert_eq!(refused.status().as_u16(), 503);
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"], "draining");

    let status = a.wait_exit().await;
    assert!(status.success(), "A exits 0: {status:?}");
    assert!(
        started.elapsed() < DRAIN_TIMEOUT + Duration::from_secs(1),
        "A exited within the drain timeout ({:?})",
        started.elapsed()
    );

    let published = publishing.await.expect("publisher");
    let mut on_b = Vec::new();
    for reader in readers {
        let (got, client) = reader.await.expect("reader");
        assert_eq!(got, published, "every event exactly once, in order");
        on_b.push(client);
    }
    // Every client is on B; A's consumers are gone, only B's remain.
    b.wait_metric(connections, CLIENTS as f64).await;
    nats.wait_consumer_count(&js, mode.consumers(CLIENTS, 1), WAIT)
        .await;
}
}
