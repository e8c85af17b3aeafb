//! Traces as users inspect them: a real Jaeger (the v2 all-in-one, pinned in `tools/jaeger`,
//! built by `make test` into `.tools/bin/jaeger`) receives the relay's and a publisher's spans
//! over OTLP, and its own query API (`/api/v3/traces`) must return one trace from the pipeline
//! worker's publish to every client's delivery.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::support::*;

const CLIENTS: usize = 3;

/// A Jaeger all-in-one on free loopback ports, in-memory storage, OTLP only.
struct Jaeger {
    _proc: Proc,
    _dir: tempfile::TempDir,
    otlp_http: u16,
    query: u16,
}

impl Jaeger {
    async fn start() -> Jaeger {
        let dir = tempfile::tempdir().expect("temp dir");
        let (otlp_http, otlp_grpc, query, query_grpc) =
            (free_port(), free_port(), free_port(), free_port());
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
        );
        let file = dir.path().join("jaeger.yaml");
        std::fs::write(&file, config).expect("jaeger.yaml");
        let mut command = tokio::process::Command::new(built_tool("JAEGER_BIN", "jaeger"));
        command.arg("--config").arg(&file);
        let mut proc = Proc::spawn(&mut command);
        // Ready once its query API answers (the receivers start before it).
        let services = format!("http://127.0.0.1:{query}/api/v3/services");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(response) = http().get(&services).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(
                proc.alive(),
                "jaeger exited at start-up (see its log above)"
            );
            assert!(
                Instant::now() < deadline,
                "jaeger's query API never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Jaeger {
            _proc: proc,
            _dir: dir,
            otlp_http,
            query,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query)
    }

    fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_http)
    }

    /// The traces holding spans of `service` stored from `since` on, as Jaeger's API v3 returns
    /// them: every span of each, with its service.
    async fn traces(&self, service: &str, since: time::OffsetDateTime) -> Vec<Vec<Span>> {
        let fmt = &time::format_description::well_known::Rfc3339;
        let start = since.format(fmt).expect("time");
        let end = (time::OffsetDateTime::now_utc() + time::Duration::minutes(1))
            .format(fmt)
            .expect("time");
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("query.service_name", service)
            .append_pair("query.start_time_min", &start)
            .append_pair("query.start_time_max", &end)
            .append_pair("query.num_traces", "20")
            .finish();
        let response = http()
            .get(self.url(&format!("/api/v3/traces?{query}")))
            .send()
            .await
            .expect("jaeger query");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON");
        if status == 404 {
            return Vec::new(); // no trace yet
        }
        assert_eq!(status, 200, "{body}");
        let mut by_trace: HashMap<String, Vec<Span>> = HashMap::new();
        for resource in body["result"]["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let service =
                attribute(&resource["resource"]["attributes"], "service.name").unwrap_or_default();
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let span = Span::of(span, &service);
                    by_trace
                        .entry(span.trace_id.clone())
                        .or_default()
                        .push(span);
                }
            }
        }
        by_trace.into_values().collect()
    }
}

/// What the test reads of one span.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: String,
    service: String,
    attributes: Value,
}

impl Span {
    fn of(span: &Value, service: &str) -> Span {
        let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
        Span {
            trace_id: text("traceId"),
            span_id: text("spanId"),
            parent: text("parentSpanId"),
            name: text("name"),
            kind: span["kind"].to_string(),
            service: service.to_owned(),
            attributes: span["attributes"].clone(),
        }
    }

    fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.attributes, key)
    }
}

/// An OTLP JSON attribute's value as text (strings as they are, numbers as written).
fn attribute(attributes: &Value, key: &str) -> Option<String> {
    let value = &attributes.as_array()?.iter().find(|a| a["key"] == key)?["value"];
    value["stringValue"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| value["intValue"].as_str().map(str::to_owned))
        .or_else(|| value["intValue"].as_i64().map(|n| n.to_string()))
}

both_modes! {
async fn jaeger_shows_one_trace_from_the_publish_to_every_delivery(mode) {
    let jaeger = Jaeger::start().await;
    let nats = Nats::start().await;
    let otel = |service: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), jaeger.otlp_endpoint()),
            ("OTEL_SERVICE_NAME".to_owned(), service.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ]
    };
    let relay_env = otel("sse-relay");
    let relay_refs: Vec<(&str, &str)> =
        relay_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = Relay::start_in(mode, &nats.url(), &relay_refs).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(SseClient::connect(&relay.url("/v1/deployments/d-jaeger/events"), None).await);
    }
    let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args(["publish", "--deployment", "d-jaeger", "--data", r#"{"stage":"argocd_sync"}"#])
        .env_clear()
        .env("RELAY_NATS_URL", nats.url())
        .envs(otel("pipeline-worker"))
        .output()
        .await
        .expect("publish runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON line");
    let seq = report["deploy_seq"].as_u64().expect("deploy_seq").to_string();
    for client in &mut clients {
        assert_eq!(client.next_event().await.id.as_deref(), Some(seq.as_str()));
    }

    // Searched as a user would: the worker's service over the last minutes. Spans arrive in
    // batches, so the trace is read again until every delivery is in it.
    let receives = match mode {
        Fanout::Shared => 1,        // the replica's live tail took it in once
        Fanout::Consumer => CLIENTS, // each client's own consumer did
    };
    let deadline = Instant::now() + WAIT;
    let trace = loop {
        let traces = jaeger.traces("pipeline-worker", since).await;
        let complete = traces.iter().find(|spans| {
            spans.iter().filter(|s| s.name == "deliver deploy.d-jaeger").count() == CLIENTS
                && spans.iter().filter(|s| s.name == "receive deploy.d-jaeger").count() == receives
        });
        if let Some(trace) = complete {
            assert_eq!(traces.len(), 1, "one trace for one publish: {traces:#?}");
            break trace.clone();
        }
        assert!(Instant::now() < deadline, "no complete trace in Jaeger: {traces:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let named = |name: &str| -> Vec<&Span> { trace.iter().filter(|s| s.name == name).collect() };
    let [root] = named("sse-relay publish")[..] else { panic!("one publish command span: {trace:#?}") };
    let [publish] = named("publish deploy.d-jaeger")[..] else { panic!("one publish span: {trace:#?}") };
    assert_eq!(root.service, "pipeline-worker");
    assert_eq!(publish.service, "pipeline-worker");
    assert_eq!(publish.parent, root.span_id, "the publish is the command's child");
    assert!(publish.kind.contains("PRODUCER") || publish.kind == "4", "{publish:?}");
    assert_eq!(publish.attr("relay.stream_sequence").as_deref(), Some(seq.as_str()));
    assert_eq!(publish.attr("messaging.destination.name").as_deref(), Some("deploy.d-jaeger"));

    let receive_ids: Vec<&str> = named("receive deploy.d-jaeger")
        .iter()
        .map(|receive| {
            assert_eq!(receive.service, "sse-relay");
            assert_eq!(receive.parent, publish.span_id, "receive is the publish's child");
            assert!(receive.kind.contains("CONSUMER") || receive.kind == "5", "{receive:?}");
            assert_eq!(receive.attr("relay.stream_sequence").as_deref(), Some(seq.as_str()));
            receive.span_id.as_str()
        })
        .collect();
    let mut connections = Vec::new();
    for deliver in named("deliver deploy.d-jaeger") {
        assert_eq!(deliver.service, "sse-relay");
        assert!(receive_ids.contains(&deliver.parent.as_str()), "deliver is a receive's child: {deliver:?}");
        assert_eq!(deliver.attr("relay.stream_sequence").as_deref(), Some(seq.as_str()));
        connections.push(deliver.attr("relay.connection_id").expect("relay.connection_id"));
    }
    connections.sort();
    connections.dedup();
    assert_eq!(connections.len(), CLIENTS, "one delivery per client");
    if mode == Fanout::Consumer {
        // Each client's consumer received it: one receive parents exactly one delivery.
        let mut parents: Vec<&str> = named("deliver deploy.d-jaeger").iter().map(|d| d.parent.as_str()).collect();
        parents.sort();
        parents.dedup();
        assert_eq!(parents.len(), CLIENTS);
    }
}
}
