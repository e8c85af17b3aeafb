//! The `stuck` part of `make bench`: what a client that stops reading costs the relay, and how
//! long the relay keeps it.
//!
//! Per mode, two rows, each on a fresh nats-server and a fresh relay run with
//! `RELAY_WRITE_TIMEOUT=10s` (default 30 s): C clients over 5 subjects, then events with 4 KiB
//! payloads published at 2,000/s, each subject getting twice the kernel's largest TCP send buffer
//! (`net.ipv4.tcp_wmem`'s max, 4 MiB by default: 10,240 events over 5.1 s). On loopback the
//! relay's socket send buffers grow to that max, so a smaller load ends up entirely in the kernel
//! of a stuck connection and the relay's writes never stall (1,000 events of 4 KiB over 5
//! subjects, 800 KiB per client, did just that: nothing shed); twice that max stalls them
//! halfway through.
//!
//! - reading: the clients read every event, as the sweep's clients do (counted in lost/dup);
//! - stuck: every client's socket gets `SO_RCVBUF` = 2 KiB before it connects, reads the
//!   response head and never reads again (not counted as lost).
//!
//! Reported: the relay's RSS right after it started (before any client), after the load — for
//! the reading row once every client has every event, for the stuck row 1 s after the last
//! publish was acknowledged — and "KiB per stuck reader beyond a reading one" = (RSS after the
//! load, stuck − RSS after the load, reading) ÷ C, and "in all" = (RSS after the load − RSS
//! before any client, stuck row) ÷ C (what a stuck connection costs, its idle cost included,
//! whatever load the reading row's clients were under); beside them, the kernel's send queue of the
//! relay's sockets to the stuck clients at that moment (`tx_queue` in `/proc/<pid>/net/tcp`),
//! per connection: memory a stuck client costs the relay's host outside the relay's RSS. Then,
//! for every stuck connection, the time from the last publish acknowledged until the relay shed
//! it: a connection counts as shed when the relay process no longer holds its socket — every
//! 100 ms the benchmark lists the socket inodes among the relay's file descriptors
//! (`/proc/<pid>/fd`) and their peers (`/proc/<pid>/net/tcp`), and a stuck client whose address
//! is no longer among them was closed by the relay at that poll. This reads neither the socket
//! nor the relay's own metrics: the stuck client's kernel cannot tell (its window is closed, and
//! the relay's FIN queues behind the data it never read), and a gauge would say what the relay's
//! bookkeeping believes, not that the socket is gone. The relay's writes stall once the socket
//! buffers are full, which can be before the last event is published, so a shed can come less
//! than `RELAY_WRITE_TIMEOUT` after the last event (or before it: negative). Shed p50 and max
//! are over the connections shed within the write timeout + 30 s after the last event.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::processes::{start_relay, Nats};
use super::report::{Report, Settings};
use super::rows::{relay_run_over, Load, Row};
use super::sse_client;
use super::traffic::{publish_padded, subject_name};

/// `RELAY_WRITE_TIMEOUT` of every relay here.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A stuck client's `SO_RCVBUF`.
const STUCK_RECV_BUFFER: u32 = 2048;
/// The load: events of `PAYLOAD_BYTES` at `RATE`/s over `SUBJECTS` subjects, each subject
/// getting `SEND_BUFFERS` × the kernel's largest TCP send buffer.
const PAYLOAD_BYTES: usize = 4096;
const RATE: u32 = 2000;
const SUBJECTS: usize = 5;
const SEND_BUFFERS: usize = 2;
/// How often the relay's sockets are listed.
const POLL_EVERY: Duration = Duration::from_millis(100);

pub async fn run(settings: &Settings, report: &mut Report) {
    let clients = if settings.quick { 50 } else { 1000 };
    let send_buffer = tcp_wmem_max();
    let events = (SEND_BUFFERS * send_buffer).div_ceil(PAYLOAD_BYTES) * SUBJECTS;
    let load = Load {
        clients,
        rate: RATE,
        // Half an event over, so the publisher's rate × seconds rounds down to `events`.
        seconds: (events as f64 + 0.5) / f64::from(RATE),
        subjects: SUBJECTS,
        payload_bytes: PAYLOAD_BYTES,
    };
    report.emit(String::new());
    report.emit(format!(
        "Stuck readers: per mode, {clients} clients over {SUBJECTS} subjects and {events} events of {} KiB published over {:.1} s ({SEND_BUFFERS} × the largest TCP send buffer, {} KiB, per subject), on a fresh nats-server and relay (RELAY_WRITE_TIMEOUT {WRITE_TIMEOUT:?}) per row: once with every client reading, once with every client stuck (SO_RCVBUF {STUCK_RECV_BUFFER} B, the response head read, then nothing). Relay RSS before any client and after the load (reading: all delivered; stuck: 1 s after the last publish, with the stuck connections still open then); KiB per stuck reader beyond a reading one = (stuck − reading, after the load) ÷ clients; in all = (stuck row after the load − before) ÷ clients; kernel send queue = what the relay's sockets to the stuck clients held then, per connection. Shed: stuck connections whose socket the relay closed (its fds, polled every {} ms), seconds from the last publish.\n",
        PAYLOAD_BYTES / 1024,
        load.seconds,
        send_buffer / 1024,
        POLL_EVERY.as_millis(),
    ));
    report.emit(Stuck::header());
    for &mode in &settings.modes {
        let env = [(
            "RELAY_WRITE_TIMEOUT",
            format!("{}s", WRITE_TIMEOUT.as_secs()),
        )];
        let mut nats = Nats::single().await;
        let relay = start_relay(&nats.url_list(), 1, mode, &env).await;
        let reading_before = relay.proc.rss_mib();
        let reading = relay_run_over(
            &mut nats,
            std::slice::from_ref(&relay),
            mode.to_owned(),
            load,
            false,
        )
        .await;
        relay.kill().await;
        nats.stop().await;
        report.tally.add("stuck", reading.lost, reading.duplicated);
        let stuck = stuck_row(mode, load, &env).await;
        report.emit(stuck.line(reading_before, &reading));
    }
}

/// What the stuck row measured.
struct Stuck {
    mode: &'static str,
    clients: usize,
    /// Stuck clients whose response head said 200.
    held: usize,
    rss_before: f64,
    rss_after: f64,
    /// Stuck connections the relay still held when `rss_after` was taken, and the bytes in
    /// their sockets' send queues then.
    open_at_sample: usize,
    send_queue_at_sample: u64,
    /// Seconds from the last publish to each shed (negative: before it).
    shed_after: Vec<f64>,
}

impl Stuck {
    fn header() -> String {
        "| stuck | mode | clients | relay RSS MiB before, reading row | after the load, reading | before, stuck row | after the load, stuck (stuck still open) | KiB per stuck reader beyond a reading one | KiB per stuck connection in all | kernel send queue KiB per stuck connection | shed / stuck | s from the last event to shed: p50 | max | readers' p99 ms | readers lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    fn line(&self, reading_before: f64, reading: &Row) -> String {
        let reading_after = reading.relay.as_ref().map_or(0.0, |r| r.rss);
        assert!(reading_after > 0.0, "no RSS for the reading row's relay");
        let beyond = (self.rss_after - reading_after) * 1024.0 / self.clients.max(1) as f64;
        let in_all = (self.rss_after - self.rss_before) * 1024.0 / self.clients.max(1) as f64;
        let send_queue =
            self.send_queue_at_sample as f64 / 1024.0 / self.open_at_sample.max(1) as f64;
        let mut shed = self.shed_after.clone();
        shed.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if shed.is_empty() {
                "—".to_owned()
            } else {
                let i = ((shed.len() as f64 - 1.0) * p).round() as usize;
                format!("{:.1}", shed[i])
            }
        };
        format!(
            "| {} stuck vs reading | {} | {} | {reading_before:.0} | {reading_after:.0} | {:.0} | {:.0} ({}) | {beyond:.1} | {in_all:.1} | {send_queue:.0} | {} / {} | {} | {} | {:.1} | {} | {} |",
            self.clients,
            self.mode,
            self.clients,
            self.rss_before,
            self.rss_after,
            self.open_at_sample,
            shed.len(),
            self.held,
            at(0.5),
            at(1.0),
            reading.p99,
            reading.lost,
            reading.duplicated,
        )
    }
}

/// The stuck row: `load.clients` stuck clients on a fresh nats-server and relay, `load`
/// published, their sockets watched until the relay has shed them all (or gave up).
async fn stuck_row(mode: &'static str, load: Load, env: &[(&str, String)]) -> Stuck {
    let nats = Nats::single().await;
    let relay = start_relay(&nats.url_list(), 1, mode, env).await;
    let rss_before = relay.proc.rss_mib();
    let run = format!("st{}", rand::rng().random::<u32>());
    let dialers = sse_client::dialers();
    // Opened 256 at a time, as the other rows ramp.
    let streams: Vec<_> = futures::stream::iter(0..load.clients)
        .map(|i| {
            let url = format!(
                "http://{}{}",
                relay.addr,
                subject_name(&run, i % load.subjects).1
            );
            let dialer = dialers[i % dialers.len()];
            async move { dialer.open_with_recv_buffer(&url, STUCK_RECV_BUFFER).await }
        })
        .buffer_unordered(256)
        .filter_map(|opened| async move { opened })
        .collect()
        .await;
    let addrs: Vec<SocketAddrV4> = streams
        .iter()
        .filter_map(|s| match s.local_addr()? {
            SocketAddr::V4(addr) => Some(addr),
            SocketAddr::V6(_) => None,
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let watch = ShedWatch::start(relay.proc.pid, &addrs);
    publish_padded(
        &nats.url_list(),
        &run,
        load.rate,
        load.seconds,
        load.subjects,
        load.payload_bytes,
    )
    .await;
    let last_event = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = relay.proc.rss_mib();
    // 0 once the process is gone: a relay that died would read as holding nothing.
    assert!(rss_after > 0.0, "the relay died during the stuck row");
    let held = peers_held_by(relay.proc.pid);
    let stuck_held = addrs.iter().filter_map(|addr| held.get(addr));
    let (open_at_sample, send_queue_at_sample) =
        stuck_held.fold((0, 0), |(n, bytes), queued| (n + 1, bytes + queued));
    let give_up = last_event + WRITE_TIMEOUT + Duration::from_secs(30);
    while watch.shed_count() < addrs.len() && Instant::now() < give_up {
        tokio::time::sleep(POLL_EVERY).await;
    }
    let shed_at = watch.stop().await;
    let shed_after = shed_at
        .values()
        .map(|&at| match at.checked_duration_since(last_event) {
            Some(after) => after.as_secs_f64(),
            None => -last_event.duration_since(at).as_secs_f64(),
        })
        .collect();
    drop(streams);
    relay.kill().await;
    nats.stop().await;
    Stuck {
        mode,
        clients: load.clients,
        held: addrs.len(),
        rss_before,
        rss_after,
        open_at_sample,
        send_queue_at_sample,
        shed_after,
    }
}

/// When the relay closed the socket of each watched client: polls the relay's sockets every
/// [`POLL_EVERY`] until stopped.
struct ShedWatch {
    shed: Arc<Mutex<HashMap<SocketAddrV4, Instant>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ShedWatch {
    fn start(relay_pid: u32, clients: &[SocketAddrV4]) -> ShedWatch {
        let shed = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let mut watched: HashSet<SocketAddrV4> = clients.iter().copied().collect();
        let task = tokio::spawn({
            let (shed, stop) = (shed.clone(), stop.clone());
            async move {
                while !watched.is_empty() {
                    let held = peers_held_by(relay_pid);
                    let now = Instant::now();
                    let gone: Vec<SocketAddrV4> = watched
                        .iter()
                        .filter(|addr| !held.contains_key(addr))
                        .copied()
                        .collect();
                    for addr in gone {
                        watched.remove(&addr);
                        shed.lock().expect("shed").insert(addr, now);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(POLL_EVERY) => {}
                    }
                }
            }
        });
        ShedWatch { shed, stop, task }
    }

    fn shed_count(&self) -> usize {
        self.shed.lock().expect("shed").len()
    }

    /// Stops polling; when each shed connection was seen gone.
    async fn stop(self) -> HashMap<SocketAddrV4, Instant> {
        self.stop.cancel();
        self.task.await.ok();
        std::mem::take(&mut *self.shed.lock().expect("shed"))
    }
}

/// The peer addresses of the IPv4 TCP sockets process `pid` has open, with the bytes in each
/// one's send queue: the inodes of its `socket:[…]` descriptors, looked up in
/// `/proc/<pid>/net/tcp` (its network namespace's).
fn peers_held_by(pid: u32) -> HashMap<SocketAddrV4, u64> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields.get(9)?.parse().ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            let (tx_queue, _) = fields.get(4)?.split_once(':')?;
            let queued = u64::from_str_radix(tx_queue, 16).ok()?;
            Some((parse_proc_addr(fields.get(2)?)?, queued))
        })
        .collect()
}

/// `net.ipv4.tcp_wmem`'s max: how far the kernel grows a TCP socket's send buffer (4 MiB when
/// it cannot be read).
fn tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|v| v.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// `0100007F:1F90` (the address as the kernel's native-endian u32 of the network-order bytes,
/// the port in host order) → 127.0.0.1:8080.
fn parse_proc_addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}
