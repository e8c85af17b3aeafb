//! Tracing: one trace from `sse-relay publish` to the relay's delivery span, exported over OTLP
//! to a real receiver; nothing exported without an endpoint; inbound `traceparent` continued.

use crate::otlp::Receiver;
use crate::support::*;

/// OTLP span kinds (`opentelemetry.proto.trace.v1.Span.SpanKind`).
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

fn otel_env(receiver: &Receiver, service: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
        ("OTEL_SERVICE_NAME".into(), service.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
    ]
}

fn refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_publish_to_delivery() {
    let receiver = Receiver::start().await;
    let nats = Nats::start().await;
    let relay_env = otel_env(&receiver, "relay-under-test");
    let relay = Relay::start(&nats.url(), &refs(&relay_env)).await;
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-trace/events"), None).await;

    let mut publish_env = otel_env(&receiver, "pipeline-worker");
    publish_env.push(("RELAY_NATS_URL".into(), nats.url()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args([
            "publish",
            "--deployment",
            "d-trace",
            "--data",
            r#"{"stage":"gitops_push"}"#,
        ])
        .env_clear()
        .envs(publish_env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .expect("publish runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON line");
    let seq = report["deploy_seq"].as_u64().expect("deploy_seq");
    assert_eq!(client.next_event().await.id, Some(seq.to_string()));

    let publish = receiver
        .wait_for("publish", |s| s.name == "publish deploy.d-trace")
        .await;
    assert_eq!(publish.service, "pipeline-worker");
    assert_eq!(publish.kind, PRODUCER);
    assert_eq!(
        publish.attr("messaging.destination.name"),
        Some("deploy.d-trace")
    );
    assert_eq!(
        publish.attr("relay.stream_sequence"),
        Some(seq.to_string().as_str())
    );

    // The relay takes the message in (its consumer's receive), then delivers it.
    let receive = receiver
        .wait_for("receive", |s| s.name == "receive deploy.d-trace")
        .await;
    assert_eq!(receive.service, "relay-under-test");
    assert_eq!(receive.kind, CONSUMER);
    assert_eq!(receive.trace_id, publish.trace_id, "one trace");
    assert_eq!(
        receive.parent_span_id, publish.span_id,
        "child of the publisher's span"
    );
    assert_eq!(
        receive.attr("relay.stream_sequence"),
        Some(seq.to_string().as_str())
    );
    let deliver = receiver
        .wait_for("deliver", |s| s.name == "deliver deploy.d-trace")
        .await;
    assert_eq!(deliver.service, "relay-under-test");
    assert_eq!(deliver.kind, CONSUMER);
    assert_eq!(deliver.trace_id, publish.trace_id, "one trace");
    assert_eq!(
        deliver.parent_span_id, receive.span_id,
        "child of the relay's receive span"
    );
    assert_eq!(
        deliver.attr("messaging.destination.name"),
        Some("deploy.d-trace")
    );
    assert_eq!(
        deliver.attr("relay.stream_sequence"),
        Some(seq.to_string().as_str())
    );
    assert!(deliver
        .attr("relay.connection_id")
        .is_some_and(|c| !c.is_empty()));
    assert!(deliver.attr("relay.delivery_lag_ms").is_some());
    // The delivery links back to the connection that carried it.
    assert_eq!(deliver.links.len(), 1);

    // The connection span is exported when the client leaves, with what it delivered.
    drop(client);
    let connection = receiver
        .wait_for("sse.connection", |s| s.name == "sse.connection")
        .await;
    assert_eq!(connection.service, "relay-under-test");
    assert_eq!(connection.attr("relay.subjects"), Some("deploy.d-trace"));
    assert_eq!(connection.attr("relay.events_delivered"), Some("1"));
    assert_eq!(connection.attr("relay.end_reason"), Some("client_closed"));
    assert_eq!(deliver.links[0].1, connection.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_traceparent_is_continued() {
    let receiver = Receiver::start().await;
    let nats = Nats::start().await;
    let env = otel_env(&receiver, "relay-under-test");
    let relay = Relay::start(&nats.url(), &refs(&env)).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let response = http()
        .get(relay.url("/v1/deployments/d-1/timeline?after=0"))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let span = receiver
        .wait_for("request", |s| {
            s.trace_id == trace_id && s.name.starts_with("GET ")
        })
        .await;
    assert_eq!(span.name, "GET /v1/deployments/{id}/timeline");
    assert_eq!(span.kind, SERVER);
    assert_eq!(span.parent_span_id, parent);
    assert_eq!(
        span.attr("http.route"),
        Some("/v1/deployments/{id}/timeline")
    );
    assert_eq!(span.attr("http.response.status_code"), Some("200"));
    assert_eq!(span.attr("url.path"), Some("/v1/deployments/d-1/timeline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_or_attempted() {
    // A receiver on the default OTLP/HTTP port catches any attempt to use the default endpoint.
    // The default port is the point of the test, so it cannot pick another: a machine where
    // something else holds 4318 fails here, saying so, rather than passing untested.
    let default_port = Receiver::start_on("127.0.0.1:4318")
        .await
        .unwrap_or_else(|err| {
            panic!(
                "this test needs 127.0.0.1:4318 (the default OTLP/HTTP port) free to catch any \
             export attempt, and cannot bind it: {err:?}; stop what listens there"
            )
        });
    let nats = Nats::start().await;
    let relay = Relay::start(
        &nats.url(),
        &[
            ("OTEL_SERVICE_NAME", "quiet"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-1/events"), None).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args(["publish", "--deployment", "d-1", "--data", "{}"])
        .env_clear()
        .env("RELAY_NATS_URL", nats.url())
        .env("OTEL_SERVICE_NAME", "quiet")
        .output()
        .await
        .expect("publish runs");
    assert!(out.status.success());
    assert_eq!(client.next_event().await.id.as_deref(), Some("1"));
    let polled = http()
        .get(relay.url("/v1/deployments/d-1/timeline"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("timeline request");
    assert_eq!(polled.status().as_u16(), 200, "a traced request was served");
    drop(client);
    // The publisher has exited (its exporter would have flushed); give the relay's batch
    // processor many of its 50 ms cycles.
    let mut relay = relay;
    relay.sigterm();
    assert!(relay.wait_exit().await.success());
    assert_eq!(
        *default_port.requests.lock().expect("lock"),
        0,
        "no export attempted"
    );
    assert!(default_port.spans().is_empty());
}

/// Export to an `https://` collector: refused (a failed handshake, nothing received) while the
/// collector's CA is unknown; accepted once `OTEL_EXPORTER_OTLP_CERTIFICATE` names it. Each
/// replica's spans carry a `service.instance.id` of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_https_collector_trusted_through_otlp_certificate() {
    let receiver = Receiver::start_tls().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("collector-ca.pem");
    std::fs::write(&ca, receiver.ca_pem()).expect("write the CA");
    let nats = Nats::start().await;

    // Without the CA: the TLS handshake fails, nothing is exported.
    let untrusting = Relay::start(&nats.url(), &refs(&otel_env(&receiver, "untrusting"))).await;
    let client = SseClient::connect(&untrusting.url("/v1/deployments/d-tls/events"), None).await;
    drop(client);
    receiver.wait_for_failed_handshakes(1).await;
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());

    // With it, two replicas: both export, each with its own instance id.
    let mut trusting_env = otel_env(&receiver, "trusting");
    trusting_env.push((
        "OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
        ca.display().to_string(),
    ));
    let mut instances = Vec::new();
    for deployment in ["d-tls-1", "d-tls-2"] {
        let relay = Relay::start(&nats.url(), &refs(&trusting_env)).await;
        let path = format!("/v1/deployments/{deployment}/events");
        let client = SseClient::connect(&relay.url(&path), None).await;
        drop(client);
        let subject = format!("deploy.{deployment}");
        let span = receiver
            .wait_for("sse.connection over TLS", |s| {
                s.name == "sse.connection" && s.attr("relay.subjects") == Some(subject.as_str())
            })
            .await;
        assert_eq!(span.service, "trusting");
        let instance = span
            .resource
            .iter()
            .find(|(k, _)| k == "service.instance.id")
            .map(|(_, v)| v.clone())
            .expect("service.instance.id");
        assert_eq!(instance.len(), 36, "a UUID: {instance}");
        instances.push(instance);
    }
    assert_ne!(instances[0], instances[1], "replicas told apart");
    assert!(
        receiver.spans().iter().all(|s| s.service == "trusting"),
        "the untrusting relay exported nothing"
    );
}

/// A certificate variable naming a file that is not there stops the relay at start-up, naming
/// the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_otlp_certificate_refuses_to_start() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .arg("serve")
        .env_clear()
        .env("RELAY_NATS_URL", "nats://127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4318")
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("exits")
        .expect("runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}
