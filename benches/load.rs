//! `make bench`: the load benchmark (contract §10).
//!
//! Starts its own nats-server(s) and relay(s) on loopback, opens C concurrent SSE clients, publishes
//! R events/s spread over K deployments and one pavilion, and prints one row per (C, R) with the
//! same load delivered by plain NATS core subscriptions (the ceiling) beside it; then a reconnect
//! storm and a scale-out run on a 3-node cluster with a node killed. Every client checks it got
//! every event of its subject exactly once.
//!
//! `BENCH_QUICK=1` for a smoke run; `BENCH_CLIENTS=100,1000` and `BENCH_RATES=1000` override the
//! sweep; `BENCH_SECONDS` the publishing time per row. Results go to stdout and, for a full run, to
//! `docs/benchmarks.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rand::Rng;
use sse_relay::sse::{SseItem, SseParser};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

const K_DEPLOYMENTS: usize = 100;
/// How long a run waits after publishing for every client to have every event; what has not
/// arrived by then counts as lost.
const DELIVERY_WAIT_SECS: u64 = 120;
const OPEN_FILES_LIMIT: u64 = 20_000;

// ---------------------------------------------------------------------------------------------
// Processes

fn nats_bin() -> std::path::PathBuf {
    sse_relay::demo::nats_server_binary()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    fn spawn(command: &mut Command) -> Proc {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let pid = child.id().expect("pid");
        Proc { child, pid }
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }

    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    async fn kill(&mut self) {
        self.child.kill().await.ok();
    }
}

struct Nats {
    procs: Vec<Proc>,
    urls: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Nats {
    async fn single() -> Nats {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port();
        let proc = Proc::spawn(
            Command::new(nats_bin())
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.path())
                .stderr(Stdio::null()),
        );
        let nats = Nats {
            procs: vec![proc],
            urls: vec![format!("nats://127.0.0.1:{port}")],
            _dirs: vec![dir],
        };
        nats.wait_up().await;
        nats
    }

    /// Three nodes from `nats/cluster/node-*.conf` on free ports.
    async fn cluster() -> Nats {
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, c, _)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nats = Nats {
            procs: Vec::new(),
            urls: Vec::new(),
            _dirs: Vec::new(),
        };
        for (i, (port, cluster, http)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tmp");
            let config = format!(
                "{}/nats/cluster/node-{}.conf",
                env!("CARGO_MANIFEST_DIR"),
                i + 1
            );
            nats.procs.push(Proc::spawn(
                Command::new(nats_bin())
                    .args([
                        "-c",
                        &config,
                        "-p",
                        &port.to_string(),
                        "-m",
                        &http.to_string(),
                    ])
                    .args(["--cluster", &format!("nats://127.0.0.1:{cluster}")])
                    .args(["--routes", &routes, "-sd"])
                    .arg(dir.path())
                    .stderr(Stdio::null()),
            ));
            nats.urls.push(format!("nats://127.0.0.1:{port}"));
            nats._dirs.push(dir);
        }
        nats.wait_up().await;
        nats
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in &self.urls {
            loop {
                if let Ok(client) = async_nats::connect(url.as_str()).await {
                    if async_nats::jetstream::new(client)
                        .query_account()
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "nats-server did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn url_list(&self) -> String {
        self.urls.join(",")
    }

    fn cpu_seconds(&self) -> f64 {
        self.procs.iter().map(Proc::cpu_seconds).sum()
    }

    fn rss_mib(&self) -> f64 {
        self.procs.iter().map(Proc::rss_mib).sum()
    }
}

struct Relay {
    proc: Proc,
    addr: SocketAddr,
}

impl Relay {
    async fn start(nats_urls: &str, replicas: usize) -> Relay {
        Self::start_with(nats_urls, replicas, &[]).await
    }

    async fn start_with(nats_urls: &str, replicas: usize, env: &[(&str, String)]) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sse-relay"));
        child.env_clear();
        child.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        child
            .arg("serve")
            .env("RELAY_NATS_URL", nats_urls)
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_LOG", "warn,sse_relay::server=info")
            .env("RELAY_MAX_CONNECTIONS", "20000")
            .env("RELAY_MAX_CONNECTIONS_PER_KEY", "20000")
            .env("RELAY_STREAM_REPLICAS", replicas.to_string())
            .env("RELAY_STREAM_MAX_MSGS_PER_SUBJECT", "100000")
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(&mut child);
        let stderr = proc.child.stderr.take().expect("stderr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "listening" {
                    if let (Some(tx), Some(addr)) = (tx.take(), v["addr"].as_str()) {
                        tx.send(addr.parse::<SocketAddr>().expect("addr")).ok();
                    }
                } else if v["level"] == "WARN" || v["level"] == "ERROR" {
                    eprintln!("  [relay] {}", v["message"]);
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("relay listens")
            .expect("relay address");
        let relay = Relay { proc, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(addr, "/readyz").await != Some(200) {
            assert!(Instant::now() < deadline, "relay not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        relay
    }

    async fn metric(&self, series: &str) -> f64 {
        let Ok(response) = reqwest::get(format!("http://{}/metrics", self.addr)).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().unwrap_or(0.0))
            })
            .unwrap_or(0.0)
    }
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------------------------------------
// Load

/// Subject index `s` in 0..=K: K deployments, then the pavilion.
fn subject_name(run: &str, s: usize) -> (String, String) {
    if s < K_DEPLOYMENTS {
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
    last_id: u64,
    ids_increasing: bool,
}

fn parse_payload(data: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    Some((v["t"].as_u64()?, v["n"].as_u64()?))
}

impl Received {
    fn record(&mut self, data: &[u8]) {
        let now = now_nanos();
        if let Some((t, n)) = parse_payload(data) {
            self.counters.push(n);
            self.latencies_us
                .push((now.saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32);
        }
    }
}

/// Publishes `rate` events/s over the K+1 subjects (round robin) for `seconds`; returns how many
/// each subject got. The payload carries the publish time and a per-subject counter.
async fn publish_load(nats_urls: &str, run: &str, rate: u32, seconds: f64) -> Vec<u64> {
    let urls: Vec<String> = nats_urls.split(',').map(str::to_owned).collect();
    let client = async_nats::connect(urls.as_slice())
        .await
        .expect("publisher");
    let js = async_nats::jetstream::new(client);
    let mut counts = vec![0u64; K_DEPLOYMENTS + 1];
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
            s = (s + 1) % (K_DEPLOYMENTS + 1);
            sent += 1;
        }
        while let Some(Some(())) = futures::FutureExt::now_or_never(acks.next()) {}
    }
    while acks.next().await.is_some() {}
    counts
}

/// One SSE client: connects (with a resume point), reads until `done`, records what it gets.
async fn sse_client(
    http: reqwest::Client,
    url: String,
    received: Arc<Mutex<Received>>,
    connected: Arc<AtomicUsize>,
    done: tokio_util::sync::CancellationToken,
) -> bool {
    let last = received.lock().expect("lock").last_id;
    let mut request = http.get(&url);
    if last > 0 {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let Ok(mut response) = request.send().await else {
        return false;
    };
    if response.status().as_u16() != 200 {
        return false;
    }
    connected.fetch_add(1, Ordering::Relaxed);
    let mut parser = SseParser::new();
    loop {
        let chunk = tokio::select! {
            _ = done.cancelled() => return true,
            chunk = response.chunk() => chunk,
        };
        let Ok(Some(bytes)) = chunk else { return false };
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
                rec.record(event.data.as_bytes());
            }
        }
    }
}

/// HTTP clients bound to different loopback source addresses, so 10 000+ connections (and a
/// reconnect storm on top) do not run out of ephemeral ports.
fn http_clients() -> Vec<reqwest::Client> {
    (2..10)
        .map(|i| {
            reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client")
        })
        .collect()
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

struct Row {
    mode: &'static str,
    clients: usize,
    rate: u32,
    held: usize,
    delivered_per_s: f64,
    p50: f64,
    p99: f64,
    max: f64,
    relay_rss: f64,
    relay_kib_per_conn: f64,
    relay_cpu: f64,
    nats_rss: f64,
    nats_cpu: f64,
    lost: u64,
    duplicated: u64,
}

impl Row {
    fn from(
        mode: &'static str,
        clients: usize,
        rate: u32,
        mut outcome: Outcome,
        seconds: f64,
        relay: Option<(f64, f64, f64)>,
        nats: (f64, f64),
    ) -> Row {
        outcome.latencies_us.sort_unstable();
        let (relay_rss, idle_rss, relay_cpu) = relay.unwrap_or((0.0, 0.0, 0.0));
        Row {
            mode,
            clients,
            rate,
            held: outcome.held,
            delivered_per_s: outcome.delivered as f64 / seconds,
            p50: percentile(&outcome.latencies_us, 0.50),
            p99: percentile(&outcome.latencies_us, 0.99),
            max: percentile(&outcome.latencies_us, 1.0),
            relay_rss,
            relay_kib_per_conn: if clients > 0 {
                idle_rss * 1024.0 / clients as f64
            } else {
                0.0
            },
            relay_cpu,
            nats_rss: nats.0,
            nats_cpu: nats.1,
            lost: outcome.lost,
            duplicated: outcome.duplicated,
        }
    }

    fn header() -> String {
        "| mode | C | R ev/s | held | delivered/s | p50 ms | p99 ms | max ms | relay RSS MiB | relay KiB/conn (idle) | relay CPU % | nats RSS MiB | nats CPU % | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    fn line(&self) -> String {
        let relay = |v: f64, digits: usize| {
            if self.mode == "ceiling" {
                "—".to_owned()
            } else {
                format!("{v:.digits$}")
            }
        };
        format!(
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
            self.mode, self.clients, self.rate, self.held, self.delivered_per_s, self.p50,
            self.p99, self.max, relay(self.relay_rss, 0), relay(self.relay_kib_per_conn, 1),
            relay(self.relay_cpu, 0), self.nats_rss, self.nats_cpu, self.lost, self.duplicated
        )
    }
}

/// The relay case: C SSE clients on one replica (or spread over several).
async fn relay_run(
    nats: &mut Nats,
    relays: &[Relay],
    clients: usize,
    rate: u32,
    seconds: f64,
    kill_node_mid_run: bool,
) -> Row {
    let run = format!("r{}", rand::rng().random::<u32>());
    let https = http_clients();
    let done = tokio_util::sync::CancellationToken::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    let gate = Arc::new(Semaphore::new(256));
    let relay_rss_before: f64 = relays.iter().map(|r| r.proc.rss_mib()).sum();
    for i in 0..clients {
        let s = i % (K_DEPLOYMENTS + 1);
        let relay = &relays[i % relays.len()];
        let url = format!("http://{}{}", relay.addr, subject_name(&run, s).1);
        let rec = Arc::new(Mutex::new(Received {
            ids_increasing: true,
            ..Default::default()
        }));
        received.push(rec.clone());
        subject_of.push(s);
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let (http, connected, done) = (
            https[i % https.len()].clone(),
            connected.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut permit = Some(permit);
            // Reconnect with Last-Event-ID until the run is over.
            while !done.is_cancelled() {
                let before = connected.load(Ordering::Relaxed);
                let task = sse_client(
                    http.clone(),
                    url.clone(),
                    rec.clone(),
                    connected.clone(),
                    done.clone(),
                );
                tokio::pin!(task);
                // Release the ramp gate once connected.
                loop {
                    tokio::select! {
                        finished = &mut task => { let _ = finished; break; }
                        _ = tokio::time::sleep(Duration::from_millis(20)), if permit.is_some() => {
                            if connected.load(Ordering::Relaxed) > before { permit.take(); }
                        }
                    }
                }
                permit.take();
                if !done.is_cancelled() {
                    let backoff = Duration::from_millis(rand::rng().random_range(100..1000));
                    tokio::time::sleep(backoff).await;
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss: f64 = relays.iter().map(|r| r.proc.rss_mib()).sum::<f64>() - relay_rss_before;

    let relay_cpu_before: f64 = relays.iter().map(|r| r.proc.cpu_seconds()).sum();
    let nats_cpu_before = nats.cpu_seconds();
    let started = Instant::now();
    let publisher = tokio::spawn({
        let urls = nats.url_list();
        let run = run.clone();
        async move { publish_load(&urls, &run, rate, seconds).await }
    });
    if kill_node_mid_run {
        tokio::time::sleep(Duration::from_secs_f64(seconds / 2.0)).await;
        nats.procs[1].kill().await;
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
    let relay_cpu = (relays.iter().map(|r| r.proc.cpu_seconds()).sum::<f64>() - relay_cpu_before)
        / elapsed
        * 100.0;
    let nats_cpu = (nats.cpu_seconds() - nats_cpu_before) / elapsed * 100.0;
    let relay_rss: f64 = relays.iter().map(|r| r.proc.rss_mib()).sum();
    let nats_rss = nats.rss_mib();
    done.cancel();
    for task in tasks {
        task.await.ok();
    }
    let mut outcome = check(&expected, &subject_of, &received);
    outcome.held = held;
    Row::from(
        if relays.len() > 1 {
            "relay×3"
        } else {
            "relay"
        },
        clients,
        rate,
        outcome,
        elapsed,
        Some((relay_rss, idle_rss, relay_cpu)),
        (nats_rss, nats_cpu),
    )
}

/// The ceiling: the same subjects and load, delivered by plain NATS core subscriptions.
async fn ceiling_run(nats: &Nats, clients: usize, rate: u32, seconds: f64) -> Row {
    let run = format!("c{}", rand::rng().random::<u32>());
    let connections = clients.div_ceil(100).max(1);
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(
            async_nats::ConnectOptions::new()
                .subscription_capacity(1 << 16)
                .connect(nats.urls[0].as_str())
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
        let rec = Arc::new(Mutex::new(Received {
            ids_increasing: true,
            ..Default::default()
        }));
        received.push(rec.clone());
        subject_of.push(s);
        tasks.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                rec.lock().expect("lock").record(&message.payload);
            }
        }));
    }
    for c in &conns {
        c.flush().await.ok();
    }
    let nats_cpu_before = nats.cpu_seconds();
    let started = Instant::now();
    let expected = publish_load(&nats.url_list(), &run, rate, seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(received.iter(), total, Duration::from_secs(30)).await;
    let nats_cpu = (nats.cpu_seconds() - nats_cpu_before) / elapsed * 100.0;
    let nats_rss = nats.rss_mib();
    drop(conns);
    for t in tasks {
        t.abort();
    }
    let mut outcome = check(&expected, &subject_of, &received);
    outcome.held = clients;
    Row::from(
        "ceiling",
        clients,
        rate,
        outcome,
        elapsed,
        None,
        (nats_rss, nats_cpu),
    )
}

struct Storm {
    clients: usize,
    reconnect_seconds: f64,
    consumers_per_s: f64,
    lost: u64,
    duplicated: u64,
}

/// All clients dropped at once, reconnecting with Last-Event-ID jittered over `spread`.
async fn storm_run(
    nats: &Nats,
    relay: &Relay,
    clients: usize,
    rate: u32,
    spread: Duration,
) -> Storm {
    let run = format!("s{}", rand::rng().random::<u32>());
    let https = http_clients();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut received = Vec::new();
    let mut subject_of = Vec::new();
    let first = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    let gate = Arc::new(Semaphore::new(256));
    for i in 0..clients {
        let s = i % (K_DEPLOYMENTS + 1);
        let url = format!("http://{}{}", relay.addr, subject_name(&run, s).1);
        let rec = Arc::new(Mutex::new(Received {
            ids_increasing: true,
            ..Default::default()
        }));
        received.push((rec.clone(), url.clone()));
        subject_of.push(s);
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let (http, connected, first) = (
            https[i % https.len()].clone(),
            connected.clone(),
            first.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let task = sse_client(http, url, rec, connected.clone(), first);
            tokio::pin!(task);
            let before = connected.load(Ordering::Relaxed);
            let mut permit = Some(permit);
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    _ = tokio::time::sleep(Duration::from_millis(20)), if permit.is_some() => {
                        if connected.load(Ordering::Relaxed) > before { permit.take(); }
                    }
                }
            }
        }));
    }
    while connected.load(Ordering::Relaxed) < clients {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publisher = tokio::spawn({
        let urls = nats.url_list();
        let run = run.clone();
        async move { publish_load(&urls, &run, rate, spread.as_secs_f64() + 6.0).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Drop everyone at once.
    let created_before = relay.metric("relay_consumers_created_total").await;
    first.cancel();
    for t in tasks {
        t.await.ok();
    }
    let dropped_at = Instant::now();
    let reconnected = Arc::new(AtomicUsize::new(0));
    let last = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, (rec, url)) in received.iter().enumerate() {
        let delay = spread.mul_f64(rand::rng().random::<f64>());
        let (http, reconnected, last, rec, url) = (
            https[i % https.len()].clone(),
            reconnected.clone(),
            last.clone(),
            rec.clone(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            while !last.is_cancelled() {
                if sse_client(
                    http.clone(),
                    url.clone(),
                    rec.clone(),
                    reconnected.clone(),
                    last.clone(),
                )
                .await
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    while reconnected.load(Ordering::Relaxed) < clients
        && dropped_at.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnect_seconds = dropped_at.elapsed().as_secs_f64();
    let created = relay.metric("relay_consumers_created_total").await - created_before;
    let expected = publisher.await.expect("publisher");
    let total: u64 = (0..clients).map(|i| expected[subject_of[i]]).sum();
    wait_delivered(
        received.iter().map(|(r, _)| r),
        total,
        Duration::from_secs(DELIVERY_WAIT_SECS),
    )
    .await;
    last.cancel();
    for t in tasks {
        t.await.ok();
    }
    let recs: Vec<_> = received.into_iter().map(|(r, _)| r).collect();
    let outcome = check(&expected, &subject_of, &recs);
    Storm {
        clients,
        reconnect_seconds,
        consumers_per_s: created / reconnect_seconds.max(0.001),
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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
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
    let scale_clients = if quick { 300 } else { 3000 };

    let mut out = String::new();
    let mut emit = |line: String| {
        println!("{line}");
        out.push_str(&line);
        out.push('\n');
    };
    emit(format!("Machine: {}", machine()));
    emit(format!("Load: K = {K_DEPLOYMENTS} deployments + 1 pavilion, clients spread evenly over them; {seconds} s of publishing per row; latency = publish timestamp in the payload → client receipt.\n"));
    emit(Row::header());

    let mut nats = Nats::single().await;
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "sweep,storm,scale".into());
    for &rate in rates.iter().filter(|_| parts.contains("sweep")) {
        for &c in &clients {
            // A fresh replica per row: its memory is then this row's alone.
            let relay = Relay::start(&nats.url_list(), 1).await;
            let row = relay_run(
                &mut nats,
                std::slice::from_ref(&relay),
                c as usize,
                rate as u32,
                seconds,
                false,
            )
            .await;
            drop(relay);
            emit(row.line());
            let ceiling = ceiling_run(&nats, c as usize, rate as u32, seconds).await;
            emit(ceiling.line());
            emit(format!(
                "| ratio relay/ceiling | | | | {:.2} | | {:.2} | | | | | | | | |",
                row.delivered_per_s / ceiling.delivered_per_s.max(1.0),
                row.p99 / ceiling.p99.max(0.001)
            ));
        }
    }

    if parts.contains("traced") || parts.contains("sweep") {
        // Tracing cost: every delivery traced (always_on) and exported to a local sink.
        let (endpoint, exported) = otlp_sink().await;
        let c = if quick { 500 } else { 1000 };
        let rate = if quick { 200 } else { 1000 };
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
            let relay = Relay::start_with(&nats.url_list(), 1, &env).await;
            let mut row = relay_run(
                &mut nats,
                std::slice::from_ref(&relay),
                c,
                rate,
                seconds,
                false,
            )
            .await;
            row.mode = if traced { "relay+traces" } else { "relay" };
            emit(row.line());
        }
        emit(format!(
            "(spans exported to the sink: {:.1} MiB of OTLP protobuf)",
            exported.load(Ordering::Relaxed) as f64 / 1048576.0
        ));
    }
    if !parts.contains("storm") && !parts.contains("scale") {
        return;
    }
    if parts.contains("storm") {
        let relay = Relay::start(&nats.url_list(), 1).await;
        let storm = storm_run(
            &nats,
            &relay,
            storm_clients,
            rates[0] as u32,
            Duration::from_secs(3),
        )
        .await;
        emit(String::new());
        emit("| reconnect storm | clients | all live again after s | consumer creations/s | lost | dup |\n|---|---|---|---|---|---|".to_owned());
        emit(format!(
            "| all dropped at once, back with Last-Event-ID jittered over 3 s | {} | {:.2} | {:.0} | {} | {} |",
            storm.clients, storm.reconnect_seconds, storm.consumers_per_s, storm.lost, storm.duplicated
        ));
    }
    drop(nats);

    let mut cluster = Nats::cluster().await;
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(Relay::start(&cluster.url_list(), 3).await);
    }
    emit(String::new());
    emit("Scale-out: 3 relay replicas on a 3-node NATS cluster (R3 stream), clients spread round robin, NATS node 2 SIGKILLed halfway.\n".to_owned());
    emit(Row::header());
    let row = relay_run(
        &mut cluster,
        &relays,
        scale_clients,
        rates[0] as u32,
        seconds.max(6.0),
        true,
    )
    .await;
    emit(row.line());

    if !quick {
        let doc = format!(
            "# Benchmark results\n\nProduced by `make bench` ({}).\n\n```\n{}```\n\nSee the README's *Benchmark* section for how to read and reproduce them.\n",
            time::OffsetDateTime::now_utc().date(),
            out
        );
        std::fs::write(
            format!("{}/docs/benchmarks-raw.md", env!("CARGO_MANIFEST_DIR")),
            doc,
        )
        .ok();
    }
}
