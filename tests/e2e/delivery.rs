//! Exact delivery: every event of the subject, in order, ids = stream sequences, payloads
//! byte-identical; multi-subject connections interleave in stream order.

use crate::support::*;

/// Payloads that stress the framing: multi-line, non-ASCII, empty lines, a colon-leading line.
fn payload(i: usize) -> String {
    match i % 5 {
        0 => format!(r#"{{"n":{i},"stage":"argocd_sync","status":"started"}}"#),
        1 => format!("{{\"n\":{i},\n\"multi\":\"line\"\n}}"),
        2 => format!(r#"{{"n":{i},"msg":"Déploiement réussi ✓ — 部署 🚀"}}"#),
        3 => format!("line one {i}\n\nline three after an empty one"),
        _ => format!(": looks like a comment {i}\ndata: looks like a field"),
    }
}

both_modes! {
async fn a_client_receives_exactly_its_events_in_order(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[("RELAY_RETRY", "2s")]).await;
    let publisher = Publisher::connect(&nats.url()).await;

    let mut expected = Vec::new();
    for i in 0..250 {
        if i % 5 == 4 {
            publisher
                .deploy("d-other", &format!(r#"{{"noise":{i}}}"#))
                .await;
        } else {
            let body = payload(i);
            let seq = publisher.deploy("d-exact", &body).await;
            expected.push((seq, body));
        }
    }
    assert_eq!(expected.len(), 200);

    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-exact/events"), None).await;
    // The first frame is the jittered retry advice: RELAY_RETRY ±50%.
    match client.next_item().await {
        Some(SseItem::Retry(ms)) => assert!((1000..=3000).contains(&ms), "{ms}"),
        other => panic!("first frame should be retry:, got {other:?}"),
    }
    let events = client.events(200).await;
    let got: Vec<(u64, String)> = events
        .iter()
        .map(|e| {
            (
                e.id.as_deref().expect("id").parse().expect("numeric"),
                e.data.clone(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(events.iter().all(|e| e.event == "stage"));

    // Live events follow the backlog on the same connection.
    let seq = publisher.deploy("d-exact", r#"{"live":true}"#).await;
    let live = client.next_event().await;
    assert_eq!(live.id, Some(seq.to_string()));
    assert_eq!(live.data, r#"{"live":true}"#);
}
}

both_modes! {
async fn multi_subject_streams_interleave_in_stream_order_and_resume(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let publisher = Publisher::connect(&nats.url()).await;

    let subjects = [
        deployment("m-1"),
        deployment("m-2"),
        pavilion("pv"),
        deployment("unrelated"),
        pavilion("pv2"),
    ];
    let mut expected = Vec::new();
    for i in 0..60 {
        let subject = &subjects[i % subjects.len()];
        let body = format!(r#"{{"i":{i},"subject":"{subject}"}}"#);
        let seq = publisher.publish(subject, &body, None).await;
        if i % subjects.len() < 3 {
            expected.push((seq, body));
        }
    }
    let url = relay.url("/v1/events?deployment=m-1&deployment=m-2&pavilion=pv");
    let mut client = SseClient::connect(&url, None).await;
    let events = client.events(expected.len()).await;
    let got: Vec<(u64, String)> = ids(&events)
        .into_iter()
        .zip(events.iter().map(|e| e.data.clone()))
        .collect();
    assert_eq!(got, expected);

    // Resume from the middle, as a browser reconnect would.
    let middle = expected[10].0;
    let mut resumed = SseClient::connect(&url, Some(&middle.to_string())).await;
    let rest = resumed.events(expected.len() - 11).await;
    assert_eq!(
        ids(&rest),
        expected[11..].iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );

    // Nothing else arrives: a new event of an unrelated subject is not delivered, the next
    // matching one is.
    publisher.deploy("unrelated", "{}").await;
    let seq = publisher
        .publish(&pavilion("pv"), r#"{"last":true}"#, None)
        .await;
    assert_eq!(resumed.next_event().await.id, Some(seq.to_string()));
}
}

both_modes! {
/// An idle stream gets `: hb` comments (RELAY_HEARTBEAT), before and after events, and the
/// events between them arrive unchanged.
async fn idle_streams_get_heartbeats(mode) {
        let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[("RELAY_HEARTBEAT", "200ms")]).await;
    let publisher = Publisher::connect(&nats.url()).await;
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-hb/events"), None).await;
    let mut heartbeats_before = 0;
    while heartbeats_before < 2 {
        match client.next_item().await.expect("stream open") {
            SseItem::Comment(text) => {
                assert_eq!(text, "hb");
                heartbeats_before += 1;
            }
            SseItem::Retry(_) => {}
            SseItem::Event(event) => panic!("no event yet: {event:?}"),
        }
    }
    let seq = publisher.deploy("d-hb", r#"{"after":"heartbeats"}"#).await;
    let event = client.next_event().await;
    assert_eq!(event.id, Some(seq.to_string()));
    assert_eq!(event.data, r#"{"after":"heartbeats"}"#);
    // Idle again: heartbeats resume.
    match client.next_item().await.expect("stream open") {
        SseItem::Comment(text) => assert_eq!(text, "hb"),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
}
}
