//! The `storm` part of `make bench`: a reconnect storm — every client reconnecting with its
//! `Last-Event-ID`, jittered over 3 s (`BENCH_STORM_SPREAD`), once after all clients dropped
//! their connections at once (the relay stays) and once after the relay was SIGKILLed and a new
//! one started; time until all are live again, the consumers created meanwhile (relay `/metrics`
//! and nats-server advisories). The `presence` part runs [`storm_run`] too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::presence;
use super::processes::{consumers_created, start_relay, Nats};
use super::report::{Report, Settings};
use super::sse_client;
use super::traffic::{
    check, new_received, publish_load, sse_open, sse_read, subject_name, wait_every_event,
    K_DEPLOYMENTS,
};

pub async fn run(settings: &Settings, report: &mut Report) {
    let storm_clients = if settings.quick {
        500
    } else {
        *settings.clients.iter().max().unwrap_or(&1000) as usize
    };
    let storm_rate = settings.rates[0] as u32;
    // Browsers come back spread over their jittered `retry:`; BENCH_STORM_SPREAD=0s brings
    // every client back at once.
    let spread = std::env::var("BENCH_STORM_SPREAD")
        .ok()
        .and_then(|s| humantime::parse_duration(&s).ok())
        .unwrap_or(Duration::from_secs(3));
    report.emit(String::new());
    report.emit(format!(
        "Reconnect storm: {storm_clients} clients, {storm_rate} events/s published throughout; every client back with its Last-Event-ID after a delay jittered over {spread:?}, retrying every 200 ms until live. Times from the drop (or the kill); consumers created until all are live again.\n"
    ));
    report.emit(Storm::header());
    for &mode in &settings.modes {
        for kind in [StormKind::ClientsDropped, StormKind::RelayRestarted] {
            let storm = storm_run(mode, kind, storm_clients, storm_rate, spread).await;
            report.emit(storm.line());
            report.tally.add("storm", storm.lost, storm.duplicated);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StormKind {
    /// Every client drops its connection at once; the relay stays.
    ClientsDropped,
    /// The relay is SIGKILLed and a new one started (on a new port, which the clients then use).
    RelayRestarted,
}

pub struct Storm {
    pub kind: StormKind,
    pub mode: &'static str,
    pub clients: usize,
    pub relay_back_seconds: Option<f64>,
    pub live: usize,
    pub reconnect_seconds: f64,
    pub created_relay: f64,
    pub created_server: usize,
    pub lost: u64,
    pub duplicated: u64,
    /// The presence bucket's writes from the first connection to the end.
    pub presence: presence::PresenceTraffic,
}

impl Storm {
    pub fn header() -> String {
        "| reconnect storm | mode | clients | relay back after s | all live again after s | consumers created (relay metric / server) | creations/s | lost | dup |\n|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    pub fn line(&self) -> String {
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
pub async fn storm_run(
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
    wait_every_event(&expected, &subject_of, &received).await;
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
