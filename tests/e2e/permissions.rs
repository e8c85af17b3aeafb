//! Least privilege: the relay and a publisher log in as NATS users with exactly the permissions
//! of `nats/users.conf` (docs/operations.md, "NATS permissions"). Everything works in both
//! fan-out modes; a narrower set fails with an error that names the missing permission, within
//! bounded time.

use std::path::Path;

use tokio::time::timeout;

use crate::support::*;

const RELAY_PASSWORD: &str = "relay-change-me";
const PUBLISHER_PASSWORD: &str = "publisher-change-me";

fn users_conf() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/users.conf");
    std::fs::read_to_string(path).expect("nats/users.conf")
}

/// A JetStream nats-server whose configuration includes `users` (as `users.conf` beside it:
/// nats-server resolves includes next to the configuration).
struct SecuredNats {
    _proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SecuredNats {
    async fn start(users: &str) -> SecuredNats {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("users.conf"), users).expect("users.conf");
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, "include users.conf\n").expect("nats.conf");
        let port = free_port();
        let store = dir.path().join("store");
        let mut command = sse_relay::demo::nats_server_command(port, &store);
        command.arg("-c").arg(&config);
        let proc = Proc::spawn(&mut command);
        // Listening once a TCP connection is accepted (no user may ask JetStream anything
        // beyond its permissions, so readiness is the relay's to tell).
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        SecuredNats {
            _proc: proc,
            port,
            _dir: dir,
        }
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }
}

/// `sse-relay publish` as `url`'s user: its exit status, stdout and stderr.
async fn publish(url: &str, deployment: &str, pavilion: &str) -> (bool, String, String) {
    let out = timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
            .args([
                "publish",
                "--deployment",
                deployment,
                "--pavilion",
                pavilion,
            ])
            .args(["--data", r#"{"stage":"gitops_push"}"#])
            .env("RELAY_NATS_URL", url)
            .output(),
    )
    .await
    .expect("publish ends in time")
    .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

both_modes! {
async fn the_documented_permissions_are_all_the_relay_and_a_publisher_need(mode) {
    let nats = SecuredNats::start(&users_conf()).await;
    let presence = [("RELAY_PRESENCE_INTERVAL", "300ms")];
    let relay = Relay::start_in(mode, &nats.url("relay", RELAY_PASSWORD), &presence).await;
    let stream = relay.url("/v1/events?deployment=d-1&pavilion=p-1");
    let mut client = SseClient::connect(&stream, None).await;
    let publisher = nats.url("publisher", PUBLISHER_PASSWORD);
    let (ok, out, err) = publish(&publisher, "d-1", "p-1").await;
    assert!(ok, "publish as the publisher user: {err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!((report["deploy_seq"].as_u64(), report["pavilion_seq"].as_u64()), (Some(1), Some(2)));
    assert_eq!(ids(&client.events(2).await), vec![1, 2]);
    // Resume, and the polling fallback of each subject.
    let mut resumed = SseClient::connect(&stream, Some("1")).await;
    assert_eq!(ids(&resumed.events(1).await), vec![2]);
    for (path, seq) in [("deployments/d-1", 1), ("pavilions/p-1", 2)] {
        let (status, page) = get_json(&relay.url(&format!("/v1/{path}/timeline"))).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["events"][0]["seq"], seq, "{page}");
        assert_eq!(page["last_seq"], seq, "{page}");
    }
    // A subject never published to: an empty page.
    let (status, page) = get_json(&relay.url("/v1/deployments/d-none/timeline")).await;
    assert_eq!((status, page["last_seq"].as_u64()), (200, Some(0)), "{page}");
    // Presence: a second replica counts the first one's streams (the bucket was created, both
    // write their keys and watch the others').
    let other = Relay::start_in(mode, &nats.url("relay", RELAY_PASSWORD), &presence).await;
    presence_reaches(&other.url("/v1/pavilions/p-1/presence"), 2, WAIT).await;
    assert!(
        other.warnings().iter().all(|w| !w.contains("presence")),
        "{:?}",
        other.warnings()
    );
    assert!(
        relay.warnings().iter().all(|w| !w.contains("refused") && !w.contains("presence")),
        "no request refused: {:?}",
        relay.warnings()
    );
}
}

both_modes! {
async fn a_missing_permission_is_named_and_nothing_hangs(mode) {
    // The relay may not create consumers with a name (clients, the live tail); the publisher
    // may publish pavilions only.
    let narrower = users_conf()
        .replace("\"$JS.API.CONSUMER.CREATE.DEPLOY_EVENTS.>\",", "")
        .replace("\"deploy.*\", ", "");
    assert_ne!(narrower, users_conf());
    let nats = SecuredNats::start(&narrower).await;
    let relay = Relay::spawn_in(mode, &nats.url("relay", RELAY_PASSWORD), &[]).await;
    let named = r#"Permissions Violation for Publish to \"$JS.API.CONSUMER.CREATE.DEPLOY_EVENTS."#;
    match mode {
        // The stream is reachable: ready, but a stream cannot be opened, and says so in time.
        Fanout::Consumer => {
            relay.wait_ready_status(200).await;
            let (status, body) = get_json(&relay.url("/v1/deployments/d-1/events")).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"], "not_ready", "{body}");
        }
        // The live tail cannot start: never ready.
        Fanout::Shared => {
            relay.wait_warning(named).await;
            let (status, body) = get_json(&relay.admin_url("/readyz")).await;
            assert_eq!((status, body["reason"].as_str()), (503, Some("live_tail_starting")), "{body}");
        }
    }
    let warning = relay.wait_warning(named).await;
    assert!(warning.contains("lacks a permission"), "{warning}");
    let (ok, _, err) = publish(&nats.url("publisher", PUBLISHER_PASSWORD), "d-1", "p-1").await;
    assert!(!ok, "deploy.d-1 is not the publisher's to publish");
    assert!(
        err.contains(r#"Permissions Violation for Publish to \"deploy.d-1\""#),
        "the publisher's error names the subject: {err}"
    );
}
}
