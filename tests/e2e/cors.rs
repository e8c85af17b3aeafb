//! CORS: listed origins only, with credentials; none configured means same-origin only.

use crate::support::*;

async fn allow_origin(relay: &Relay, origin: &str) -> (Option<String>, Option<String>) {
    let response = http()
        .get(relay.url("/v1/deployments/d-1/timeline"))
        .header("origin", origin)
        .send()
        .await
        .expect("request");
    let get = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        get("access-control-allow-origin"),
        get("access-control-allow-credentials"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_origins_get_cors_headers() {
    let nats = Nats::start().await;
    let relay = Relay::start(
        &nats.url(),
        &[(
            "RELAY_CORS_ORIGINS",
            "https://board.example, https://ops.example",
        )],
    )
    .await;
    assert_eq!(
        allow_origin(&relay, "https://board.example").await,
        (Some("https://board.example".into()), Some("true".into()))
    );
    assert_eq!(allow_origin(&relay, "https://evil.example").await.0, None);

    // Preflight for an EventSource-style request with Last-Event-ID.
    let preflight = http()
        .request(
            reqwest::Method::OPTIONS,
            relay.url("/v1/deployments/d-1/events"),
        )
        .header("origin", "https://ops.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii");
    assert!(allowed.contains("last-event-id"), "{allowed}");

    let same_origin_only = Relay::start(&nats.url(), &[]).await;
    assert_eq!(
        allow_origin(&same_origin_only, "https://board.example").await,
        (None, None)
    );
}
