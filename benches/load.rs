//! `make bench`: the load benchmark (README, *Benchmark*; the analysis is in `docs/benchmarks.md`).
//!
//! Starts its own nats-server(s) and relay(s) on loopback, opens concurrent SSE clients, publishes
//! events spread over K deployments and one pavilion, and checks that every client got every event
//! of its subject exactly once (the `lost` and `dup` columns). Parts, selected with
//! `BENCH_PARTS=sweep,traced,storm,churn,shapes,scale,presence,faults` (comma-separated; default: all of
//! them):
//!
//! - `sweep`: for every (C clients, R events/s) one row per relay fan-out mode and, beside them in
//!   the same run, the same load delivered by plain NATS core subscriptions (`ceiling`); then a
//!   relay ÷ ceiling table with one row per mode and (C, R);
//! - `traced`: the cost of tracing every delivery (OTLP to a local sink that discards it);
//! - `storm`: a reconnect storm — every client reconnecting with its `Last-Event-ID`, jittered
//!   over 3 s, once after all clients dropped their connections at once (the relay stays) and once
//!   after the relay was SIGKILLed and a new one started; time until all are live again, the
//!   consumers created meanwhile (relay `/metrics` and nats-server advisories);
//! - `churn`: 200 clients each dropping and resuming its connection about every second while
//!   100 events/s flow; relay RSS at start, peak and end;
//! - `shapes`: the two shapes a replica's live source can take, on a stream of many subjects of
//!   which a replica's clients watch all, a tenth or a hundredth: one firehose consumer (the
//!   `shared` mode) against one ordered consumer per watched subject (what the `consumer` mode
//!   does with one client per subject); relay and nats-server CPU, consumers;
//! - `scale`: 3 relay replicas on a 3-node NATS cluster, a NATS node SIGKILLed halfway: the
//!   stream's leader at that moment (the worst case), or the node `BENCH_KILL_NODE` names
//!   (`relay-nats-1` to `relay-nats-3`);
//! - `presence`: what presence costs (`parts/presence.rs`): the 10,000-client, 1,000 events/s row
//!   with `RELAY_PRESENCE=false` and with presence on, and the presence bucket's writes counted
//!   by a NATS subscriber (messages/s, the most writes of one key against the intervals
//!   elapsed); then a
//!   reconnect storm of the same clients, counted the same way;
//! - `faults`: a fleet that heals itself, on network namespaces of its own (`faults.rs`): 10,000
//!   clients over 3 replicas, one replica's path to NATS silently cut for 60 s — seconds until
//!   every one of its clients is live elsewhere, lost, dup; then a 4th replica added with
//!   `RELAY_MAX_CONNECTION_AGE=60s` — connections per replica one age later.
//!
//! Fan-out modes (`RELAY_FANOUT`, given to every relay started): `BENCH_MODES=consumer,shared`
//! (default: both) — `consumer` is one JetStream ordered consumer per SSE client, `shared` one live
//! tail per replica fanned out in process. Every part runs once per selected mode.
//!
//! Peers: `BENCH_MODES` also names `pushpin` — Pushpin 1.36 (Debian's `pushpin` package, which
//! `make bench` installs) fed from the same stream by a GRIP backend and a feeder in this process
//! (`peers/pushpin.rs`): a `pushpin` row beside the relay's in the sweep (only there), the same
//! clients and events. In the default selection when its binaries are on `PATH` (a line says so
//! when they are not); named in `BENCH_MODES` without them, the benchmark exits with status 2.
//! The settings it runs with are printed under the sweep table; `BENCH_PUSHPIN_SET` changes them
//! (`section/key=value;…`, e.g. `handler/message_rate=2500` for Debian's rate limit).
//!
//! Every row gets a fresh nats-server (a fresh cluster for `scale`) and a fresh relay, so the
//! nats RSS of a row is that row's alone and comparable across client counts; the `consumers`
//! column is the stream's `consumer_count` with all clients connected and caught up.
//!
//! `BENCH_QUICK=1` for a smoke run; `BENCH_CLIENTS=100,1000` and `BENCH_RATES=1000` override the
//! sweep; `BENCH_SECONDS` the publishing time per row; `BENCH_DEBUG=1` prints every client that
//! missed an event. Results go to stdout and — only for a full run: every part, both modes, the
//! default sweep, no `BENCH_QUICK` — to `docs/benchmarks-raw.md` (`docs/benchmarks.md` is the
//! written analysis of them). Ends with the lost and duplicated totals over every part, and exits
//! with status 1 if either is not 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rand::Rng;
use sse_relay_testkit as testkit;
use testkit::process::{cpu_seconds_of, free_port, rss_mib_of};
use testkit::{Echo, Proc, Relay, SseItem, SseParser};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const K_DEPLOYMENTS: usize = 100;
/// Subjects of the default load: K deployments and one pavilion.
const SUBJECTS: usize = K_DEPLOYMENTS + 1;
/// How long a run waits after publishing for every client to have every event; what has not
/// arrived by then counts as lost.
const DELIVERY_WAIT_SECS: u64 = 120;
const OPEN_FILES_LIMIT: u64 = 20_000;
/// The parts, in the order they run.
const PARTS: [&str; 8] = [
    "sweep", "traced", "storm", "churn", "shapes", "scale", "presence", "faults",
];
/// The relay's fan-out modes (`RELAY_FANOUT`).
const MODES: [&str; 2] = ["consumer", "shared"];
/// Peers run in the sweep beside the relay's modes (`BENCH_MODES` names them too).
const PEERS: [&str; 1] = ["pushpin"];

#[path = "parts/faults.rs"]
mod faults;
#[path = "parts/presence.rs"]
mod presence;
#[path = "peers/pushpin.rs"]
mod pushpin;
#[path = "sse_client.rs"]
mod sse_client;

use sse_client::{Dialer, SseStream};

// ---------------------------------------------------------------------------------------------
// Processes (nats-server, relays and process figures come from the test kit)

/// The NATS side of a row, measured as a whole: one nats-server, or the 3-node cluster of the
/// scale-out part.
enum Nats {
    Single(Box<testkit::Nats>),
    Cluster(testkit::NatsCluster),
}

impl Nats {
    async fn single() -> Nats {
        Nats::Single(Box::new(testkit::Nats::start().await))
    }

    /// Three nodes from `nats/cluster/node-*.conf` on free ports.
    async fn cluster() -> Nats {
        Nats::Cluster(testkit::NatsCluster::start().await)
    }

    fn procs(&self) -> Vec<&Proc> {
        match self {
            Nats::Single(nats) => nats.proc().into_iter().collect(),
            Nats::Cluster(cluster) => cluster
                .nodes
                .iter()
                .filter_map(|n| n.proc.as_ref())
                .collect(),
        }
    }

    fn urls(&self) -> Vec<String> {
        match self {
            Nats::Single(nats) => vec![nats.url()],
            Nats::Cluster(cluster) => cluster.nodes.iter().map(|n| n.url()).collect(),
        }
    }

    fn first_url(&self) -> String {
        self.urls().swap_remove(0)
    }

    fn url_list(&self) -> String {
        self.urls().join(",")
    }

    fn cpu_seconds(&self) -> f64 {
        self.procs().into_iter().map(Proc::cpu_seconds).sum()
    }

    fn rss_mib(&self) -> f64 {
        self.procs().into_iter().map(Proc::rss_mib).sum()
    }

    /// The URLs of the nodes still running (a scale-out run kills one).
    fn live_urls(&mut self) -> Vec<String> {
        match self {
            Nats::Single(nats) => vec![nats.url()],
            Nats::Cluster(cluster) => cluster
                .nodes
                .iter_mut()
                .filter_map(|n| n.proc.as_mut().is_some_and(Proc::alive).then(|| n.url()))
                .collect(),
        }
    }

    /// SIGKILLs the cluster node `name` (`relay-nats-2`, ...).
    async fn kill_node(&mut self, name: &str) {
        match self {
            Nats::Single(_) => panic!("a single server has no node {name}"),
            Nats::Cluster(cluster) => cluster.kill(name).await,
        }
    }

    /// The node a scale-out run kills: the one `BENCH_KILL_NODE` names, else (or if it says
    /// `leader`) the stream's leader at that moment — the worst case, as JetStream stores
    /// nothing until a new leader is elected.
    async fn node_to_kill(&mut self) -> String {
        let wanted = killed_node();
        if wanted != "leader" {
            return wanted;
        }
        self.stream_info()
            .await
            .and_then(|info| info.cluster?.leader)
            .expect("the stream has a leader")
    }

    /// The relay's stream as the ceiling's publishers need it (no relay provisions it there).
    async fn create_stream(&self) {
        let client = async_nats::connect(self.first_url())
            .await
            .expect("connect");
        let mut config = sse_relay::jetstream::stream_definition().clone();
        config.max_messages_per_subject = 100_000;
        async_nats::jetstream::new(client)
            .create_stream(config)
            .await
            .expect("create stream");
    }

    /// The stream's `consumer_count` as the server reports it now (None if it cannot be asked).
    async fn consumer_count(&mut self) -> Option<usize> {
        Some(self.stream_info().await?.state.consumer_count)
    }

    /// The stream's info from the nodes still running (None if it cannot be asked in 10 s).
    async fn stream_info(&mut self) -> Option<async_nats::jetstream::stream::Info> {
        let urls = self.live_urls();
        let name = sse_relay::jetstream::stream_definition().name.clone();
        tokio::time::timeout(Duration::from_secs(10), async move {
            let client = async_nats::connect(urls.as_slice()).await.ok()?;
            let stream = async_nats::jetstream::new(client)
                .get_stream(name)
                .await
                .ok()?;
            Some(stream.cached_info().clone())
        })
        .await
        .ok()
        .flatten()
    }

    /// Counts the server's consumer-created advisories from now on: every JetStream consumer
    /// created, whichever relay process created it.
    async fn consumer_creations(&self) -> Advisories {
        let client = async_nats::connect(self.first_url())
            .await
            .expect("connect");
        let mut sub = client
            .subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>")
            .await
            .expect("subscribe");
        client.flush().await.ok();
        let count = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let count = count.clone();
            async move {
                let _client = client;
                while sub.next().await.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Advisories { count, task }
    }

    /// SIGKILLs every node and waits for them to be gone.
    async fn stop(self) {
        match self {
            Nats::Single(mut nats) => nats.kill().await,
            Nats::Cluster(mut cluster) => {
                let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
                for name in names {
                    cluster.kill(&name).await;
                }
            }
        }
    }
}

struct Advisories {
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Advisories {
    fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Advisories {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a row's clients connect to, and what the row measures of it: a relay process, or a
/// peer (all of its processes).
trait Server {
    fn addr(&self) -> SocketAddr;
    fn cpu_seconds(&self) -> f64;
    fn rss_mib(&self) -> f64;

    /// Returns once the server is ready for the load with every client connected (the relay at
    /// once).
    async fn settle(&self) {}
}

impl Server for Relay {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn cpu_seconds(&self) -> f64 {
        self.proc.cpu_seconds()
    }

    fn rss_mib(&self) -> f64 {
        self.proc.rss_mib()
    }
}

/// A ready relay as the benchmark runs it: limits far above the load, a deep stream, `env` on
/// top, only its warnings echoed.
async fn start_relay(
    nats_urls: &str,
    replicas: usize,
    mode: &str,
    env: &[(&str, String)],
) -> Relay {
    start_relay_on(None, nats_urls, replicas, mode, env).await
}

/// [`start_relay`] on `host` of a test net (loopback when none).
async fn start_relay_on(
    host: Option<&testkit::Host>,
    nats_urls: &str,
    replicas: usize,
    mode: &str,
    env: &[(&str, String)],
) -> Relay {
    let replicas = replicas.to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("RELAY_FANOUT", mode),
        ("RELAY_MAX_CONNECTIONS", "15000"),
        ("RELAY_MAX_CONNECTIONS_PER_KEY", "15000"),
        ("RELAY_STREAM_REPLICAS", &replicas),
        ("RELAY_STREAM_MAX_MSGS_PER_SUBJECT", "100000"),
    ];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    let relay = Relay::spawn_on(
        host,
        nats_urls,
        &all,
        "warn,sse_relay::server=info",
        Echo::Warnings,
    )
    .await;
    relay.wait_ready_status(200).await;
    relay
}

/// A series of a relay's `/metrics` (0 once it is gone).
async fn relay_metric(relay: &Relay, series: &str) -> f64 {
    let Ok(response) = testkit::http()
        .get(relay.admin_url("/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    testkit::sample_opt(&text, series).unwrap_or(0.0)
}

/// `relay_consumers_created_total` of a relay (0 once it is gone).
async fn consumers_created(relay: &Relay) -> f64 {
    relay_metric(relay, "relay_consumers_created_total").await
}

/// Samples a process's RSS every 100 ms until `stop`; returns the peak.
fn rss_peak_sampler(pid: u32, stop: CancellationToken) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut peak = 0.0f64;
        loop {
            peak = peak.max(rss_mib_of(pid));
            tokio::select! {
                _ = stop.cancelled() => return peak,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
}
// ---------------------------------------------------------------------------------------------
// Load

/// Subject index `s`: K is the pavilion, every other index a deployment (0..K in the default
/// load; the `shapes` part publishes to more).
fn subject_name(run: &str, s: usize) -> (String, String) {
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

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What every client records: payload counters it received, and latencies in microseconds.
#[derive(Default)]
struct Received {
    counters: Vec<u64>,
    latencies_us: Vec<u32>,
    /// (stream sequence, publish time, receipt time) of every event, in nanoseconds: a failover
    /// run measures from JetStream's store time too.
    receipts: Vec<(u64, u64, u64)>,
    last_id: u64,
    ids_increasing: bool,
}

/// The payload `publish_load` sends: publish time (ns since the epoch) and per-subject counter.
#[derive(serde::Deserialize)]
struct Payload {
    t: u64,
    n: u64,
}

fn parse_payload(data: &[u8]) -> Option<(u64, u64)> {
    let p: Payload = serde_json::from_slice(data).ok()?;
    Some((p.t, p.n))
}

impl Received {
    fn record(&mut self, seq: u64, data: &[u8]) {
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
async fn publish_load(nats_urls: &str, run: &str, rate: u32, seconds: f64) -> Vec<u64> {
    publish_over(nats_urls, run, rate, seconds, SUBJECTS).await
}

/// [`publish_load`] over subject indexes `0..subjects`.
async fn publish_over(
    nats_urls: &str,
    run: &str,
    rate: u32,
    seconds: f64,
    subjects: usize,
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
            let payload = format!(r#"{{"t":{},"n":{n}}}"#, now_nanos());
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
async fn sse_open(
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
async fn sse_read(
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

fn new_received() -> Arc<Mutex<Received>> {
    Arc::new(Mutex::new(Received {
        ids_increasing: true,
        ..Default::default()
    }))
}

/// Waits until the clients hold `total` events between them, or `wait` has passed.
async fn wait_delivered<'a>(
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

struct Outcome {
    held: usize,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    latencies_us: Vec<u32>,
}

fn check(expected: &[u64], subject_of: &[usize], received: &[Arc<Mutex<Received>>]) -> Outcome {
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

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// What a relay row measured of its relay(s).
struct RelayUse {
    rss: f64,
    kib_per_conn: f64,
    cpu: f64,
}

struct Row {
    mode: String,
    clients: usize,
    rate: u32,
    held: usize,
    delivered_per_s: f64,
    p50: f64,
    p99: f64,
    max: f64,
    /// None for the ceiling.
    relay: Option<RelayUse>,
    nats_rss: f64,
    nats_kib_per_conn: f64,
    nats_cpu: f64,
    consumers: Option<usize>,
    /// A line printed under the row (a failover run's latencies from JetStream's store time).
    note: Option<String>,
    /// Streams opened after the ramp (a client whose stream ended or failed reconnects).
    reopened: usize,
    lost: u64,
    duplicated: u64,
}

/// RSS growth in MiB spread over `clients`, in KiB each.
fn kib_per_conn(growth_mib: f64, clients: usize) -> f64 {
    if clients > 0 {
        growth_mib * 1024.0 / clients as f64
    } else {
        0.0
    }
}

impl Row {
    /// The delivery figures of a row; the callers add what they measured of the processes.
    fn new(mode: String, clients: usize, rate: u32, mut outcome: Outcome, seconds: f64) -> Row {
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

    fn header() -> String {
        "| mode | C | R ev/s | held | delivered/s | p50 ms | p99 ms | max ms | relay RSS MiB | relay KiB/conn (idle) | relay CPU % | nats RSS MiB | nats KiB/conn (idle) | nats CPU % | consumers | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    fn line(&self) -> String {
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
async fn relay_run<S: Server>(
    nats: &mut Nats,
    relays: &[S],
    mode: String,
    clients: usize,
    rate: u32,
    seconds: f64,
    kill_node_mid_run: bool,
) -> Row {
    let load = Load {
        clients,
        rate,
        seconds,
        subjects: SUBJECTS,
    };
    relay_run_over(nats, relays, mode, load, kill_node_mid_run).await
}

/// What a run publishes and who listens: `rate` events/s for `seconds` over subject indexes
/// `0..subjects`, client `i` on subject `i % subjects`.
#[derive(Clone, Copy)]
struct Load {
    clients: usize,
    rate: u32,
    seconds: f64,
    subjects: usize,
}

/// [`relay_run`] with any [`Load`].
async fn relay_run_over<S: Server>(
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
        async move { publish_over(&urls, &run, rate, seconds, subjects).await }
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
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(
        received.iter(),
        total,
        Duration::from_secs(DELIVERY_WAIT_SECS),
    )
    .await;
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

/// What the capacity model (docs/scaling.md) takes from a shared-mode row.
struct ModelRow {
    rate: f64,
    deliveries: f64,
    /// Relay CPU, in cores.
    cpu: f64,
    clients: usize,
    kib_per_conn: f64,
}

impl ModelRow {
    fn of(row: &Row) -> Self {
        let relay = row.relay.as_ref();
        Self {
            rate: f64::from(row.rate),
            deliveries: row.delivered_per_s,
            cpu: relay.map_or(0.0, |r| r.cpu) / 100.0,
            clients: row.clients,
            kib_per_conn: relay.map_or(0.0, |r| r.kib_per_conn),
        }
    }
}

/// docs/scaling.md's model of a shared-mode replica, fitted to this run's sweep rows: CPU =
/// `rate × c_in + deliveries × c_out` (least squares), memory per idle connection `m_conn`
/// (the mean over rows of at least 1,000 clients).
struct CapacityModel {
    c_in: f64,
    c_out: f64,
    m_conn: f64,
}

impl CapacityModel {
    fn fit(rows: &[ModelRow]) -> Option<Self> {
        // Normal equations of cpu ≈ c_in·rate + c_out·deliveries.
        let (mut rr, mut rd, mut dd, mut rc, mut dc) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for r in rows {
            rr += r.rate * r.rate;
            rd += r.rate * r.deliveries;
            dd += r.deliveries * r.deliveries;
            rc += r.rate * r.cpu;
            dc += r.deliveries * r.cpu;
        }
        let det = rr * dd - rd * rd;
        if rows.len() < 2 || det.abs() < f64::EPSILON {
            return None;
        }
        let big: Vec<&ModelRow> = rows.iter().filter(|r| r.clients >= 1000).collect();
        let m_conn = if big.is_empty() {
            0.0
        } else {
            big.iter().map(|r| r.kib_per_conn).sum::<f64>() / big.len() as f64
        };
        Some(Self {
            c_in: (rc * dd - dc * rd) / det,
            c_out: (dc * rr - rc * rd) / det,
            m_conn,
        })
    }

    fn line(&self) -> String {
        format!(
            "Capacity model (docs/scaling.md), fitted to the shared rows above: relay CPU = R × {:.2} µs + deliveries/s × {:.2} µs (cores); {:.1} KiB per idle connection.",
            self.c_in * 1e6,
            self.c_out * 1e6,
            self.m_conn
        )
    }

    /// The model's prediction for a run over `replicas` relays beside what it measured.
    fn check(&self, row: &Row, replicas: usize) -> String {
        let rate = f64::from(row.rate);
        let cpu_predicted =
            (replicas as f64 * rate * self.c_in + row.delivered_per_s * self.c_out) * 100.0;
        let measured = row.relay.as_ref();
        let cpu_measured = measured.map_or(0.0, |r| r.cpu);
        let mem_predicted = self.m_conn;
        let mem_measured = measured.map_or(0.0, |r| r.kib_per_conn);
        let ratio = |p: f64, m: f64| if m > 0.0 { p / m } else { 0.0 };
        format!(
            "  ↳ model vs measured over {replicas} replicas: relay CPU {cpu_predicted:.0} % vs {cpu_measured:.0} % ({:.2}×); relay KiB per idle connection {mem_predicted:.1} vs {mem_measured:.1} ({:.2}×)",
            ratio(cpu_predicted, cpu_measured),
            ratio(mem_predicted, mem_measured),
        )
    }
}

/// A failover run's latency measured from the moment JetStream stored each event (its stored
/// timestamp, read back with batched direct gets) to the client's receipt, beside how long
/// publishes were held up before JetStream stored them: the relay's recovery apart from
/// JetStream's (a publish in flight to the killed node waits for its ack timeout, 5 s, before
/// the publisher retries; the payload's timestamp is the first attempt's).
async fn store_latency_note(nats_urls: &str, received: &[Arc<Mutex<Received>>]) -> String {
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

/// The ceiling: the same subjects and load, delivered by plain NATS core subscriptions. `nats`
/// should be fresh and have the stream (`Nats::create_stream`).
async fn ceiling_run(nats: &mut Nats, clients: usize, rate: u32, seconds: f64) -> Row {
    let run = format!("c{}", rand::rng().random::<u32>());
    let connections = clients.div_ceil(100).max(1);
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    let nats_rss_before = nats.rss_mib();
    for _ in 0..connections {
        conns.push(
            async_nats::ConnectOptions::new()
                .subscription_capacity(1 << 16)
                .connect(nats.first_url())
                .await
                .expect("connect"),
        );
    }
    for i in 0..clients {
        let s = i % (K_DEPLOYMENTS + 1);
        let mut sub = conns[i % connections]
            .subscribe(subject_name(&run, s).0)
            .await
            .expect("subscribe");
        let rec = new_received();
        received.push(rec.clone());
        subject_of.push(s);
        tasks.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                // Core NATS carries no stream sequence.
                rec.lock().expect("lock").record(0, &message.payload);
            }
        }));
    }
    for c in &conns {
        c.flush().await.ok();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats_idle_rss = nats.rss_mib() - nats_rss_before;
    let nats_cpu_before = nats.cpu_seconds();
    let started = Instant::now();
    let expected = publish_load(&nats.url_list(), &run, rate, seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(received.iter(), total, Duration::from_secs(30)).await;
    let nats_cpu = (nats.cpu_seconds() - nats_cpu_before) / elapsed * 100.0;
    let nats_rss = nats.rss_mib();
    let consumers = nats.consumer_count().await;
    drop(conns);
    for t in tasks {
        t.abort();
    }
    let mut outcome = check(&expected, &subject_of, &received);
    outcome.held = clients;
    let mut row = Row::new("ceiling".to_owned(), clients, rate, outcome, elapsed);
    row.nats_rss = nats_rss;
    row.nats_kib_per_conn = kib_per_conn(nats_idle_rss, clients);
    row.nats_cpu = nats_cpu;
    row.consumers = consumers;
    row
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StormKind {
    /// Every client drops its connection at once; the relay stays.
    ClientsDropped,
    /// The relay is SIGKILLed and a new one started (on a new port, which the clients then use).
    RelayRestarted,
}

struct Storm {
    kind: StormKind,
    mode: &'static str,
    clients: usize,
    relay_back_seconds: Option<f64>,
    live: usize,
    reconnect_seconds: f64,
    created_relay: f64,
    created_server: usize,
    lost: u64,
    duplicated: u64,
    /// The presence bucket's writes from the first connection to the end.
    presence: presence::PresenceTraffic,
}

impl Storm {
    fn header() -> String {
        "| reconnect storm | mode | clients | relay back after s | all live again after s | consumers created (relay metric / server) | creations/s | lost | dup |\n|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    fn line(&self) -> String {
        let what = match self.kind {
            StormKind::ClientsDropped => "all clients dropped at once",
            StormKind::RelayRestarted => "relay SIGKILLed and restarted",
        };
        let back = self
            .relay_back_seconds
            .map_or_else(|| "—".to_owned(), |s| format!("{s:.2}"));
        let live = if self.live < self.clients {
            format!(
                "{:.2} (only {} of {} live)",
                self.reconnect_seconds, self.live, self.clients
            )
        } else {
            format!("{:.2}", self.reconnect_seconds)
        };
        format!(
            "| {what} | {} | {} | {back} | {live} | {:.0} / {} | {:.0} | {} | {} |",
            self.mode,
            self.clients,
            self.created_relay,
            self.created_server,
            self.created_relay / self.reconnect_seconds.max(0.001),
            self.lost,
            self.duplicated
        )
    }
}

/// A reconnect storm on a fresh nats-server and relay: every client connected, then dropped at
/// once (`kind`), each back with its Last-Event-ID after a delay jittered over `spread` (retrying
/// every 200 ms until it is live), while `rate` events/s are published throughout.
async fn storm_run(
    mode: &'static str,
    kind: StormKind,
    clients: usize,
    rate: u32,
    spread: Duration,
) -> Storm {
    let nats = Nats::single().await;
    let tap = presence::PresenceTap::start(&nats.url_list()).await;
    let mut relay = start_relay(&nats.url_list(), 1, mode, &[]).await;
    let advisories = nats.consumer_creations().await;
    // Where the clients find the relay (a restarted one listens on a new port).
    let addr = Arc::new(Mutex::new(relay.addr));
    let run = format!("s{}", rand::rng().random::<u32>());
    let dialers = sse_client::dialers();
    let connected = Arc::new(AtomicUsize::new(0));
    let reconnected = Arc::new(AtomicUsize::new(0));
    let storm = CancellationToken::new();
    let done = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(256));
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let s = i % (K_DEPLOYMENTS + 1);
        let path = subject_name(&run, s).1;
        let rec = new_received();
        received.push(rec.clone());
        subject_of.push(s);
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let (http, addr, connected, reconnected, storm, done) = (
            dialers[i % dialers.len()],
            addr.clone(),
            connected.clone(),
            reconnected.clone(),
            storm.clone(),
            done.clone(),
        );
        let jitter = spread.mul_f64(rand::rng().random::<f64>());
        tasks.push(tokio::spawn(async move {
            let url = || format!("http://{}{path}", addr.lock().expect("lock"));
            // Before the storm: one connection, which the storm ends.
            let opened = sse_open(&http, &url(), &rec, &storm).await;
            drop(permit);
            if let Some(response) = opened {
                connected.fetch_add(1, Ordering::Relaxed);
                sse_read(response, &rec, &storm).await;
            }
            storm.cancelled().await;
            // The storm: back after the jittered delay, retrying until live.
            tokio::time::sleep(jitter).await;
            let mut live = false;
            while !done.is_cancelled() {
                if let Some(response) = sse_open(&http, &url(), &rec, &done).await {
                    if !live {
                        live = true;
                        reconnected.fetch_add(1, Ordering::Relaxed);
                    }
                    if sse_read(response, &rec, &done).await {
                        break;
                    }
                }
                if !done.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = tokio::spawn({
        let urls = nats.url_list();
        let run = run.clone();
        async move { publish_load(&urls, &run, rate, spread.as_secs_f64() + 6.0).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut created_before = consumers_created(&relay).await;
    let server_before = advisories.get();
    let storm_at = Instant::now();
    let mut relay_back_seconds = None;
    match kind {
        StormKind::ClientsDropped => storm.cancel(),
        StormKind::RelayRestarted => {
            relay.proc.kill().await;
            storm.cancel();
            let fresh = start_relay(&nats.url_list(), 1, mode, &[]).await;
            *addr.lock().expect("lock") = fresh.addr;
            relay_back_seconds = Some(storm_at.elapsed().as_secs_f64());
            // The new process counts from 0.
            created_before = 0.0;
            relay = fresh;
        }
    }
    while reconnected.load(Ordering::Relaxed) < clients
        && storm_at.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnect_seconds = storm_at.elapsed().as_secs_f64();
    let live = reconnected.load(Ordering::Relaxed);
    let created_relay = consumers_created(&relay).await - created_before;
    let created_server = advisories.get() - server_before;
    let expected = publisher.await.expect("publisher");
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(
        received.iter(),
        total,
        Duration::from_secs(DELIVERY_WAIT_SECS),
    )
    .await;
    done.cancel();
    for t in tasks {
        t.await.ok();
    }
    let outcome = check(&expected, &subject_of, &received);
    relay.kill().await;
    drop(advisories);
    nats.stop().await;
    Storm {
        presence: tap.finish(),
        kind,
        mode,
        clients,
        relay_back_seconds,
        live,
        reconnect_seconds,
        created_relay,
        created_server,
        lost: outcome.lost,
        duplicated: outcome.duplicated,
    }
}

struct Churn {
    mode: &'static str,
    clients: usize,
    seconds: f64,
    reconnections: usize,
    created_relay: f64,
    created_server: usize,
    rss_start: f64,
    rss_peak: f64,
    rss_end: f64,
    consumers_end: Option<usize>,
    lost: u64,
    duplicated: u64,
}

impl Churn {
    fn header() -> String {
        "| churn | mode | clients | s | reconnections | consumers created (relay metric / server) | relay RSS MiB start | peak | end | consumers at end | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    fn line(&self) -> String {
        format!(
            "| each client back about every 1 s | {} | {} | {:.0} | {} | {:.0} / {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            self.mode,
            self.clients,
            self.seconds,
            self.reconnections,
            self.created_relay,
            self.created_server,
            self.rss_start,
            self.rss_peak,
            self.rss_end,
            self.consumers_end
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            self.lost,
            self.duplicated
        )
    }
}

/// Connection churn on a fresh nats-server and relay: `clients` clients, each dropping its
/// connection after 0.5–1.5 s and resuming at once with its Last-Event-ID, for `seconds` while
/// `rate` events/s are published; then every client stays until it has every event.
/// Relay RSS: at start (all clients connected, before the churn), the peak sampled every 100 ms
/// during it, and at the end (all clients connected and caught up again).
async fn churn_run(mode: &'static str, clients: usize, rate: u32, seconds: f64) -> Churn {
    let mut nats = Nats::single().await;
    let relay = start_relay(&nats.url_list(), 1, mode, &[]).await;
    let advisories = nats.consumer_creations().await;
    let run = format!("ch{}", rand::rng().random::<u32>());
    let dialers = sse_client::dialers();
    let connected = Arc::new(AtomicUsize::new(0));
    let begin = CancellationToken::new();
    let churn_end: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let done = CancellationToken::new();
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let s = i % (K_DEPLOYMENTS + 1);
        let url = format!("http://{}{}", relay.addr, subject_name(&run, s).1);
        let rec = new_received();
        received.push(rec.clone());
        subject_of.push(s);
        let (http, connected, begin, churn_end, done) = (
            dialers[i % dialers.len()],
            connected.clone(),
            begin.clone(),
            churn_end.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !done.is_cancelled() {
                let connection = done.child_token();
                let Some(response) = sse_open(&http, &url, &rec, &done).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                connected.fetch_add(1, Ordering::Relaxed);
                // While the churn lasts, this connection is dropped after 0.5–1.5 s.
                let timer = tokio::spawn({
                    let (connection, begin, churn_end) =
                        (connection.clone(), begin.clone(), churn_end.clone());
                    async move {
                        tokio::select! {
                            _ = connection.cancelled() => return,
                            _ = begin.cancelled() => {}
                        }
                        let hold = Duration::from_millis(rand::rng().random_range(500..1500));
                        let at = Instant::now() + hold;
                        if churn_end.get().is_some_and(|end| at < *end) {
                            tokio::select! {
                                _ = connection.cancelled() => {}
                                _ = tokio::time::sleep_until(at.into()) => connection.cancel(),
                            }
                        }
                    }
                });
                let dropped = sse_read(response, &rec, &connection).await;
                timer.abort();
                if !dropped {
                    // The stream ended or failed (not our doing): back after a short pause.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_start = relay.proc.rss_mib();
    let stop_sampler = CancellationToken::new();
    let sampler = rss_peak_sampler(relay.proc.pid, stop_sampler.clone());
    let created_before = consumers_created(&relay).await;
    let server_before = advisories.get();
    let connections_before = connected.load(Ordering::Relaxed);
    churn_end
        .set(Instant::now() + Duration::from_secs_f64(seconds))
        .ok();
    begin.cancel();
    let expected = publish_load(&nats.url_list(), &run, rate, seconds).await;
    if let Some(end) = churn_end.get() {
        tokio::time::sleep_until((*end + Duration::from_millis(200)).into()).await;
    }
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(
        received.iter(),
        total,
        Duration::from_secs(DELIVERY_WAIT_SECS),
    )
    .await;
    // Let the relay finish with the last dropped connections before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_end = relay.proc.rss_mib();
    let consumers_end = nats.consumer_count().await;
    let reconnections = connected.load(Ordering::Relaxed) - connections_before;
    let created_relay = consumers_created(&relay).await - created_before;
    let created_server = advisories.get() - server_before;
    stop_sampler.cancel();
    let rss_peak = sampler.await.unwrap_or(0.0).max(rss_start).max(rss_end);
    done.cancel();
    for t in tasks {
        t.await.ok();
    }
    let outcome = check(&expected, &subject_of, &received);
    relay.kill().await;
    drop(advisories);
    nats.stop().await;
    Churn {
        mode,
        clients,
        seconds,
        reconnections,
        created_relay,
        created_server,
        rss_start,
        rss_peak,
        rss_end,
        consumers_end,
        lost: outcome.lost,
        duplicated: outcome.duplicated,
    }
}

/// An OTLP/HTTP endpoint that accepts and discards spans: the cost of tracing without a collector
/// on the same cores.
async fn otlp_sink() -> (String, Arc<AtomicUsize>) {
    let bytes = Arc::new(AtomicUsize::new(0));
    let counter = bytes.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(body.len(), Ordering::Relaxed);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (format!("http://{addr}"), bytes)
}

fn list_env(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem:.0} GiB, Linux {}, open files limit {OPEN_FILES_LIMIT} per process", kernel.trim())
}

/// The names a comma-separated variable selects out of `known` (all of them when it is unset),
/// in `known`'s order; exits with status 2 on a name it does not know.
fn selection(var: &str, known: &[&'static str]) -> Vec<&'static str> {
    let Ok(value) = std::env::var(var) else {
        return known.to_vec();
    };
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
        eprintln!("{var}: unknown '{unknown}' (known: {})", known.join(","));
        std::process::exit(2);
    }
    if names.is_empty() {
        eprintln!(
            "{var} is set but names nothing (known: {})",
            known.join(",")
        );
        std::process::exit(2);
    }
    known
        .iter()
        .copied()
        .filter(|k| names.contains(k))
        .collect()
}

/// Lost and duplicated events, by part.
#[derive(Default)]
struct Tally {
    parts: Vec<(String, u64, u64)>,
}

impl Tally {
    fn add(&mut self, part: &str, lost: u64, duplicated: u64) {
        match self.parts.iter_mut().find(|(p, _, _)| p == part) {
            Some((_, l, d)) => {
                *l += lost;
                *d += duplicated;
            }
            None => self.parts.push((part.to_owned(), lost, duplicated)),
        }
    }

    /// Lost and duplicated over sse-relay's parts and the ceiling — what the run's exit status
    /// stands for. A peer's losses (`sweep (pushpin)`) are findings about the peer: reported,
    /// not failed on.
    fn total(&self) -> (u64, u64) {
        self.parts
            .iter()
            .filter(|(part, _, _)| !Self::is_peer(part))
            .fold((0, 0), |(l, d), (_, pl, pd)| (l + pl, d + pd))
    }

    fn is_peer(part: &str) -> bool {
        PEERS.iter().any(|peer| part == format!("sweep ({peer})"))
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // reqwest is built with rustls but no crypto provider of its own (see the relay's OTLP client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let parts = selection("BENCH_PARTS", &PARTS);
    let known_modes: Vec<&'static str> = MODES.iter().chain(&PEERS).copied().collect();
    let selected_modes = selection("BENCH_MODES", &known_modes);
    // The relay's modes (every part) and the peers (the sweep only).
    let modes: Vec<&'static str> = selected_modes
        .iter()
        .copied()
        .filter(|m| MODES.contains(m))
        .collect();
    // Pushpin: in the default selection when it can run; named without its binaries, an error.
    let pushpin_missing = pushpin::missing_binaries();
    let pushpin_selected = selected_modes.contains(&"pushpin");
    if pushpin_selected && !pushpin_missing.is_empty() && std::env::var_os("BENCH_MODES").is_some()
    {
        eprintln!(
            "BENCH_MODES names pushpin, but {} not on PATH: install Debian's pushpin (apt-get install pushpin condure zurl; `make bench` installs them when missing)",
            pushpin_missing.join(", ")
        );
        std::process::exit(2);
    }
    let with_pushpin = pushpin_selected && pushpin_missing.is_empty();
    let peers_left_out = (pushpin_selected && !with_pushpin).then(|| {
        format!(
            "(No pushpin rows: {} not on PATH; `make bench` installs Debian's pushpin.)",
            pushpin_missing.join(", ")
        )
    });
    let sweep_overridden = ["BENCH_CLIENTS", "BENCH_RATES", "BENCH_SECONDS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    // Only a full run replaces docs/benchmarks-raw.md.
    let full_run =
        !quick && parts.len() == PARTS.len() && modes.len() == MODES.len() && !sweep_overridden;
    let clients = list_env(
        "BENCH_CLIENTS",
        if quick {
            &[100, 500]
        } else {
            &[100, 1000, 5000, 10000]
        },
    );
    let rates = list_env("BENCH_RATES", if quick { &[200] } else { &[100, 1000] });
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 3.0 } else { 10.0 });
    let storm_clients = if quick {
        500
    } else {
        *clients.iter().max().unwrap_or(&1000) as usize
    };
    let storm_rate = rates[0] as u32;
    let churn_clients = 200;
    let churn_rate = 100;
    let churn_seconds = if quick { 10.0 } else { 30.0 };
    // The 1:10 run of docs/scaling.md: 10,000 clients over 3 replicas (the model's worked
    // example is 100,000).
    let scale_clients = if quick { 300 } else { 10_000 };
    let faults_clients = if quick { 300 } else { 10_000 };
    let faults_rate = 100;

    let mut capacity_model: Option<CapacityModel> = None;
    let mut out = String::new();
    let mut emit = |line: String| {
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    };
    let mut tally = Tally::default();
    emit(format!("Machine: {}", machine()));
    emit(format!(
        "Load: K = {K_DEPLOYMENTS} deployments + 1 pavilion, clients spread evenly over them; {seconds} s of publishing per row; latency = publish timestamp in the payload → client receipt. Parts: {}; fan-out modes (RELAY_FANOUT): {}; peers in the sweep: {}. A fresh nats-server and relay (or peer) for every row.\n",
        parts.join(", "),
        if modes.is_empty() { "none".to_owned() } else { modes.join(", ") },
        if with_pushpin { "pushpin" } else { "none" }
    ));
    if let Some(line) = peers_left_out {
        emit(format!("{line}\n"));
    }

    if parts.contains(&"sweep") {
        emit("Sweep: each relay mode and the NATS-core ceiling side by side for every (C, R). nats RSS is that row's own nats-server's at the end of the row; nats KiB/conn (idle) its growth from start to all clients connected ÷ C; consumers = the stream's consumer_count with every client connected and caught up.\n".to_owned());
        emit(Row::header());
        let mut ratios = Vec::new();
        let mut peer_notes = Vec::new();
        let mut fit_rows = Vec::new();
        let mut fanout_ignored = false;
        for &rate in &rates {
            for &c in &clients {
                let (c, rate) = (c as usize, rate as u32);
                let mut rows = Vec::new();
                for &mode in &modes {
                    // A fresh nats-server and relay per row: their memory is then this row's alone.
                    let mut nats = Nats::single().await;
                    let relay = start_relay(&nats.url_list(), 1, mode, &[]).await;
                    let row = relay_run(
                        &mut nats,
                        std::slice::from_ref(&relay),
                        mode.to_owned(),
                        c,
                        rate,
                        seconds,
                        false,
                    )
                    .await;
                    relay.kill().await;
                    nats.stop().await;
                    emit(row.line());
                    tally.add("sweep", row.lost, row.duplicated);
                    if mode == "shared" && c > 1 && row.consumers.is_some_and(|n| n >= c) {
                        fanout_ignored = true;
                    }
                    if mode == "shared" {
                        fit_rows.push(ModelRow::of(&row));
                    }
                    rows.push(row);
                }
                if with_pushpin {
                    let (row, note) = pushpin::pushpin_run(c, rate, seconds).await;
                    emit(row.line());
                    tally.add("sweep (pushpin)", row.lost, row.duplicated);
                    peer_notes.push(note);
                    rows.push(row);
                }
                let mut nats = Nats::single().await;
                nats.create_stream().await;
                let ceiling = ceiling_run(&mut nats, c, rate, seconds).await;
                nats.stop().await;
                emit(ceiling.line());
                tally.add("sweep (ceiling)", ceiling.lost, ceiling.duplicated);
                for row in rows {
                    ratios.push(format!(
                        "| {} | {c} | {rate} | {:.2} | {:.1}× |",
                        row.mode,
                        row.delivered_per_s / ceiling.delivered_per_s.max(1.0),
                        row.p99 / ceiling.p99.max(0.001)
                    ));
                }
            }
        }
        if with_pushpin {
            let max_clients = clients.iter().copied().max().unwrap_or(0) as usize;
            emit(String::new());
            emit(pushpin::settings_note(max_clients));
            for note in peer_notes {
                emit(note);
            }
        }
        emit(String::new());
        emit("Relay (or peer) ÷ ceiling, one row per mode:\n".to_owned());
        emit("| mode | C | R ev/s | throughput | p99 |\n|---|---|---|---|---|".to_owned());
        for ratio in ratios {
            emit(ratio);
        }
        if let Some(model) = CapacityModel::fit(&fit_rows) {
            emit(String::new());
            emit(model.line());
            capacity_model = Some(model);
        }
        if fanout_ignored {
            emit("\n(The `shared` rows held one JetStream consumer per client: this relay build ignores RELAY_FANOUT, so they measured the consumer mode.)".to_owned());
        }
    }

    if parts.contains(&"traced") && !modes.is_empty() {
        // Tracing cost: every delivery traced (always_on) and exported to a local sink.
        let (endpoint, exported) = otlp_sink().await;
        let c = if quick { 500 } else { 1000 };
        let rate = if quick { 200 } else { 1000 };
        emit(String::new());
        emit("Tracing at full sampling (always_on), exported over OTLP/HTTP to a local sink that discards it:\n".to_owned());
        emit(Row::header());
        let mut notes = Vec::new();
        for &mode in &modes {
            let exported_before = exported.load(Ordering::Relaxed);
            for traced in [false, true] {
                let env: Vec<(&str, String)> = if traced {
                    vec![
                        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
                        ("OTEL_BSP_MAX_QUEUE_SIZE", "65536".to_owned()),
                    ]
                } else {
                    Vec::new()
                };
                let mut nats = Nats::single().await;
                let relay = start_relay(&nats.url_list(), 1, mode, &env).await;
                let label = if traced {
                    format!("{mode}+traces")
                } else {
                    mode.to_owned()
                };
                let row = relay_run(
                    &mut nats,
                    std::slice::from_ref(&relay),
                    label,
                    c,
                    rate,
                    seconds,
                    false,
                )
                .await;
                relay.kill().await;
                nats.stop().await;
                emit(row.line());
                tally.add("traced", row.lost, row.duplicated);
            }
            notes.push(format!(
                "({mode}: spans exported to the sink: {:.1} MiB of OTLP protobuf)",
                (exported.load(Ordering::Relaxed) - exported_before) as f64 / 1048576.0
            ));
        }
        emit(String::new());
        for note in notes {
            emit(note);
        }
    }

    if parts.contains(&"storm") && !modes.is_empty() {
        // Browsers come back spread over their jittered `retry:`; BENCH_STORM_SPREAD=0s brings
        // every client back at once.
        let spread = std::env::var("BENCH_STORM_SPREAD")
            .ok()
            .and_then(|s| humantime::parse_duration(&s).ok())
            .unwrap_or(Duration::from_secs(3));
        emit(String::new());
        emit(format!(
            "Reconnect storm: {storm_clients} clients, {storm_rate} events/s published throughout; every client back with its Last-Event-ID after a delay jittered over {spread:?}, retrying every 200 ms until live. Times from the drop (or the kill); consumers created until all are live again.\n"
        ));
        emit(Storm::header());
        for &mode in &modes {
            for kind in [StormKind::ClientsDropped, StormKind::RelayRestarted] {
                let storm = storm_run(mode, kind, storm_clients, storm_rate, spread).await;
                emit(storm.line());
                tally.add("storm", storm.lost, storm.duplicated);
            }
        }
    }

    if parts.contains(&"churn") && !modes.is_empty() {
        emit(String::new());
        emit(format!(
            "Churn: {churn_clients} clients, each dropping its connection after 0.5–1.5 s and resuming at once with its Last-Event-ID, for {churn_seconds} s while {churn_rate} events/s are published. Relay RSS at start (all connected, before the churn), peak (sampled every 100 ms) and end (all connected and caught up).\n"
        ));
        emit(Churn::header());
        for &mode in &modes {
            let churn = churn_run(mode, churn_clients, churn_rate, churn_seconds).await;
            emit(churn.line());
            tally.add("churn", churn.lost, churn.duplicated);
        }
    }

    if parts.contains(&"shapes") && !modes.is_empty() {
        let (published, rate) = if quick { (200, 200) } else { (1000, 1000) };
        emit(String::new());
        emit(format!("Live source shapes: {rate} events/s over {published} subjects; one client per watched subject, so deliveries are the same in both shapes and the difference is what the source costs. firehose = the `shared` mode's one consumer for the whole stream; per subject = one ordered consumer per watched subject (the `consumer` mode with one client per subject).\n"));
        emit("| shape | subjects watched | events taken in /s | deliveries /s | relay CPU % | nats CPU % | nats RSS MiB | consumers | p99 ms | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|".to_owned());
        for watched in [published, published / 10, published / 100] {
            for &mode in &modes {
                let (shape, taken_in) = match mode {
                    "shared" => ("firehose", rate as usize),
                    _ => ("per subject", rate as usize * watched / published),
                };
                let mut nats = Nats::single().await;
                let relay = start_relay(&nats.url_list(), 1, mode, &[]).await;
                let load = Load {
                    clients: watched,
                    rate,
                    seconds,
                    subjects: published,
                };
                let row = relay_run_over(
                    &mut nats,
                    std::slice::from_ref(&relay),
                    mode.to_owned(),
                    load,
                    false,
                )
                .await;
                relay.kill().await;
                nats.stop().await;
                emit(format!(
                    "| {shape} | {watched} | {taken_in} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} | {} |",
                    row.delivered_per_s,
                    row.relay.as_ref().map_or(0.0, |r| r.cpu),
                    row.nats_cpu,
                    row.nats_rss,
                    row.consumers.map_or("?".to_owned(), |n| n.to_string()),
                    row.p99,
                    row.lost,
                    row.duplicated,
                ));
                tally.add("shapes", row.lost, row.duplicated);
            }
        }
    }

    if parts.contains(&"scale") && !modes.is_empty() {
        emit(String::new());
        let killed = match killed_node().as_str() {
            "leader" => "the NATS node leading the stream".to_owned(),
            node => format!("NATS node {node}"),
        };
        emit(format!("Scale-out: 3 relay replicas on a fresh 3-node NATS cluster (R3 stream) per mode, clients spread round robin, {killed} SIGKILLed halfway.\n"));
        emit(Row::header());
        for &mode in &modes {
            let mut cluster = Nats::cluster().await;
            let mut relays = Vec::new();
            for _ in 0..3 {
                relays.push(start_relay(&cluster.url_list(), 3, mode, &[]).await);
            }
            let row = relay_run(
                &mut cluster,
                &relays,
                format!("{mode}×3"),
                scale_clients,
                rates[0] as u32,
                seconds.max(6.0),
                true,
            )
            .await;
            for relay in relays {
                relay.kill().await;
            }
            cluster.stop().await;
            emit(row.line());
            if let (Some(model), "shared") = (&capacity_model, mode) {
                emit(model.check(&row, 3));
            }
            tally.add("scale", row.lost, row.duplicated);
        }
    }

    if parts.contains(&"presence") && !modes.is_empty() {
        let (c, rate) = if quick { (500, 200) } else { (10_000, 1000) };
        emit(String::new());
        emit(format!("Presence: per mode, {c} clients over the {SUBJECTS} subjects of one replica at {rate} events/s ({seconds} s), with RELAY_PRESENCE=false and with presence on (RELAY_PRESENCE_INTERVAL {:?}); then a reconnect storm of the same clients (all dropped at once, back jittered over 3 s) with presence on. A NATS subscriber on the bucket counts every presence write from the relay's start to the row's end (the ramp, in which every subject changes, included).\n", presence::INTERVAL));
        emit(Row::header());
        let mut traffic = Vec::new();
        for &mode in &modes {
            for on in [false, true] {
                let mut nats = Nats::single().await;
                let tap = presence::PresenceTap::start(&nats.url_list()).await;
                let env: Vec<(&str, String)> = if on {
                    Vec::new()
                } else {
                    vec![("RELAY_PRESENCE", "false".to_owned())]
                };
                let relay = start_relay(&nats.url_list(), 1, mode, &env).await;
                let label = format!("{mode}, presence {}", if on { "on" } else { "off" });
                let row = relay_run(
                    &mut nats,
                    std::slice::from_ref(&relay),
                    label,
                    c,
                    rate,
                    seconds,
                    false,
                )
                .await;
                let seen = tap.finish();
                relay.kill().await;
                nats.stop().await;
                emit(row.line());
                tally.add("presence", row.lost, row.duplicated);
                traffic.push(seen.line(
                    if on { "row, on" } else { "row, off" },
                    mode,
                    c,
                    1,
                    SUBJECTS,
                ));
            }
            let storm = storm_run(
                mode,
                StormKind::ClientsDropped,
                c,
                rate,
                Duration::from_secs(3),
            )
            .await;
            tally.add("presence (storm)", storm.lost, storm.duplicated);
            traffic.push(storm.presence.line("reconnect storm", mode, c, 1, SUBJECTS));
        }
        emit(String::new());
        emit(presence::PresenceTraffic::header());
        for line in traffic {
            emit(line);
        }
    }

    if parts.contains(&"faults") && !modes.is_empty() {
        emit(String::new());
        emit(format!("Faults: per mode, {faults_clients} clients over 3 relay replicas, each replica and one nats-server in a network namespace of its own (clients behind a balancer that health-checks /readyz every 100 ms; a client told relay.drain waits 1-3 s as a browser does); {faults_rate} events/s. The path between replica 1 and NATS drops every packet for 60 s (defaults: RELAY_SHED_UNREACHABLE_AFTER 15s); then, healed, a 4th replica is added and every replica renews its streams at RELAY_MAX_CONNECTION_AGE=60s.\n"));
        emit(faults::Faults::header());
        for &mode in &modes {
            let row = faults::faults_run(mode, faults_clients, faults_rate).await;
            emit(row.line());
            tally.add("faults", row.lost, row.duplicated);
        }
    }

    let (lost, duplicated) = tally.total();
    emit(String::new());
    emit("| lost and duplicated, by part | lost | dup |\n|---|---|---|".to_owned());
    for (part, l, d) in &tally.parts {
        emit(format!("| {part} | {l} | {d} |"));
    }
    emit(format!(
        "| total (sse-relay and the ceiling; the exit status) | {lost} | {duplicated} |"
    ));

    if full_run {
        let doc = format!(
            "# Benchmark results\n\nProduced by `make bench` ({}): the raw output of the latest full run. The analysis is in [`benchmarks.md`](benchmarks.md).\n\n```\n{}```\n",
            time::OffsetDateTime::now_utc().date(),
            out
        );
        let path = format!("{}/docs/benchmarks-raw.md", env!("CARGO_MANIFEST_DIR"));
        match std::fs::write(&path, doc) {
            Ok(()) => println!("\n(written to {path})"),
            Err(e) => eprintln!("\ncould not write {path}: {e}"),
        }
    } else {
        println!("\n(docs/benchmarks-raw.md not written: only a full run — every part, both modes, the default sweep, no BENCH_QUICK — writes it)");
    }
    if lost > 0 || duplicated > 0 {
        eprintln!("FAILED: {lost} events lost and {duplicated} duplicated over the run");
        std::process::exit(1);
    }
}

/// `BENCH_KILL_NODE`, or `leader`.
fn killed_node() -> String {
    std::env::var("BENCH_KILL_NODE").unwrap_or_else(|_| "leader".into())
}
