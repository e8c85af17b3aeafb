//! Telemetry: logs (a `tracing` subscriber writing JSON or pretty lines to stderr, filtered by
//! `RELAY_LOG`; stdout is kept for command output such as `publish`'s JSON line) and Prometheus
//! metrics ([`metrics`]).

pub mod metrics;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, LogFormat};

/// Installs the global subscriber. A filter that does not parse is a configuration error.
pub fn init(filter: &str, format: LogFormat) -> Result<(), ConfigError> {
    let filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| ConfigError {
            variable: "RELAY_LOG".into(),
            reason: format!("invalid filter '{filter}': {e}"),
        })?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // Already installed (a second init in one process) is harmless.
    let _ = result;
    Ok(())
}
