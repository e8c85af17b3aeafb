//! A replica gives away streams it should not keep (`docs/api.md` §10): past their age after a
//! scale-out (`rebalance`), and while it delivers live events late (`overloaded`). Clients come
//! back through a balancer that picks a ready replica; every event is counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

const RECONNECT_WITHIN: Duration = Duration::from_secs(30);

const CLIENTS: usize = 12;

both_modes! {
async fn connections_spread_over_a_replica_added_later_once_they_reach_their_age(mode) {
    let nats = Nats::start().await;
    let env = [("RELAY_MAX_CONNECTION_AGE", "3s"), ("RELAY_RETRY", "300ms")];
    let a = Relay::start_in(mode, &nats.url(), &env).await;
    // A alone, then B is added (a scale-out): the balancer sends new connections to both.
    let alone = Arc::new(Balancer::new(&[&a]));
    const PATH: &str = "/v1/deployments/d-age/events";
    let mut opened = Vec::new();
    for _ in 0..CLIENTS {
        opened.push(alone.connect_to(0, PATH).await);
    }
    let b = Relay::start_in(mode, &nats.url(), &env).await;
    let balancer = Arc::new(Balancer::new(&[&a, &b]));
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|client| {
            let balancer = balancer.clone();
            tokio::spawn(async move {
                follow(&balancer, PATH, 0, client, SENTINEL, RECONNECT_WITHIN).await
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publish_until(Publisher::connect(&nats.url()).await, "d-age", stop.clone());
    // One age (3 s, +10 %) and a retry later every stream has been renewed once.
    a.wait_metric_at_least(r#"relay_streams_shed_total{reason="rebalance"}"#, CLIENTS as f64)
        .await;
    b.wait_metric_at_least(r#"relay_connections{kind="deployment"}"#, 1.0).await;
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("publisher");
    let mut first_moves_to_b = 0;
    for task in tasks {
        let followed = task.await.expect("follower");
        assert_followed_exactly(&followed, &published);
        assert!(!followed.moves.is_empty(), "renewed at least once");
        for moved in &followed.moves {
            assert_eq!(moved.reason.as_deref(), Some("rebalance"), "{moved:?}");
        }
        if followed.moves[0].to == 1 {
            first_moves_to_b += 1;
        }
    }
    // Round robin over two ready replicas: half of them, give or take a couple.
    assert!(
        (CLIENTS / 2 - 2..=CLIENTS / 2 + 2).contains(&first_moves_to_b),
        "{first_moves_to_b} of {CLIENTS} moved to the new replica"
    );
}
}

/// libfaketime (Debian's package; `make test` installs it): run under it, the relay's wall
/// clock reads what a file says, ahead of NATS', so every live event looks late.
fn faketime_library() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketime.so.1"))
        .find(|lib| lib.is_file());
    found.expect(
        "libfaketime.so.1 not found under /usr/lib/*/faketime: `make test` installs Debian's \
         libfaketime (apt-get install libfaketime)",
    )
}

both_modes! {
async fn a_lagging_replica_turns_not_ready_and_sheds_a_tenth_a_second_until_it_recovers(mode) {
    let nats = Nats::start().await;
    let clock = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(clock.path(), "+0").expect("write");
    let lib = faketime_library();
    let lib = lib.to_str().expect("UTF-8 path");
    let clock_file = clock.path().to_str().expect("UTF-8 path");
    let mut env = vec![
        ("RELAY_SHED_LAG", "2s"),
        ("RELAY_RETRY", "300ms"),
        ("RELAY_HEARTBEAT", "1s"),
        // The realtime clock only: timers keep the real monotonic one.
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", clock_file),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let a = Relay::start_in(mode, &nats.url(), &env).await;
    env.truncate(3);
    let b = Relay::start_in(mode, &nats.url(), &env).await;
    let balancer = Arc::new(Balancer::new(&[&a, &b]));
    const PATH: &str = "/v1/deployments/d-lag/events";
    let tasks = followers(&balancer, PATH, 0, 20, RECONNECT_WITHIN).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = publish_until(Publisher::connect(&nats.url()).await, "d-lag", stop.clone());
    a.wait_metric_at_least("relay_events_delivered_total", 100.0).await;
    let (_, ready) = get_json(&a.admin_url("/readyz")).await;
    assert_eq!(ready["status"], "ready", "on time: {ready}");

    // A's clock runs 10 s ahead: its live events now look 10 s late.
    std::fs::write(clock.path(), "+10").expect("write");
    a.wait_ready_status(503).await;
    let (_, body) = get_json(&a.admin_url("/readyz")).await;
    assert_eq!(body["reason"], "lagging", "{body}");
    let refused = http().get(a.url(PATH)).send().await.expect("request");
    assert_eq!(refused.status().as_u16(), 503, "no new streams while lagging");
    a.wait_metric_at_least(r#"relay_streams_shed_total{reason="overloaded"}"#, 4.0)
        .await;
    let live_lag = sample(&a.metrics().await, "relay_live_lag_seconds_count");
    assert!(live_lag > 0.0, "live deliveries measured");

    // On time again: ready after two good windows, and the shedding stops.
    std::fs::write(clock.path(), "+0").expect("write");
    a.wait_ready_status(200).await;
    let shed = sample(
        &a.metrics().await,
        r#"relay_streams_shed_total{reason="overloaded"}"#,
    );
    assert!(shed < 20.0, "not every stream was shed: {shed}");
    stop.store(true, Ordering::Relaxed);
    let published = publishing.await.expect("publisher");
    let mut moves = Vec::new();
    for task in tasks {
        let followed = task.await.expect("follower");
        assert_followed_exactly(&followed, &published);
        for moved in &followed.moves {
            assert_eq!(moved.reason.as_deref(), Some("overloaded"), "{moved:?}");
            assert_eq!(moved.to, 1, "a lagging replica is not picked");
            moves.push(moved.ended);
        }
    }
    assert_eq!(moves.len() as f64, shed, "each shed stream moved once");
    // At most a tenth of the streams a second: the first four ends span over a second.
    moves.sort();
    assert!(
        moves[3] - moves[0] >= Duration::from_secs(1),
        "sheds spread: {:?}",
        moves.iter().map(|m| *m - moves[0]).collect::<Vec<_>>()
    );
}
}

both_modes! {
async fn replays_are_not_counted_as_live_lag(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut published = Vec::new();
    for i in 0..50 {
        published.push(publisher.deploy("d-replay", &numbered(i)).await);
    }
    let url = relay.url("/v1/deployments/d-replay/events");
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = SseClient::connect(&url, None).await;
        assert_eq!(ids(&client.events(50).await), published, "the replay");
        clients.push(client);
    }
    let live = publisher.deploy("d-replay", &numbered(50)).await;
    for client in &mut clients {
        assert_eq!(ids(&client.events(1).await), vec![live]);
    }
    relay.wait_metric("relay_events_delivered_total", 255.0).await;
    let text = relay.metrics().await;
    assert_eq!(sample(&text, "relay_delivery_lag_seconds_count"), 255.0);
    assert_eq!(sample(&text, "relay_live_lag_seconds_count"), 5.0, "live ones only");
}
}
