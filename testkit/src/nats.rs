//! nats-server with JetStream: one node ([`Nats`]) or the 3-node cluster of
//! `nats/cluster/node-*.conf` ([`NatsCluster`]), on free loopback ports with temporary stores,
//! started the way the demo starts one (`sse_relay::demo::nats_server_command`).

use std::time::Duration;

use async_nats::jetstream;
use tokio::time::{timeout, Instant};

use crate::netns::Host;
use crate::process::{free_port, Proc};
use crate::{STREAM, WAIT};

/// How long a fresh cluster may take to elect its meta leader under a loaded machine.
const CLUSTER_FORMS_WITHIN: Duration = Duration::from_secs(60);

/// Waits until the server at `url` answers JetStream requests (its store is recovered, and on a
/// cluster a meta leader exists); panics after `within`.
async fn wait_for_jetstream(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(client) = async_nats::connect(url).await {
            if jetstream::new(client).query_account().await.is_ok() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nats-server at {url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JetStream context on `urls` (comma-separated).
pub async fn jetstream_on(urls: &str) -> jetstream::Context {
    let urls: Vec<&str> = urls.split(',').collect();
    let client = timeout(WAIT, async_nats::connect(urls.as_slice()))
        .await
        .expect("connect in time")
        .expect("connect");
    jetstream::new(client)
}

/// One nats-server.
pub struct Nats {
    proc: Option<Proc>,
    pub port: u16,
    pub store: tempfile::TempDir,
    /// The test-net host it runs on (loopback when none).
    host: Option<Host>,
}

/// The port a nats-server listens on inside a test-net host (each has its own ports).
const HOST_PORT: u16 = 4222;

/// `command` made to run on `host`: listening on its address, inside its namespace (a later
/// `-a` replaces the loopback one).
fn on_host(command: &mut tokio::process::Command, host: &Host) {
    command.args(["-a", &host.addr.to_string()]);
    host.enter(command);
}

impl Nats {
    pub async fn start() -> Nats {
        Nats::start_with(None).await
    }

    /// A nats-server on `host` of a test net.
    pub async fn start_on(host: &Host) -> Nats {
        Nats::start_with(Some(host.clone())).await
    }

    async fn start_with(host: Option<Host>) -> Nats {
        let mut nats = Nats {
            proc: None,
            port: if host.is_some() {
                HOST_PORT
            } else {
                free_port()
            },
            store: tempfile::tempdir().expect("temp dir"),
            host,
        };
        nats.launch().await;
        nats
    }

    async fn launch(&mut self) {
        let mut command = sse_relay::demo::nats_server_command(self.port, self.store.path());
        if let Some(host) = &self.host {
            on_host(&mut command, host);
        }
        self.proc = Some(Proc::spawn(&mut command));
        wait_for_jetstream(&self.url(), WAIT).await;
    }

    pub fn url(&self) -> String {
        let ip = self
            .host
            .as_ref()
            .map_or("127.0.0.1".to_owned(), |h| h.addr.to_string());
        format!("nats://{ip}:{}", self.port)
    }

    /// The server's process (None while stopped).
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// Stops the server (SIGTERM) and waits for it to exit (SIGKILL after [`WAIT`]).
    pub async fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(libc::SIGTERM);
            if timeout(WAIT, proc.child.wait()).await.is_err() {
                proc.kill().await;
            }
        }
    }

    /// SIGKILLs the server and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill().await;
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream_on(&self.url()).await
    }

    /// The stream's consumer count, read from the server.
    pub async fn consumer_count(&self, js: &jetstream::Context) -> usize {
        let mut stream = js.get_stream(STREAM).await.expect("stream exists");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count
    }

    /// Polls the server until the consumer count is `want`; panics after `within`.
    pub async fn wait_consumer_count(
        &self,
        js: &jetstream::Context,
        want: usize,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let count = self.consumer_count(js).await;
            if count == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "consumer count stayed {count}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Three nats-servers clustered from `nats/cluster/node-*.conf`.
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    /// One cluster at a time per process: three servers electing leaders on two cores while
    /// other tests run is enough load.
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

static CLUSTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct ClusterNode {
    /// `server_name` of its configuration file (`relay-nats-1`, ...).
    pub name: String,
    pub ip: String,
    pub port: u16,
    pub proc: Option<Proc>,
    _store: tempfile::TempDir,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.ip, self.port)
    }
}

impl NatsCluster {
    pub async fn start() -> NatsCluster {
        NatsCluster::start_with(None).await
    }

    /// The cluster with node `i` on `hosts[i]` of a test net.
    pub async fn start_on(hosts: &[Host; 3]) -> NatsCluster {
        NatsCluster::start_with(Some(hosts)).await
    }

    async fn start_with(hosts: Option<&[Host; 3]>) -> NatsCluster {
        let one_at_a_time = CLUSTERS.lock().await;
        let ip = |i: usize| hosts.map_or("127.0.0.1".to_owned(), |h| h[i].addr.to_string());
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| match hosts {
                Some(_) => (HOST_PORT, 6222, 8222),
                None => (free_port(), free_port(), free_port()),
            })
            .collect();
        let routes = ports
            .iter()
            .enumerate()
            .map(|(i, (_, cluster, _))| format!("nats://{}:{cluster}", ip(i)))
            .collect::<Vec<_>>()
            .join(",");
        let config_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats/cluster");
        let mut nodes = Vec::new();
        for (i, (port, cluster, http)) in ports.iter().enumerate() {
            let store = tempfile::tempdir().expect("temp dir");
            let mut command = sse_relay::demo::nats_server_command(*port, store.path());
            command
                .arg("-c")
                .arg(config_dir.join(format!("node-{}.conf", i + 1)))
                .args(["-m", &http.to_string()])
                .args(["--cluster", &format!("nats://{}:{cluster}", ip(i))])
                .args(["--routes", &routes]);
            if let Some(hosts) = hosts {
                on_host(&mut command, &hosts[i]);
            }
            nodes.push(ClusterNode {
                name: format!("relay-nats-{}", i + 1),
                ip: ip(i),
                port: *port,
                proc: Some(Proc::spawn(&mut command)),
                _store: store,
            });
        }
        let cluster = NatsCluster {
            nodes,
            _one_at_a_time: one_at_a_time,
        };
        for node in &cluster.nodes {
            wait_for_jetstream(&node.url(), CLUSTER_FORMS_WITHIN).await;
        }
        cluster
    }

    /// All client URLs, comma-separated (RELAY_NATS_URL).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the node called `name` and waits for it to be gone.
    pub async fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("known node");
        if let Some(mut proc) = node.proc.take() {
            proc.kill().await;
        }
    }
}
