//! Clients in front of several replicas the way a load balancer with health checks serves them
//! (a Kubernetes Service with readiness probes, a cloud LB): each new connection goes to the next
//! replica whose `/readyz` answers 200. [`follow`] is one browser tab: it reads a stream, and when
//! the stream ends (`relay.drain` or not) it comes back through the balancer with its
//! `Last-Event-ID`, noting every move.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{timeout, Instant};

use crate::client::{client_builder, SseClient};
use crate::relay::Relay;
use crate::sse::{SseEvent, SseItem};

/// How long a health check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The replicas behind one address.
pub struct Balancer {
    /// Public base URL and `/readyz` URL of each replica.
    replicas: Vec<(String, String)>,
    next: AtomicUsize,
    checks: reqwest::Client,
}

impl Balancer {
    pub fn new(relays: &[&Relay]) -> Balancer {
        Balancer {
            replicas: relays
                .iter()
                .map(|r| (r.url(""), r.admin_url("/readyz")))
                .collect(),
            next: AtomicUsize::new(0),
            checks: client_builder()
                .timeout(CHECK_TIMEOUT)
                .build()
                .expect("http client"),
        }
    }

    /// The next ready replica after the last one picked, if any is ready.
    pub async fn pick(&self) -> Option<usize> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let replica = (start + i) % n;
            let ready = self.checks.get(&self.replicas[replica].1).send().await;
            if ready.is_ok_and(|r| r.status().as_u16() == 200) {
                return Some(replica);
            }
        }
        None
    }

    /// Opens `path` (from `last_event_id`) on a ready replica, trying until one accepts or
    /// `within` has passed (then panics): which replica, and the stream.
    pub async fn connect(
        &self,
        path: &str,
        last_event_id: Option<&str>,
        within: Duration,
    ) -> (usize, SseClient) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(replica) = self.pick().await {
                let url = format!("{}{path}", self.replicas[replica].0);
                match SseClient::try_connect(&url, last_event_id).await {
                    Ok(client) => return (replica, client),
                    Err(status) => assert!(
                        status == 503 || status == 429,
                        "replica {replica} refused {path} with {status}"
                    ),
                }
            }
            assert!(
                Instant::now() < deadline,
                "no replica accepted {path} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `path` on replica `replica`, whatever the balancer would pick (a client that was
    /// there before the fault).
    pub async fn connect_to(&self, replica: usize, path: &str) -> SseClient {
        SseClient::connect(&format!("{}{path}", self.replicas[replica].0), None).await
    }
}

/// One move of a following client from a stream that ended to a new one.
#[derive(Debug, Clone)]
pub struct Move {
    pub from: usize,
    pub to: usize,
    /// The `relay.drain` reason, when the old stream ended with one.
    pub reason: Option<String>,
    /// When the old stream ended.
    pub ended: Instant,
    /// When the new one was open.
    pub live: Instant,
}

/// What a following client saw.
#[derive(Debug, Default)]
pub struct Followed {
    /// Every event with an id, in order of arrival.
    pub events: Vec<SseEvent>,
    pub moves: Vec<Move>,
    /// The replica it ended on.
    pub last_replica: usize,
}

/// Reads `client` (on `replica`), coming back through `balancer` whenever its stream ends,
/// until an event whose data is `sentinel`; each reconnection may take up to `within`.
pub async fn follow(
    balancer: &Balancer,
    path: &str,
    mut replica: usize,
    mut client: SseClient,
    sentinel: &str,
    within: Duration,
) -> Followed {
    let mut seen = Followed::default();
    loop {
        let mut reason = None;
        while let Some(item) = client.next_item().await {
            match item {
                SseItem::Event(e) if e.event == "relay.drain" => {
                    assert_eq!(e.id, None, "relay.drain carries no id");
                    let data: serde_json::Value =
                        serde_json::from_str(&e.data).expect("relay.drain data is JSON");
                    reason = data["reason"].as_str().map(str::to_owned);
                }
                SseItem::Event(e) if e.id.is_some() => {
                    assert!(reason.is_none(), "an event after relay.drain");
                    let done = e.data == sentinel;
                    seen.events.push(e);
                    if done {
                        seen.last_replica = replica;
                        return seen;
                    }
                }
                SseItem::Event(_) | SseItem::Retry(_) | SseItem::Comment(_) => {}
            }
        }
        let ended = Instant::now();
        let last = seen.events.last().and_then(|e| e.id.clone());
        let (to, next) = timeout(
            within + Duration::from_secs(1),
            balancer.connect(path, last.as_deref(), within),
        )
        .await
        .expect("reconnected in time");
        seen.moves.push(Move {
            from: replica,
            to,
            reason,
            ended,
            live: Instant::now(),
        });
        replica = to;
        client = next;
    }
}
