//! The polling fallback: paging returns every event once and matches the SSE ids.

use std::collections::BTreeSet;

use crate::support::*;

both_modes! {
async fn paging_returns_every_event_once_matching_sse(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut expected = Vec::new();
    for i in 0..25 {
        publisher
            .deploy("t-noise", &format!(r#"{{"noise":{i}}}"#))
            .await;
        let body = format!(r#"{{"i":{i},"text":"ünïcode ✓"}}"#);
        expected.push((publisher.deploy("t-1", &body).await, body));
    }
    let last = expected.last().expect("published").0;

    let paged = page_through(&relay, last).await;
    let want: Vec<(u64, String)> = expected
        .iter()
        .map(|(seq, body)| {
            let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
            (*seq, json.to_string())
        })
        .collect();
    assert_eq!(paged, want);
    let unique: BTreeSet<u64> = paged.iter().map(|(s, _)| *s).collect();
    assert_eq!(unique.len(), 25);

    // The same ids over SSE.
    let mut client = SseClient::connect(&relay.url("/v1/deployments/t-1/events"), None).await;
    let sse_ids = ids(&client.events(25).await);
    assert_eq!(sse_ids, paged.iter().map(|(s, _)| *s).collect::<Vec<_>>());

    // Default limit and an unknown subject.
    let (_, page) = get_json(&relay.url("/v1/deployments/t-1/timeline")).await;
    assert_eq!(page["events"].as_array().expect("events").len(), 25);
    let (status, page) = get_json(&relay.url("/v1/pavilions/nobody/timeline?after=3")).await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        serde_json::json!({"events": [], "next_after": 3, "last_seq": 0})
    );

    if mode == Fanout::Shared {
        // Polls are served from the ring: no consumer besides the live tail's.
        let m = relay.metrics().await;
        assert_eq!(sample(&m, "relay_consumers_created_total"), 1.0);
        assert_eq!(sample(&m, "relay_ring_misses_total"), 0.0);
        assert!(sample(&m, "relay_ring_hits_total") > 0.0, "the pages came from the ring");
        // A replica whose ring holds only the last 3 events pages the same from JetStream.
        let small = Relay::start_in(mode, &nats.url(), &[("RELAY_RING_EVENTS", "3")]).await;
        assert_eq!(page_through(&small, last).await, paged);
        let m = small.metrics().await;
        assert!(sample(&m, "relay_ring_misses_total") >= 4.0);
        assert_eq!(sample(&m, "relay_consumers_created_total"), 1.0);
    }
}
}

/// Pages through `deploy.t-1` 7 at a time, checking each page; the events as (seq, data).
async fn page_through(relay: &Relay, last: u64) -> Vec<(u64, String)> {
    let mut paged = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (status, page) = get_json(&relay.url(&format!(
            "/v1/deployments/t-1/timeline?after={after}&limit=7"
        )))
        .await;
        assert_eq!(status, 200);
        assert_eq!(page["last_seq"], last);
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            assert_eq!(page["next_after"], after);
            break;
        }
        assert!(events.len() <= 7);
        for event in &events {
            assert_eq!(event["subject"], "deploy.t-1");
            assert_eq!(event["type"], "stage");
            let time = event["time"].as_str().expect("time");
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339 time");
            paged.push((
                event["seq"].as_u64().expect("seq"),
                event["data"].to_string(),
            ));
        }
        after = page["next_after"].as_u64().expect("next_after");
        assert_eq!(after, paged.last().expect("some").0);
        pages += 1;
        assert!(pages < 10, "paging must end");
    }
    assert_eq!(pages, 4, "25 events in pages of 7");
    paged
}
