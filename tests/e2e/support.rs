//! The one test harness: real nats-server processes, real relay processes, a real HTTP/SSE
//! client and a publisher using the relay's own publishing code. Every wait is bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use sse_relay::jetstream::EventStore;
use sse_relay::sse::{SseEvent, SseItem, SseParser};
use sse_relay::subject::{Subject, SubjectKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};

pub const STREAM: &str = "DEPLOY_EVENTS";
/// Upper bound for any single wait in these tests; a hang fails fast instead of stalling CI.
pub const WAIT: Duration = Duration::from_secs(20);

/// NATS_SERVER_BIN, the project's tools folder, or PATH: the lookup the demo uses.
pub fn nats_server_bin() -> PathBuf {
    sse_relay::demo::nats_server_binary()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn send_signal(child: &Child, signal: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as libc::pid_t, signal);
        }
    }
}

/// A nats-server with JetStream on a free loopback port and a temporary store.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub store: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        let store = tempfile::tempdir().expect("temp dir");
        let mut nats = Nats {
            child: None,
            port: free_port(),
            store,
        };
        nats.launch().await;
        nats
    }

    async fn launch(&mut self) {
        let child = Command::new(nats_server_bin())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", nats_server_bin().display()));
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(client) = async_nats::connect(self.url()).await {
                // JetStream answers once the store is recovered.
                let js = jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(&child, libc::SIGTERM);
            if timeout(WAIT, child.wait()).await.is_err() {
                child.kill().await.ok();
            }
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        let client = timeout(WAIT, async_nats::connect(self.url()))
            .await
            .expect("connect in time")
            .expect("connect");
        jetstream::new(client)
    }

    /// The stream's consumer count, read from the server.
    pub async fn consumer_count(&self, js: &jetstream::Context) -> usize {
        let mut stream = js.get_stream(STREAM).await.expect("stream exists");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count
    }

    /// Polls the server until the consumer count is `want`; panics after `within`.
    pub async fn wait_consumer_count(
        &self,
        js: &jetstream::Context,
        want: usize,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let count = self.consumer_count(js).await;
            if count == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consumer count stayed {count}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Three nats-servers clustered from `nats/cluster/node-*.conf`, on free ports with temporary
/// stores.
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    /// One cluster at a time in this test binary: three servers electing leaders while the rest
    /// of the suite runs on two cores is enough load.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

static CLUSTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a fresh cluster may take to elect its meta leader under the suite's load.
const CLUSTER_FORMS_WITHIN: Duration = Duration::from_secs(60);

pub struct ClusterNode {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    _store: tempfile::TempDir,
}

impl NatsCluster {
    pub async fn start() -> NatsCluster {
        let one_at_a_time = CLUSTERS.lock().await;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (port, cluster, http)) in ports.iter().enumerate() {
            let store = tempfile::tempdir().expect("temp dir");
            let config = format!(
                "{}/nats/cluster/node-{}.conf",
                env!("CARGO_MANIFEST_DIR"),
                i + 1
            );
            let child = Command::new(nats_server_bin())
                .args([
                    "-c",
                    &config,
                    "-p",
                    &port.to_string(),
                    "-m",
                    &http.to_string(),
                ])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{cluster}"),
                    "--routes",
                    &routes,
                    "-sd",
                ])
                .arg(store.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn nats-server");
            nodes.push(ClusterNode {
                name: format!("relay-nats-{}", i + 1),
                port: *port,
                child: Some(child),
                _store: store,
            });
        }
        let cluster = NatsCluster {
            nodes,
            _one_at_a_time: one_at_a_time,
        };
        // Ready when every node answers JetStream requests (a meta leader exists).
        let deadline = Instant::now() + CLUSTER_FORMS_WITHIN;
        for node in &cluster.nodes {
            loop {
                let url = format!("nats://127.0.0.1:{}", node.port);
                if let Ok(client) = async_nats::connect(url).await {
                    if jetstream::new(client).query_account().await.is_ok() {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "cluster did not form");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    /// All client URLs, comma-separated (RELAY_NATS_URL).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the node called `name`.
    pub async fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("known node");
        if let Some(mut child) = node.child.take() {
            child.kill().await.ok();
        }
    }
}

/// A TCP proxy on a free loopback port in front of `upstream`: [`Proxy::cut`] drops every
/// connection through it at once (a relay behind it loses its NATS connection and reconnects
/// through it again).
pub struct Proxy {
    pub port: u16,
    cuts: tokio::sync::watch::Sender<u64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let watch = cuts.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            cuts,
            accepting,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every open connection through the proxy.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

/// The relay's fan-out mode (`RELAY_FANOUT`): the exactness suite runs in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    Consumer,
    Shared,
}

impl Fanout {
    /// JetStream consumers `replicas` relays hold for `clients` connected, caught-up clients:
    /// one per client, or one live tail per replica.
    pub fn consumers(self, clients: usize, replicas: usize) -> usize {
        match self {
            Fanout::Consumer => clients,
            Fanout::Shared => replicas,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fanout::Consumer => "consumer",
            Fanout::Shared => "shared",
        }
    }

    /// `env` with `RELAY_FANOUT` set to this mode.
    pub fn env<'a>(self, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![("RELAY_FANOUT", self.name())];
        all.extend_from_slice(env);
        all
    }
}

/// Defines an async test once per fan-out mode, as `<name>::consumer` and `<name>::shared`:
/// `both_modes! { async fn name(mode) { ... } }`, the body using `mode: Fanout`.
#[macro_export]
macro_rules! both_modes {
    ($(#[$meta:meta])* async fn $name:ident($mode:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($mode: $crate::support::Fanout) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consumer() {
                run($crate::support::Fanout::Consumer).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shared() {
                run($crate::support::Fanout::Shared).await
            }
        }
    };
}

/// A relay process (`sse-relay serve`) on free ports.
pub struct Relay {
    child: Child,
    /// The public listener (`RELAY_LISTEN`): the API and the board.
    pub addr: SocketAddr,
    /// The admin listener (`RELAY_ADMIN_LISTEN`): `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
}

impl Relay {
    /// Starts `serve` and waits until it listens (not until it is ready).
    pub async fn spawn(nats_url: &str, env: &[(&str, &str)]) -> Relay {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sse-relay"));
        command
            .arg("serve")
            .env_clear()
            .env("RELAY_NATS_URL", nats_url)
            .env("RELAY_LISTEN", "127.0.0.1:0")
            .env("RELAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RELAY_LOG", "info,async_nats=warn")
            .env("RELAY_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn sse-relay");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listening_addr(&line) {
                    if let Some(tx) = tx.take() {
                        tx.send(addr).ok();
                    }
                }
                eprintln!("[relay] {line}");
            }
        });
        let (addr, admin) = timeout(WAIT, rx)
            .await
            .expect("relay listening in time")
            .expect("relay printed its address");
        Relay { child, addr, admin }
    }

    /// Starts `serve` and waits until `/readyz` is 200.
    pub async fn start(nats_url: &str, env: &[(&str, &str)]) -> Relay {
        let relay = Relay::spawn(nats_url, env).await;
        relay.wait_ready_status(200).await;
        relay
    }

    /// Polls `/metrics` until `series` reads `value`; panics after [`WAIT`] (also when the
    /// series does not exist).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.metrics().await;
            let got = sample_opt(&metrics, series);
            if got == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed {got:?}, wanted {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/metrics` until `series` reads at least `min`; panics after [`WAIT`].
    pub async fn wait_metric_at_least(&self, series: &str, min: f64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = sample_opt(&self.metrics().await, series);
            if got.is_some_and(|v| v >= min) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed {got:?}, wanted at least {min}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Relay::spawn`] in fan-out mode `mode`.
    pub async fn spawn_in(mode: Fanout, nats_url: &str, env: &[(&str, &str)]) -> Relay {
        Relay::spawn(nats_url, &mode.env(env)).await
    }

    /// [`Relay::start`] in fan-out mode `mode`.
    pub async fn start_in(mode: Fanout, nats_url: &str, env: &[(&str, &str)]) -> Relay {
        Relay::start(nats_url, &mode.env(env)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener's URL of `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `/readyz` on the admin listener.
    pub async fn readyz(&self) -> u16 {
        match http().get(self.admin_url("/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Polls `/readyz` until it answers `status`.
    pub async fn wait_ready_status(&self, status: u16) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.readyz().await;
            if got == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {got}, wanted {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory of the relay process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub fn sigkill(&mut self) {
        send_signal(&self.child, libc::SIGKILL);
    }

    pub fn sigterm(&self) {
        send_signal(&self.child, libc::SIGTERM);
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        timeout(WAIT, self.child.wait())
            .await
            .expect("relay exited in time")
            .expect("wait")
    }
}

/// The public and admin addresses of the relay's `listening` log line.
fn listening_addr(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some((
        v.get("addr")?.as_str()?.parse().ok()?,
        v.get("admin")?.as_str()?.parse().ok()?,
    ))
}

/// A client builder. reqwest is built with rustls and no crypto provider of its own (the relay's
/// OTLP client shares NATS' ring), so every client needs the process-wide provider installed.
fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn http() -> reqwest::Client {
    client_builder().timeout(WAIT).build().expect("http client")
}

/// GET returning status and JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = http().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

/// A streaming SSE response, parsed.
pub struct SseClient {
    response: reqwest::Response,
    parser: SseParser,
}

impl SseClient {
    /// Connects as a browser would while a replica recovers: a `503` (with `Retry-After`) is
    /// retried until [`WAIT`] has passed; any other refusal panics.
    pub async fn connect_retrying(url: &str, last_event_id: Option<&str>) -> SseClient {
        let deadline = Instant::now() + WAIT;
        loop {
            let response = Self::request(url, last_event_id).await;
            if response.status().as_u16() == 503 && Instant::now() < deadline {
                assert!(response.headers().contains_key("retry-after"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Self::stream(url, response);
        }
    }

    /// Connects; panics unless the answer is a 200 event stream.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseClient {
        Self::stream(url, Self::request(url, last_event_id).await)
    }

    async fn request(url: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let client = client_builder().build().expect("http client");
        let mut request = client.get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        timeout(WAIT, request.send())
            .await
            .expect("response in time")
            .expect("request")
    }

    /// The client of `response`; panics unless it is a 200 event stream.
    fn stream(url: &str, response: reqwest::Response) -> SseClient {
        assert_eq!(response.status().as_u16(), 200, "SSE status for {url}");
        assert_eq!(
            response.headers()["content-type"].to_str().ok(),
            Some("text/event-stream")
        );
        SseClient {
            response,
            parser: SseParser::new(),
        }
    }

    /// The next frame, or `None` when the stream ended.
    pub async fn next_item(&mut self) -> Option<SseItem> {
        loop {
            if let Some(item) = self.parser.next_item() {
                return Some(item);
            }
            let chunk = timeout(WAIT, self.response.chunk())
                .await
                .expect("SSE frame in time");
            match chunk {
                Ok(Some(bytes)) => self.parser.feed(&bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event (retry advice and comments skipped); panics if the stream ends.
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            match self.next_item().await.expect("stream ended early") {
                SseItem::Event(event) => return event,
                SseItem::Retry(_) | SseItem::Comment(_) => continue,
            }
        }
    }

    pub async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_event().await);
        }
        out
    }
}

/// Publishes through the relay's own publishing code, as a pipeline worker would.
pub struct Publisher {
    store: EventStore,
}

impl Publisher {
    pub async fn connect(nats_url: &str) -> Publisher {
        let urls: Vec<String> = nats_url.split(',').map(str::to_owned).collect();
        let client = timeout(WAIT, async_nats::connect(urls.as_slice()))
            .await
            .expect("connect in time")
            .expect("connect");
        Publisher {
            store: EventStore::new(client, STREAM),
        }
    }

    /// Publishes `payload` to `deploy.<id>` with event type `stage`; returns the sequence.
    pub async fn deploy(&self, id: &str, payload: &str) -> u64 {
        self.publish(&deployment(id), payload, None).await
    }

    pub async fn publish(&self, subject: &Subject, payload: &str, msg_id: Option<&str>) -> u64 {
        self.store
            .publish(
                subject,
                Some("stage"),
                msg_id,
                Bytes::from(payload.to_owned()),
            )
            .await
            .expect("publish")
            .sequence
    }

    /// Keeps retrying with the same message id until JetStream acknowledges (NATS may be down).
    pub async fn publish_until_acked(&self, subject: &Subject, payload: &str, msg_id: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .store
                .publish(
                    subject,
                    Some("stage"),
                    Some(msg_id),
                    Bytes::from(payload.to_owned()),
                )
                .await
            {
                Ok(ack) => return ack.sequence,
                Err(_) => {
                    assert!(Instant::now() < deadline, "publish never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

pub fn deployment(id: &str) -> Subject {
    Subject::deployment(SubjectKey::parse(id).expect("valid id"))
}

pub fn pavilion(id: &str) -> Subject {
    Subject::pavilion(SubjectKey::parse(id).expect("valid id"))
}

/// The ids of events that carry one, as numbers.
pub fn ids(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e.id.as_deref())
        .map(|id| id.parse().expect("numeric id"))
        .collect()
}

/// One sample from Prometheus text, `None` when the series is not exposed.
pub fn sample_opt(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("numeric sample"))
        })
}

/// One sample from Prometheus text: `series` is the name with its labels exactly as exposed,
/// e.g. `relay_connections{kind="deployment"}`. A series that is not exposed fails the test (so
/// an "is zero" check cannot pass for a metric that does not exist).
pub fn sample(metrics: &str, series: &str) -> f64 {
    sample_opt(metrics, series).unwrap_or_else(|| panic!("{series} is not exposed"))
}

/// The payload the failover tests publish as event `i`.
pub fn numbered(i: usize) -> String {
    format!(r#"{{"i":{i}}}"#)
}

/// `received` is exactly `published` (ids, in order, once each) carrying `numbered(0..)`.
pub fn assert_exactly_once(received: &[SseEvent], published: &[u64]) {
    assert_eq!(
        ids(received),
        published,
        "every event exactly once, in order"
    );
    let payloads: Vec<String> = received.iter().map(|e| e.data.clone()).collect();
    let want: Vec<String> = (0..published.len()).map(numbered).collect();
    assert_eq!(payloads, want);
}

/// Runs `sse-relay serve` with its public port already taken, so it logs its start-up and exits
/// (a way to read what it says before listening); `prepare` may adjust the command (environment,
/// `pre_exec`). Its JSON log lines.
pub async fn serve_until_listen_fails(
    log: &str,
    env: &[(&str, &str)],
    prepare: impl FnOnce(&mut std::process::Command),
) -> Vec<serde_json::Value> {
    let nats = Nats::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"));
    command
        .arg("serve")
        .env_clear()
        .env("RELAY_NATS_URL", nats.url())
        .env("RELAY_LISTEN", &taken_addr)
        .env("RELAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("RELAY_LOG", log)
        .envs(env.iter().copied());
    prepare(&mut command);
    let out = timeout(WAIT, tokio::process::Command::from(command).output())
        .await
        .expect("exits in time")
        .expect("runs");
    drop(taken);
    assert!(!out.status.success(), "the taken port stops it");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&taken_addr),
        "names the address it cannot listen on: {stderr}"
    );
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
