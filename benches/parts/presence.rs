//! The `presence` part of `make bench` (`docs/api.md` §11): what presence costs a replica and
//! NATS. Per mode, the sweep's row of C clients over the 101 subjects at R events/s twice — with
//! `RELAY_PRESENCE=false` and with presence on (every 5 s) — and, beside the row, every write the
//! presence bucket received during it, counted by a NATS subscriber: messages per second over the
//! row, the most writes one key took against the intervals elapsed (the promise: at most one
//! per interval), and the bound
//! replicas × subjects that changed ÷ interval. Then a reconnect storm of the same clients with
//! presence on, counted the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::report::{Report, Settings};
use super::rows::{fresh_row_watched, Load, Row};
use super::storm::{storm_run, StormKind};
use super::traffic::SUBJECTS;

/// The relay's default `RELAY_PRESENCE_INTERVAL`, which the rows run with.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// The part: per mode, the row with presence off and on, then the reconnect storm; the writes
/// each saw.
pub async fn run(settings: &Settings, report: &mut Report) {
    let seconds = settings.seconds;
    let (c, rate) = if settings.quick {
        (500, 200)
    } else {
        (10_000, 1000)
    };
    report.emit(String::new());
    report.emit(format!("Presence: per mode, {c} clients over the {SUBJECTS} subjects of one replica at {rate} events/s ({seconds} s), with RELAY_PRESENCE=false and with presence on (RELAY_PRESENCE_INTERVAL {INTERVAL:?}); then a reconnect storm of the same clients (all dropped at once, back jittered over 3 s) with presence on. A NATS subscriber on the bucket counts every presence write from the relay's start to the row's end (the ramp, in which every subject changes, included).\n"));
    report.emit(Row::header());
    let mut traffic = Vec::new();
    for &mode in &settings.modes {
        for on in [false, true] {
            let env: Vec<(&str, String)> = if on {
                Vec::new()
            } else {
                vec![("RELAY_PRESENCE", "false".to_owned())]
            };
            let label = format!("{mode}, presence {}", if on { "on" } else { "off" });
            let (row, seen) = fresh_row_watched(
                mode,
                label,
                &env,
                Load::default_subjects(c, rate, seconds),
                async |nats_url: &str| PresenceTap::start(nats_url).await,
                PresenceTap::finish,
            )
            .await;
            report.emit(row.line());
            report.tally.add("presence", row.lost, row.duplicated);
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
        report
            .tally
            .add("presence (storm)", storm.lost, storm.duplicated);
        traffic.push(storm.presence.line("reconnect storm", mode, c, 1, SUBJECTS));
    }
    report.emit(String::new());
    report.emit(PresenceTraffic::header());
    for line in traffic {
        report.emit(line);
    }
}

/// Every write to the presence bucket while it runs: the key and when it arrived.
pub struct PresenceTap {
    writes: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    started: Instant,
}

/// What a tap saw.
pub struct PresenceTraffic {
    pub messages: usize,
    pub seconds: f64,
    /// Distinct keys written (replica × subject, and keep-alives).
    pub keys: usize,
    /// The most writes of one key, and the relay's ticks while the tap listened: at most one
    /// write per key per tick means the first is at most the second.
    pub most_writes_of_a_key: usize,
    pub ticks: usize,
}

impl PresenceTap {
    /// Subscribes to the bucket's subjects on `nats_url` (before the relay writes anything). The
    /// subscriber runs on a thread and runtime of its own: the clients' runtime is saturated in
    /// the heaviest rows, and arrival times taken there would bunch writes together.
    pub async fn start(nats_url: &str) -> PresenceTap {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let url = nats_url.to_owned();
        let recorded = writes.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tap runtime");
            runtime.block_on(async move {
                let client = async_nats::connect(url).await.expect("tap connects");
                let mut subscription = client
                    .subscribe("$KV.DEPLOY_EVENTS_presence.>")
                    .await
                    .expect("tap subscribes");
                client.flush().await.expect("tap flush");
                let _ = subscribed.send(());
                let mut stopped = std::pin::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        message = subscription.next() => match message {
                            Some(message) => recorded
                                .lock()
                                .expect("tap")
                                .push((message.subject.to_string(), Instant::now())),
                            None => return,
                        },
                    }
                }
            });
        });
        ready.await.expect("tap subscribed");
        PresenceTap {
            writes,
            stop,
            thread,
            started: Instant::now(),
        }
    }

    /// Stops and reports.
    pub fn finish(self) -> PresenceTraffic {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let seconds = self.started.elapsed().as_secs_f64();
        let writes = self.writes.lock().expect("tap").clone();
        let mut by_key: HashMap<String, Vec<Instant>> = HashMap::new();
        for (key, at) in writes.iter() {
            by_key.entry(key.clone()).or_default().push(*at);
        }
        // The promise is one write per key per tick at most: a key written n times took at
        // least n - 1 intervals. (Arrival times of two writes can come closer than an interval
        // when the relay is saturated and its sends queue; the count cannot exceed the ticks.)
        let most_writes_of_a_key = by_key.values().map(Vec::len).max().unwrap_or(0);
        let ticks = (seconds / INTERVAL.as_secs_f64()).floor() as usize + 1;
        PresenceTraffic {
            messages: writes.len(),
            seconds,
            keys: by_key.len(),
            most_writes_of_a_key,
            ticks,
        }
    }
}

impl PresenceTraffic {
    pub fn header() -> String {
        "| presence | mode | clients | replicas | presence msgs | over s | msgs/s | keys | most writes of one key | intervals elapsed | bound: replicas × subjects ÷ interval, msgs/s |\n|---|---|---|---|---|---|---|---|---|---|---|".to_owned()
    }

    pub fn line(
        &self,
        what: &str,
        mode: &str,
        clients: usize,
        replicas: usize,
        subjects: usize,
    ) -> String {
        format!(
            "| {what} | {mode} | {clients} | {replicas} | {} | {:.1} | {:.2} | {} | {} | {} | {:.1} |",
            self.messages,
            self.seconds,
            self.messages as f64 / self.seconds.max(0.001),
            self.keys,
            self.most_writes_of_a_key,
            self.ticks,
            (replicas * subjects) as f64 / INTERVAL.as_secs_f64(),
        )
    }
}
