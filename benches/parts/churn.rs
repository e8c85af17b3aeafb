//! The `churn` part of `make bench`: 200 clients each dropping and resuming its connection about
//! every second while 100 events/s flow; relay RSS at start, peak and end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::processes::{consumers_created, rss_peak_sampler, start_relay, Nats};
use super::report::{Report, Settings};
use super::sse_client;
use super::traffic::{
    check, new_received, publish_load, sse_open, sse_read, subject_name, wait_every_event,
    K_DEPLOYMENTS,
};

pub async fn run(settings: &Settings, report: &mut Report) {
    let churn_clients = 200;
    let churn_rate = 100;
    let churn_seconds = if settings.quick { 10.0 } else { 30.0 };
    report.emit(String::new());
    report.emit(format!(
        "Churn: {churn_clients} clients, each dropping its connection after 0.5–1.5 s and resuming at once with its Last-Event-ID, for {churn_seconds} s while {churn_rate} events/s are published. Relay RSS at start (all connected, before the churn), peak (sampled every 100 ms) and end (all connected and caught up).\n"
    ));
    report.emit(Churn::header());
    for &mode in &settings.modes {
        let churn = churn_run(mode, churn_clients, churn_rate, churn_seconds).await;
        report.emit(churn.line());
        report.tally.add("churn", churn.lost, churn.duplicated);
    }
}

pub struct Churn {
    pub mode: &'static str,
    pub clients: usize,
    pub seconds: f64,
    pub reconnections: usize,
    pub created_relay: f64,
    pub created_server: usize,
    pub rss_start: f64,
    pub rss_peak: f64,
    pub rss_end: f64,
    pub consumers_end: Option<usize>,
    pub lost: u64,
    pub duplicated: u64,
}

impl Churn {
    pub fn header() -> String {
        "| churn | mode | clients | s | reconnections | consumers created (relay metric / server) | relay RSS MiB start | peak | end | consumers at end | lost | dup |\n|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    pub fn line(&self) -> String {
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
pub async fn churn_run(mode: &'static str, clients: usize, rate: u32, seconds: f64) -> Churn {
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
    wait_every_event(&expected, &subject_of, &received).await;
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
