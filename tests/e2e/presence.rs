//! Presence (`docs/api.md` §12): who watches a subject, summed over every replica from what each
//! writes to the presence bucket once an interval; never per connection in NATS.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::*;

const INTERVAL: Duration = Duration::from_secs(1);
const INTERVAL_ENV: (&str, &str) = ("RELAY_PRESENCE_INTERVAL", "1s");
const BUCKET_SUBJECTS: &str = "$KV.DEPLOY_EVENTS_presence.>";

/// The replicas that hold keys in the presence bucket now (deleted keys excluded).
async fn replicas_in_bucket(nats: &Nats) -> BTreeSet<String> {
    let js = nats.jetstream().await;
    let bucket = js
        .get_key_value("DEPLOY_EVENTS_presence")
        .await
        .expect("presence bucket");
    let keys: Vec<String> = bucket
        .keys()
        .await
        .expect("keys")
        .map(|key| key.expect("key"))
        .collect()
        .await;
    keys.iter()
        .filter_map(|key| key.split_once('.').map(|(replica, _)| replica.to_owned()))
        .collect()
}

/// The next `relay.presence` event's data; events with ids are returned in `events`.
async fn next_presence(client: &mut SseClient, events: &mut Vec<SseEvent>) -> Value {
    loop {
        let event = client.next_event().await;
        if event.event == "relay.presence" {
            assert_eq!(event.id, None, "a presence event never moves Last-Event-ID");
            return serde_json::from_str(&event.data).expect("presence JSON");
        }
        events.push(event);
    }
}

both_modes! {
async fn the_count_sums_every_replica_and_follows_leaving_and_dying_ones(mode) {
    let nats = Nats::start().await;
    let a = Relay::start_in(mode, &nats.url(), &[INTERVAL_ENV]).await;
    let mut b = Relay::start_in(mode, &nats.url(), &[INTERVAL_ENV]).await;
    let path = "/v1/deployments/d-watch/presence";
    let stream = "/v1/deployments/d-watch/events";
    let mut on_a = Vec::new();
    for _ in 0..3 {
        on_a.push(SseClient::connect(&a.url(stream), None).await);
    }
    let mut on_b = Vec::new();
    for _ in 0..2 {
        on_b.push(SseClient::connect(&b.url(stream), None).await);
    }
    // A multi-subject stream counts in each of its subjects.
    let _multi = SseClient::connect(&b.url("/v1/events?deployment=d-watch&pavilion=p-watch"), None).await;

    // Both replicas answer the sum once each has heard the other (its first write, one tick).
    for relay in [&a, &b] {
        let body = presence_reaches(&relay.url(path), 6, INTERVAL * 3).await;
        assert_eq!(body["subject"], "deploy.d-watch");
        assert_eq!(body["users"], json!([]), "no users without JWT");
        let as_of = body["as_of"].as_str().expect("as_of");
        time::OffsetDateTime::parse(as_of, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("as_of {as_of:?} is not RFC 3339: {e}"));
    }
    let body = presence_reaches(&a.url("/v1/pavilions/p-watch/presence"), 1, INTERVAL * 3).await;
    assert_eq!(body["subject"], "pavilion.p-watch");
    // A replica started now reads what the others wrote before it came.
    let before = replicas_in_bucket(&nats).await;
    assert_eq!(before.len(), 2, "A and B write: {before:?}");
    let mut c = Relay::start_in(mode, &nats.url(), &[INTERVAL_ENV, ("RELAY_DRAIN_TIMEOUT", "2s")]).await;
    presence_reaches(&c.url(path), 6, INTERVAL * 2).await;
    let on_c = SseClient::connect(&c.url(stream), None).await;
    presence_reaches(&a.url(path), 7, INTERVAL * 3).await;
    let with_c = replicas_in_bucket(&nats).await;
    let c_id: Vec<_> = with_c.difference(&before).collect();
    assert_eq!(c_id.len(), 1, "C's keys: {with_c:?}");
    // C stops (SIGTERM): once it has exited, none of its keys is left in the bucket.
    c.sigterm();
    assert!(c.wait_exit().await.success());
    assert_eq!(replicas_in_bucket(&nats).await, before, "C withdrew its keys");
    drop(on_c);
    let (_, nobody) = get_json(&a.url("/v1/deployments/d-nobody/presence")).await;
    assert_eq!(nobody["connections"], 0);

    // Two of A's clients leave: both replicas count 4 within an interval (and the write's way).
    on_a.truncate(1);
    presence_reaches(&b.url(path), 4, INTERVAL * 2).await;
    presence_reaches(&a.url(path), 4, INTERVAL * 2).await;

    // B dies without a word: A stops counting its 3 streams within three intervals.
    b.sigkill();
    let body = presence_reaches(&a.url(path), 1, INTERVAL * 3 + Duration::from_millis(500)).await;
    assert_eq!(body["users"], json!([]));
    presence_reaches(&a.url("/v1/pavilions/p-watch/presence"), 0, INTERVAL * 3).await;

    // What NATS carried is counted: A wrote, and read B's writes and its own.
    a.wait_metric_at_least("relay_presence_messages_published_total", 2.0).await;
    a.wait_metric_at_least("relay_presence_messages_received_total", 4.0).await;
    a.wait_metric("relay_presence_replicas", 1.0).await;
    drop(on_b);
}
}

both_modes! {
async fn presence_events_carry_no_id_and_a_resume_after_them_is_exact(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[("RELAY_PRESENCE_INTERVAL", "300ms")]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(publisher.deploy("d-pe", &numbered(i)).await);
    }
    let stream = relay.url("/v1/deployments/d-pe/events?presence=1");
    let mut client = SseClient::connect(&stream, None).await;
    let mut events = Vec::new();
    let first = next_presence(&mut client, &mut events).await;
    assert_eq!(first["subject"], "deploy.d-pe");
    assert_eq!(first["connections"], 1, "{first}");
    assert_eq!(first["users"], json!([]));

    // A second watcher: the first is told, once.
    let second = SseClient::connect(&relay.url("/v1/deployments/d-pe/events"), None).await;
    let two = next_presence(&mut client, &mut events).await;
    assert_eq!(two["connections"], 2, "{two}");
    drop(second);
    let one = next_presence(&mut client, &mut events).await;
    assert_eq!(one["connections"], 1, "{one}");
    while events.len() < 3 {
        events.push(client.next_event().await);
    }
    assert_eq!(ids(&events), published);

    // More events; the client goes away and resumes with the last id it saw, as a browser
    // would (presence events never changed it): exactly the rest.
    for i in 3..6 {
        published.push(publisher.deploy("d-pe", &numbered(i)).await);
    }
    let next = client.next_event().await;
    assert_eq!(next.id, Some(published[3].to_string()), "{next:?}");
    drop(client);
    let last_id = published[3].to_string();
    let mut resumed = SseClient::connect(&stream, Some(&last_id)).await;
    let mut rest = Vec::new();
    let again = next_presence(&mut resumed, &mut rest).await;
    assert_eq!(again["connections"], 1, "{again}");
    while rest.len() < 2 {
        rest.push(resumed.next_event().await);
    }
    assert_eq!(ids(&rest), published[4..].to_vec());
    assert_eq!(rest[1].data, numbered(5));
}
}

const SECRET: &str = "presence-secret-long-enough-for-hs256";

fn token(sub: Option<&str>, subscribe: &[&str]) -> String {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
    let mut claims = json!({"exp": exp, "relay": {"subscribe": subscribe}});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

both_modes! {
async fn under_jwt_the_user_list_is_exact_sorted_and_capped(mode) {
    let nats = Nats::start().await;
    let env = [
        INTERVAL_ENV,
        ("RELAY_AUTH", "jwt"),
        ("RELAY_JWT_SECRET", SECRET),
        ("RELAY_MAX_CONNECTIONS_PER_KEY", "200"),
    ];
    let a = Relay::start_in(mode, &nats.url(), &env).await;
    let b = Relay::start_in(mode, &nats.url(), &env).await;
    let stream = "/v1/deployments/d-users/events";
    let path = "/v1/deployments/d-users/presence";
    // 105 users over both replicas, u000 twice, and a token without `sub`: 107 streams.
    let users: Vec<String> = (0..105).map(|i| format!("u{i:03}")).collect();
    let mut streams: Vec<(String, SseClient)> = Vec::new();
    let open = |relay: &Relay, sub: Option<&str>| {
        format!("{}?access_token={}", relay.url(stream), token(sub, &["deploy.d-users"]))
    };
    for (i, user) in users.iter().enumerate() {
        let relay = if i % 2 == 0 { &a } else { &b };
        streams.push((user.clone(), SseClient::connect(&open(relay, Some(user)), None).await));
    }
    streams.push(("u000".into(), SseClient::connect(&open(&b, Some("u000")), None).await));
    let _anonymous = SseClient::connect(&open(&a, None), None).await;

    let reader = token(Some("reader"), &["deploy.*"]);
    let ask = |relay: &Relay| format!("{}?access_token={reader}", relay.url(path));
    for relay in [&a, &b] {
        let body = presence_reaches(&ask(relay), 107, INTERVAL * 4).await;
        assert_eq!(body["users"], json!(users[..100]), "the first 100, sorted, each once");
    }
    // u000 leaves from both replicas: the list moves up by one.
    streams.retain(|(user, _)| user != "u000");
    for relay in [&a, &b] {
        let body = presence_reaches(&ask(relay), 105, INTERVAL * 4).await;
        assert_eq!(body["users"], json!(users[1..101]));
    }

    // The stream's grant: no token 401, a token without the subject 403, a bad id 400.
    let (status, body) = get_json(&a.url(path)).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")), "{body}");
    let other = token(Some("x"), &["deploy.other"]);
    let (status, body) = get_json(&format!("{}?access_token={other}", a.url(path))).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{body}");
}
}

both_modes! {
async fn a_storm_of_connects_and_disconnects_writes_at_most_once_an_interval(mode) {
    let nats = Nats::start().await;
    let env = [("RELAY_PRESENCE_INTERVAL", "2s"), ("RELAY_MAX_CONNECTIONS_PER_KEY", "300")];
    let a = Relay::start_in(mode, &nats.url(), &env).await;
    let b = Relay::start_in(mode, &nats.url(), &env).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut writes = client.subscribe(BUCKET_SUBJECTS).await.expect("subscribe");
    client.flush().await.expect("flush");
    let started = Instant::now();

    // 1,000 streams open and close, 250 at a time, half on each replica.
    let stream = "/v1/deployments/d-storm/events";
    for wave in 0..4 {
        let opening = (0..250).map(|i| {
            let url = if (wave + i) % 2 == 0 { a.url(stream) } else { b.url(stream) };
            async move { SseClient::connect(&url, None).await }
        });
        let open: Vec<SseClient> = futures::future::join_all(opening).await;
        drop(open);
    }
    // Everyone left: both replicas come back to 0 (each deletes its key).
    presence_reaches(&a.url("/v1/deployments/d-storm/presence"), 0, Duration::from_secs(6)).await;
    presence_reaches(&b.url("/v1/deployments/d-storm/presence"), 0, Duration::from_secs(6)).await;
    let elapsed = started.elapsed();

    // Every write the bucket received, by key, with when it arrived.
    let mut by_key: HashMap<String, Vec<Instant>> = HashMap::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), writes.next()).await
    {
        by_key.entry(message.subject.to_string()).or_default().push(Instant::now());
    }
    let storm_keys: Vec<_> = by_key.iter().filter(|(k, _)| k.ends_with(".deploy.d-storm")).collect();
    assert_eq!(storm_keys.len(), 2, "one key per replica: {:?}", by_key.keys());
    let bound = (elapsed.as_secs_f64() / 2.0).ceil() as usize + 1;
    for (key, times) in storm_keys {
        assert!(
            times.len() <= bound,
            "{key}: {} writes in {elapsed:?} at one per 2 s interval (at most {bound})",
            times.len()
        );
    }
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_off_answers_404_and_touches_no_bucket() {
    let nats = Nats::start().await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut writes = client.subscribe("$KV.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_PRESENCE", "false"),
            ("RELAY_PRESENCE_INTERVAL", "200ms"),
            ("RELAY_HEARTBEAT", "300ms"),
        ],
    )
    .await;
    let (status, body) = get_json(&relay.url("/v1/deployments/d-off/presence")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // A stream asking for presence is served without it: events and heartbeats only.
    let publisher = Publisher::connect(&nats.url()).await;
    let seq = publisher.deploy("d-off", &numbered(0)).await;
    let mut stream =
        SseClient::connect(&relay.url("/v1/deployments/d-off/events?presence=1"), None).await;
    let mut heartbeats = 0;
    let mut events = Vec::new();
    while heartbeats < 3 {
        match stream.next_item().await.expect("open stream") {
            SseItem::Event(event) => events.push(event),
            SseItem::Comment(_) => heartbeats += 1,
            SseItem::Retry(_) => {}
        }
    }
    assert_eq!(ids(&events), vec![seq], "{events:?}");

    // Several intervals later: no bucket, and nothing written to any.
    let js = nats.jetstream().await;
    assert!(
        js.get_stream("KV_DEPLOY_EVENTS_presence").await.is_err(),
        "no presence bucket"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), writes.next())
            .await
            .is_err(),
        "no presence traffic"
    );
    assert_eq!(
        sample(
            &relay.metrics().await,
            "relay_presence_messages_published_total"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_flags_are_400_before_nats() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    for path in [
        "/v1/deployments/a.b/presence",
        "/v1/deployments/%2A/presence",
        "/v1/pavilions/%3E/presence",
        "/v1/pavilions//presence",
    ] {
        let (status, body) = get_json(&relay.url(path)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_id")),
            "{path}: {body}"
        );
    }
    let (status, body) = get_json(&relay.url("/v1/deployments/d-1/events?presence=maybe")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_query")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_replica_writes_only_its_keep_alive() {
    let nats = Nats::start().await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut writes = client.subscribe(BUCKET_SUBJECTS).await.expect("subscribe");
    client.flush().await.expect("flush");
    let relay = Relay::start(&nats.url(), &[("RELAY_PRESENCE_INTERVAL", "300ms")]).await;
    let _watcher = SseClient::connect(&relay.url("/v1/deployments/d-quiet/events"), None).await;
    // Up to the stream's key: keep-alives while nobody watched, then the subject once.
    let mut keys = vec![next_key(&mut writes).await];
    while !keys.last().is_some_and(|k| k.ends_with(".deploy.d-quiet")) {
        keys.push(next_key(&mut writes).await);
        assert!(keys.len() < 50, "the stream's key never written: {keys:?}");
    }
    // Nothing changes any more: each tick writes the keep-alive alone, never the unchanged key.
    let replica = keys
        .last()
        .and_then(|k| k.split('.').nth(2))
        .expect("replica")
        .to_owned();
    for _ in 0..4 {
        let key = next_key(&mut writes).await;
        assert_eq!(key, format!("$KV.DEPLOY_EVENTS_presence.{replica}.alive"));
    }
}

/// The key of the next write the bucket receives.
async fn next_key(writes: &mut async_nats::Subscriber) -> String {
    let message = tokio::time::timeout(WAIT, writes.next())
        .await
        .expect("a presence write in time")
        .expect("subscription open");
    message.subject.to_string()
}
