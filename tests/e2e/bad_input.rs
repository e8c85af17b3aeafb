//! Bad input: ids that could widen a subscription and malformed resume points are refused with
//! a JSON 400 before NATS is touched — no consumer is created.

use crate::support::*;

async fn expect_400(url: &str, last_event_id: Option<&str>, code: &str) {
    let mut request = http().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.expect("body");
    assert_eq!(status, 400, "{url} {last_event_id:?}: {text}");
    assert_eq!(content_type, "application/json", "{url}");
    let body: serde_json::Value = serde_json::from_str(&text).expect("JSON body");
    assert_eq!(body["error"], code, "{url} {last_event_id:?}: {text}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
}

both_modes! {
async fn bad_ids_and_resume_points_are_refused_without_a_consumer(mode) {
    let nats = Nats::start().await;
    let relay = Relay::start_in(mode, &nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let publisher = Publisher::connect(&nats.url()).await;
    publisher.deploy("d-1", "{}").await;
    let baseline = nats.consumer_count(&js).await;

    let long = "x".repeat(129);
    let bad_ids = [
        "*",
        ">",
        "a.b",
        "%2A",
        "a%2Eb",
        "",
        long.as_str(),
        "a%20b",
        "%3E",
        "d-1%2E%3E",
        "%FF",
        "é",
    ];
    for kind in ["deployments", "pavilions"] {
        for id in bad_ids {
            for tail in ["events", "timeline"] {
                expect_400(
                    &relay.url(&format!("/v1/{kind}/{id}/{tail}")),
                    None,
                    "invalid_id",
                )
                .await;
            }
        }
    }
    for id in bad_ids.iter().filter(|id| !id.is_empty()) {
        expect_400(
            &relay.url(&format!("/v1/events?deployment={id}")),
            None,
            "invalid_id",
        )
        .await;
        expect_400(
            &relay.url(&format!("/v1/events?deployment=ok&pavilion={id}")),
            None,
            "invalid_id",
        )
        .await;
    }
    expect_400(&relay.url("/v1/events?deployment="), None, "invalid_id").await;
    expect_400(&relay.url("/v1/events"), None, "invalid_query").await;
    let seventeen: String = (0..17).map(|i| format!("deployment=d{i}&")).collect();
    expect_400(
        &relay.url(&format!("/v1/events?{seventeen}")),
        None,
        "invalid_query",
    )
    .await;

    // (Leading and trailing blanks are not tested in the header: HTTP strips them.)
    for bad in [
        "abc",
        "-1",
        "18446744073709551616",
        "+1",
        "1.5",
        " 7",
        "0x1",
    ] {
        if bad.trim() == bad {
            for path in [
                "/v1/deployments/d-1/events",
                "/v1/pavilions/p-1/events",
                "/v1/events?deployment=d-1",
            ] {
                expect_400(&relay.url(path), Some(bad), "invalid_last_event_id").await;
            }
        }
        let encoded: String = bad.bytes().map(|b| format!("%{b:02X}")).collect();
        expect_400(
            &relay.url(&format!(
                "/v1/deployments/d-1/events?last_event_id={encoded}"
            )),
            None,
            "invalid_last_event_id",
        )
        .await;
    }
    for bad in ["after=x", "after=-1", "limit=0", "limit=1001", "limit=abc"] {
        expect_400(
            &relay.url(&format!("/v1/deployments/d-1/timeline?{bad}")),
            None,
            "invalid_query",
        )
        .await;
    }

    assert_eq!(
        nats.consumer_count(&js).await,
        baseline,
        "no consumer was created"
    );
    // A valid id still works, and sees only its own subject.
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await;
    assert_eq!(client.next_event().await.id.as_deref(), Some("1"));
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_methods_and_oversized_requests_answer_json() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    let long_query = format!("/v1/events?deployment=d-1&x={}", "a".repeat(5000));
    let response = http()
        .get(relay.url(&long_query))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 414);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "too_large");
    let response = http()
        .get(relay.url("/v1/deployments/d-1/events"))
        .header("x-padding", "p".repeat(17 * 1024))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 431);
    let (status, body) = get_json(&relay.url("/v2/nothing")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let response = http()
        .post(relay.url("/v1/deployments/d-1/events"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 405);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["error"], "method_not_allowed");
}
