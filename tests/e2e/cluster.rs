//! A 3-node JetStream cluster (configs in `nats/cluster/`) with an R3 stream: the node leading
//! the stream is killed while a client streams, and the client still receives every event once.

use crate::support::*;

both_modes! {
async fn stream_leader_killed_mid_stream_loses_nothing(mode) {
    let mut cluster = NatsCluster::start().await;
    let relay = Relay::start_in(mode, &cluster.urls(), &[("RELAY_STREAM_REPLICAS", "3")]).await;
    let publisher = Publisher::connect(&cluster.urls()).await;
    let subject = deployment("d-cluster");

    let mut published = Vec::new();
    for i in 0..50 {
        let body = numbered(i);
        published.push(
            publisher
                .publish_until_acked(&subject, &body, &format!("c-{i}"))
                .await,
        );
    }
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-cluster/events"), None).await;
    let mut received = client.events(50).await;

    let js = async_nats::jetstream::new(
        async_nats::connect(format!("nats://127.0.0.1:{}", cluster.nodes[0].port))
            .await
            .expect("connect"),
    );
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.num_replicas, 3, "an R3 stream");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("stream leader");
    cluster.kill(&leader).await;

    for i in 50..100 {
        let body = numbered(i);
        published.push(
            publisher
                .publish_until_acked(&subject, &body, &format!("c-{i}"))
                .await,
        );
    }
    received.extend(client.events(50).await);
    assert_exactly_once(&received, &published);
    // The replica serves new clients again (its readiness may still flap while the cluster
    // settles: a 503 is retried, as a browser would after Retry-After).
    relay.wait_ready_status(200).await;
    let resume = published[97].to_string();
    let mut late = SseClient::connect_retrying(
        &relay.url("/v1/deployments/d-cluster/events"),
        Some(&resume),
    )
    .await;
    assert_eq!(ids(&late.events(1).await), vec![published[98]]);
}
}
