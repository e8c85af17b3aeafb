//! Fuzz-style bad input: a few hundred random garbage paths, queries and Last-Event-IDs never
//! produce a 5xx and never create a consumer.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

/// Characters that must never get through as part of an id.
const FORBIDDEN: &[&str] = &[
    "*", ">", ".", " ", "%2A", "%3E", "%2E", "%20", "%00", "%FF", "%C3%A9", "%2F", "\u{e9}", "$",
    "~", "+",
];
const SAFE: &[u8] = b"abcXYZ019_-";

fn garbage_id(rng: &mut StdRng) -> String {
    let mut id = String::new();
    for _ in 0..rng.random_range(0..6) {
        id.push(SAFE[rng.random_range(0..SAFE.len())] as char);
    }
    // At least one forbidden piece, or an id that is too long.
    if rng.random_bool(0.1) {
        id = "a".repeat(129 + rng.random_range(0..50));
    } else {
        let at = rng.random_range(0..=id.len());
        id.insert_str(at, FORBIDDEN[rng.random_range(0..FORBIDDEN.len())]);
    }
    id
}

fn garbage_resume(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "-",
        "+",
        "abc",
        "1e9",
        "0x1f",
        "99999999999999999999",
        "1.5",
        "\u{1F600}",
        "7 7",
        "NaN",
        "%31",
    ];
    let mut s: String = (0..rng.random_range(0..4))
        .map(|_| char::from(b'0' + rng.random_range(0..10)))
        .collect();
    let at = rng.random_range(0..=s.len());
    s.insert_str(at, PIECES[rng.random_range(0..PIECES.len())]);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_5xx_and_never_creates_a_consumer() {
    let nats = Nats::start().await;
    let relay = Relay::start(&nats.url(), &[]).await;
    let js = nats.jetstream().await;
    let baseline = nats.consumer_count(&js).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_2026);
    let client = http();

    let mut statuses = std::collections::BTreeMap::new();
    let mut transport_errors = Vec::new();
    for i in 0..400 {
        let id = garbage_id(&mut rng);
        let resume = garbage_resume(&mut rng);
        let (path, header) = match i % 8 {
            0 => (format!("/v1/deployments/{id}/events"), None),
            1 => (
                format!("/v1/pavilions/{id}/timeline?after={}", rng.random::<u32>()),
                None,
            ),
            2 => (format!("/v1/events?deployment={id}&pavilion=ok"), None),
            3 => ("/v1/deployments/ok/events".to_owned(), Some(resume.clone())),
            4 => (
                format!(
                    "/v1/events?pavilion=p-1&last_event_id={}",
                    urlencode(&resume)
                ),
                None,
            ),
            5 => (
                format!(
                    "/v1/deployments/ok/timeline?after={}&limit={}",
                    urlencode(&resume),
                    urlencode(&resume)
                ),
                None,
            ),
            6 => (format!("/v1/{id}/{}/events", garbage_id(&mut rng)), None),
            _ => (
                format!(
                    "/v1/events?{}={id}&deployment=",
                    ["deployment", "pavilion", "x"][rng.random_range(0..3)]
                ),
                Some(resume.clone()),
            ),
        };
        let mut request = client.get(relay.url(&path));
        if let Some(value) = header.filter(|v| reqwest::header::HeaderValue::from_str(v).is_ok()) {
            request = request.header("Last-Event-ID", value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            // reqwest refused to build the URL: nothing reached the relay.
            Err(err) if err.is_builder() => continue,
            // Anything else (refused, reset) is the relay failing: counted, and fatal below.
            Err(err) => {
                transport_errors.push(format!("{path}: {err}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(status < 500, "{path}: {status} {text}");
        assert_ne!(status, 200, "{path} must be refused: {text}");
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        *statuses.entry(status).or_insert(0) += 1;
    }
    eprintln!("statuses: {statuses:?}");
    assert!(
        transport_errors.is_empty(),
        "requests that reached no relay: {transport_errors:?}"
    );
    let (status, _) = get_json(&relay.admin_url("/healthz")).await;
    assert_eq!(status, 200, "the relay survived the garbage");
    assert!(
        statuses.values().sum::<i32>() >= 300,
        "most requests reached the relay"
    );
    assert_eq!(
        nats.consumer_count(&js).await,
        baseline,
        "no consumer was created"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}
