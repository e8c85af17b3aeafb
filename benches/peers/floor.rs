//! The sweep's `floor` rows: the least program that does the relay's job on the same machine,
//! to say how far the relay is from what the job costs at all.
//!
//! It is this benchmark's own executable run again as a server of its own (the benchmark starts
//! `current_exe()` with `BENCH_FLOOR_SERVE=<nats url>,<stream>,<port>`, which `main` checks
//! before anything else), so its CPU and RSS are measured from `/proc` as the relay's are. On
//! one thread (a current-thread Tokio runtime, which async-nats needs), it
//!
//! - follows the row's stream with ONE async-nats ordered pull consumer over the whole stream,
//!   from its first message, with the settings of the relay's shared-mode tail (`max_batch` 1000,
//!   `max_expires` 2 s). The relay gives a client without `Last-Event-ID` every event the stream
//!   retains; the row's stream is empty until every client is connected, so "every event after
//!   the client connected", which is what the floor gives, is the same start point;
//! - accepts TCP connections and reads the request head (a short task per connection until the
//!   head is in), takes the subject from the path the relay serves (`/v1/deployments/{id}/events`
//!   → `deploy.<id>`, `/v1/pavilions/{id}/events` → `pavilion.<id>`; anything else gets a 404),
//!   writes `HTTP/1.1 200 OK` with `content-type: text/event-stream`, `cache-control: no-cache`
//!   and no length (the body ends with the connection), and registers the socket, a
//!   non-blocking std `TcpStream`, in a map subject → sockets; no task per client after that;
//! - for every event, builds the frame once exactly as the relay does
//!   (`sse_relay::sse::event_frame`: `id:` = the stream sequence, `event:` = the
//!   `Relay-Event-Type` header or `message`, `data:`) and writes it to every socket of its
//!   subject with one non-blocking `write`; only what a short write or `WouldBlock` leaves over
//!   goes to that client's pending buffer, written before its next frame and by a sweep every
//!   10 ms while any is pending. A client whose write fails (or whose pending bytes pass 4 MiB) is dropped.
//!
//! What it does not do, and the relay does: resume with `Last-Event-ID`, replay, heartbeats,
//! limits, metrics, presence, several subjects per connection. Its losses count in the exit
//! status as the relay's and the ceiling's do (it is the benchmark's own program, not a peer).

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;
use sse_relay::jetstream::EVENT_TYPE_HEADER;
use sse_relay::sse::{event_frame, DEFAULT_EVENT};
use sse_relay::subject::SubjectKey;
use sse_relay_testkit::process::free_port;
use sse_relay_testkit::Proc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::processes::{Nats, Server};
use super::rows::{relay_run, Row};

/// What makes the benchmark's executable a floor server: `<nats url>,<stream>,<port>`.
const SERVE_VAR: &str = "BENCH_FLOOR_SERVE";
/// The relay's shared-mode tail: the consumer's `max_batch` and `max_expires`.
const PULL_BATCH: i64 = 1000;
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How often pending bytes are retried without a new frame.
const SWEEP_EVERY: Duration = Duration::from_millis(10);
/// A client this far behind is dropped.
const PENDING_LIMIT: usize = 4 << 20;
/// The longest request head read.
const HEAD_LIMIT: usize = 16 * 1024;
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Serves as the floor if `BENCH_FLOOR_SERVE` is set, and then never returns (the benchmark
/// kills it); returns at once otherwise.
pub fn serve_if_asked() {
    let Ok(spec) = std::env::var(SERVE_VAR) else {
        return;
    };
    // From the right: a NATS URL list has commas of its own.
    let mut fields = spec.rsplitn(3, ',');
    let (Some(port), Some(stream), Some(urls)) = (fields.next(), fields.next(), fields.next())
    else {
        eprintln!("{SERVE_VAR}: expected <nats url>,<stream>,<port>, got {spec:?}");
        std::process::exit(2);
    };
    let port: u16 = port.parse().expect("BENCH_FLOOR_SERVE: the port");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("floor: runtime")
        .block_on(serve(urls, stream, port));
    std::process::exit(0);
}

async fn serve(urls: &str, stream: &str, port: u16) {
    let urls: Vec<&str> = urls.split(',').collect();
    let client = async_nats::connect(urls.as_slice())
        .await
        .expect("floor: connect to NATS");
    let stream = async_nats::jetstream::new(client)
        .get_stream(stream)
        .await
        .expect("floor: the stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            max_batch: PULL_BATCH,
            max_expires: PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .expect("floor: ordered consumer");
    let mut messages = consumer.messages().await.expect("floor: messages");
    // Listening only now: the benchmark takes an accepted connection as "ready".
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("floor: listen");
    let backlogged = Arc::new(Notify::new());
    let clients = Arc::new(Mutex::new(Clients {
        by_subject: HashMap::new(),
        backlog: false,
        backlogged: backlogged.clone(),
    }));
    tokio::spawn(accept(listener, clients.clone()));
    tokio::spawn(sweep(clients.clone(), backlogged));
    let mut consumer_errors = 0u64;
    while let Some(message) = messages.next().await {
        // The ordered consumer recreates itself after an error; what it yields next follows on.
        let Ok(message) = message else {
            consumer_errors += 1;
            eprintln!("floor: ordered consumer error {consumer_errors}");
            continue;
        };
        let Ok(info) = message.info() else { continue };
        let event = message
            .headers
            .as_ref()
            .and_then(|h| h.get(EVENT_TYPE_HEADER))
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_EVENT);
        let frame = event_frame(info.stream_sequence, event, &message.payload);
        clients
            .lock()
            .expect("clients")
            .send(message.subject.as_str(), &frame);
    }
}

/// Accepts connections; each reads its request head in a task of its own, then is registered.
async fn accept(listener: tokio::net::TcpListener, clients: Arc<Mutex<Clients>>) {
    loop {
        if let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(open(socket, clients.clone()));
        }
    }
}

/// Reads the request head, answers, registers the socket under its subject.
async fn open(mut socket: tokio::net::TcpStream, clients: Arc<Mutex<Clients>>) {
    socket.set_nodelay(true).ok();
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(n) if n > 0 && head.len() + n <= HEAD_LIMIT => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let Some(subject) = subject_of(&head) else {
        socket.write_all(NOT_FOUND).await.ok();
        return;
    };
    // Non-blocking, off the runtime's reactor from here on.
    let Ok(socket) = socket.into_std() else {
        return;
    };
    let mut client = Client {
        socket,
        pending: Vec::new(),
    };
    let mut clients = clients.lock().expect("clients");
    if client.send(RESPONSE_HEAD) {
        clients.register(subject, client);
    }
}

/// The NATS subject of a request head's path: `GET /v1/deployments/{id}/events` →
/// `deploy.<id>`, `GET /v1/pavilions/{id}/events` → `pavilion.<id>`.
fn subject_of(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let (method, target) = (words.next()?, words.next()?);
    if method != "GET" {
        return None;
    }
    let path = target.split('?').next()?;
    let rest = path.strip_prefix("/v1/")?;
    let (kind, rest) = rest.split_once('/')?;
    let id = rest.strip_suffix("/events")?;
    let prefix = match kind {
        "deployments" => "deploy",
        "pavilions" => "pavilion",
        _ => return None,
    };
    let key = SubjectKey::parse(id).ok()?;
    Some(format!("{prefix}.{key}"))
}

/// Every registered socket by subject.
struct Clients {
    by_subject: HashMap<String, Vec<Client>>,
    /// Some client may have pending bytes (cleared by a sweep that finds none).
    backlog: bool,
    /// Wakes the sweep when `backlog` turns true.
    backlogged: Arc<Notify>,
}

impl Clients {
    fn register(&mut self, subject: String, client: Client) {
        self.note_backlog(!client.pending.is_empty());
        self.by_subject.entry(subject).or_default().push(client);
    }

    fn note_backlog(&mut self, backlog: bool) {
        if backlog && !self.backlog {
            self.backlog = true;
            self.backlogged.notify_one();
        }
    }

    /// Writes `frame` to every socket of `subject`; drops those that failed.
    fn send(&mut self, subject: &str, frame: &[u8]) {
        let Some(sockets) = self.by_subject.get_mut(subject) else {
            return;
        };
        let mut backlog = false;
        sockets.retain_mut(|client| {
            let alive = client.send(frame);
            backlog |= !client.pending.is_empty();
            alive
        });
        self.note_backlog(backlog);
    }

    /// Writes what is pending, everywhere; whether some is still pending.
    fn flush(&mut self) -> bool {
        let mut backlog = false;
        for sockets in self.by_subject.values_mut() {
            sockets.retain_mut(|client| {
                if client.pending.is_empty() {
                    return true;
                }
                let alive = client.flush();
                backlog |= !client.pending.is_empty();
                alive
            });
        }
        self.backlog = backlog;
        backlog
    }
}

/// Retries pending bytes every [`SWEEP_EVERY`] while some are pending (asleep otherwise).
async fn sweep(clients: Arc<Mutex<Clients>>, backlogged: Arc<Notify>) {
    loop {
        backlogged.notified().await;
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if !clients.lock().expect("clients").flush() {
                break;
            }
        }
    }
}

/// One client: its socket and what it has not taken yet.
struct Client {
    socket: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    /// Writes what is pending, then `frame` (what the socket does not take is kept); false once
    /// the connection is gone or too far behind.
    fn send(&mut self, frame: &[u8]) -> bool {
        if !self.flush() {
            return false;
        }
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(frame);
            return self.pending.len() <= PENDING_LIMIT;
        }
        loop {
            match (&self.socket).write(frame) {
                Ok(n) => {
                    self.pending.extend_from_slice(&frame[n..]);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.pending.extend_from_slice(frame);
                    return true;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes what is pending as far as the socket takes it; false once the connection is gone.
    fn flush(&mut self) -> bool {
        while !self.pending.is_empty() {
            match (&self.socket).write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A running floor server, as a row measures it.
pub struct Floor {
    proc: Proc,
    addr: SocketAddr,
}

impl Server for Floor {
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

impl Floor {
    /// Starts a floor server on the stream of `nats_url` (which must exist) and waits until it
    /// accepts connections.
    pub async fn start(nats_url: &str) -> Floor {
        let port = free_port();
        let stream = sse_relay::jetstream::stream_definition().name.clone();
        let exe = std::env::current_exe().expect("this executable's path");
        let mut command = tokio::process::Command::new(exe);
        command.env(SERVE_VAR, format!("{nats_url},{stream},{port}"));
        let mut proc = Proc::spawn(&mut command);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                proc.alive() && Instant::now() < deadline,
                "the floor server did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Floor { proc, addr }
    }

    pub async fn stop(mut self) {
        self.proc.kill().await;
    }
}

/// A `floor` row: a fresh nats-server with the stream, a fresh floor server, the row's clients
/// and load as for the relay (`relay_run`).
pub async fn floor_run(clients: usize, rate: u32, seconds: f64) -> Row {
    let mut nats = Nats::single().await;
    nats.create_stream().await;
    let floor = Floor::start(&nats.first_url()).await;
    let row = relay_run(
        &mut nats,
        std::slice::from_ref(&floor),
        "floor".to_owned(),
        clients,
        rate,
        seconds,
        false,
    )
    .await;
    floor.stop().await;
    nats.stop().await;
    row
}
