//! The command line: configuration errors name their variable; `publish` prints sequences,
//! deduplicates by message id and refuses bad input with exit code 2.

use std::process::Output;

use crate::support::*;

async fn relay_cmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"));
    command.args(args).env_clear().env("RELAY_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(WAIT, command.output())
        .await
        .expect("exits in time")
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_refuses_to_start_naming_the_variable() {
    for (key, value) in [
        ("RELAY_HEARTBEAT", "often"),
        ("RELAY_HEARTBEAT", "10"),
        ("RELAY_RETRY", "-2s"),
        ("RELAY_MAX_CONNECTIONS", "lots"),
        ("RELAY_AUTH", "maybe"),
        ("RELAY_LOG_FORMAT", "xml"),
    ] {
        let out = relay_cmd(&["serve"], &[(key, value)]).await;
        assert!(!out.status.success(), "{key}={value} must not start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "{key}={value}: stderr names it: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_sequences_and_deduplicates() {
    let nats = Nats::start().await;
    let _relay = Relay::start(&nats.url(), &[]).await; // provisions the stream
    let env = [("RELAY_NATS_URL", nats.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let publish = |extra: Vec<&'static str>| {
        let env = env.clone();
        async move {
            let mut args = vec!["publish", "--deployment", "d-cli", "--pavilion", "p-cli"];
            args.extend(extra);
            relay_cmd(&args, &env).await
        }
    };

    let out = publish(vec![
        "--msg-id",
        "m-1",
        "--data",
        r#"{"stage":"gitops_push"}"#,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON line");
    assert_eq!(
        line,
        serde_json::json!({"deploy_seq": 1, "pavilion_seq": 2, "duplicate": false})
    );

    let again = publish(vec![
        "--msg-id",
        "m-1",
        "--data",
        r#"{"stage":"gitops_push"}"#,
    ])
    .await;
    let line: serde_json::Value = serde_json::from_slice(&again.stdout).expect("JSON line");
    assert_eq!(
        line,
        serde_json::json!({"deploy_seq": 1, "pavilion_seq": 2, "duplicate": true})
    );

    let js = nats.jetstream().await;
    let mut stream = js.get_stream(STREAM).await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        2,
        "nothing new stored"
    );

    for bad in [
        vec!["--data", "{not json"],
        vec!["--data", "{}", "--type", ""],
    ] {
        let out = publish(bad.clone()).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
        assert!(out.stdout.is_empty());
    }
    for id in ["a.b", "*", ">", ""] {
        let out = relay_cmd(&["publish", "--deployment", id, "--data", "{}"], &env).await;
        assert_eq!(out.status.code(), Some(2), "{id:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--deployment"), "{stderr}");
    }
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        2,
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_help_lists_every_variable_with_its_default() {
    let out = relay_cmd(&["serve", "--help"], &[]).await;
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (name, default) in [
        ("RELAY_LISTEN", "[0.0.0.0:8080]"),
        ("RELAY_ADMIN_LISTEN", "[0.0.0.0:9090]"),
        ("RELAY_FANOUT", "[consumer]"),
        ("RELAY_NATS_URL", "[nats://127.0.0.1:4222]"),
        ("RELAY_HEARTBEAT", "[25s]"),
        ("RELAY_RETRY", "[2s]"),
        ("RELAY_DRAIN_TIMEOUT", "[20s]"),
        ("RELAY_MAX_CONNECTIONS", "[10000]"),
        ("RELAY_MAX_CONNECTIONS_PER_KEY", "[100]"),
        ("RELAY_AUTH", "[none]"),
        ("RELAY_JWT_SECRET", "[unset]"),
    ] {
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{help}"));
        assert!(line.ends_with(default), "{name}: {line}");
    }
}
