//! The OTLP trace exporter the standard `OTEL_*` variables describe, over plain HTTP/gRPC or TLS.
//!
//! TLS (an `https://` endpoint) uses rustls with the ring provider and the platform's trusted
//! certificates. opentelemetry-otlp reads endpoint, headers, timeout and compression from the
//! environment but not the certificate variables of the OTLP exporter specification, so they are
//! read here: `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM CA bundle trusted besides the platform's)
//! and `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CLIENT_KEY` (mutual TLS),
//! each with its `OTEL_EXPORTER_OTLP_TRACES_*` override.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

use crate::config::ConfigError;

/// Service name when `OTEL_SERVICE_NAME` does not say otherwise.
const DEFAULT_SERVICE_NAME: &str = "sse-relay";

/// A variable's value, unless unset or blank.
fn set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The traces-specific variable if set, else the generic one: (name, value).
fn traces_or_generic(suffix: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
        format!("OTEL_EXPORTER_OTLP_{suffix}"),
    ]
    .into_iter()
    .find_map(|name| set(&name).map(|value| (name, value)))
}

/// PEM material named by a certificate variable.
struct Pem {
    variable: String,
    bytes: Vec<u8>,
}

fn read_pem(suffix: &str) -> Result<Option<Pem>, ConfigError> {
    let Some((variable, path)) = traces_or_generic(suffix) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path)
        .map_err(|e| ConfigError::new(&variable, format!("cannot read '{path}': {e}")))?;
    Ok(Some(Pem { variable, bytes }))
}

/// What TLS needs beyond the platform's roots.
struct TlsFiles {
    ca: Option<Pem>,
    client: Option<(Pem, Pem)>,
}

impl TlsFiles {
    fn from_env() -> Result<TlsFiles, ConfigError> {
        let ca = read_pem("CERTIFICATE")?;
        let client = match (read_pem("CLIENT_CERTIFICATE")?, read_pem("CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    &cert.variable,
                    "a client certificate needs OTEL_EXPORTER_OTLP_CLIENT_KEY too",
                ))
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    &key.variable,
                    "a client key needs OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE too",
                ))
            }
        };
        Ok(TlsFiles { ca, client })
    }

    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// A blocking HTTP client trusting the extra CA and presenting the client certificate.
    /// Built on its own thread: reqwest's blocking client may not be built inside a runtime.
    fn http_client(self) -> Result<reqwest::blocking::Client, ConfigError> {
        let timeout = traces_or_generic("TIMEOUT")
            .and_then(|(_, ms)| ms.trim().parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(ca) = &self.ca {
            for cert in reqwest::Certificate::from_pem_bundle(&ca.bytes).map_err(|e| {
                ConfigError::new(&ca.variable, format!("not a PEM certificate: {e}"))
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.client {
            let identity = reqwest::Identity::from_pem(&[&cert.bytes[..], &key.bytes[..]].concat())
                .map_err(|e| {
                    ConfigError::new(
                        &cert.variable,
                        format!("not a PEM certificate and key: {e}"),
                    )
                })?;
            builder = builder.identity(identity);
        }
        std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| {
                ConfigError::new(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "building the client panicked",
                )
            })?
            .map_err(|e| {
                ConfigError::new(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("cannot build the HTTPS client: {e}"),
                )
            })
    }

    /// gRPC's TLS settings: the platform's roots, plus the extra CA and client certificate.
    fn tonic_config(self) -> opentelemetry_otlp::tonic_types::transport::ClientTlsConfig {
        use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = self.ca {
            config = config.ca_certificate(Certificate::from_pem(ca.bytes));
        }
        if let Some((cert, key)) = self.client {
            config = config.identity(Identity::from_pem(cert.bytes, key.bytes));
        }
        config
    }
}

/// The tracer provider the `OTEL_*` variables describe, or `None` without an endpoint.
pub(super) fn provider() -> Result<Option<SdkTracerProvider>, ConfigError> {
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let Some((_, endpoint)) = traces_or_generic("ENDPOINT") else {
        return Ok(None);
    };
    // rustls needs a process-wide crypto provider; ring is the one already built for NATS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (variable, protocol) = traces_or_generic("PROTOCOL").unwrap_or_else(|| {
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
            "http/protobuf".to_owned(),
        )
    });
    let bad = |reason: String| ConfigError::new(&variable, reason);
    let tls = TlsFiles::from_env()?;
    let https = endpoint.trim_start().starts_with("https://");
    // Endpoint, headers and timeout come from the OTEL_EXPORTER_OTLP_* variables themselves.
    let exporter = match protocol.as_str() {
        "grpc" => {
            let builder = SpanExporter::builder().with_tonic();
            if https {
                builder.with_tls_config(tls.tonic_config()).build()
            } else {
                builder.build()
            }
        }
        "http/protobuf" => {
            let builder = SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if tls.is_empty() {
                builder.build()
            } else {
                builder.with_http_client(tls.http_client()?).build()
            }
        }
        other => {
            return Err(bad(format!(
                "'{other}' is not supported; use grpc or http/protobuf"
            )))
        }
    }
    .map_err(|e| bad(format!("cannot build the OTLP exporter: {e}")))?;
    // The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (SDK default:
    // parentbased_always_on); batching from OTEL_BSP_*.
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build(),
    ))
}

/// The process's resource: the SDK's (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with
/// `service.name` defaulting to `sse-relay` and a `service.instance.id` unique to this process
/// unless given, so replicas are told apart in a trace view.
fn resource() -> Resource {
    let attributes = set("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let given = |key: &str| {
        attributes
            .split(',')
            .any(|pair| pair.split('=').next().map(str::trim) == Some(key))
    };
    let mut resource = Resource::builder();
    if set("OTEL_SERVICE_NAME").is_none() && !given("service.name") {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    if !given("service.instance.id") {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance_id()));
    }
    resource.build()
}

/// A random UUID (version 4), as the semantic conventions recommend for `service.instance.id`.
fn instance_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::instance_id;

    #[test]
    fn instance_ids_are_version_4_uuids_and_differ() {
        let (a, b) = (instance_id(), instance_id());
        assert_ne!(a, b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'), "{a}");
        assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{a}");
    }
}
