//! Resume rules: Last-Event-ID header beats the query, `relay.gap` and `relay.reset` without ids.

use crate::support::*;

/// The control event that opens a resumed stream, then the events after it.
async fn opening(client: &mut SseClient) -> SseEvent {
    loop {
        match client.next_item().await.expect("stream open") {
            SseItem::Event(event) => return event,
            _ => continue,
        }
    }
}

both_modes! {
async fn gap_reset_and_header_precedence(mode) {
    let nats = Nats::start().await;
    // Keep only 5 messages per subject, so early sequences fall out of the stream.
    let relay = Relay::start_in(mode, &nats.url(), &[("RELAY_STREAM_MAX_MSGS_PER_SUBJECT", "5")]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let seqs: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..10 {
            v.push(publisher.deploy("d-r", &format!(r#"{{"i":{i}}}"#)).await);
        }
        v
    };
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let url = relay.url("/v1/deployments/d-r/events");

    // Older than retained: relay.gap (no id), then what is retained.
    let mut client = SseClient::connect(&url, Some("2")).await;
    let gap = opening(&mut client).await;
    assert_eq!(gap.event, "relay.gap");
    assert_eq!(gap.id, None);
    let data: serde_json::Value = serde_json::from_str(&gap.data).expect("JSON");
    assert_eq!(
        data,
        serde_json::json!({"requested": 2, "first_available": 6})
    );
    assert_eq!(ids(&client.events(5).await), vec![6, 7, 8, 9, 10]);

    // Beyond the end: relay.reset (no id), then every retained event.
    let mut client = SseClient::connect(&url, Some("1000")).await;
    let reset = opening(&mut client).await;
    assert_eq!(reset.event, "relay.reset");
    assert_eq!(reset.id, None);
    let data: serde_json::Value = serde_json::from_str(&reset.data).expect("JSON");
    assert_eq!(data, serde_json::json!({"requested": 1000, "last_seq": 10}));
    assert_eq!(ids(&client.events(5).await), vec![6, 7, 8, 9, 10]);

    // The header wins over the query (a browser reconnect keeps the page's old query).
    let mut client = SseClient::connect(&format!("{url}?last_event_id=1000"), Some("7")).await;
    let first = opening(&mut client).await;
    assert_eq!(
        (first.id.as_deref(), first.event.as_str()),
        (Some("8"), "stage")
    );
    assert_eq!(ids(&client.events(2).await), vec![9, 10]);

    // The query alone is honoured.
    let mut client = SseClient::connect(&format!("{url}?last_event_id=8"), None).await;
    assert_eq!(ids(&client.events(2).await), vec![9, 10]);

    // Resuming at the last sequence: nothing replayed, the next live event arrives.
    let mut client = SseClient::connect(&url, Some("10")).await;
    let seq = publisher.deploy("d-r", r#"{"i":10}"#).await;
    let next = opening(&mut client).await;
    assert_eq!(next.id, Some(seq.to_string()));
}
}
