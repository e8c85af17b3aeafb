//! No consumer debt: in consumer mode every client's consumer is deleted when it goes away; in
//! shared mode clients hold no consumer at all once caught up. Read from the server, with the
//! connections counted by the relay.

use std::time::Duration;

use crate::support::*;

both_modes! {
async fn consumers_are_deleted_when_clients_leave(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let publisher = Publisher::connect(&nats.url()).await;
    publisher.deploy("d-debt", "{}").await;
    let baseline = nats.consumer_count(&js).await;
    assert_eq!(baseline, mode.consumers(0, 1));

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
    let connections = r#"relay_connections{kind="deployment"}"#;
    relay.wait_metric(connections, 100.0).await;
    assert_eq!(nats.consumer_count(&js).await, baseline + mode.consumers(100, 0));

    drop(clients);
    relay.wait_metric(connections, 0.0).await;
    match mode {
        // One consumer per client, each deleted by the relay as its client left.
        Fanout::Consumer => {
            relay
                .wait_metric_at_least("relay_consumers_deleted_total", 100.0)
                .await
        }
        // No client ever had a consumer: nothing to delete, the tail's the only one created.
        Fanout::Shared => {
            let m = relay.metrics().await;
            assert_eq!(sample(&m, "relay_consumers_created_total"), 1.0);
            assert_eq!(sample(&m, "relay_consumers_deleted_total"), 0.0);
        }
    }
    nats.wait_consumer_count(&js, baseline, Duration::from_secs(5))
        .await;

    // The relay keeps serving afterwards.
    let mut client = SseClient::connect(&url, None).await;
    assert_eq!(client.next_event().await.id.as_deref(), Some("1"));
}
}

/// nats-server 2.15 limits streams without an explicit `max_consumers` to 1000 consumers; the
/// relay's stream sets its own, so more than a thousand browsers fit (consumer mode: one
/// consumer each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_thousand_clients_fit_on_one_stream() {
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Consumer, &nats.url(), &[]).await;
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

/// Shared mode: a thousand clients of one subject, each resumed from history, hold at most two
/// consumers on the server once caught up (the replica's live tail; catch-ups use direct gets
/// or the ring), and every one of them gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_of_one_subject_hold_at_most_two_consumers() {
    const CLIENTS: usize = 1000;
    let nats = Nats::start().await;
    let relay = Relay::start_in(
        Fanout::Shared,
        &nats.url(),
        &[("RELAY_MAX_CONNECTIONS_PER_KEY", "1000")],
    )
    .await;
    let js = nats.jetstream().await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(publisher.deploy("d-crowd", &numbered(i)).await);
    }
    let url = relay.url("/v1/deployments/d-crowd/events");
    let mut clients = Vec::new();
    for chunk in 0..(CLIENTS / 100) {
        let batch = (0..100).map(|i| {
            let url = url.clone();
            // From the start, or resumed somewhere in the history.
            let resume = ((chunk * 100 + i) % 6)
                .checked_sub(1)
                .map(|k| published[k].to_string());
            async move {
                let client = SseClient::connect(&url, resume.as_deref()).await;
                (client, resume)
            }
        });
        clients.extend(futures::future::join_all(batch).await);
    }
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, CLIENTS as f64)
        .await;
    for i in 5..10 {
        published.push(publisher.deploy("d-crowd", &numbered(i)).await);
    }
    let checks = clients.into_iter().map(|(mut client, resume)| {
        let published = published.clone();
        async move {
            let after: u64 = resume.map_or(0, |r| r.parse().expect("number"));
            let want: Vec<u64> = published.iter().copied().filter(|&s| s > after).collect();
            let got = client.events(want.len()).await;
            assert_eq!(ids(&got), want, "resumed after {after}");
            client
        }
    });
    let clients = futures::future::join_all(checks).await;
    let consumers = nats.consumer_count(&js).await;
    assert!(
        consumers <= 2,
        "{consumers} consumers for {CLIENTS} clients"
    );
    drop(clients);
}
