//! `sse-relay serve` as a child process on free loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::{timeout, Instant};

use crate::client::http;
use crate::metrics::sample_opt;
use crate::netns::Host;
use crate::process::Proc;
use crate::WAIT;

/// The relay's fan-out mode (`RELAY_FANOUT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    Consumer,
    Shared,
}

impl Fanout {
    /// JetStream consumers `replicas` relays hold for `clients` connected, caught-up clients:
    /// one per client, or one live tail per replica.
    pub fn consumers(self, clients: usize, replicas: usize) -> usize {
        match self {
            Fanout::Consumer => clients,
            Fanout::Shared => replicas,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fanout::Consumer => "consumer",
            Fanout::Shared => "shared",
        }
    }

    /// `env` with `RELAY_FANOUT` set to this mode.
    pub fn env<'a>(self, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![("RELAY_FANOUT", self.name())];
        all.extend_from_slice(env);
        all
    }
}

/// Which of the relay's log lines are copied to this process's stderr (prefixed `[relay]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Every line (tests: the relay's story beside a failure).
    All,
    /// Warnings and errors, message and error only (the benchmark's output stays a report).
    Warnings,
}

/// The sse-relay binary cargo built beside this test or benchmark executable
/// (`target/<profile>/sse-relay`; cargo builds it for integration tests and benchmarks);
/// `SSE_RELAY_BIN` names another.
pub fn relay_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SSE_RELAY_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("this executable's path");
    let mut dir = exe.parent().expect("its directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("sse-relay");
    assert!(
        bin.is_file(),
        "{} is missing: cargo builds it with the tests and benchmarks (or set SSE_RELAY_BIN)",
        bin.display()
    );
    bin
}

/// A relay process (`sse-relay serve`).
pub struct Relay {
    pub proc: Proc,
    /// The public listener (`RELAY_LISTEN`): the API and the board.
    pub addr: SocketAddr,
    /// The admin listener (`RELAY_ADMIN_LISTEN`): `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// Every `WARN` and `ERROR` line so far, as `message: error`.
    warnings: tokio::sync::watch::Receiver<Vec<String>>,
}

impl Relay {
    /// Starts `serve` with `env` (log `info`, every line echoed) and waits until it listens
    /// (not until it is ready).
    pub async fn spawn(nats_url: &str, env: &[(&str, &str)]) -> Relay {
        Relay::spawn_with(nats_url, env, "info,async_nats=warn", Echo::All).await
    }

    /// Starts `serve` logging `log` and echoing as `echo` says; waits until it listens.
    pub async fn spawn_with(nats_url: &str, env: &[(&str, &str)], log: &str, echo: Echo) -> Relay {
        Relay::spawn_on(None, nats_url, env, log, echo).await
    }

    /// Starts `serve` in fan-out mode `mode` on a host of a test net (listening on the host's
    /// address), every line echoed; waits until it listens.
    pub async fn spawn_on_host(
        host: &Host,
        mode: Fanout,
        nats_url: &str,
        env: &[(&str, &str)],
    ) -> Relay {
        Relay::spawn_on(
            Some(host),
            nats_url,
            &mode.env(env),
            "info,async_nats=warn",
            Echo::All,
        )
        .await
    }

    /// Starts `serve` on `host` (loopback when none); waits until it listens.
    pub async fn spawn_on(
        host: Option<&Host>,
        nats_url: &str,
        env: &[(&str, &str)],
        log: &str,
        echo: Echo,
    ) -> Relay {
        let ip = host.map_or("127.0.0.1".to_owned(), |h| h.addr.to_string());
        let mut command = Command::new(relay_bin());
        command
            .arg("serve")
            .env_clear()
            .env("RELAY_NATS_URL", nats_url)
            .env("RELAY_LISTEN", format!("{ip}:0"))
            .env("RELAY_ADMIN_LISTEN", format!("{ip}:0"))
            .env("RELAY_LOG", log)
            .env("RELAY_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stderr(Stdio::piped());
        if let Some(host) = host {
            host.enter(&mut command);
        }
        let mut proc = Proc::spawn(&mut command);
        let stderr = proc.child.stderr.take().expect("stderr piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (warned, warnings) = tokio::sync::watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                if let Some(addrs) = json.as_ref().and_then(listening_addrs) {
                    if let Some(tx) = tx.take() {
                        tx.send(addrs).ok();
                    }
                }
                if let Some(v) = json.as_ref().filter(|v| is_warning(v)) {
                    let warning = format!("{}: {}", v["message"], v["error"]);
                    warned.send_modify(|all| all.push(warning));
                }
                match echo {
                    Echo::All => eprintln!("[relay] {line}"),
                    Echo::Warnings => {
                        if let Some(v) = json.filter(is_warning) {
                            eprintln!("  [relay] {} {}", v["message"], v["error"]);
                        }
                    }
                }
            }
        });
        let (addr, admin) = timeout(WAIT, rx)
            .await
            .expect("relay listening in time")
            .expect("relay printed its addresses");
        Relay {
            proc,
            addr,
            admin,
            warnings,
        }
    }

    /// The `WARN` and `ERROR` lines logged so far, as `message: error`.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.borrow().clone()
    }

    /// Waits until a warning containing `text` is logged; panics after [`WAIT`].
    pub async fn wait_warning(&self, text: &str) -> String {
        let mut warnings = self.warnings.clone();
        let found = timeout(
            WAIT,
            warnings.wait_for(|all| all.iter().any(|w| w.contains(text))),
        )
        .await
        .unwrap_or_else(|_| panic!("no warning containing {text:?} in time"))
        .expect("relay log reader alive");
        let warning = found.iter().find(|w| w.contains(text));
        warning.cloned().expect("the warning wait_for matched")
    }

    /// Starts `serve` and waits until `/readyz` is 200.
    pub async fn start(nats_url: &str, env: &[(&str, &str)]) -> Relay {
        let relay = Relay::spawn(nats_url, env).await;
        relay.wait_ready_status(200).await;
        relay
    }

    /// [`Relay::spawn`] in fan-out mode `mode`.
    pub async fn spawn_in(mode: Fanout, nats_url: &str, env: &[(&str, &str)]) -> Relay {
        Relay::spawn(nats_url, &mode.env(env)).await
    }

    /// [`Relay::start`] in fan-out mode `mode`.
    pub async fn start_in(mode: Fanout, nats_url: &str, env: &[(&str, &str)]) -> Relay {
        Relay::start(nats_url, &mode.env(env)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener's URL of `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `/readyz` on the admin listener (0 when it does not answer).
    pub async fn readyz(&self) -> u16 {
        match http().get(self.admin_url("/readyz")).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Polls `/readyz` until it answers `status`; panics after [`WAIT`].
    pub async fn wait_ready_status(&self, status: u16) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.readyz().await;
            if got == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {got}, wanted {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Polls `/metrics` until `series` reads `value`; panics after [`WAIT`] (also when the
    /// series does not exist).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        self.wait_metric_where(series, &format!("{value}"), |v| v == value)
            .await
    }

    /// Polls `/metrics` until `series` reads at least `min`; panics after [`WAIT`].
    pub async fn wait_metric_at_least(&self, series: &str, min: f64) {
        self.wait_metric_where(series, &format!("at least {min}"), |v| v >= min)
            .await
    }

    async fn wait_metric_where(&self, series: &str, wanted: &str, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = sample_opt(&self.metrics().await, series);
            if got.is_some_and(&ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed {got:?}, wanted {wanted}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the relay process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        (self.proc.rss_mib() * 1024.0).round() as u64
    }

    /// SIGKILLs the relay and waits for it to be gone.
    pub async fn kill(mut self) {
        self.proc.kill().await;
    }

    pub fn sigkill(&mut self) {
        self.proc.signal(libc::SIGKILL);
    }

    pub fn sigterm(&self) {
        self.proc.signal(libc::SIGTERM);
    }

    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        timeout(WAIT, self.proc.child.wait())
            .await
            .expect("relay exited in time")
            .expect("wait")
    }
}

/// The public and admin addresses of the relay's `listening` log line.
fn listening_addrs(v: &serde_json::Value) -> Option<(SocketAddr, SocketAddr)> {
    if v.get("message")?.as_str()? != "listening" {
        return None;
    }
    Some((
        v.get("addr")?.as_str()?.parse().ok()?,
        v.get("admin")?.as_str()?.parse().ok()?,
    ))
}

/// A JSON log line at `WARN` or `ERROR`.
fn is_warning(line: &serde_json::Value) -> bool {
    line["level"] == "WARN" || line["level"] == "ERROR"
}
