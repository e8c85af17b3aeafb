//! `sse-relay demo`: starts its own nats-server, publishes a pipeline, serves it; Ctrl-C stops
//! everything it started.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_moving_pipeline_and_stops_its_nats() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .arg("demo")
        .env_clear()
        .env("RELAY_LISTEN", "127.0.0.1:0")
        .env("RELAY_LOG", "warn,sse_relay::server=info")
        .env("RELAY_LOG_FORMAT", "json")
        .env("NATS_SERVER_BIN", nats_server_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    // The relay's `listening` line names both listeners; the rest of stderr is passed on.
    let (admin_tx, admin_rx) = tokio::sync::oneshot::channel::<String>();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    tokio::spawn(async move {
        let mut admin_tx = Some(admin_tx);
        while let Ok(Some(line)) = stderr.next_line().await {
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if log["message"] == "listening" {
                if let (Some(tx), Some(admin)) = (admin_tx.take(), log["admin"].as_str()) {
                    tx.send(admin.to_owned()).ok();
                }
            }
            eprintln!("[demo] {line}");
        }
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut board = None;
    let mut nats_url = None;
    while board.is_none() {
        let line = timeout(WAIT, lines.next_line())
            .await
            .expect("demo prints in time")
            .expect("read")
            .expect("demo printed its URLs");
        if let Some(url) = line.trim().strip_prefix("Board:") {
            board = Some(url.trim().to_owned());
        }
        if let Some(rest) = line.split("NATS at ").nth(1) {
            nats_url = Some(rest.trim_end_matches(").").to_owned());
        }
    }
    let board = board.expect("board URL");
    let base = board.split("/?").next().expect("base URL").to_owned();
    let nats_url = nats_url.expect("NATS URL printed");

    let page = http().get(&board).send().await.expect("board");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains(r#"import { watch } from "/client.js""#),
        "the board uses the module"
    );
    let module = http()
        .get(format!("{base}/client.js"))
        .send()
        .await
        .expect("module");
    assert_eq!(module.status().as_u16(), 200);
    assert!(module
        .text()
        .await
        .expect("js")
        .contains("export function watch("));

    // Without RELAY_ADMIN_LISTEN the demo's metrics and probes are on a free loopback port.
    let admin = timeout(WAIT, admin_rx)
        .await
        .expect("listening line in time")
        .expect("admin address logged");
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    assert_ne!(admin.rsplit(':').next(), Some("9090"), "{admin}");
    let metrics = http()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(metrics
        .text()
        .await
        .expect("text")
        .contains("relay_nats_connected 1"));

    // The simulated pipeline walks d-1 of p-1 through the stages.
    let mut client = SseClient::connect(&format!("{base}/v1/pavilions/p-1/events"), None).await;
    let first = client.next_event().await;
    assert_eq!(first.event, "stage");
    let stage: serde_json::Value = serde_json::from_str(&first.data).expect("JSON stage event");
    assert_eq!(stage["pavilion_id"], "p-1");
    assert_eq!(stage["stage"], "request_validation");
    assert_eq!(stage["status"], "started");
    let second = client.next_event().await;
    assert!(ids(&[first, second]).windows(2).all(|w| w[0] < w[1]));

    // Ctrl-C: the demo exits and its nats-server is gone.
    if let Some(pid) = child.id() {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGINT);
        }
    }
    let status = timeout(WAIT, child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while async_nats::connect(nats_url.as_str()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "child nats-server still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
