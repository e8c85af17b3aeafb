//! Pushpin 1.36 (Debian's `pushpin` package) as a peer in the sweep: the `pushpin` rows.
//!
//! The same clients and events as the relay rows, through Pushpin instead of the relay:
//!
//! - Pushpin runs under its runner (`pushpin --config <dir>/pushpin.conf`) with `condure`, `zurl`,
//!   `pushpin-proxy` and `pushpin-handler`, every port a free loopback port and every ZeroMQ
//!   socket, pid and log file in a temporary directory of the row, so runs never collide (also
//!   not with a system Pushpin on its default ports);
//! - a GRIP backend in this process (axum) answers the clients' requests, which Pushpin proxies
//!   to it (`routes`: `* 127.0.0.1:<port>`): `Content-Type: text/event-stream`,
//!   `Grip-Hold: stream`, `Grip-Channel: <subject>; prev-id=<seq>` (`deploy.<id>`,
//!   `pavilion.<id>`) and a `Grip-Link` to resume from, with what a client resuming with
//!   `Last-Event-ID` missed as the body (from JetStream) — Pushpin's reliable streaming, so a
//!   client whose stream ends resumes exactly as with the relay (see `GripBackend`);
//! - a feeder in this process follows the stream with one JetStream ordered consumer (from the
//!   start of the row's fresh stream) and POSTs every message, in stream order and one request at
//!   a time, to the handler's `/publish/` as an `http-stream` item on the channel of its subject,
//!   its content the SSE frame the relay itself writes (`id:` = the stream sequence, as the
//!   relay's ids), its item id that sequence, its prev-id the subject's previous sequence
//!   (Pushpin drops an id it has seen, so a retried request cannot duplicate). The clients'
//!   checks are then the relay rows' checks: every counter of its subject exactly once, ids
//!   increasing;
//! - after the ramp, before publishing, the row waits until Pushpin's handler has re-checked the
//!   connections of every channel it newly subscribed to (see `Pushpin::settle`).
//!
//! Found while wiring it (see the notes printed under the sweep table): Debian's handler
//! `message_rate` of 2,500 deliveries/s delays and then drops deliveries at these loads (hence
//! the settings in `TUNED`); and condure 1.9.1 sends its batched keep-alives for a connection to
//! pushpin-proxy while the proxy hands the connection to pushpin-handler (it keeps the proxy as
//! the connection's peer address until the handler writes), so the handler sees the next packet
//! out of sequence and ends the stream ("zhttp server: … received message out of sequence,
//! canceling"): ~0.1–5 % of the streams opened at once, which then resume with Last-Event-ID.
//!
//! The relay-side columns of a `pushpin` row hold Pushpin's figures: CPU and RSS summed over the
//! runner and every service it started. The backend and the feeder run inside the benchmark
//! process (like the clients and the publisher), so their CPU is not in them.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures::{FutureExt, StreamExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use sse_relay_testkit::process::{cpu_seconds_of, free_port, rss_mib_of};
use sse_relay_testkit::Proc;

use super::processes::{Nats, Server};
use super::rows::{relay_run, Row};

/// The runner and the services it starts.
const BINARIES: [&str; 5] = [
    "pushpin",
    "pushpin-proxy",
    "pushpin-handler",
    "condure",
    "zurl",
];
/// The services the runner starts here, as their process names.
const SERVICES: [&str; 4] = ["condure", "zurl", "pushpin-proxy", "pushpin-handler"];
/// Items per publish request at most: one request can then enqueue at most this × the
/// subscribers of a channel (≈ 99 at 10,000 clients) deliveries in the handler at once.
const FEED_BATCH: usize = 256;
/// Overrides of the generated configuration: `section/key=value;…`.
const OVERRIDES_VAR: &str = "BENCH_PUSHPIN_SET";
/// Set: every row's directory (configuration, routes, logs) is kept, its path printed.
const KEEP_VAR: &str = "BENCH_PUSHPIN_KEEP";

/// The binaries missing from `PATH` (empty when Pushpin can run).
pub fn missing_binaries() -> Vec<&'static str> {
    BINARIES
        .iter()
        .copied()
        .filter(|b| which(b).is_none())
        .collect()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `<binary> --version`, first line.
fn version_of(binary: &str) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{binary} (version unknown)"))
}

/// A pushpin.conf as sections of keys.
struct Conf {
    sections: BTreeMap<&'static str, Vec<(String, String)>>,
}

/// Settings this benchmark changes from Debian's `/etc/pushpin/pushpin.conf`, and why: printed
/// under the table with the values actually used.
const TUNED: [(&str, &str, &str, &str); 5] = [
    (
        "handler",
        "message_rate",
        "2500",
        "-1 = no limit. The limit counts deliveries (one per subscriber of each item), not \
         publishes: 1,000 clients × 1,000 events/s over 101 subjects is ≈ 9,900 deliveries/s, so \
         at 2,500/s they wait in the handler's rate limiter (batches of 63 every 25 ms), seconds \
         late however idle the CPU, until its high-water mark drops them",
    ),
    (
        "handler",
        "message_hwm",
        "25000",
        "deliveries the rate limiter may hold per route before it drops them (with a warning); \
         one publish request (up to 256 items) × ≈ 99 subscribers per channel at 10,000 clients \
         enqueues up to ≈ 25,300 at once",
    ),
    (
        "runner",
        "client_maxconn",
        "50000",
        "condure's --stream-maxconn, split over its 2 workers; 10,000 clients + headroom, one \
         descriptor each, under the 20,000 per process",
    ),
    (
        "runner",
        "log_level",
        "2",
        "warnings: info logs a line per request and per published item",
    ),
    (
        "runner",
        "services",
        "condure,pushpin-proxy,pushpin-handler",
        "zurl, the proxy's HTTP client to the backend, started by the runner on its own sockets",
    ),
];

impl Conf {
    /// Debian's defaults (`/etc/pushpin/pushpin.conf` of 1.36.0-2) with the tuned settings,
    /// every port and socket of this instance's own, then `BENCH_PUSHPIN_SET`.
    fn new(dir: &Path, http_port: u16, publish_port: u16, maxconn: usize) -> Conf {
        let d = dir.display();
        let mut conf = Conf {
            sections: BTreeMap::new(),
        };
        for (key, value) in [
            ("include", "{libdir}/internal.conf".to_owned()),
            ("rundir", format!("{d}/run")),
            ("ipc_prefix", "pushpin-".to_owned()),
            ("port_offset", "0".to_owned()),
            ("stats_connection_ttl", "120".to_owned()),
        ] {
            conf.set("global", key, &value);
        }
        for (key, value) in [
            (
                "services",
                "condure,zurl,pushpin-proxy,pushpin-handler".to_owned(),
            ),
            ("http_port", format!("127.0.0.1:{http_port}")),
            ("logdir", format!("{d}/log")),
            ("log_level", "1".to_owned()),
            ("client_buffer_size", "8192".to_owned()),
            ("client_maxconn", maxconn.to_string()),
            ("condure_bin", "condure".to_owned()),
            ("zurl_bin", "zurl".to_owned()),
        ] {
            conf.set("runner", key, &value);
        }
        for (key, value) in [
            ("routesfile", "routes"),
            ("debug", "false"),
            ("auto_cross_origin", "false"),
            ("accept_x_forwarded_protocol", "false"),
            ("set_x_forwarded_protocol", "proto-only"),
            ("accept_pushpin_route", "false"),
            ("log_from", "false"),
            ("log_user_agent", "false"),
            ("sig_iss", "pushpin"),
            ("sig_key", "changeme"),
            ("updates_check", "off"),
            // The runner's zurl, not a system one (internal.conf: /var/run/zurl).
            ("zurl_out_specs", "ipc://{rundir}/{ipc_prefix}zurl-in"),
            (
                "zurl_out_stream_specs",
                "ipc://{rundir}/{ipc_prefix}zurl-in-stream",
            ),
            ("zurl_in_specs", "ipc://{rundir}/{ipc_prefix}zurl-out"),
        ] {
            conf.set("proxy", key, value);
        }
        for (key, value) in [
            (
                "push_in_spec",
                "ipc://{rundir}/{ipc_prefix}push-in".to_owned(),
            ),
            (
                "push_in_sub_specs",
                "ipc://{rundir}/{ipc_prefix}push-in-sub".to_owned(),
            ),
            ("push_in_sub_connect", "false".to_owned()),
            ("push_in_http_addr", "127.0.0.1".to_owned()),
            ("push_in_http_port", publish_port.to_string()),
            ("push_in_http_max_headers_size", "10000".to_owned()),
            ("push_in_http_max_body_size", "1000000".to_owned()),
            ("stats_spec", "ipc://{rundir}/{ipc_prefix}stats".to_owned()),
            (
                "command_spec",
                "ipc://{rundir}/{ipc_prefix}command".to_owned(),
            ),
            ("message_rate", "-1".to_owned()),
            ("message_hwm", "1000000".to_owned()),
            ("message_wait", "5000".to_owned()),
            ("id_cache_ttl", "60".to_owned()),
            ("connection_subscription_max", "20".to_owned()),
            ("subscription_linger", "60".to_owned()),
            ("stats_subscription_ttl", "60".to_owned()),
            ("stats_report_interval", "10".to_owned()),
            ("stats_format", "tnetstring".to_owned()),
        ] {
            conf.set("handler", key, &value);
        }
        for (section, key, value) in overrides() {
            conf.set(section, &key, &value);
        }
        conf
    }

    fn set(&mut self, section: &'static str, key: &str, value: &str) {
        let keys = self.sections.entry(section).or_default();
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => keys.push((key.to_owned(), value.to_owned())),
        }
    }

    fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(section)?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for section in ["global", "runner", "proxy", "handler"] {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in self.sections.get(section).into_iter().flatten() {
                out.push_str(&format!("{k}={v}\n"));
            }
            out.push('\n');
        }
        out
    }
}

/// `BENCH_PUSHPIN_SET=section/key=value;…` (e.g. `handler/message_rate=2500` to see Debian's
/// limit at work); exits with status 2 on an entry it cannot read.
fn overrides() -> Vec<(&'static str, String, String)> {
    let Ok(value) = std::env::var(OVERRIDES_VAR) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(path, v)| {
            let (section, key) = path.trim().split_once('/')?;
            let section = ["global", "runner", "proxy", "handler"]
                .into_iter()
                .find(|s| *s == section)?;
            (!key.is_empty()).then(|| (section, key.to_owned(), v.trim().to_owned()))
        });
        match parsed {
            Some(o) => out.push(o),
            None => {
                eprintln!(
                    "{OVERRIDES_VAR}: cannot read '{entry}' (want section/key=value, section one of global, runner, proxy, handler)"
                );
                std::process::exit(2);
            }
        }
    }
    out
}

/// The lines printed under the sweep table: versions, the settings used and why, the wiring.
pub fn settings_note(max_clients: usize) -> String {
    let dir = Path::new("<tmp>");
    let conf = Conf::new(dir, 0, 0, maxconn_for(max_clients));
    let tuned: Vec<String> = TUNED
        .iter()
        .map(|(section, key, debian, why)| {
            format!(
                "- {section}/{key}={} (Debian: {debian}) — {why}",
                conf.get(section, key).unwrap_or("unset")
            )
        })
        .collect();
    let overridden: Vec<String> = overrides()
        .iter()
        .map(|(s, k, v)| format!("{s}/{k}={v}"))
        .collect();
    format!(
        "pushpin rows: {} under its runner with {} and {}; their relay columns hold the sum over the runner, condure, zurl, pushpin-proxy and pushpin-handler. Settings changed from Debian's /etc/pushpin/pushpin.conf{}:\n{}\n- handler/message_block_size unset (it only weighs deliveries by size, for the limiter and the stats); every port and socket the row's own; the rest as Debian's.\nFed by one JetStream ordered consumer over the stream, its messages POSTed in stream order to the handler's /publish/ (one request at a time, up to {FEED_BATCH} items each) as the relay's own SSE frames, id = stream sequence, prev-id = the subject's previous one; the GRIP backend holds each stream reliably (Grip-Channel prev-id, Grip-Link rel=next, Grip-Last honoured; a client resuming with Last-Event-ID gets what it missed from JetStream); backend and feeder run in the benchmark process.",
        version_of("pushpin"),
        version_of("condure"),
        version_of("zurl"),
        if overridden.is_empty() {
            String::new()
        } else {
            format!(" ({OVERRIDES_VAR}: {})", overridden.join(", "))
        },
        tuned.join("\n"),
    )
}

/// client_maxconn for a row of `clients`: at least 12,000 (10,000 clients and headroom).
fn maxconn_for(clients: usize) -> usize {
    (clients + clients / 5).max(12_000)
}

/// CPU seconds by process name.
type CpuByProcess = Vec<(String, f64)>;

/// A running Pushpin (its runner and the services the runner started).
pub struct Pushpin {
    runner: Proc,
    /// (pid, process name) of the services the runner started.
    services: Vec<(u32, String)>,
    http: SocketAddr,
    publish_url: String,
    dir: tempfile::TempDir,
    /// The backend's counts (its link requests tell when Pushpin has settled).
    backend: Arc<BackendCounts>,
    /// How long `settle` waited, and the link requests until then.
    settled: std::sync::Mutex<Option<(f64, u64)>>,
    /// When `settle` returned, and every process's CPU seconds then.
    load_start: std::sync::Mutex<Option<(Instant, CpuByProcess)>>,
}

impl Server for Pushpin {
    fn addr(&self) -> SocketAddr {
        self.http
    }

    fn cpu_seconds(&self) -> f64 {
        self.pids().map(cpu_seconds_of).sum()
    }

    fn rss_mib(&self) -> f64 {
        self.pids().map(rss_mib_of).sum()
    }

    /// The handler re-checks the connections of every channel it newly subscribed to 1 s later
    /// by fetching their `Grip-Link` (engine.cpp: `SUBSCRIBED_DELAY`, then `updateSessions`),
    /// at most 10 batches of up to 100 connections per second (its update limiter), and holds
    /// back what is published to a connection until its turn. The clients all connecting at
    /// once made ~100 new channels: wait until those link requests are over (no new one for a
    /// second), as a running Pushpin would be before such a load.
    async fn settle(&self) {
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut links = self.backend.links.load(Ordering::Relaxed);
        while started.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.backend.links.load(Ordering::Relaxed);
            if now == links {
                break;
            }
            links = now;
        }
        *self.settled.lock().expect("lock") = Some((started.elapsed().as_secs_f64(), links));
        *self.load_start.lock().expect("lock") = Some((Instant::now(), self.cpu_by_process()));
    }
}

/// (parent pid, name) of process `pid`.
fn stat_of(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, name))
}

fn children_of(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (ppid, name) = stat_of(pid)?;
            (ppid == parent).then_some((pid, name))
        })
        .collect()
}

impl Pushpin {
    /// Starts Pushpin in front of the GRIP backend at `backend`, sized for `clients`, and waits
    /// until a held stream gets what is published to its channel.
    pub async fn start(backend: &GripBackend, clients: usize) -> Pushpin {
        let dir = tempfile::tempdir().expect("tmp");
        let (http_port, publish_port) = (free_port(), free_port());
        let conf = Conf::new(dir.path(), http_port, publish_port, maxconn_for(clients));
        let conf_path = dir.path().join("pushpin.conf");
        std::fs::write(&conf_path, conf.render()).expect("write pushpin.conf");
        std::fs::write(dir.path().join("routes"), format!("* {}\n", backend.addr)).expect("routes");
        let log = std::fs::File::create(dir.path().join("runner.log")).expect("runner.log");
        let child = Command::new("pushpin")
            .arg("--config")
            .arg(&conf_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pushpin (the runner)");
        let pid = child.id().expect("pid");
        let mut pushpin = Pushpin {
            runner: Proc { child, pid },
            services: Vec::new(),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            publish_url: format!("http://127.0.0.1:{publish_port}/publish/"),
            dir,
            backend: backend.counts.clone(),
            settled: std::sync::Mutex::new(None),
            load_start: std::sync::Mutex::new(None),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let children = children_of(pid);
            if SERVICES
                .iter()
                .all(|s| children.iter().any(|(_, n)| n == s))
            {
                pushpin.services = children;
                break;
            }
            if Instant::now() > deadline || !pushpin.runner.alive() {
                pushpin.fail("its services did not all start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pushpin.wait_ready(deadline).await;
        pushpin
    }

    /// CPU seconds so far of the runner and each service.
    fn cpu_by_process(&self) -> CpuByProcess {
        std::iter::once((self.runner.pid, "pushpin".to_owned()))
            .chain(self.services.iter().cloned())
            .map(|(pid, name)| (name, cpu_seconds_of(pid)))
            .collect()
    }

    /// Since `settle` returned: the seconds, and each process's CPU seconds, busiest first.
    fn cpu_since_settled(&self) -> Option<(f64, CpuByProcess)> {
        let (at, before) = self.load_start.lock().expect("lock").clone()?;
        let mut used: CpuByProcess = self
            .cpu_by_process()
            .into_iter()
            .zip(before)
            .map(|((name, now), (_, then))| (name, now - then))
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        Some((at.elapsed().as_secs_f64(), used))
    }

    fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.runner.pid).chain(self.services.iter().map(|(pid, _)| *pid))
    }

    pub fn publish_url(&self) -> &str {
        &self.publish_url
    }

    /// A stream held through the proxy and the backend gets an item published to its channel.
    async fn wait_ready(&mut self, deadline: Instant) {
        let http = reqwest::Client::new();
        let probe = format!("http://{}/probe", self.http);
        let mut n = 0u64;
        loop {
            if Instant::now() > deadline || !self.runner.alive() {
                self.fail("a held stream did not get a published item within 30 s");
            }
            let mut response = match http.get(&probe).send().await {
                Ok(r) if r.status().is_success() => r,
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            for _ in 0..10 {
                n += 1;
                let item = serde_json::json!({"items": [{
                    "channel": "probe",
                    "id": format!("probe-{n}"),
                    "formats": {"http-stream": {"content": ": probe\n\n"}},
                }]});
                http.post(&self.publish_url).json(&item).send().await.ok();
                if let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(Duration::from_millis(200), response.chunk()).await
                {
                    if chunk.windows(5).any(|w| w == b"probe") {
                        return;
                    }
                }
            }
        }
    }

    /// Panics with the end of every log of this instance.
    fn fail(&self, what: &str) -> ! {
        let mut logs = String::new();
        let mut files = vec![self.dir.path().join("runner.log")];
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("log")) {
            files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            logs.push_str(&format!(
                "--- {}\n{}\n",
                file.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        panic!("Pushpin did not start: {what}\n{logs}");
    }

    /// Warnings and errors the services logged (log_level 1 logs nothing else), e.g. the
    /// handler's "exceeded publish hwm … dropping message": (count, service and message with
    /// timestamps and ids left out), most frequent first.
    pub fn logged_warnings(&self) -> Vec<(usize, String)> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("log")) else {
            return Vec::new();
        };
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for entry in entries.filter_map(Result::ok) {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let service = entry.file_name().to_string_lossy().replace(".log", "");
            for line in text
                .lines()
                .filter(|l| l.starts_with("[WARN") || l.starts_with("[ERR"))
            {
                // "[WARN] 2026-11-23 21:14:08.370 message": drop the date and the time.
                let mut words = line.split(' ');
                let level = words.next().unwrap_or_default();
                let message: Vec<&str> = words
                    .skip(2)
                    .map(|w| if w.starts_with("id=") { "id=…" } else { w })
                    .collect();
                *kinds
                    .entry(format!("{service} {level} {}", message.join(" ")))
                    .or_default() += 1;
            }
        }
        let mut out: Vec<(usize, String)> = kinds.into_iter().map(|(k, n)| (n, k)).collect();
        out.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        out
    }

    /// SIGTERM to the runner (which stops its services), then SIGKILL to whatever of them is
    /// still there after 10 s.
    pub async fn stop(mut self) {
        // SAFETY: kill(2) on the runner's pid, which this benchmark spawned and has not reaped.
        unsafe {
            libc::kill(self.runner.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), self.runner.child.wait())
            .await
            .is_err()
        {
            self.runner.kill().await;
        }
        self.kill_services();
        if std::env::var_os(KEEP_VAR).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "  [pushpin] configuration and logs kept in {}",
                self.dir.path().display()
            );
        }
    }

    /// SIGKILL to every service still running under the same pid and name.
    fn kill_services(&mut self) {
        for (pid, name) in self.services.drain(..) {
            if stat_of(pid).is_some_and(|(_, n)| n == name) {
                // SAFETY: kill(2) on a pid the runner started for this instance, checked to
                // still be that process.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

impl Drop for Pushpin {
    fn drop(&mut self) {
        // After a panic: the runner is killed on drop, its services would be left.
        self.kill_services();
    }
}

/// The GRIP backend: answers an event stream request with what the client missed of its
/// subject and the instruction to hold it on the channel of that subject, reliably: the channel
/// with `prev-id` (the stream sequence of the last event the response carries, or of the last
/// the client had), and a `Grip-Link` (rel=next) Pushpin fetches when a published item's
/// `prev-id` does not follow the connection's, or after 120 s. That is Pushpin's way to exact
/// delivery (its "reliability" docs); the feeder publishes every item with the sequence of the
/// subject's previous message as its `prev-id`.
///
/// Where a stream starts: after the `last-id` of Pushpin's `Grip-Last` (Pushpin following the
/// link: the last item the connection got), else after the link's `?after=N`, else after the
/// client's `Last-Event-ID`, else after the subject's last message now (a new client gets what
/// comes next).
pub struct GripBackend {
    pub addr: SocketAddr,
    pub counts: Arc<BackendCounts>,
    task: tokio::task::JoinHandle<()>,
}

/// What the backend answered.
#[derive(Default)]
pub struct BackendCounts {
    /// Requests from Pushpin following a link (they carry `Grip-Last`).
    pub links: AtomicU64,
    /// Requests from clients resuming with `Last-Event-ID`.
    pub resumes: AtomicU64,
    /// Events sent in response bodies (what connections missed).
    pub replayed: AtomicU64,
}

#[derive(Clone)]
struct Backend {
    js: async_nats::jetstream::stream::Stream,
    counts: Arc<BackendCounts>,
}

impl GripBackend {
    pub async fn start(nats_url: &str) -> GripBackend {
        use axum::extract::{OriginalUri, Path as UrlPath, Query, State};
        use axum::http::HeaderMap;
        use axum::routing::get;
        type Params = Query<HashMap<String, String>>;
        let client = async_nats::connect(nats_url)
            .await
            .expect("backend connect");
        let name = sse_relay::jetstream::stream_definition().name.clone();
        let js = async_nats::jetstream::new(client)
            .get_stream(name)
            .await
            .expect("backend: stream");
        let counts = Arc::new(BackendCounts::default());
        let app = axum::Router::new()
            .route(
                "/v1/deployments/{id}/events",
                get(
                    |State(b): State<Backend>,
                     UrlPath(id): UrlPath<String>,
                     OriginalUri(uri): OriginalUri,
                     Query(q): Params,
                     headers: HeaderMap| async move {
                        b.hold(format!("deploy.{id}"), uri.path(), &q, &headers)
                            .await
                    },
                ),
            )
            .route(
                "/v1/pavilions/{id}/events",
                get(
                    |State(b): State<Backend>,
                     UrlPath(id): UrlPath<String>,
                     OriginalUri(uri): OriginalUri,
                     Query(q): Params,
                     headers: HeaderMap| async move {
                        b.hold(format!("pavilion.{id}"), uri.path(), &q, &headers)
                            .await
                    },
                ),
            )
            // Start-up check: a plain hold on a channel of its own.
            .route(
                "/probe",
                get(|| async {
                    grip_response(
                        &[
                            ("grip-hold", "stream".to_owned()),
                            ("grip-channel", "probe".to_owned()),
                        ],
                        Vec::new(),
                    )
                }),
            )
            .with_state(Backend {
                js,
                counts: counts.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind GRIP backend");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        GripBackend { addr, counts, task }
    }
}

impl Drop for GripBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// The answer to an event stream request (see `GripBackend`); 503 when JetStream cannot
    /// say.
    async fn hold(
        &self,
        channel: String,
        path: &str,
        query: &HashMap<String, String>,
        headers: &axum::http::HeaderMap,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        // Pushpin following the link says where the connection is in `Grip-Last`, which
        // supersedes the link's query.
        let from_pushpin = headers
            .get_all("grip-last")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let (name, params) = v.split_once(';')?;
                (name.trim() == channel).then_some(())?;
                params
                    .split(';')
                    .find_map(|p| p.trim().strip_prefix("last-id="))?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        let from_client = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if headers.contains_key("grip-last") {
            self.counts.links.fetch_add(1, Ordering::Relaxed);
        } else if from_client.is_some() {
            self.counts.resumes.fetch_add(1, Ordering::Relaxed);
        }
        let after = from_pushpin
            .or_else(|| query.get("after").and_then(|v| v.parse::<u64>().ok()))
            .or(from_client);
        let missed = tokio::time::timeout(
            Duration::from_secs(10),
            missed_events(&self.js, &channel, after),
        )
        .await
        .ok()
        .flatten();
        let Some((last, count, body)) = missed else {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "JetStream unavailable",
            )
                .into_response();
        };
        self.counts.replayed.fetch_add(count, Ordering::Relaxed);
        grip_response(
            &[
                ("grip-hold", "stream".to_owned()),
                ("grip-channel", format!("{channel}; prev-id={last}")),
                ("grip-link", format!("<{path}?after={last}>; rel=next")),
            ],
            body,
        )
    }
}

/// The frames of `subject`'s messages after `after` (after its last message now when None):
/// the sequence of the last one (`after` itself when there are none), their count, the frames.
/// None on a JetStream error.
async fn missed_events(
    js: &async_nats::jetstream::stream::Stream,
    subject: &str,
    after: Option<u64>,
) -> Option<(u64, u64, Vec<u8>)> {
    use async_nats::jetstream::stream::DirectGetErrorKind;
    let Some(mut last) = after else {
        return match js.direct_get_last_for_subject(subject).await {
            Ok(message) => Some((message.sequence, 0, Vec::new())),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Some((0, 0, Vec::new())),
            Err(_) => None,
        };
    };
    let (mut count, mut body) = (0, Vec::new());
    loop {
        match js
            .direct_get_next_for_subject(subject, Some(last + 1))
            .await
        {
            Ok(message) => {
                last = message.sequence;
                count += 1;
                body.extend_from_slice(&sse_relay::sse::event_frame(
                    last,
                    sse_relay::sse::DEFAULT_EVENT,
                    &message.payload,
                ));
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Some((last, count, body)),
            Err(_) => return None,
        }
    }
}

fn grip_response(grip: &[(&'static str, String)], body: Vec<u8>) -> axum::response::Response {
    use axum::http::{header, HeaderName, HeaderValue};
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in grip {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("GRIP header"),
        );
    }
    response
}

/// What the feeder did.
#[derive(Default)]
pub struct Fed {
    pub items: u64,
    pub requests: u64,
    pub failed_requests: u64,
    pub consumer_errors: u64,
}

/// Follows the stream and publishes every message to Pushpin (see the module comment).
pub struct Feeder {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Fed>,
}

impl Feeder {
    /// Starts following the stream from its first message (the row's stream is fresh).
    pub async fn start(nats_url: &str, publish_url: &str) -> Feeder {
        let client = async_nats::connect(nats_url).await.expect("feeder connect");
        let name = sse_relay::jetstream::stream_definition().name.clone();
        let stream = async_nats::jetstream::new(client)
            .get_stream(name)
            .await
            .expect("feeder: stream");
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("feeder: ordered consumer");
        let mut messages = consumer.messages().await.expect("feeder: messages");
        let stop = CancellationToken::new();
        let http = reqwest::Client::new();
        let url = publish_url.to_owned();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut fed = Fed::default();
                // Each subject's last sequence: the prev-id of its next item.
                let mut last_of: HashMap<String, u64> = HashMap::new();
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => break,
                        next = messages.next() => next,
                    };
                    let Some(first) = next else { break };
                    let mut batch = Vec::new();
                    let mut pending = Some(first);
                    while let Some(next) = pending.take() {
                        match next {
                            Ok(message) => {
                                batch.extend(publish_item(&message, &mut last_of));
                            }
                            Err(_) => fed.consumer_errors += 1,
                        }
                        if batch.len() < FEED_BATCH {
                            pending = messages.next().now_or_never().flatten();
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let count = batch.len() as u64;
                    let body =
                        serde_json::to_vec(&serde_json::json!({ "items": batch })).expect("json");
                    // In order: this batch until it is accepted, then the next.
                    loop {
                        fed.requests += 1;
                        let sent = http
                            .post(&url)
                            .header("Content-Type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status().is_success()) {
                            break;
                        }
                        fed.failed_requests += 1;
                        if stop.is_cancelled() {
                            return fed;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    fed.items += count;
                }
                fed
            }
        });
        Feeder { stop, task }
    }

    pub async fn stop(self) -> Fed {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The publish item of a stream message: on the channel of its subject, the SSE frame the relay
/// writes for it (`id:` = the stream sequence), the item id that sequence, its prev-id the
/// sequence of the subject's previous message (0 for its first, as the backend says then).
fn publish_item(
    message: &async_nats::jetstream::Message,
    last_of: &mut HashMap<String, u64>,
) -> Option<serde_json::Value> {
    let seq = message.info().ok()?.stream_sequence;
    let frame = sse_relay::sse::event_frame(seq, sse_relay::sse::DEFAULT_EVENT, &message.payload);
    let prev = last_of
        .insert(message.subject.to_string(), seq)
        .unwrap_or(0);
    Some(serde_json::json!({
        "channel": message.subject.as_str(),
        "id": seq.to_string(),
        "prev-id": prev.to_string(),
        "formats": {"http-stream": {"content": String::from_utf8_lossy(&frame)}},
    }))
}

/// A `pushpin` row: a fresh nats-server with the stream, the GRIP backend, Pushpin and the
/// feeder; the row's clients and load as for the relay (`relay_run`). Returns the row and what
/// to note about it (the feeder's requests, anything Pushpin logged).
pub async fn pushpin_run(clients: usize, rate: u32, seconds: f64) -> (Row, String) {
    let mut nats = Nats::single().await;
    nats.create_stream().await;
    let backend = GripBackend::start(&nats.first_url()).await;
    let pushpin = Pushpin::start(&backend, clients).await;
    let feeder = Feeder::start(&nats.first_url(), pushpin.publish_url()).await;
    let row = relay_run(
        &mut nats,
        std::slice::from_ref(&pushpin),
        "pushpin".to_owned(),
        clients,
        rate,
        seconds,
        false,
    )
    .await;
    let fed = feeder.stop().await;
    let warnings = pushpin.logged_warnings();
    let settled = pushpin.settled.lock().expect("lock").take();
    let cpu = pushpin.cpu_since_settled();
    pushpin.stop().await;
    let counts = &backend.counts;
    let (links, resumes, replayed) = (
        counts.links.load(Ordering::Relaxed),
        counts.resumes.load(Ordering::Relaxed),
        counts.replayed.load(Ordering::Relaxed),
    );
    drop(backend);
    nats.stop().await;
    let requests = fed.requests - fed.failed_requests;
    let cpu = cpu.map_or_else(String::new, |(seconds, used)| {
        let used: Vec<String> = used
            .iter()
            .map(|(name, s)| format!("{name} {s:.1} s ({:.0} %)", s / seconds * 100.0))
            .collect();
        format!(
            "; Pushpin's CPU over the {seconds:.1} s from then to the last delivery: {}",
            used.join(", ")
        )
    });
    let mut note = format!(
        "pushpin C={clients} R={rate}: after the ramp, {} for Pushpin's link requests on its new channels ({} by then){cpu}; {} events published to Pushpin in {requests} requests ({:.1} items each){}{}; the backend answered {links} link requests and {resumes} clients resuming with Last-Event-ID, {replayed} events sent in answers; client streams reopened (after Pushpin ended them): {}; Pushpin logged {} warnings/errors{}",
        settled.map_or_else(|| "no wait".to_owned(), |(s, _)| format!("{s:.1} s waited")),
        settled.map_or(0, |(_, l)| l),
        fed.items,
        fed.items as f64 / requests.max(1) as f64,
        if fed.failed_requests > 0 {
            format!(", {} requests failed and were retried", fed.failed_requests)
        } else {
            String::new()
        },
        if fed.consumer_errors > 0 {
            format!(", {} ordered-consumer errors", fed.consumer_errors)
        } else {
            String::new()
        },
        row.reopened,
        warnings.iter().map(|(n, _)| n).sum::<usize>(),
        if warnings.is_empty() { "" } else { ":" }
    );
    for (n, what) in &warnings {
        note.push_str(&format!("\n    {n} × {what}"));
    }
    (row, note)
}
