//! The promises of the shared live tail (and, where both modes make them, of both): hand-over
//! from catch-up to live while publishing at full rate, cursors older than the ring, clients
//! that fall behind the tail, and a live source that loses its NATS connection — each counting
//! every event.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::support::*;

/// Publishes `count` numbered events to `deploy.<id>` as fast as acknowledgements come back.
fn publish_numbered(
    publisher: Publisher,
    id: &'static str,
    range: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        for i in range {
            seqs.push(publisher.deploy(id, &numbered(i)).await);
        }
        seqs
    })
}

/// Publishes `count` numbered events to `deploy.<id>`, `pause` apart; before event `hold_at` it
/// waits until the returned sender fires (so a fault lands mid-publish every time).
fn publish_held(
    publisher: Publisher,
    id: &'static str,
    count: usize,
    hold_at: usize,
    pause: Duration,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Vec<u64>>,
) {
    let (go, held) = tokio::sync::oneshot::channel::<()>();
    let publishing = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut held = Some(held);
        for i in 0..count {
            if i == hold_at {
                if let Some(held) = held.take() {
                    held.await.expect("released");
                }
            }
            seqs.push(publisher.deploy(id, &numbered(i)).await);
            tokio::time::sleep(pause).await;
        }
        seqs
    });
    (go, publishing)
}

/// The names of the stream's consumers, as the server lists them.
async fn consumer_names(stream: &async_nats::jetstream::stream::Stream) -> Vec<String> {
    use futures::TryStreamExt;
    stream
        .consumer_names()
        .try_collect()
        .await
        .expect("consumer names")
}

both_modes! {
/// 200 clients join (fresh or resumed at different points) while events are published at full
/// rate; every client gets exactly the events after its resume point.
async fn hand_over_while_publishing_at_full_rate(mode) {
    const CLIENTS: usize = 200;
    const EVENTS: usize = 600;
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[("RELAY_MAX_CONNECTIONS_PER_KEY", "200")]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut history = Vec::new();
    for i in 0..50 {
        history.push(publisher.deploy("d-rush", &numbered(i)).await);
    }
    let publishing = publish_numbered(publisher, "d-rush", 50..EVENTS);
    let url = relay.url("/v1/deployments/d-rush/events");
    let joins = (0..CLIENTS).map(|c| {
        let url = url.clone();
        let resume = (c % 4 != 0).then(|| history[c % history.len()]);
        async move {
            let mut client = SseClient::connect(&url, resume.map(|r| r.to_string()).as_deref()).await;
            let after = resume.unwrap_or(0);
            let want = EVENTS - usize::try_from(after).expect("small");
            (client.events(want).await, after)
        }
    });
    let received = futures::future::join_all(joins).await;
    let mut published = history;
    published.extend(publishing.await.expect("publisher"));
    for (events, after) in received {
        let want: Vec<u64> = published.iter().copied().filter(|&s| s > after).collect();
        assert_eq!(ids(&events), want, "client resumed after {after}");
        let first = usize::try_from(after).expect("small");
        let payloads: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(payloads, (first..EVENTS).map(numbered).collect::<Vec<_>>());
    }
}
}

/// A cursor older than the ring is read from JetStream (direct gets, no consumer), then handed
/// to the ring and the live tail, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_ring_is_caught_up_from_jetstream() {
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Shared, &nats.url(), &[("RELAY_RING_EVENTS", "16")]).await;
    let js = nats.jetstream().await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut mine = Vec::new();
    for i in 0..300 {
        // Two thirds of the stream is another subject's.
        publisher.deploy("d-other", "{}").await;
        publisher.deploy("d-other", "{}").await;
        mine.push(publisher.deploy("d-old", &numbered(i)).await);
    }
    let url = relay.url("/v1/deployments/d-old/events");
    let before = relay.metrics().await;
    let mut client = SseClient::connect(&url, Some(&mine[9].to_string())).await;
    let live = publish_numbered(publisher, "d-old", 300..350);
    let events = client.events(290 + 50).await;
    mine.extend(live.await.expect("publisher"));
    assert_eq!(ids(&events), mine[10..].to_vec());
    let payloads: Vec<String> = events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(payloads, (10..350).map(numbered).collect::<Vec<_>>());

    let after = relay.metrics().await;
    let grew = |series: &str| {
        sample_opt(&after, series).expect(series) - sample_opt(&before, series).expect(series)
    };
    assert!(
        grew("relay_ring_misses_total") >= 1.0,
        "the ring was missed"
    );
    assert!(
        grew("relay_catch_up_pages_total") >= 2.0,
        "paged from JetStream"
    );
    assert!(
        grew("relay_handovers_total") >= 1.0,
        "handed over to the live tail"
    );
    assert_eq!(
        grew("relay_consumers_created_total"),
        0.0,
        "no consumer for the catch-up"
    );
    assert_eq!(nats.consumer_count(&js).await, 1, "only the live tail's");
}

/// Clients whose queue overflows (a backlog of one event) drop back to catch-up from their own
/// cursor and still get every event exactly once. They read only once everything is published,
/// so their sockets fill: the live tail's direct writes stop at a full socket (the client's task
/// writes the rest of a frame the socket took in part) and queue, and the queues overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_fall_behind_catch_up_from_their_cursor() {
    const CLIENTS: usize = 5;
    const EVENTS: usize = 400;
    let nats = Nats::start().await;
    let relay = Relay::start_in(
        Fanout::Shared,
        &nats.url(),
        &[("RELAY_CLIENT_BACKLOG", "1"), ("RELAY_RING_EVENTS", "64")],
    )
    .await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(NarrowReader::connect(&relay, "/v1/deployments/d-lag/events").await);
    }
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, CLIENTS as f64)
        .await;
    // 24 KB each: 9.6 MB per client, more than its socket holds (the relay's send buffer
    // grows to 4 MiB at most, tcp_wmem's default).
    let (published, payloads) = publish_sized(&publisher, "d-lag", EVENTS, 24 * 1024).await;
    let readers = clients
        .iter_mut()
        .map(|client| async move { client.events(EVENTS).await });
    for events in futures::future::join_all(readers).await {
        assert_received(&events, &published, &payloads);
    }
    let m = relay.metrics().await;
    let lagged = sample_opt(&m, "relay_clients_lagged_total").expect("relay_clients_lagged_total");
    assert!(
        lagged >= 1.0,
        "no client fell behind: the test did not test"
    );
    // The first events went straight to the empty sockets.
    let direct = sample_opt(&m, "relay_events_written_directly_total").expect("direct writes");
    assert!(direct >= 1.0, "no direct write: the test did not test them");
}

both_modes! {
/// The replica's NATS connection is cut mid-stream (its live source loses what is published
/// meanwhile); after the reconnect every client has every event exactly once.
async fn a_live_source_that_loses_its_connection_is_repaired(mode) {
    const EVENTS: usize = 300;
    let nats = Nats::start().await;
    let proxy = Proxy::start(nats.port).await;
    let relay = Relay::start_in(mode, &proxy.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let url = relay.url("/v1/deployments/d-cut/events");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(SseClient::connect(&url, None).await);
    }
    let (cut_done, publishing) =
        publish_held(publisher, "d-cut", EVENTS, EVENTS / 3, Duration::from_millis(2));
    relay
        .wait_metric_at_least("relay_events_delivered_total", (5 * 50) as f64)
        .await;
    proxy.cut();
    cut_done.send(()).expect("publisher waiting");
    let readers = clients.into_iter().map(|mut client| async move { client.events(EVENTS).await });
    let received = futures::future::join_all(readers).await;
    let published = publishing.await.expect("publisher");
    for events in &received {
        assert_exactly_once(events, &published);
    }
    let m = relay.metrics().await;
    assert_eq!(sample_opt(&m, "relay_nats_connected"), Some(1.0));
    if mode == Fanout::Shared {
        assert_eq!(sample_opt(&m, "relay_live_sources"), Some(1.0));
        let js = nats.jetstream().await;
        nats.wait_consumer_count(&js, 1, WAIT).await;
    }
}
}

/// The stream is deleted and created again (its sequences start over): the live tail starts
/// over, open streams end, and a client reconnecting with its Last-Event-ID is told
/// `relay.reset`, then gets the new stream's events and its live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_restarts_the_live_tail_and_resets_clients() {
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Shared, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let subject = deployment("d-again");
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(publisher.publish(&subject, &numbered(i), None).await);
    }
    let url = relay.url("/v1/deployments/d-again/events");
    let mut client = SseClient::connect(&url, None).await;
    assert_eq!(ids(&client.events(5).await), old);

    let js = nats.jetstream().await;
    js.delete_stream(STREAM).await.expect("delete stream");
    // The relay provisions the stream again; publish into it once it exists.
    let new = vec![
        publisher
            .publish_until_acked(&subject, r#"{"new":0}"#, "new-0")
            .await,
        publisher
            .publish_until_acked(&subject, r#"{"new":1}"#, "new-1")
            .await,
    ];
    assert_eq!(new, vec![1, 2], "the recreated stream starts over");
    // The open stream ends (the tail noticed); nothing of the new stream arrives on it.
    while let Some(item) = client.next_item().await {
        if let SseItem::Event(event) = item {
            panic!("unexpected event on the old stream: {event:?}");
        }
    }
    relay.wait_ready_status(200).await;
    let mut again = SseClient::connect(&url, Some("5")).await;
    let reset = again.next_event().await;
    assert_eq!(reset.event, "relay.reset");
    let data: serde_json::Value = serde_json::from_str(&reset.data).expect("JSON");
    assert_eq!(data, serde_json::json!({"requested": 5, "last_seq": 2}));
    assert_eq!(ids(&again.events(2).await), new);
    let live = publisher.publish(&subject, r#"{"new":2}"#, None).await;
    assert_eq!(ids(&again.events(1).await), vec![live]);
}

/// A direct get may be answered by a copy of the stream that lags behind it. Here the copy is a
/// mirror serving the stream's direct gets (`mirror_direct`), fed through a forwarder in this
/// test that is stopped once the mirror has caught up: from then on about half the catch-up
/// reads are answered by a copy that stops 30 events short, with "nothing more"
/// (`Nats-Num-Pending: 0`). Such a page must not be taken as covering the client's subject up to
/// the ring: every client still gets every event, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_answered_by_a_lagging_copy_loses_nothing() {
    use async_nats::jetstream::stream::{Config, External, Source};
    const CLIENTS: usize = 10;
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Shared, &nats.url(), &[("RELAY_RING_EVENTS", "16")]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut mine = Vec::new();
    for i in 0..30 {
        publisher.deploy("d-other", "{}").await;
        mine.push(publisher.deploy("d-lagged", &numbered(i)).await);
    }
    // The mirror reaches the stream's API only through this forwarder.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut requests = client.subscribe("$JS.lag.API.>").await.expect("subscribe");
    let forwarding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The mirror's consumers on the stream (direct consumers, which the stream does not list).
    let created = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let forwarder = tokio::spawn({
        let (client, forwarding, created) = (client.clone(), forwarding.clone(), created.clone());
        async move {
            while let Some(request) = requests.next().await {
                let (Some(reply), true) = (request.reply, forwarding.load(Ordering::SeqCst)) else {
                    continue;
                };
                let subject = request.subject.replacen("$JS.lag.API", "$JS.API", 1);
                if let Ok(answer) = client.request(subject, request.payload).await {
                    let info: serde_json::Value =
                        serde_json::from_slice(&answer.payload).unwrap_or_default();
                    if let Some(name) = info["name"].as_str() {
                        created.lock().expect("names").push(name.to_owned());
                    }
                    client.publish(reply, answer.payload).await.ok();
                }
            }
        }
    });
    let js = nats.jetstream().await;
    let mut copy = js
        .create_stream(Config {
            name: "LAGGING_COPY".into(),
            mirror: Some(Source {
                name: STREAM.into(),
                external: Some(External {
                    api_prefix: "$JS.lag.API".into(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            mirror_direct: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .expect("the mirror");
    let caught_up = *mine.last().expect("published");
    let deadline = tokio::time::Instant::now() + WAIT;
    while copy.info().await.expect("mirror info").state.last_sequence < caught_up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mirror never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cut it off: no more API requests, and its consumer on the stream deleted.
    forwarding.store(false, Ordering::SeqCst);
    let names = created.lock().expect("names").clone();
    assert!(!names.is_empty(), "the mirror's consumer was seen");
    let stream = js.get_stream(STREAM).await.expect("stream");
    for name in &names {
        // Gone already if the mirror replaced it.
        stream.delete_consumer(name).await.ok();
    }
    for i in 30..60 {
        publisher.deploy("d-other", "{}").await;
        mine.push(publisher.deploy("d-lagged", &numbered(i)).await);
    }
    assert_eq!(
        copy.info().await.expect("mirror info").state.last_sequence,
        caught_up,
        "the mirror lags"
    );
    // And it answers the stream's direct gets: asked for the subject's last event, some answers
    // come from the stream (the last published), some from the copy (the last it holds).
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let answer = client
            .request(
                format!("$JS.API.DIRECT.GET.{STREAM}"),
                r#"{"last_by_subj":"deploy.d-lagged"}"#.into(),
            )
            .await
            .expect("direct get");
        let seq = answer
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Sequence"))
            .map(|v| v.as_str().to_owned())
            .expect("Nats-Sequence");
        answers.insert(seq);
    }
    let lagged_last = mine[29].to_string();
    let last = mine[59].to_string();
    assert_eq!(
        answers,
        [lagged_last, last].into_iter().collect(),
        "the stream and its lagging copy both answer direct gets"
    );
    let url = relay.url("/v1/deployments/d-lagged/events");
    let joins = (0..CLIENTS).map(|c| {
        let url = url.clone();
        let resume = mine[c];
        async move {
            let mut client = SseClient::connect(&url, Some(&resume.to_string())).await;
            (client.events(60 - c - 1).await, c)
        }
    });
    for (events, c) in futures::future::join_all(joins).await {
        assert_eq!(
            ids(&events),
            mine[c + 1..].to_vec(),
            "client resumed after {}",
            mine[c]
        );
    }
    forwarder.abort();
}

both_modes! {
/// The stream is deleted, created again and refilled past the old last sequence faster than the
/// relay's once-a-second stream check: the new stream's sequences mean other events, so an open
/// stream must end without a single one of them under the old cursor (a consumer re-created after
/// its last sequence would otherwise go on from there in the new stream).
async fn a_stream_recreated_and_refilled_at_once_feeds_no_open_stream(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let subject = deployment("d-refill");
    let mut old = Vec::new();
    for i in 0..5 {
        old.push(publisher.publish(&subject, &numbered(i), None).await);
    }
    let url = relay.url("/v1/deployments/d-refill/events");
    let mut client = SseClient::connect(&url, None).await;
    assert_eq!(ids(&client.events(5).await), old);

    let js = nats.jetstream().await;
    let config = js
        .get_stream(STREAM)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    js.delete_stream(STREAM).await.expect("delete stream");
    js.create_stream(config).await.expect("create the stream again");
    let mut new = Vec::new();
    for i in 0..10 {
        new.push(publisher.publish(&subject, &numbered(100 + i), None).await);
    }
    assert_eq!(new, (1..=10).collect::<Vec<u64>>(), "the new stream starts over");
    // The open stream ends; nothing of the new stream arrives on it.
    while let Some(item) = client.next_item().await {
        if let SseItem::Event(event) = item {
            panic!("an event of the new stream under the old cursor: {event:?}");
        }
    }
}
}

both_modes! {
/// Every consumer of the stream is deleted on the server mid-stream (what a NATS node's loss does
/// to the consumers it hosted, without the relay's connection noticing): the relay re-creates
/// what it needs and every client still gets every event exactly once.
async fn consumers_deleted_on_the_server_are_recreated_without_loss(mode) {
    const EVENTS: usize = 200;
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let url = relay.url("/v1/deployments/d-gone/events");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(SseClient::connect(&url, None).await);
    }
    relay
        .wait_metric(r#"relay_connections{kind="deployment"}"#, 3.0)
        .await;
    let (deleted, publishing) =
        publish_held(publisher, "d-gone", EVENTS, EVENTS / 4, Duration::from_millis(5));
    relay
        .wait_metric_at_least("relay_events_delivered_total", (3 * 40) as f64)
        .await;
    let js = nats.jetstream().await;
    let stream = js.get_stream(STREAM).await.expect("stream");
    let names = consumer_names(&stream).await;
    assert_eq!(names.len(), mode.consumers(3, 1), "{names:?}");
    for name in &names {
        stream.delete_consumer(name).await.expect("delete consumer");
    }
    deleted.send(()).expect("publisher waiting");
    let readers = clients.into_iter().map(|mut client| async move {
        let events = client.events(EVENTS).await;
        (events, client)
    });
    let received = futures::future::join_all(readers).await;
    let published = publishing.await.expect("publisher");
    for (events, _connected) in &received {
        assert_exactly_once(events, &published);
    }
    // New consumers serve the clients (the ordered consumers re-created themselves as
    // `<name>_<n>`); none of the deleted ones came back.
    let again = consumer_names(&stream).await;
    assert_eq!(again.len(), names.len(), "{again:?}");
    assert!(again.iter().all(|n| !names.contains(n)), "{names:?} -> {again:?}");
}
}
