//! No consumer debt: consumers are deleted when their clients go away, read from the server.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_deleted_when_clients_leave() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let publisher = Publisher::connect(&nats.url()).await;
    publisher.deploy("d-debt", "{}").await;
    let baseline = nats.consumer_count(&js).await;

    let url = relay.url("/v1/deployments/d-debt/events");
    let mut clients = Vec::new();
    for chunk in 0..10 {
        let batch = (0..10).map(|i| {
            let url = url.clone();
            async move {
                // Alternate plain and resumed connections.
                let resume = ((chunk + i) % 2 == 0).then_some("0");
                let mut client = SseClient::connect(&url, resume).await;
                client.next_event().await;
                client
            }
        });
        clients.extend(futures::future::join_all(batch).await);
    }
    assert_eq!(clients.len(), 100);
    assert_eq!(nats.consumer_count(&js).await, baseline + 100);

    drop(clients);
    nats.wait_consumer_count(&js, baseline, Duration::from_secs(5))
        .await;

    // The relay keeps serving afterwards.
    let mut client = SseClient::connect(&url, None).await;
    assert_eq!(client.next_event().await.id.as_deref(), Some("1"));
}

/// nats-server 2.15 limits streams without an explicit `max_consumers` to 1000 consumers; the
/// relay's stream sets its own, so more than a thousand browsers fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_thousand_clients_fit_on_one_stream() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut clients = Vec::new();
    // 21 deployments × 50 clients (the per-key limit is 100).
    for d in 0..21 {
        let url = relay.url(&format!("/v1/deployments/d-many-{d}/events"));
        let batch = (0..50).map(|_| {
            let url = url.clone();
            async move { SseClient::connect(&url, None).await }
        });
        clients.extend(futures::future::join_all(batch).await);
    }
    assert_eq!(nats.consumer_count(&js).await, 1050);
    let seq = publisher.deploy("d-many-20", r#"{"to":"everyone"}"#).await;
    let last = clients.last_mut().expect("clients");
    assert_eq!(ids(&last.events(1).await), vec![seq]);
}
