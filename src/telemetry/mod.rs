//! Telemetry: logs, traces and metrics.
//!
//! - Logs: a `tracing` subscriber writing JSON or pretty lines to stderr, filtered by `RELAY_LOG`
//!   (stdout is kept for command output such as `publish`'s JSON line). Inside a traced span,
//!   JSON lines carry the span's `trace_id`.
//! - Traces: a `tracing-opentelemetry` layer exporting over OTLP (plain or TLS, see [`otlp`]),
//!   configured only by the standard `OTEL_*` variables. Without `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) there is
//!   no exporter and no per-event span is ever built.
//! - Metrics: Prometheus, see [`metrics`].

pub mod metrics;
mod otlp;
pub mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{ConfigError, LogFormat};

static EXPORTING: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported; hot paths skip building spans nobody will see.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Installs the global subscriber (and the OTLP pipeline when an endpoint is configured).
/// Call inside a Tokio runtime: the gRPC exporter needs one.
pub fn init(filter: &str, format: LogFormat) -> Result<(), ConfigError> {
    let env_filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| ConfigError::new("RELAY_LOG", format!("invalid filter '{filter}': {e}")))?;
    let otel = match otlp::provider()? {
        Some(provider) => {
            let tracer = provider.tracer("sse-relay");
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let _ = PROVIDER.set(provider);
            EXPORTING.store(true, Ordering::Relaxed);
            // Spans of this crate are exported whatever the log filter says.
            let spans = tracing_subscriber::filter::Targets::new()
                .with_target("sse_relay", tracing::Level::INFO);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(spans),
            )
        }
        None => None,
    };
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(env_filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(env_filter)
            .boxed(),
    };
    // Already installed (a second init in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init();
    if exporting() {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(())
}

/// Exports every finished span now (blocking; call from a blocking context).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(err) = provider.force_flush() {
            tracing::warn!(error = %err, "flushing spans failed");
        }
    }
}

/// Flushes and stops the exporter (blocking; call once, outside the runtime's workers).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(err) = provider.shutdown() {
            eprintln!("sse-relay: stopping the trace exporter: {err}");
        }
    }
}
