//! The processes of a row — nats-server(s) and relays (from the test kit) — and what the
//! benchmark measures of them: CPU, RSS, `/metrics`, consumer counts and creations.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sse_relay_testkit as testkit;
use testkit::process::rss_mib_of;
use testkit::{Echo, Proc, Relay};
use tokio_util::sync::CancellationToken;

/// The NATS side of a row, measured as a whole: one nats-server, or the 3-node cluster of the
/// scale-out part.
pub enum Nats {
    Single(Box<testkit::Nats>),
    Cluster(testkit::NatsCluster),
}

impl Nats {
    pub async fn single() -> Nats {
        Nats::Single(Box::new(testkit::Nats::start().await))
    }

    /// Three nodes from `nats/cluster/node-*.conf` on free ports.
    pub async fn cluster() -> Nats {
        Nats::Cluster(testkit::NatsCluster::start().await)
    }

    pub fn procs(&self) -> Vec<&Proc> {
        match self {
            Nats::Single(nats) => nats.proc().into_iter().collect(),
            Nats::Cluster(cluster) => cluster
                .nodes
                .iter()
                .filter_map(|n| n.proc.as_ref())
                .collect(),
        }
    }

    pub fn urls(&self) -> Vec<String> {
        match self {
            Nats::Single(nats) => vec![nats.url()],
            Nats::Cluster(cluster) => cluster.nodes.iter().map(|n| n.url()).collect(),
        }
    }

    pub fn first_url(&self) -> String {
        self.urls().swap_remove(0)
    }

    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    pub fn cpu_seconds(&self) -> f64 {
        self.procs().into_iter().map(Proc::cpu_seconds).sum()
    }

    pub fn rss_mib(&self) -> f64 {
        self.procs().into_iter().map(Proc::rss_mib).sum()
    }

    /// The URLs of the nodes still running (a scale-out run kills one).
    pub fn live_urls(&mut self) -> Vec<String> {
        match self {
            Nats::Single(nats) => vec![nats.url()],
            Nats::Cluster(cluster) => cluster
                .nodes
                .iter_mut()
                .filter_map(|n| n.proc.as_mut().is_some_and(Proc::alive).then(|| n.url()))
                .collect(),
        }
    }

    /// SIGKILLs the cluster node `name` (`relay-nats-2`, ...).
    pub async fn kill_node(&mut self, name: &str) {
        match self {
            Nats::Single(_) => panic!("a single server has no node {name}"),
            Nats::Cluster(cluster) => cluster.kill(name).await,
        }
    }

    /// The node a scale-out run kills: the one `BENCH_KILL_NODE` names, else (or if it says
    /// `leader`) the stream's leader at that moment — the worst case, as JetStream stores
    /// nothing until a new leader is elected.
    pub async fn node_to_kill(&mut self) -> String {
        let wanted = killed_node();
        if wanted != "leader" {
            return wanted;
        }
        self.stream_info()
            .await
            .and_then(|info| info.cluster?.leader)
            .expect("the stream has a leader")
    }

    /// The relay's stream as the ceiling's publishers need it (no relay provisions it there).
    pub async fn create_stream(&self) {
        let client = async_nats::connect(self.first_url())
            .await
            .expect("connect");
        let mut config = sse_relay::jetstream::stream_definition().clone();
        config.max_messages_per_subject = 100_000;
        async_nats::jetstream::new(client)
            .create_stream(config)
            .await
            .expect("create stream");
    }

    /// The stream's `consumer_count` as the server reports it now (None if it cannot be asked).
    pub async fn consumer_count(&mut self) -> Option<usize> {
        Some(self.stream_info().await?.state.consumer_count)
    }

    /// The stream's info from the nodes still running (None if it cannot be asked in 10 s).
    pub async fn stream_info(&mut self) -> Option<async_nats::jetstream::stream::Info> {
        let urls = self.live_urls();
        let name = sse_relay::jetstream::stream_definition().name.clone();
        tokio::time::timeout(Duration::from_secs(10), async move {
            let client = async_nats::connect(urls.as_slice()).await.ok()?;
            let stream = async_nats::jetstream::new(client)
                .get_stream(name)
                .await
                .ok()?;
            Some(stream.cached_info().clone())
        })
        .await
        .ok()
        .flatten()
    }

    /// Counts the server's consumer-created advisories from now on: every JetStream consumer
    /// created, whichever relay process created it.
    pub async fn consumer_creations(&self) -> Advisories {
        let client = async_nats::connect(self.first_url())
            .await
            .expect("connect");
        let mut sub = client
            .subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>")
            .await
            .expect("subscribe");
        client.flush().await.ok();
        let count = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let count = count.clone();
            async move {
                let _client = client;
                while sub.next().await.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Advisories { count, task }
    }

    /// SIGKILLs every node and waits for them to be gone.
    pub async fn stop(self) {
        match self {
            Nats::Single(mut nats) => nats.kill().await,
            Nats::Cluster(mut cluster) => {
                let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
                for name in names {
                    cluster.kill(&name).await;
                }
            }
        }
    }
}

pub struct Advisories {
    pub count: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Advisories {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for Advisories {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a row's clients connect to, and what the row measures of it: a relay process, or a
/// peer (all of its processes).
pub trait Server {
    fn addr(&self) -> SocketAddr;
    fn cpu_seconds(&self) -> f64;
    fn rss_mib(&self) -> f64;

    /// Returns once the server is ready for the load with every client connected (the relay at
    /// once).
    async fn settle(&self) {}
}

impl Server for Relay {
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

/// A ready relay as the benchmark runs it: limits far above the load, a deep stream, `env` on
/// top, only its warnings echoed.
pub async fn start_relay(
    nats_urls: &str,
    replicas: usize,
    mode: &str,
    env: &[(&str, String)],
) -> Relay {
    start_relay_on(None, nats_urls, replicas, mode, env).await
}

/// [`start_relay`] on `host` of a test net (loopback when none).
pub async fn start_relay_on(
    host: Option<&testkit::Host>,
    nats_urls: &str,
    replicas: usize,
    mode: &str,
    env: &[(&str, String)],
) -> Relay {
    let replicas = replicas.to_string();
    let mut all: Vec<(&str, &str)> = vec![
        ("RELAY_FANOUT", mode),
        ("RELAY_MAX_CONNECTIONS", "15000"),
        ("RELAY_MAX_CONNECTIONS_PER_KEY", "15000"),
        ("RELAY_STREAM_REPLICAS", &replicas),
        ("RELAY_STREAM_MAX_MSGS_PER_SUBJECT", "100000"),
    ];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    let relay = Relay::spawn_on(
        host,
        nats_urls,
        &all,
        "warn,sse_relay::server=info",
        Echo::Warnings,
    )
    .await;
    relay.wait_ready_status(200).await;
    relay
}

/// A series of a relay's `/metrics` (0 once it is gone).
pub async fn relay_metric(relay: &Relay, series: &str) -> f64 {
    let Ok(response) = testkit::http()
        .get(relay.admin_url("/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    testkit::sample_opt(&text, series).unwrap_or(0.0)
}

/// `relay_consumers_created_total` of a relay (0 once it is gone).
pub async fn consumers_created(relay: &Relay) -> f64 {
    relay_metric(relay, "relay_consumers_created_total").await
}

/// Samples a process's RSS every 100 ms until `stop`; returns the peak.
pub fn rss_peak_sampler(pid: u32, stop: CancellationToken) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut peak = 0.0f64;
        loop {
            peak = peak.max(rss_mib_of(pid));
            tokio::select! {
                _ = stop.cancelled() => return peak,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
}

/// `BENCH_KILL_NODE`, or `leader`.
pub fn killed_node() -> String {
    std::env::var("BENCH_KILL_NODE").unwrap_or_else(|_| "leader".into())
}
