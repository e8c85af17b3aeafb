//! The `faults` part of `make bench`: a fleet that heals itself (`docs/api.md` §10), on hosts of
//! the benchmark's own — one nats-server and each relay in a network namespace of its own
//! (testkit's `TestNet`), the clients in this process behind a balancer that sends each new
//! connection to the next replica whose `/readyz` answered 200 (checked every 100 ms, as a load
//! balancer's health checks do).
//!
//! 1. Partition: C clients over 3 replicas; the path between replica 1 and NATS drops every
//!    packet (no reset) for 60 s. Reported: seconds from the cut until every one of replica 1's
//!    clients is live on another replica (a client that gets `relay.drain` waits a jittered
//!    1–3 s, as a browser does with the relay's `retry:`), lost, duplicated.
//! 2. Rebalance: after the cut heals, a 4th replica is added; every replica runs with
//!    `RELAY_MAX_CONNECTION_AGE=60s`. Reported: connections per replica one age (66 s) later and
//!    the largest deviation from the mean (target: within ±15 %).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use sse_relay_testkit as testkit;
use testkit::Relay;

use super::processes::{relay_metric, start_relay_on};
use super::report::{Report, Settings};
use super::sse_client::Dialer;
use super::traffic::{
    check, new_received, publish_load, sse_open, sse_read, subject_name, wait_every_event,
    K_DEPLOYMENTS,
};

/// How long the path is cut.
const CUT_FOR: Duration = Duration::from_secs(60);
/// `RELAY_MAX_CONNECTION_AGE` of every replica here, and the wait for one age (+10 %).
const AGE: &str = "60s";
const ONE_AGE: Duration = Duration::from_secs(66);
/// A client's replica before its first connection.
const NOWHERE: usize = usize::MAX;

/// The part: one row per mode.
pub async fn run(settings: &Settings, report: &mut Report) {
    let faults_clients = if settings.quick { 300 } else { 10_000 };
    let faults_rate = 100;
    report.emit(String::new());
    report.emit(format!("Faults: per mode, {faults_clients} clients over 3 relay replicas, each replica and one nats-server in a network namespace of its own (clients behind a balancer that health-checks /readyz every 100 ms; a client told relay.drain waits 1-3 s as a browser does); {faults_rate} events/s. The path between replica 1 and NATS drops every packet for 60 s (defaults: RELAY_SHED_UNREACHABLE_AFTER 15s); then, healed, a 4th replica is added and every replica renews its streams at RELAY_MAX_CONNECTION_AGE=60s.\n"));
    report.emit(Faults::header());
    for &mode in &settings.modes {
        let row = faults_run(mode, faults_clients, faults_rate).await;
        report.emit(row.line());
        report.tally.add("faults", row.lost, row.duplicated);
    }
}

/// One mode's figures.
pub struct Faults {
    pub mode: &'static str,
    pub clients: usize,
    /// Clients on the cut replica when it was cut.
    pub cut_clients: usize,
    /// Seconds from the cut until each of them was live elsewhere: the last one and the median
    /// (None: not all of them within the cut).
    pub live_elsewhere: Option<(f64, f64)>,
    pub lost: u64,
    pub duplicated: u64,
    /// Open connections per replica one age after the 4th was added.
    pub per_replica: Vec<usize>,
}

impl Faults {
    pub fn header() -> String {
        "| mode | clients | cut off | all live elsewhere after (s) | median (s) | lost | dup | connections per replica one age after adding a 4th | largest deviation from the mean |\n|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    /// The largest deviation from the mean, in % of it.
    pub fn spread_percent(&self) -> f64 {
        let mean = self.per_replica.iter().sum::<usize>() as f64 / self.per_replica.len() as f64;
        self.per_replica
            .iter()
            .map(|&c| (c as f64 - mean).abs() / mean * 100.0)
            .fold(0.0, f64::max)
    }

    pub fn line(&self) -> String {
        let (last, median) = match self.live_elsewhere {
            Some((last, median)) => (format!("{last:.1}"), format!("{median:.1}")),
            None => ("not within the cut".to_owned(), "—".to_owned()),
        };
        format!(
            "| {} | {} | {} | {last} | {median} | {} | {} | {} | {:.1} % |",
            self.mode,
            self.clients,
            self.cut_clients,
            self.lost,
            self.duplicated,
            self.per_replica
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
            self.spread_percent()
        )
    }
}

/// The replicas as the balancer sees them.
struct Fleet {
    urls: Mutex<Vec<String>>,
    ready: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl Fleet {
    /// The next ready replica, round robin.
    fn pick(&self) -> Option<(usize, String)> {
        let urls = self.urls.lock().expect("lock").clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..urls.len())
            .map(|i| (start + i) % urls.len())
            .find(|&r| self.ready[r].load(Ordering::Relaxed))
            .map(|r| (r, urls[r].clone()))
    }
}

/// Health-checks `admin` (the `/readyz` URLs, growing) every 100 ms into `fleet.ready`.
fn health_checks(
    fleet: Arc<Fleet>,
    admin: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("http client");
        while !stop.is_cancelled() {
            let urls = admin.lock().expect("lock").clone();
            let checks = urls.iter().map(|u| http.get(u).send());
            let answers = futures::future::join_all(checks).await;
            for (r, answer) in answers.into_iter().enumerate() {
                let ready = answer.is_ok_and(|a| a.status().as_u16() == 200);
                fleet.ready[r].store(ready, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn start_relay(host: &testkit::Host, nats_url: &str, mode: &str) -> Relay {
    let env = [("RELAY_MAX_CONNECTION_AGE", AGE.to_owned())];
    start_relay_on(Some(host), nats_url, 1, mode, &env).await
}

async fn open_connections(relay: &Relay) -> usize {
    let mut open = 0.0;
    for kind in ["deployment", "pavilion", "multi"] {
        open += relay_metric(relay, &format!("relay_connections{{kind=\"{kind}\"}}")).await;
    }
    open as usize
}

pub async fn faults_run(mode: &'static str, clients: usize, rate: u32) -> Faults {
    let mut net = testkit::TestNet::new();
    let nats_host = net.host("nats");
    let hosts: Vec<testkit::Host> = (1..=4).map(|i| net.host(&format!("relay-{i}"))).collect();
    let nats = testkit::Nats::start_on(&nats_host).await;
    let mut relays = Vec::new();
    for host in &hosts[..3] {
        relays.push(start_relay(host, &nats.url(), mode).await);
    }
    let fleet = Arc::new(Fleet {
        urls: Mutex::new(relays.iter().map(|r| r.url("")).collect()),
        ready: (0..4).map(|_| AtomicBool::new(false)).collect(),
        next: AtomicUsize::new(0),
    });
    let admin = Arc::new(Mutex::new(
        relays
            .iter()
            .map(|r| r.admin_url("/readyz"))
            .collect::<Vec<_>>(),
    ));
    let checks_stop = CancellationToken::new();
    let checks = health_checks(fleet.clone(), admin.clone(), checks_stop.clone());

    let run = format!("f{}", rand::rng().random::<u32>());
    let dialer = Dialer::from_source(net.gateway());
    let done = CancellationToken::new();
    let connected = Arc::new(AtomicUsize::new(0));
    // Per client: the replica it is on, and when it was live elsewhere after the cut.
    let on: Arc<Vec<AtomicUsize>> =
        Arc::new((0..clients).map(|_| AtomicUsize::new(NOWHERE)).collect());
    let cut_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let moved: Arc<Mutex<Vec<Option<f64>>>> = Arc::new(Mutex::new(vec![None; clients]));
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
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
        let (fleet, done, connected, on, cut_at, moved) = (
            fleet.clone(),
            done.clone(),
            connected.clone(),
            on.clone(),
            cut_at.clone(),
            moved.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut permit = Some(permit);
            let mut first = Some(i % 3);
            let mut was_cut = false;
            while !done.is_cancelled() {
                let target = match first.take() {
                    Some(r) => fleet
                        .urls
                        .lock()
                        .expect("lock")
                        .get(r)
                        .cloned()
                        .map(|u| (r, u)),
                    None => fleet.pick(),
                };
                let Some((replica, base)) = target else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Some(stream) = sse_open(&dialer, &format!("{base}{path}"), &rec, &done).await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                drop(permit.take());
                if on[i].swap(replica, Ordering::Relaxed) == NOWHERE {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
                if was_cut && replica != 0 {
                    was_cut = false;
                    if let Some(cut) = *cut_at.lock().expect("lock") {
                        moved.lock().expect("lock")[i].get_or_insert(cut.elapsed().as_secs_f64());
                    }
                }
                if sse_read(stream, &rec, &done).await {
                    break;
                }
                if replica == 0 && cut_at.lock().expect("lock").is_some() {
                    was_cut = true;
                }
                // A browser honours the relay's jittered retry: (RELAY_RETRY 2 s ± 50 %).
                let wait = rand::rng().random_range(1000..=3000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Publishing over the whole run: before, during and after the cut, and through the
    // rebalance.
    let publish_seconds = 5.0 + CUT_FOR.as_secs_f64() + 5.0 + ONE_AGE.as_secs_f64() + 5.0;
    let publisher = tokio::spawn({
        let (url, run) = (nats.url(), run.clone());
        async move { publish_load(&url, &run, rate, publish_seconds).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;

    let cut_clients = on.iter().filter(|r| r.load(Ordering::Relaxed) == 0).count();
    *cut_at.lock().expect("lock") = Some(Instant::now());
    net.cut(&hosts[0], nats_host.addr);
    tokio::time::sleep(CUT_FOR).await;
    net.heal(&hosts[0], nats_host.addr);
    let mut times: Vec<f64> = moved
        .lock()
        .expect("lock")
        .iter()
        .flatten()
        .copied()
        .collect();
    times.sort_by(f64::total_cmp);
    let live_elsewhere = (times.len() >= cut_clients && cut_clients > 0)
        .then(|| (times[times.len() - 1], times[times.len() / 2]));
    relays[0].wait_ready_status(200).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Scale-out: a 4th replica; one age later every stream has reconnected once through the
    // balancer.
    let fourth = start_relay(&hosts[3], &nats.url(), mode).await;
    admin
        .lock()
        .expect("lock")
        .push(fourth.admin_url("/readyz"));
    fleet.urls.lock().expect("lock").push(fourth.url(""));
    relays.push(fourth);
    tokio::time::sleep(ONE_AGE).await;
    let mut per_replica = Vec::new();
    for relay in &relays {
        per_replica.push(open_connections(relay).await);
    }

    let expected = publisher.await.expect("publisher");
    wait_every_event(&expected, &subject_of, &received).await;
    done.cancel();
    for t in tasks {
        t.await.ok();
    }
    checks_stop.cancel();
    checks.await.ok();
    let outcome = check(&expected, &subject_of, &received);
    for relay in relays {
        relay.kill().await;
    }
    drop(nats);
    Faults {
        mode,
        clients,
        cut_clients,
        live_elsewhere,
        lost: outcome.lost,
        duplicated: outcome.duplicated,
        per_replica,
    }
}
