//! Replica failover: a client moves from a SIGKILLed replica to another with its Last-Event-ID
//! and ends with every event exactly once.

use crate::support::*;

both_modes! {
async fn client_resumes_on_another_replica_after_sigkill(mode) {
    let nats = Nats::start().await;
    let mut a = Relay::start_in(mode, &nats.url(), &[]).await;
    let b = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;

    // Publish 200 events in the background: 100, then (once A is dead) 100 more, so the kill
    // lands mid-publish every time.
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut killed = Some(killed_rx);
        for i in 0..200 {
            if i == 100 {
                if let Some(rx) = killed.take() {
                    rx.await.expect("kill signal");
                }
            }
            seqs.push(publisher.deploy("d-fail", &numbered(i)).await);
        }
        seqs
    });

    let mut client = SseClient::connect(&a.url("/v1/deployments/d-fail/events"), None).await;
    let mut received = client.events(50).await;
    a.sigkill();
    a.wait_exit().await;
    killed_tx.send(()).expect("publisher waiting");

    // Whatever A sent before dying is either read completely or lost with the socket; either
    // way the client resumes from the last id it has.
    while let Some(item) = client.next_item().await {
        if let SseItem::Event(event) = item {
            received.push(event);
        }
    }
    let last = ids(&received).last().copied().expect("some events");
    let mut on_b = SseClient::connect(
        &b.url("/v1/deployments/d-fail/events"),
        Some(&last.to_string()),
    )
    .await;
    let remaining = 200 - received.len();
    received.extend(on_b.events(remaining).await);

    let published = publishing.await.expect("publisher");
    assert_exactly_once(&received, &published);
}
}
