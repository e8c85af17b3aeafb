//! The process's own limits: the open-files limit is raised at start-up, and a hard limit too
//! low for `RELAY_MAX_CONNECTIONS` is warned about.

use std::os::unix::process::CommandExt;

use crate::support::*;

/// Runs `serve` with `RLIMIT_NOFILE` set to (`soft`, `hard`) and its public port already taken, so
/// it logs its start-up and exits; its JSON log lines.
async fn serve_with_nofile(soft: u64, hard: u64, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    serve_until_listen_fails("info,async_nats=warn", env, |command| {
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
    })
    .await
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
