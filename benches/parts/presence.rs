//! The `presence` part of `make bench` (`docs/api.md` §11): what presence costs a replica and
//! NATS. Per mode, the sweep's row of C clients over the 101 subjects at R events/s twice — with
//! `RELAY_PRESENCE=false` and with presence on (every 5 s) — and, beside the row, every write the
//! presence bucket received during it, counted by a NATS subscriber: messages per second over the
//! row, the most writes one key took within one interval (the promise: 1), and the bound
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
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

/// What a tap saw.
pub struct PresenceTraffic {
    pub messages: usize,
    pub seconds: f64,
    /// Distinct keys written (replica × subject, and keep-alives).
    pub keys: usize,
    /// The most writes of one key within any one interval.
    pub max_per_key_interval: usize,
}

impl PresenceTap {
    /// Subscribes to the bucket's subjects on `nats_url` (before the relay writes anything).
    pub async fn start(nats_url: &str) -> PresenceTap {
        let client = async_nats::connect(nats_url).await.expect("tap connects");
        let mut subscription = client
            .subscribe("$KV.DEPLOY_EVENTS_presence.>")
            .await
            .expect("tap subscribes");
        client.flush().await.expect("tap flush");
        let writes = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let writes = writes.clone();
            async move {
                let _client = client;
                while let Some(message) = subscription.next().await {
                    let key = message.subject.to_string();
                    writes.lock().expect("tap").push((key, Instant::now()));
                }
            }
        });
        PresenceTap {
            writes,
            task,
            started: Instant::now(),
        }
    }

    /// Stops and reports.
    pub fn finish(self) -> PresenceTraffic {
        self.task.abort();
        let seconds = self.started.elapsed().as_secs_f64();
        let writes = self.writes.lock().expect("tap").clone();
        let mut by_key: HashMap<String, Vec<Instant>> = HashMap::new();
        for (key, at) in writes.iter() {
            by_key.entry(key.clone()).or_default().push(*at);
        }
        // Writes of one key less than an interval apart (a little slack for delivery jitter).
        let window = INTERVAL.mul_f64(0.95);
        let max_per_key_interval = by_key
            .values()
            .map(|times| {
                let mut most = 0;
                let mut first = 0;
                for last in 0..times.len() {
                    while times[last] - times[first] >= window {
                        first += 1;
                    }
                    most = most.max(last - first + 1);
                }
                most
            })
            .max()
            .unwrap_or(0);
        PresenceTraffic {
            messages: writes.len(),
            seconds,
            keys: by_key.len(),
            max_per_key_interval,
        }
    }
}

impl PresenceTraffic {
    pub fn header() -> String {
        "| presence | mode | clients | replicas | presence msgs | over s | msgs/s | keys | most writes of one key in one interval | bound: replicas × subjects ÷ interval, msgs/s |\n|---|---|---|---|---|---|---|---|---|---|".to_owned()
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
            "| {what} | {mode} | {clients} | {replicas} | {} | {:.1} | {:.2} | {} | {} | {:.1} |",
            self.messages,
            self.seconds,
            self.messages as f64 / self.seconds.max(0.001),
            self.keys,
            self.max_per_key_interval,
            (replicas * subjects) as f64 / INTERVAL.as_secs_f64(),
        )
    }
}
