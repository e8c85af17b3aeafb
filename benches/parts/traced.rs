//! The `traced` part of `make bench`: the cost of tracing every delivery — per mode, the same
//! row without and with `always_on` sampling, spans exported over OTLP/HTTP to a local sink that
//! discards them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::report::{Report, Settings};
use super::rows::{fresh_row, Load, Row};

pub async fn run(settings: &Settings, report: &mut Report) {
    let Settings {
        quick,
        modes,
        seconds,
        ..
    } = settings;
    // Tracing cost: every delivery traced (always_on) and exported to a local sink.
    let (endpoint, exported) = otlp_sink().await;
    let c = if *quick { 500 } else { 1000 };
    let rate = if *quick { 200 } else { 1000 };
    report.emit(String::new());
    report.emit("Tracing at full sampling (always_on), exported over OTLP/HTTP to a local sink that discards it:\n".to_owned());
    report.emit(Row::header());
    let mut notes = Vec::new();
    for &mode in modes {
        let exported_before = exported.load(Ordering::Relaxed);
        for traced in [false, true] {
            let env: Vec<(&str, String)> = if traced {
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                    ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
                    ("OTEL_BSP_MAX_QUEUE_SIZE", "65536".to_owned()),
                ]
            } else {
                Vec::new()
            };
            let label = if traced {
                format!("{mode}+traces")
            } else {
                mode.to_owned()
            };
            let load = Load::default_subjects(c, rate, *seconds);
            let row = fresh_row(mode, label, &env, load).await;
            report.emit(row.line());
            report.tally.add("traced", row.lost, row.duplicated);
        }
        notes.push(format!(
            "({mode}: spans exported to the sink: {:.1} MiB of OTLP protobuf)",
            (exported.load(Ordering::Relaxed) - exported_before) as f64 / 1048576.0
        ));
    }
    report.emit(String::new());
    for note in notes {
        report.emit(note);
    }
}

/// An OTLP/HTTP endpoint that accepts and discards spans: the cost of tracing without a collector
/// on the same cores.
pub async fn otlp_sink() -> (String, Arc<AtomicUsize>) {
    let bytes = Arc::new(AtomicUsize::new(0));
    let counter = bytes.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(body.len(), Ordering::Relaxed);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    (format!("http://{addr}"), bytes)
}
