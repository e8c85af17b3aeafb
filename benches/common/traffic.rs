//! The load every part publishes and reads: subjects, the publisher, the SSE clients' open and
//! read, what each client received, and the lost/dup check.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use sse_relay_testkit as testkit;
use testkit::{SseItem, SseParser};
use tokio_util::sync::CancellationToken;

use super::sse_client::{Dialer, SseStream};

pub const K_DEPLOYMENTS: usize = 100;
/// Subjects of the default load: K deployments and one pavilion.
pub const SUBJECTS: usize = K_DEPLOYMENTS + 1;
/// How long a run waits after publishing for every client to have every event; what has not
/// arrived by then counts as lost.
pub const DELIVERY_WAIT_SECS: u64 = 120;

/// Subject index `s`: K is the pavilion, every other index a deployment (0..K in the default
/// load; the `shapes` part publishes to more).
pub fn subject_name(run: &str, s: usize) -> (String, String) {
    if s != K_DEPLOYMENTS {
        let id = format!("{run}-d{s}");
        (
            format!("deploy.{id}"),
            format!("/v1/deployments/{id}/events"),
        )
    } else {
        let id = format!("{run}-p");
        (
            format!("pavilion.{id}"),
            format!("/v1/pavilions/{id}/events"),
        )
    }
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What every client records: payload counters it received, and latencies in microseconds.
#[derive(Default)]
pub struct Received {
    pub counters: Vec<u64>,
    pub latencies_us: Vec<u32>,
    /// (stream sequence, publish time, receipt time) of every event, in nanoseconds: a failover
    /// run measures from JetStream's store time too.
    pub receipts: Vec<(u64, u64, u64)>,
    pub last_id: u64,
    pub ids_increasing: bool,
}

/// The payload `publish_load` sends: publish time (ns since the epoch) and per-subject counter.
#[derive(serde::Deserialize)]
pub struct Payload {
    pub t: u64,
    pub n: u64,
}

pub fn parse_payload(data: &[u8]) -> Option<(u64, u64)> {
    let p: Payload = serde_json::from_slice(data).ok()?;
    Some((p.t, p.n))
}

impl Received {
    pub fn record(&mut self, seq: u64, data: &[u8]) {
        let now = now_nanos();
        if let Some((t, n)) = parse_payload(data) {
            self.counters.push(n);
            if seq > 0 {
                self.receipts.push((seq, t, now));
            }
            self.latencies_us
                .push((now.saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32);
        }
    }
}

/// Publishes `rate` events/s over the default K+1 subjects (round robin) for `seconds`; returns
/// how many each subject got. The payload carries the publish time and a per-subject counter.
pub async fn publish_load(nats_urls: &str, run: &str, rate: u32, seconds: f64) -> Vec<u64> {
    publish_over(nats_urls, run, rate, seconds, SUBJECTS).await
}

/// [`publish_load`] over subject indexes `0..subjects`.
pub async fn publish_over(
    nats_urls: &str,
    run: &str,
    rate: u32,
    seconds: f64,
    subjects: usize,
) -> Vec<u64> {
    publish_padded(nats_urls, run, rate, seconds, subjects, 0).await
}

/// [`publish_over`] with every payload padded (a `pad` field) to `payload_bytes` (0: none).
pub async fn publish_padded(
    nats_urls: &str,
    run: &str,
    rate: u32,
    seconds: f64,
    subjects: usize,
    payload_bytes: usize,
) -> Vec<u64> {
    let urls: Vec<String> = nats_urls.split(',').map(str::to_owned).collect();
    let client = async_nats::connect(urls.as_slice())
        .await
        .expect("publisher");
    let js = async_nats::jetstream::new(client);
    let mut counts = vec![0u64; subjects];
    let total = (f64::from(rate) * seconds) as u64;
    let tick = Duration::from_millis(10);
    let per_tick = (f64::from(rate) * tick.as_secs_f64()).max(1.0);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut sent = 0u64;
    let mut budget = 0.0;
    let mut s = 0usize;
    while sent < total {
        interval.tick().await;
        budget += per_tick;
        while budget >= 1.0 && sent < total {
            budget -= 1.0;
            let (subject, _) = subject_name(run, s);
            let n = counts[s];
            let mut payload = format!(r#"{{"t":{},"n":{n}}}"#, now_nanos());
            if payload.len() < payload_bytes {
                // `,"pad":""` is 9 bytes.
                let pad = "x".repeat(payload_bytes.saturating_sub(payload.len() + 9));
                payload.truncate(payload.len() - 1);
                payload.push_str(&format!(r#","pad":"{pad}"}}"#));
            }
            // Retried with the same message id while a NATS node is down (scale-out run).
            let msg_id = format!("{run}-{s}-{n}");
            let js = js.clone();
            acks.push(async move {
                for _ in 0..50 {
                    let message = async_nats::jetstream::message::PublishMessage::build()
                        .payload(payload.clone().into())
                        .message_id(msg_id.as_str());
                    if let Ok(ack) = js.send_publish(subject.clone(), message).await {
                        if ack.await.is_ok() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                panic!("publish never acknowledged");
            });
            counts[s] += 1;
            s = (s + 1) % subjects;
            sent += 1;
        }
        while let Some(Some(())) = futures::FutureExt::now_or_never(acks.next()) {}
    }
    while acks.next().await.is_some() {}
    counts
}

/// Opens an SSE stream, resuming with `Last-Event-ID` after the last event received if any.
/// None unless the answer is 200, or if `done` comes first.
pub async fn sse_open(
    dialer: &Dialer,
    url: &str,
    received: &Mutex<Received>,
    done: &CancellationToken,
) -> Option<SseStream> {
    let last = received.lock().expect("lock").last_id;
    let headers = if last > 0 {
        vec![("Last-Event-ID", last.to_string())]
    } else {
        Vec::new()
    };
    tokio::select! {
        _ = done.cancelled() => None,
        stream = dialer.open(url, &headers) => stream,
    }
}

/// Reads an open SSE stream until `done` (true) or the stream ends or fails (false), recording
/// every event.
pub async fn sse_read(
    mut stream: SseStream,
    received: &Mutex<Received>,
    done: &CancellationToken,
) -> bool {
    let mut parser = SseParser::new();
    let cancelled = done.cancelled();
    tokio::pin!(cancelled);
    loop {
        let chunk = tokio::select! {
            _ = &mut cancelled => return true,
            chunk = stream.chunk() => chunk,
        };
        let Some(bytes) = chunk else { return false };
        parser.feed(&bytes);
        let mut rec = received.lock().expect("lock");
        while let Some(item) = parser.next_item() {
            if let SseItem::Event(event) = item {
                let Some(id) = event.id.as_deref().and_then(|i| i.parse::<u64>().ok()) else {
                    continue;
                };
                if id <= rec.last_id {
                    rec.ids_increasing = false;
                }
                rec.last_id = id;
                rec.record(id, event.data.as_bytes());
            }
        }
    }
}

pub fn new_received() -> Arc<Mutex<Received>> {
    Arc::new(Mutex::new(Received {
        ids_increasing: true,
        ..Default::default()
    }))
}

/// Waits until the clients hold `total` events between them, or `wait` has passed.
pub async fn wait_delivered<'a>(
    received: impl Iterator<Item = &'a Arc<Mutex<Received>>> + Clone,
    total: u64,
    wait: Duration,
) {
    let deadline = Instant::now() + wait;
    loop {
        let got: u64 = received
            .clone()
            .map(|r| r.lock().expect("lock").counters.len() as u64)
            .sum();
        if got >= total || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every client holds every event of its subject (`expected[s]` events were
/// published to subject `s`; client `i` follows `subject_of[i]`), or the delivery wait has passed.
pub async fn wait_every_event(
    expected: &[u64],
    subject_of: &[usize],
    received: &[Arc<Mutex<Received>>],
) {
    let total: u64 = subject_of.iter().map(|&s| expected[s]).sum();
    wait_delivered(
        received.iter(),
        total,
        Duration::from_secs(DELIVERY_WAIT_SECS),
    )
    .await;
}

pub struct Outcome {
    pub held: usize,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub latencies_us: Vec<u32>,
}

pub fn check(expected: &[u64], subject_of: &[usize], received: &[Arc<Mutex<Received>>]) -> Outcome {
    let mut out = Outcome {
        held: 0,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        latencies_us: Vec::new(),
    };
    for (i, rec) in received.iter().enumerate() {
        let rec = rec.lock().expect("lock");
        let want = expected[subject_of[i]];
        let mut counters = rec.counters.clone();
        counters.sort_unstable();
        let before = counters.len() as u64;
        counters.dedup();
        let unique = counters.len() as u64;
        out.duplicated += before - unique;
        out.lost += want.saturating_sub(unique);
        if want > unique && std::env::var("BENCH_DEBUG").is_ok() {
            let missing: Vec<u64> = (0..want)
                .filter(|n| counters.binary_search(n).is_err())
                .collect();
            eprintln!(
                "  client {i} subject {}: {unique}/{want}, last id {}, missing {:?}",
                subject_of[i],
                rec.last_id,
                &missing[..missing.len().min(10)]
            );
        }
        if !rec.ids_increasing {
            out.duplicated += 1;
        }
        out.delivered += before;
        out.latencies_us.extend_from_slice(&rec.latencies_us);
    }
    out
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}
