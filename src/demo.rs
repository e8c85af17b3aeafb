//! `sse-relay demo`: everything needed to watch events flow, in one process: a child
//! nats-server (unless `RELAY_NATS_URL` is set), a simulated deployment pipeline publishing stage
//! events, and the relay itself.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::jetstream::{self, EventStore};
use crate::subject::{Subject, SubjectKey};

/// The six pipeline stages, in order (`docs/api.md` §8).
pub const STAGES: [&str; 6] = [
    "request_validation",
    "deployment_preparation",
    "gitops_push",
    "argocd_sync",
    "pod_stabilization",
    "completion_notification",
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start nats-server ({binary}): {source}; install it with `make tools` or set NATS_SERVER_BIN")]
    NatsSpawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("nats-server did not accept connections on port {0} within 15 s")]
    NatsNotUp(u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where to find nats-server: `NATS_SERVER_BIN`, else the project's tools folder (when built
/// from a checkout), else `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/py/bin/nats-server");
    if tools.is_file() {
        return tools;
    }
    PathBuf::from("nats-server")
}

/// The command line of a JetStream nats-server on loopback `port` storing in `store`, output
/// discarded, killed with its handle: how the demo, the tests and the benchmark all start one
/// (a cluster node adds its `-c`, `--cluster` and `--routes` arguments).
pub fn nats_server_command(port: u16, store: &std::path::Path) -> Command {
    let mut command = Command::new(nats_server_binary());
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A nats-server owned by this process; killed when dropped (and, on Linux, when this process
/// dies, so Ctrl-C or a crash never leaves it behind).
pub struct ChildNats {
    child: Child,
    pub url: String,
    _store: tempfile::TempDir,
}

impl ChildNats {
    pub async fn start() -> Result<Self, DemoError> {
        let store = tempfile::Builder::new()
            .prefix("sse-relay-demo-")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let binary = nats_server_binary();
        let mut command = nats_server_command(port, store.path());
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| DemoError::NatsSpawn {
            binary: binary.display().to_string(),
            source,
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                return Err(DemoError::NatsNotUp(port));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _store: store,
        })
    }

    pub async fn stop(mut self) {
        self.child.kill().await.ok();
    }
}

/// Publishes a never-ending, gently paced pipeline: deployments of pavilions `p-1` and `p-2`
/// walking the six stages; some fail and are retried, some fail for good (later stages are then
/// skipped).
pub async fn simulate_pipeline(store: EventStore, pace: Duration, shutdown: CancellationToken) {
    let mut n: u32 = 1;
    while !shutdown.is_cancelled() {
        let pavilion = if n % 2 == 1 { "p-1" } else { "p-2" };
        let deployment = format!("d-{n}");
        let outcome = match n % 4 {
            0 => Outcome::FailsThenRetries("argocd_sync"),
            3 => Outcome::Fails("pod_stabilization"),
            _ => Outcome::Succeeds,
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = run_deployment(&store, pavilion, &deployment, outcome, pace) => {}
        }
        n += 1;
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Succeeds,
    Fails(&'static str),
    FailsThenRetries(&'static str),
}

async fn run_deployment(
    store: &EventStore,
    pavilion: &str,
    deployment: &str,
    outcome: Outcome,
    pace: Duration,
) {
    let (Ok(d), Ok(p)) = (SubjectKey::parse(deployment), SubjectKey::parse(pavilion)) else {
        return;
    };
    let run = DeploymentRun {
        store,
        deployment: Subject::deployment(d),
        pavilion: Subject::pavilion(p),
    };
    let mut failed = false;
    for stage in STAGES {
        if failed {
            run.emit(stage, "skipped", 1, "Skipped: an earlier stage failed")
                .await;
            continue;
        }
        run.emit(stage, "started", 1, &format!("Starting {stage}"))
            .await;
        pause(pace).await;
        run.emit(stage, "progress", 1, &format!("{stage} in progress"))
            .await;
        pause(pace).await;
        match outcome {
            Outcome::Fails(at) if at == stage => {
                run.emit(stage, "failed", 1, "Pods did not become ready")
                    .await;
                failed = true;
            }
            Outcome::FailsThenRetries(at) if at == stage => {
                run.emit(stage, "failed", 1, "Sync failed; retrying").await;
                pause(pace).await;
                run.emit(stage, "started", 2, "Retrying sync").await;
                pause(pace).await;
                run.emit(stage, "succeeded", 2, "Synced on retry").await;
            }
            _ => {
                run.emit(stage, "succeeded", 1, &format!("{stage} done"))
                    .await
            }
        }
    }
}

/// A pause of 0.4 to 1.6 times `pace`.
async fn pause(pace: Duration) {
    let factor = rand::rng().random_range(0.4..1.6);
    tokio::time::sleep(pace.mul_f64(factor)).await;
}

/// One deployment of one pavilion walking the stages: each step is published to both subjects.
struct DeploymentRun<'a> {
    store: &'a EventStore,
    deployment: Subject,
    pavilion: Subject,
}

impl DeploymentRun<'_> {
    async fn emit(&self, stage: &str, status: &str, attempt: u32, message: &str) {
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let payload = json!({
            "deployment_id": self.deployment.key.as_str(), "pavilion_id": self.pavilion.key.as_str(),
            "stage": stage, "status": status, "at": at, "message": message, "attempt": attempt,
        })
        .to_string();
        let msg_id = format!("{}-{stage}-{status}-{attempt}", self.deployment.key);
        for (subject, id) in [
            (&self.deployment, msg_id.clone()),
            (&self.pavilion, format!("{msg_id}:pavilion")),
        ] {
            if let Err(err) = self
                .store
                .publish(subject, Some("stage"), Some(&id), payload.clone().into())
                .await
            {
                tracing::warn!(error = %err, %subject, "demo publish failed");
            }
        }
    }
}

/// Provisions the stream for the simulated pipeline (the relay does so too; this is idempotent).
pub async fn pipeline_store(config: &Config) -> Result<EventStore, std::io::Error> {
    let client = jetstream::connect(config, |_| {}).await?;
    let store = EventStore::new(client, &config.stream);
    let settings = jetstream::StreamSettings::from_config(config);
    for _ in 0..50 {
        if store.provision(&settings).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(store)
}
