//! Network faults on hosts of the tests' own (network namespaces on a bridge, faults made with
//! `iptables`; `TestNet`): NATS on one host, replicas on others, clients that come back through
//! a balancer picking a ready replica. Every event is counted: nothing lost, nothing repeated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

/// `RELAY_SHED_UNREACHABLE_AFTER` in these tests.
const SHED_AFTER: Duration = Duration::from_secs(3);
/// Settings of every relay here: shed soon, retry soon, heartbeats so an idle stream still
/// shows it is alive.
const ENV: &[(&str, &str)] = &[
    ("RELAY_SHED_UNREACHABLE_AFTER", "3s"),
    ("RELAY_RETRY", "500ms"),
    ("RELAY_HEARTBEAT", "1s"),
];
/// How long a follower may wait for a ready replica.
const RECONNECT_WITHIN: Duration = Duration::from_secs(60);

const ON_A: usize = 10;
const ON_B: usize = 3;

both_modes! {
async fn a_replica_cut_off_from_nats_hands_its_clients_over_and_serves_again_once_healed(mode) {
    let mut net = TestNet::new();
    let nats_host = net.host("nats");
    let a_host = net.host("relay-a");
    let b_host = net.host("relay-b");
    let nats = Nats::start_on(&nats_host).await;
    let a = Relay::spawn_on_host(&a_host, mode, &nats.url(), ENV).await;
    let b = Relay::spawn_on_host(&b_host, mode, &nats.url(), ENV).await;
    a.wait_ready_status(200).await;
    b.wait_ready_status(200).await;
    let balancer = Arc::new(Balancer::new(&[&a, &b]));
    const PATH: &str = "/v1/deployments/d-cut/events";

    let mut on_a = followers(&balancer, PATH, 0, ON_A, RECONNECT_WITHIN).await;
    let on_b = followers(&balancer, PATH, 1, ON_B, RECONNECT_WITHIN).await;
    let connections = r#"relay_connections{kind="deployment"}"#;
    a.wait_metric(connections, ON_A as f64).await;
    b.wait_metric(connections, ON_B as f64).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publish_until(Publisher::connect(&nats.url()).await, "d-cut", stop.clone());
    a.wait_metric_at_least("relay_events_delivered_total", (ON_A * 10) as f64)
        .await;

    // The path between A and NATS drops every packet, both ways, without a reset.
    let cut = Instant::now();
    net.cut(&a_host, nats_host.addr);
    a.wait_ready_status(503).await;
    let (_, body) = get_json(&a.admin_url("/readyz")).await;
    assert!(
        ["nats_disconnected", "stream_unreachable"].contains(&body["reason"].as_str().unwrap_or("")),
        "{body}"
    );
    // Every client of A ends up on B (the only ready replica), each told why.
    b.wait_metric(connections, (ON_A + ON_B) as f64).await;
    a.wait_metric(connections, 0.0).await;
    a.wait_metric(r#"relay_streams_shed_total{reason="unavailable"}"#, ON_A as f64)
        .await;

    // (b) Healed: A becomes ready again and serves a new client every event.
    net.heal(&a_host, nats_host.addr);
    a.wait_ready_status(200).await;
    let live_before = sample(&a.metrics().await, "relay_live_lag_seconds_count");
    on_a.extend(followers(&balancer, PATH, 0, 1, RECONNECT_WITHIN).await);
    a.wait_metric(connections, 1.0).await;
    // A delivers live events again (the new client's, after its replay).
    a.wait_metric_at_least("relay_live_lag_seconds_count", live_before + 1.0)
        .await;
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("publisher");
    let late = on_a.pop().expect("the client opened after the heal");
    for task in on_a {
        let followed = task.await.expect("follower");
        assert_followed_exactly(&followed, &published);
        assert_eq!(followed.moves.len(), 1, "{:?}", followed.moves);
        let moved = &followed.moves[0];
        assert_eq!((moved.from, moved.to), (0, 1));
        assert_eq!(moved.reason.as_deref(), Some("unavailable"));
        let live_after = moved.live - cut;
        assert!(
            live_after <= SHED_AFTER + Duration::from_secs(5),
            "live on B {live_after:?} after the cut"
        );
    }
    for task in on_b {
        let followed = task.await.expect("follower");
        assert_followed_exactly(&followed, &published);
        assert!(followed.moves.is_empty(), "B's clients stay: {:?}", followed.moves);
    }
    let late = late.await.expect("follower");
    assert_followed_exactly(&late, &published);
    assert!(late.moves.is_empty(), "{:?}", late.moves);
    assert_eq!(late.last_replica, 0, "served by A");
}
}

both_modes! {
async fn a_nats_node_partitioned_from_the_cluster_and_the_relays_loses_nothing(mode) {
    let mut net = TestNet::new();
    let nodes = [net.host("nats-1"), net.host("nats-2"), net.host("nats-3")];
    let a_host = net.host("relay-a");
    let b_host = net.host("relay-b");
    let cluster = NatsCluster::start_on(&nodes).await;
    let env: Vec<(&str, &str)> = ENV.iter().copied().chain([("RELAY_STREAM_REPLICAS", "3")]).collect();
    let a = Relay::spawn_on_host(&a_host, mode, &cluster.urls(), &env).await;
    let b = Relay::spawn_on_host(&b_host, mode, &cluster.urls(), &env).await;
    a.wait_ready_status(200).await;
    b.wait_ready_status(200).await;

    // The minority: the node leading the stream (JetStream stores nothing until the other two
    // elect a new leader). The test's own clients use the other two.
    let js = sse_relay_testkit::nats::jetstream_on(&cluster.urls()).await;
    let info = js.get_stream(STREAM).await.expect("stream").info().await.expect("info").clone();
    assert_eq!(info.config.num_replicas, 3);
    let leader = info.cluster.and_then(|c| c.leader).expect("a stream leader");
    let victim = cluster.nodes.iter().position(|n| n.name == leader).expect("known node");
    let majority = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.url())
        .collect::<Vec<_>>()
        .join(",");

    let balancer = Arc::new(Balancer::new(&[&a, &b]));
    const PATH: &str = "/v1/deployments/d-split/events";
    let mut all = followers(&balancer, PATH, 0, 6, RECONNECT_WITHIN).await;
    all.extend(followers(&balancer, PATH, 1, 6, RECONNECT_WITHIN).await);
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publish_until(Publisher::connect(&majority).await, "d-split", stop.clone());
    a.wait_metric_at_least("relay_events_delivered_total", 60.0).await;
    b.wait_metric_at_least("relay_events_delivered_total", 60.0).await;

    // Cut the leader off from its peers and from both relays (not killed: it keeps running,
    // alone, and answers nothing).
    for (i, node) in nodes.iter().enumerate() {
        if i != victim {
            net.cut(&nodes[victim], node.addr);
        }
    }
    net.cut(&nodes[victim], a_host.addr);
    net.cut(&nodes[victim], b_host.addr);

    // Publishing goes on through the new leader; both replicas serve again.
    let before = sse_relay_testkit::sample(&a.metrics().await, "relay_events_delivered_total")
        + sse_relay_testkit::sample(&b.metrics().await, "relay_events_delivered_total");
    let deadline = Instant::now() + RECONNECT_WITHIN;
    loop {
        let now = sse_relay_testkit::sample(&a.metrics().await, "relay_events_delivered_total")
            + sse_relay_testkit::sample(&b.metrics().await, "relay_events_delivered_total");
        if now >= before + 12.0 * 40.0 {
            break;
        }
        assert!(Instant::now() < deadline, "deliveries stopped after the partition");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.wait_ready_status(200).await;
    b.wait_ready_status(200).await;
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("publisher");
    for task in all {
        let followed = task.await.expect("follower");
        assert_followed_exactly(&followed, &published);
        for moved in &followed.moves {
            assert_eq!(moved.reason.as_deref(), Some("unavailable"), "{moved:?}");
        }
    }
    for node in &nodes {
        if node.ns != nodes[victim].ns {
            net.heal(&nodes[victim], node.addr);
        }
    }
}
}

both_modes! {
async fn a_nats_address_that_accepts_and_never_answers_hangs_nothing(mode) {
    // A listener that takes connections and never says a word (no INFO): a black hole
    // behind a load balancer, a stuck proxy.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("nats://{}", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let started = Instant::now();
    let mut relay = Relay::spawn_in(mode, &url, &[("RELAY_DRAIN_TIMEOUT", "2s")]).await;
    // Listening, alive, and saying why it is not ready.
    let (status, body) = get_json(&relay.admin_url("/readyz")).await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "nats_disconnected", "{body}");
    let (status, _) = get_json(&relay.admin_url("/healthz")).await;
    assert_eq!(status, 200);
    // A stream is refused at once, not held.
    let (status, body) = get_json(&relay.url("/v1/deployments/d-1/events")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "not_ready", "{body}");
    let (status, body) = get_json(&relay.url("/v1/deployments/d-1/timeline")).await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < WAIT, "answered in bounded time");
    // And it stops when asked.
    relay.sigterm();
    let exit = relay.wait_exit().await;
    assert!(exit.success(), "{exit:?}");
    // The publishing command gives up with an error instead of hanging.
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
            .args(["publish", "--deployment", "d-1", "--data", "{}"])
            .env("RELAY_NATS_URL", &url)
            .output(),
    )
    .await
    .expect("publish gives up in time")
    .expect("runs");
    assert!(!out.status.success());
    assert!(!out.stderr.is_empty(), "says why");
    held.abort();
}
}
