//! The process's own limits: the open-files limit is raised at start-up, and a hard limit too
//! low for `RELAY_MAX_CONNECTIONS` is warned about.

use std::os::unix::process::CommandExt;

use crate::support::*;

/// Runs `serve` with `RLIMIT_NOFILE` set to (`soft`, `hard`) and its public port already taken, so
/// it logs its start-up and exits; its JSON log lines.
async fn serve_with_nofile(soft: u64, hard: u64, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let nats = Nats::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"));
    command
        .arg("serve")
        .env_clear()
        .env("RELAY_NATS_URL", nats.url())
        .env("RELAY_LISTEN", &taken)
        .env("RELAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("RELAY_LOG", "info,async_nats=warn")
        .envs(env.iter().copied());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = tokio::time::timeout(WAIT, tokio::process::Command::from(command).output())
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!out.status.success(), "the taken port stops it");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let logs = serve_with_nofile(512, 4096, &[("RELAY_MAX_CONNECTIONS", "1000")]).await;
    let line = logs
        .iter()
        .find(|v| v["message"] == "open files limit")
        .unwrap_or_else(|| panic!("no open files line in {logs:#?}"));
    assert_eq!(line["soft_before"], 512);
    assert_eq!(line["soft"], 4096);
    assert_eq!(line["hard"], 4096);
    assert!(
        !logs
            .iter()
            .any(|v| v["level"] == "WARN"
                && v["message"].as_str().unwrap_or("").contains("open files")),
        "4096 is enough for 1000 connections: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_limit_below_the_connection_limit_is_warned_about() {
    let logs = serve_with_nofile(256, 1024, &[("RELAY_MAX_CONNECTIONS", "10000")]).await;
    let warning = logs
        .iter()
        .find(|v| v["level"] == "WARN" && v["needed"].is_u64())
        .unwrap_or_else(|| panic!("no warning in {logs:#?}"));
    assert_eq!(warning["limit"], 1024);
    assert_eq!(warning["needed"], 10_256);
    assert!(warning["message"]
        .as_str()
        .expect("message")
        .contains("RELAY_MAX_CONNECTIONS"));
}
