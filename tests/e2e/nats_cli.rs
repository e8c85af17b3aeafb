//! The runbook's `nats` commands (`docs/operations.md`, *The `nats` CLI*) run with the real
//! `nats` CLI (v0.5.0, pinned in `tools/natscli`, built by `make test` into `.tools/bin/nats`)
//! against a real server and relay, in the order the docs give them: the docs cannot drift.

use std::path::Path;

use crate::support::*;

const MARKER: &str = "<!-- nats-cli:";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `nats` lines of the block after the marker, comments removed.
fn documented_commands() -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).expect("runbook");
    let after = doc
        .split(MARKER)
        .nth(1)
        .expect("the runbook's nats-cli marker");
    let block = after
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block after the marker");
    block
        .lines()
        .map(|line| match line.find("   #") {
            Some(comment) => line[..comment].trim_end(),
            None => line.trim_end(),
        })
        .filter(|line| line.starts_with("nats "))
        .map(str::to_owned)
        .collect()
}

/// Runs `line` as the docs show it (a shell line; `nats` is the pinned CLI), from the
/// repository's root with `NATS_URL` set and `home` as `HOME` (the CLI's contexts live there);
/// panics unless it succeeds; what it printed (the CLI writes some reports, such as a publish's
/// acknowledgement, to stderr).
async fn run(line: &str, nats_url: &str, home: &Path) -> String {
    let cli = built_tool("NATS_CLI_BIN", "nats");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("nats() {{ \"$NATS_CLI\" \"$@\"; }}; {line}"))
            .env("NATS_CLI", &cli)
            .env("NATS_URL", nats_url)
            .env("HOME", home)
            .current_dir(root())
            .output(),
    )
    .await
    .expect("the command ends in time")
    .expect("bash runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "`{line}` failed:\n{printed}");
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_nats_command_runs_against_a_real_server() {
    let commands = documented_commands();
    let verbs: Vec<String> = commands
        .iter()
        .map(|c| c.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        verbs,
        [
            "nats stream add",
            "nats stream info",
            "nats consumer ls",
            "nats pub --jetstream",
            "nats stream get",
            "nats kv ls"
        ],
        "the commands this test knows what to expect of"
    );
    let home = tempfile::tempdir().expect("home");
    let run = |line: &str, nats_url: &str| {
        let (line, nats_url, home) = (line.to_owned(), nats_url.to_owned(), home.path().to_owned());
        async move { run(&line, &nats_url, &home).await }
    };
    let nats = Nats::start().await;
    // The stream made by hand, as with RELAY_STREAM_MANAGE=false; then a relay and a browser.
    let created = run(&commands[0], &nats.url()).await;
    assert!(created.contains("DEPLOY_EVENTS"), "{created}");
    let relay = Relay::start(
        &nats.url(),
        &[
            ("RELAY_STREAM_MANAGE", "false"),
            ("RELAY_PRESENCE_INTERVAL", "200ms"),
        ],
    )
    .await;
    let mut browser = SseClient::connect(&relay.url("/v1/deployments/d-smoke/events"), None).await;
    relay
        .wait_metric_at_least("relay_presence_messages_published_total", 2.0)
        .await;

    let info = run(&commands[1], &nats.url()).await;
    assert!(
        info.contains("DEPLOY_EVENTS") && info.contains("deploy.*"),
        "{info}"
    );
    let consumers = run(&commands[2], &nats.url()).await;
    assert!(
        consumers.contains("sser"),
        "the relay's consumer listed: {consumers}"
    );

    let published = run(&commands[3], &nats.url()).await;
    let event = browser.next_event().await;
    assert_eq!(event.event, "stage");
    assert!(
        event.data.contains("\"deployment_id\":\"d-smoke\""),
        "{event:?}"
    );
    let seq = event.id.expect("an id");
    assert!(
        published.contains(&seq),
        "the ack names sequence {seq}: {published}"
    );

    let last = run(&commands[4], &nats.url()).await;
    assert!(
        last.contains("smoke test") && last.contains("Relay-Event-Type"),
        "{last}"
    );
    let keys = run(&commands[5], &nats.url()).await;
    assert!(
        keys.contains(".deploy.d-smoke"),
        "the replica's presence key: {keys}"
    );
}
