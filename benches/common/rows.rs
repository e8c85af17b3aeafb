//! A row of the tables: C SSE clients on a relay (or a peer) under a [`Load`], what they got
//! and what it cost the processes; [`fresh_row`] runs one on processes of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::processes::{start_relay, Nats, Server};
use super::sse_client;
use super::traffic::{
    check, new_received, percentile, publish_padded, sse_open, sse_read, subject_name,
    wait_every_event, Outcome, Received, SUBJECTS,
};

/// What a relay row measured of its relay(s).
pub struct RelayUse {
    pub rss: f64,
    pub kib_per_conn: f64,
    pub cpu: f64,
}

pub struct Row {
    pub mode: String,
    pub clients: usize,
    pub rate: u32,
    pub held: usize,
    pub delivered_per_s: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// None for the ceiling.
    pub relay: Option<RelayUse>,
    pub nats_rss: f64,
    pub nats_kib_per_conn: f64,
    pub nats_cpu: f64,
    pub consumers: Option<usize>,
    /// A line printed under the row (a failover run's latencies from JetStream's store time).
    pub note: Option<String>,
    /// Streams opened after the ramp (a client whose stream ended or failed reconnects).
    pub reopened: usize,
    pub lost: u64,
    pub duplicated: u64,
}

/// RSS growth in MiB spread over `clients`, in KiB each.
pub fn kib_per_conn(growth_mib: f64, clients: usize) -> f64 {
    if clients > 0 {
        growth_mib * 1024.0 / clients as f64
    } else {
        0.0
    }
}

impl Row {
    /// The delivery figures of a row; the callers add what they measured of the processes.
    pub fn new(mode: String, clients: usize, rate: u32, mut outcome: Outcome, seconds: f64) -> Row {
        outcome.latencies_us.sort_unstable();
        Row {
            mode,
            clients,
            rate,
            held: outcome.held,
            delivered_per_s: outcome.delivered as f64 / seconds,
            p50: percentile(&outcome.latencies_us, 0.50),
            p99: percentile(&outcome.latencies_us, 0.99),
            max: percentile(&outcome.latencies_us, 1.0),
            relay: None,
            nats_rss: 0.0,
            nats_kib_per_conn: 0.0,
            nats_cpu: 0.0,
            consumers: None,
            note: None,
            reopened: 0,
            lost: outcome.lost,
            duplicated: outcome.duplicated,
        }
    }

    pub fn header() -> String {
        "| mode | C | R ev/s | held | delivered/s | p50 ms | p99 ms | max ms | relay RSS MiB | relay KiB/conn (idle) | relay CPU % | nats RSS MiB | nats KiB/conn (idle) | nats CPU % | consumers | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    pub fn line(&self) -> String {
        let relay = |v: fn(&RelayUse) -> f64, digits: usize| {
            self.relay
                .as_ref()
                .map_or_else(|| "—".to_owned(), |r| format!("{:.digits$}", v(r)))
        };
        let consumers = self
            .consumers
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        format!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.0} | {:.1} | {:.0} | {} | {} | {} |",
            self.mode, self.clients, self.rate, self.held, self.delivered_per_s, self.p50,
            self.p99, self.max, relay(|r| r.rss, 0), relay(|r| r.kib_per_conn, 1),
            relay(|r| r.cpu, 0), self.nats_rss, self.nats_kib_per_conn, self.nats_cpu,
            consumers, self.lost, self.duplicated
        ) + &self.note.as_ref().map_or_else(String::new, |note| format!("\n{note}"))
    }
}

/// The relay case: C SSE clients on one replica (or spread over several), or on a peer. `nats`
/// should be fresh (this row's alone), so its RSS and consumer count are this row's.
pub async fn relay_run<S: Server>(
    nats: &mut Nats,
    relays: &[S],
    mode: String,
    clients: usize,
    rate: u32,
    seconds: f64,
    kill_node_mid_run: bool,
) -> Row {
    let load = Load::default_subjects(clients, rate, seconds);
    relay_run_over(nats, relays, mode, load, kill_node_mid_run).await
}

/// What a run publishes and who listens: `rate` events/s for `seconds` over subject indexes
/// `0..subjects`, client `i` on subject `i % subjects`, every payload padded to
/// `payload_bytes` (0: the bare timestamp and counter).
#[derive(Clone, Copy)]
pub struct Load {
    pub clients: usize,
    pub rate: u32,
    pub seconds: f64,
    pub subjects: usize,
    pub payload_bytes: usize,
}

impl Load {
    /// `rate` events/s for `seconds` over the default K+1 subjects.
    pub fn default_subjects(clients: usize, rate: u32, seconds: f64) -> Load {
        Load {
            clients,
            rate,
            seconds,
            subjects: SUBJECTS,
            payload_bytes: 0,
        }
    }
}

/// [`relay_run`] with any [`Load`].
pub async fn relay_run_over<S: Server>(
    nats: &mut Nats,
    relays: &[S],
    mode: String,
    load: Load,
    kill_node_mid_run: bool,
) -> Row {
    let Load {
        clients,
        rate,
        seconds,
        subjects,
        payload_bytes,
    } = load;
    let run = format!("r{}", rand::rng().random::<u32>());
    let dialers = sse_client::dialers();
    let done = CancellationToken::new();
    // Streams opened (reconnections included), and streams open now.
    let connected = Arc::new(AtomicUsize::new(0));
    let live = Arc::new(AtomicUsize::new(0));
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    let gate = Arc::new(Semaphore::new(256));
    let relay_rss_before: f64 = relays.iter().map(|r| r.rss_mib()).sum();
    let nats_rss_before = nats.rss_mib();
    for i in 0..clients {
        let s = i % subjects;
        let relay = &relays[i % relays.len()];
        let url = format!("http://{}{}", relay.addr(), subject_name(&run, s).1);
        let rec = new_received();
        received.push(rec.clone());
        subject_of.push(s);
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let (http, connected, live, done) = (
            dialers[i % dialers.len()],
            connected.clone(),
            live.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // The ramp gate opens for the next client once this one's first attempt is answered.
            let mut permit = Some(permit);
            // Reconnect with Last-Event-ID until the run is over.
            while !done.is_cancelled() {
                let opened = sse_open(&http, &url, &rec, &done).await;
                permit.take();
                if let Some(response) = opened {
                    connected.fetch_add(1, Ordering::Relaxed);
                    live.fetch_add(1, Ordering::Relaxed);
                    sse_read(response, &rec, &done).await;
                    live.fetch_sub(1, Ordering::Relaxed);
                }
                if !done.is_cancelled() {
                    let backoff = Duration::from_millis(rand::rng().random_range(100..1000));
                    tokio::time::sleep(backoff).await;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while live.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = live.load(Ordering::Relaxed);
    for relay in relays {
        relay.settle().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss: f64 = relays.iter().map(|r| r.rss_mib()).sum::<f64>() - relay_rss_before;
    let nats_idle_rss = nats.rss_mib() - nats_rss_before;

    let relay_cpu_before: f64 = relays.iter().map(|r| r.cpu_seconds()).sum();
    let nats_cpu_before = nats.cpu_seconds();
    let started = Instant::now();
    let publisher = tokio::spawn({
        let urls = nats.url_list();
        let run = run.clone();
        async move { publish_padded(&urls, &run, rate, seconds, subjects, payload_bytes).await }
    });
    let mut killed = None;
    if kill_node_mid_run {
        tokio::time::sleep(Duration::from_secs_f64(seconds / 2.0)).await;
        let node = nats.node_to_kill().await;
        nats.kill_node(&node).await;
        killed = Some(node);
    }
    let expected = publisher.await.expect("publisher");
    let elapsed = started.elapsed().as_secs_f64();
    // Let deliveries finish (bounded).
    wait_every_event(&expected, &subject_of, &received).await;
    let relay_cpu =
        (relays.iter().map(|r| r.cpu_seconds()).sum::<f64>() - relay_cpu_before) / elapsed * 100.0;
    let nats_cpu = (nats.cpu_seconds() - nats_cpu_before) / elapsed * 100.0;
    let relay_rss: f64 = relays.iter().map(|r| r.rss_mib()).sum();
    let nats_rss = nats.rss_mib();
    // All clients connected and caught up: the consumers they need now.
    let consumers = nats.consumer_count().await;
    let reopened = connected.load(Ordering::Relaxed).saturating_sub(held);
    done.cancel();
    for task in tasks {
        task.await.ok();
    }
    let mut outcome = check(&expected, &subject_of, &received);
    outcome.held = held;
    let mut row = Row::new(mode, clients, rate, outcome, elapsed);
    row.relay = Some(RelayUse {
        rss: relay_rss,
        kib_per_conn: kib_per_conn(idle_rss, clients),
        cpu: relay_cpu,
    });
    row.nats_rss = nats_rss;
    row.nats_kib_per_conn = kib_per_conn(nats_idle_rss, clients);
    row.nats_cpu = nats_cpu;
    row.consumers = consumers;
    row.reopened = reopened;
    if let Some(node) = killed {
        let latency = store_latency_note(&nats.url_list(), &received).await;
        row.note = Some(format!("  ↳ {node} killed halfway\n{latency}"));
    }
    row
}

/// A failover run's latency measured from the moment JetStream stored each event (its stored
/// timestamp, read back with batched direct gets) to the client's receipt, beside how long
/// publishes were held up before JetStream stored them: the relay's recovery apart from
/// JetStream's (a publish in flight to the killed node waits for its ack timeout, 5 s, before
/// the publisher retries; the payload's timestamp is the first attempt's).
pub async fn store_latency_note(nats_urls: &str, received: &[Arc<Mutex<Received>>]) -> String {
    let urls: Vec<String> = nats_urls.split(',').map(str::to_owned).collect();
    let client = async_nats::connect(urls.as_slice())
        .await
        .expect("connect for stored times");
    let store = sse_relay::jetstream::EventStore::new(client, "DEPLOY_EVENTS");
    let mut stored = std::collections::HashMap::new();
    for subject in ["deploy.*", "pavilion.*"] {
        let mut from = 1;
        loop {
            let page = store
                .direct_batch(subject, from, 1000)
                .await
                .expect("stored events");
            for event in &page.events {
                let nanos = u64::try_from(event.published.unix_timestamp_nanos()).unwrap_or(0);
                stored.insert(event.seq, nanos);
            }
            match page.events.last() {
                Some(last) if page.pending > 0 => from = last.seq + 1,
                _ => break,
            }
        }
    }
    let mut from_store = Vec::new();
    let mut held_up = Vec::new();
    for rec in received {
        let rec = rec.lock().expect("lock");
        for &(seq, published, at) in &rec.receipts {
            if let Some(&stored_at) = stored.get(&seq) {
                from_store
                    .push((at.saturating_sub(stored_at) / 1000).min(u64::from(u32::MAX)) as u32);
                held_up.push(
                    (stored_at.saturating_sub(published) / 1000).min(u64::from(u32::MAX)) as u32,
                );
            }
        }
    }
    from_store.sort_unstable();
    held_up.sort_unstable();
    format!(
        "  ↳ from JetStream's store time to the client: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries); publish → stored: p99 {:.1} ms, max {:.1} ms",
        percentile(&from_store, 0.50),
        percentile(&from_store, 0.99),
        percentile(&from_store, 1.0),
        from_store.len(),
        percentile(&held_up, 0.99),
        percentile(&held_up, 1.0),
    )
}

/// One row on a nats-server and a relay of its own: both started fresh (the relay in `mode`,
/// with `env` on top of the benchmark's settings), the row run under `load` and labelled
/// `label`, both stopped. The sweep's relay rows, the traced rows and the presence rows.
pub async fn fresh_row(mode: &str, label: String, env: &[(&str, String)], load: Load) -> Row {
    fresh_row_watched(mode, label, env, load, async |_: &str| (), |()| ())
        .await
        .0
}

/// [`fresh_row`] with a watcher: `watch` starts on the fresh nats-server's URLs before the relay
/// starts, `seen` takes what it watched once the row is over, before the processes stop.
pub async fn fresh_row_watched<W, S>(
    mode: &str,
    label: String,
    env: &[(&str, String)],
    load: Load,
    watch: impl AsyncFnOnce(&str) -> W,
    seen: impl FnOnce(W) -> S,
) -> (Row, S) {
    let mut nats = Nats::single().await;
    let watcher = watch(&nats.url_list()).await;
    let relay = start_relay(&nats.url_list(), 1, mode, env).await;
    let row = relay_run_over(&mut nats, std::slice::from_ref(&relay), label, load, false).await;
    let seen = seen(watcher);
    relay.kill().await;
    nats.stop().await;
    (row, seen)
}
