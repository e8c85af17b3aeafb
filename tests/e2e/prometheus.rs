//! A real Prometheus (Debian's `prometheus` package; `make test` installs it) scrapes a running
//! relay with the chart's alerts loaded (`helm/sse-relay/files/alerts.yaml`): every alert rule
//! evaluates without error, every query of the dashboard (`files/dashboard.json`) runs, and every
//! `relay_*` series they name exists — a typo in an alert cannot hide until the day it should
//! fire.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

/// Series the alerts take from kube-state-metrics, not from the relay.
const KUBE_STATE_METRICS: &[&str] = &[
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_last_terminated_reason",
];

fn prometheus_bin() -> PathBuf {
    let bin = PathBuf::from("/usr/bin/prometheus");
    assert!(
        bin.is_file(),
        "{} missing: `make test` installs Debian's prometheus (apt-get install prometheus)",
        bin.display()
    );
    bin
}

fn chart_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("helm/sse-relay/files")
        .join(name)
}

/// The metric names an expression mentions (`relay_*`, `kube_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            let is_metric = (word.starts_with("relay_") || word.starts_with("kube_"))
                && c != '='
                && !names.contains(&word);
            if is_metric {
                names.push(word.clone());
            }
            word.clear();
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(r#"sum by (pod) (rate(relay_x_total{reason="a"}[5m])) / on (pod) relay_y"#),
        vec!["relay_x_total", "relay_y"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_and_the_dashboard_name_only_series_the_relay_exports() {
    let bin = prometheus_bin();
    let nats = Nats::start().await;
    let relay = Relay::start_in(Fanout::Shared, &nats.url(), &[]).await;
    // A relay in service: a stream, an event, a poll (request counters appear with requests).
    let mut client = SseClient::connect(&relay.url("/v1/deployments/d-prom/events"), None).await;
    let seq = Publisher::connect(&nats.url())
        .await
        .deploy("d-prom", "{}")
        .await;
    assert_eq!(ids(&client.events(1).await), vec![seq]);
    let (status, _) = get_json(&relay.url("/v1/deployments/d-prom/timeline")).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{alerts:?}]\n\
             scrape_configs:\n  - job_name: sse-relay\n    static_configs:\n      - targets: [\"{admin}\"]\n        labels: {{namespace: test, pod: relay-0}}\n",
            alerts = chart_file("alerts.yaml"),
            admin = relay.admin,
        ),
    )
    .expect("write the configuration");
    let port = free_port();
    let mut command = tokio::process::Command::new(bin);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null());
    let _prometheus = Proc::spawn(&mut command);
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: &str| {
        let url = format!(
            "{api}/query?query={}",
            form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        );
        async move {
            let answer = http().get(&url).send().await.ok()?;
            answer.json::<serde_json::Value>().await.ok()
        }
    };

    // Scraped, and every rule evaluated at least once without an error.
    let deadline = Instant::now() + WAIT * 2;
    let rules = loop {
        let up = query(r#"up{job="sse-relay"}"#).await;
        let scraped = up
            .as_ref()
            .is_some_and(|v| v["data"]["result"][0]["value"][1] == "1");
        let rules = match http().get(format!("{api}/rules")).send().await {
            Ok(answer) => answer.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let rules: Vec<serde_json::Value> = rules
            .iter()
            .flat_map(|r| r["data"]["groups"].as_array().cloned().unwrap_or_default())
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = !rules.is_empty()
            && rules.iter().all(|r| {
                !r["lastEvaluation"]
                    .as_str()
                    .unwrap_or("0001")
                    .starts_with("0001")
            });
        if scraped && evaluated {
            break rules;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape and evaluate in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rules.len(), 12, "every alert of files/alerts.yaml loaded");
    for rule in &rules {
        assert_eq!(
            rule["health"], "ok",
            "{}: {}",
            rule["name"], rule["lastError"]
        );
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_file("dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let panel_queries: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").to_owned())
        .collect();
    assert!(panel_queries.len() >= 8);
    let rule_queries = rules
        .iter()
        .map(|r| r["query"].as_str().expect("query").to_owned());

    for expr in rule_queries.chain(panel_queries) {
        let answer = query(&expr).await.expect("Prometheus answers");
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{expr} names no series");
        for name in names {
            if name.starts_with("kube_") {
                assert!(
                    KUBE_STATE_METRICS.contains(&name.as_str()),
                    "{expr}: {name}"
                );
                continue;
            }
            let url = format!("{api}/series?match[]={name}");
            let series: serde_json::Value = http()
                .get(&url)
                .send()
                .await
                .expect("series")
                .json()
                .await
                .expect("JSON");
            assert!(
                series["data"].as_array().is_some_and(|s| !s.is_empty()),
                "{expr} names {name}, which the relay does not export"
            );
        }
    }
}
