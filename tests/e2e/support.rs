//! What the end-to-end tests share beyond the test kit (`sse-relay-testkit`, which the benchmark
//! uses too): a TCP proxy that cuts NATS connections, the both-modes test macro, exactness
//! checks, a publisher and followers for the fault and shedding tests. Every wait is bounded.

use tokio::time::timeout;

pub use sse_relay_testkit::*;

/// NATS_SERVER_BIN, the project's tools folder, or PATH: the lookup the demo uses.
pub fn nats_server_bin() -> std::path::PathBuf {
    sse_relay::demo::nats_server_binary()
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

/// The ids of events that carry one, as numbers.
pub fn ids(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e.id.as_deref())
        .map(|id| id.parse().expect("numeric id"))
        .collect()
}

/// The payload the failover tests publish as event `i`.
pub fn numbered(i: usize) -> String {
    format!(r#"{{"i":{i}}}"#)
}

/// `received` is exactly `published` (ids, in order, once each) carrying `numbered(0..)`.
pub fn assert_exactly_once(received: &[SseEvent], published: &[u64]) {
    let want: Vec<String> = (0..published.len()).map(numbered).collect();
    assert_received(received, published, &want);
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

/// The last event [`publish_until`] sends: a [`follow`]er stops there.
pub const SENTINEL: &str = r#"{"end":true}"#;

/// Publishes `numbered(0..)` to `deploy.<id>` every 50 ms (each retried until acknowledged)
/// until `stop`, then [`SENTINEL`]; the sequences.
pub fn publish_until(
    publisher: Publisher,
    id: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let subject = deployment(id);
        let mut seqs = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let msg_id = format!("{id}-{i}");
            seqs.push(
                publisher
                    .publish_until_acked(&subject, &numbered(i), &msg_id)
                    .await,
            );
            i += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let end = format!("{id}-end");
        seqs.push(
            publisher
                .publish_until_acked(&subject, SENTINEL, &end)
                .await,
        );
        seqs
    })
}

/// `followed` saw exactly `published` of [`publish_until`]: ids once each, in order, the
/// `numbered` payloads, then the sentinel.
pub fn assert_followed_exactly(followed: &Followed, published: &[u64]) {
    assert_eq!(
        ids(&followed.events),
        published,
        "every event once, in order"
    );
    let mut want: Vec<String> = (0..published.len() - 1).map(numbered).collect();
    want.push(SENTINEL.to_owned());
    let got: Vec<String> = followed.events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(got, want);
}

/// Starts `n` clients of `path` on replica `replica` that then [`follow`] through `balancer`
/// until the sentinel, each reconnection bounded by `within`.
pub async fn followers(
    balancer: &std::sync::Arc<Balancer>,
    path: &'static str,
    replica: usize,
    n: usize,
    within: std::time::Duration,
) -> Vec<tokio::task::JoinHandle<Followed>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = balancer.connect_to(replica, path).await;
        let balancer = balancer.clone();
        tasks.push(tokio::spawn(async move {
            follow(&balancer, path, replica, client, SENTINEL, within).await
        }));
    }
    tasks
}

/// The presence answer at `url` once its connection count is `connections`, within `within`;
/// panics with the last answer otherwise. (Presence changes at interval ticks: there is no event
/// to await, so the endpoint is asked every 50 ms.)
pub async fn presence_reaches(
    url: &str,
    connections: u64,
    within: std::time::Duration,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, body) = get_json(url).await;
        assert_eq!(status, 200, "{body}");
        if body["connections"] == serde_json::json!(connections) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not reach {connections} connections within {within:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A program `make test` builds into `.tools/bin` (Go tools pinned in `tools/*/go.mod`): the path
/// in the environment variable `var`, else `.tools/bin/<name>`. Missing: a failure saying how to
/// get it, never a skip.
pub fn built_tool(var: &str, name: &str) -> std::path::PathBuf {
    let path = std::env::var_os(var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(".tools/bin")
                .join(name)
        });
    assert!(
        path.is_file(),
        "no {name} at {}: `make test` builds it (`make go-tools`, from tools/*/go.mod) or set {var}",
        path.display()
    );
    path
}

/// A raw TCP connection to `addr` that has sent `bytes`.
pub async fn raw_connection(addr: std::net::SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.write_all(bytes).await.expect("write");
    socket
}

/// Everything the relay sends until it closes the connection; panics if it stays open.
pub async fn read_until_closed(socket: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, socket.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the relay kept the connection open");
    String::from_utf8_lossy(&received).into_owned()
}

/// An event stream read over a raw socket with a 4 KiB receive window (the benchmark's client,
/// `raw_client`): a reader that pauses fills its socket after a few frames, as a slow phone
/// would, so the relay's writes to it come up short or would block (the live tail's direct
/// writes stop there and the client's queue fills).
pub struct NarrowReader {
    stream: raw_client::SseStream,
    parser: SseParser,
}

impl NarrowReader {
    /// Opens `path` on `relay`; panics unless the answer is a 200. Reads no event yet.
    pub async fn connect(relay: &Relay, path: &str) -> NarrowReader {
        let dialer = raw_client::dialers()[0];
        let stream = timeout(WAIT, dialer.open_with_recv_buffer(&relay.url(path), 4096))
            .await
            .expect("answer in time")
            .expect("a 200 event stream");
        NarrowReader {
            stream,
            parser: SseParser::new(),
        }
    }

    /// The next `n` events (comments and retry advice skipped), each read in time; panics if
    /// the stream ends first.
    pub async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.parser.next_item() {
                Some(SseItem::Event(event)) => out.push(event),
                Some(_) => {}
                None => {
                    let chunk = timeout(WAIT, self.stream.chunk())
                        .await
                        .expect("SSE bytes in time");
                    let chunk = chunk.unwrap_or_else(|| panic!("ended after {} events", out.len()));
                    self.parser.feed(&chunk);
                }
            }
        }
        out
    }
}

/// Publishes `count` events of `size` bytes to `deploy.<id>` (each begins with its number);
/// their sequences and payloads.
pub async fn publish_sized(
    publisher: &Publisher,
    id: &str,
    count: usize,
    size: usize,
) -> (Vec<u64>, Vec<String>) {
    let payloads = sized_payloads(count, size);
    let mut published = Vec::with_capacity(count);
    for payload in &payloads {
        published.push(publisher.deploy(id, payload).await);
    }
    (published, payloads)
}

/// `count` payloads of `size` bytes, each beginning with its number.
pub fn sized_payloads(count: usize, size: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{i:08}{}", "x".repeat(size - 8)))
        .collect()
}

/// `received` is exactly the events `published` (ids, in order, once each) with `payloads`.
pub fn assert_received(received: &[SseEvent], published: &[u64], payloads: &[String]) {
    assert_eq!(
        ids(received),
        published,
        "every event exactly once, in order"
    );
    // Not assert_eq!: the payloads are large.
    assert!(
        received.iter().map(|e| &e.data).eq(payloads.iter()),
        "every payload whole"
    );
}
