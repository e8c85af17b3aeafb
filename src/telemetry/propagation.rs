//! W3C trace context (`traceparent`, `tracestate`) across NATS message headers and HTTP
//! requests, so one trace runs from the worker's publish to every SSE delivery.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Header names are case-insensitive; other publishers may write `Traceparent`.
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .map(|(name, _)| AsRef::<str>::as_ref(name))
            .collect()
    }
}

struct HttpExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the context of `span` into message headers.
pub fn inject_into_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut NatsInjector(headers))
    });
}

/// The publisher's context carried by a message, if it carries a valid one.
pub fn extract_from_nats(headers: Option<&async_nats::HeaderMap>) -> Option<Context> {
    let headers = headers?;
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&NatsExtractor(headers))
    });
    context.span().span_context().is_valid().then_some(context)
}

/// The relay taking a published message in from JetStream: a short `receive <subject>` span,
/// a child of the publisher's span, whose context the deliveries of that message are parented
/// on. One per message per live source: per replica in shared mode (the live tail), per client
/// in consumer mode (each client's consumer). `None` when spans are not exported or the message
/// carries no trace context.
pub fn receive_span(
    subject: &str,
    seq: u64,
    headers: Option<&async_nats::HeaderMap>,
) -> Option<Context> {
    if !super::exporting() {
        return None;
    }
    let publisher = extract_from_nats(headers)?;
    let span = tracing::info_span!(
        parent: None,
        "receive",
        otel.name = %format_args!("receive {subject}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "receive",
        messaging.destination.name = %subject,
        relay.stream_sequence = seq,
    );
    let _ = span.set_parent(publisher);
    Some(span.context())
}

/// The caller's context from an HTTP request's `traceparent`, if valid.
pub fn extract_from_http(headers: &axum::http::HeaderMap) -> Option<Context> {
    let context = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HttpExtractor(headers))
    });
    context.span().span_context().is_valid().then_some(context)
}

/// The trace id of `span` as 32 hex digits, if it is traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    #[test]
    fn traceparent_round_trips_through_nats_headers_case_insensitively() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let context = extract_from_nats(Some(&headers)).expect("valid context");
        let span = context.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_remote() && sc.is_sampled());

        let mut out = async_nats::HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut NatsInjector(&mut out))
        });
        assert_eq!(
            out.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(extract_from_nats(Some(&async_nats::HeaderMap::new())).is_none());
        assert!(extract_from_nats(None).is_none());
    }
}
