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

/// The relay's default `RELAY_PRESENCE_INTERVAL`, which the rows run with.
pub const INTERVAL: Duration = Duration::from_secs(5);

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
