//! Trace context across Kafka (feature `otlp`): the producer writes the current span's W3C
//! trace context into a `traceparent` header, and a stage makes that context the parent of the
//! span it handles the message in. An order's spans then form one trace, from the HTTP request
//! through every stage. Without an exported trace (no OTLP endpoint) no header is written.

use std::collections::HashMap;

use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, OwnedHeaders};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds the current span's trace context (`traceparent`, `tracestate`) to `headers`, if the
/// span is being traced.
pub(crate) fn inject(headers: OwnedHeaders) -> OwnedHeaders {
    match current() {
        Some(carrier) => insert(headers, &carrier),
        None => headers,
    }
}

/// The current span's trace context as headers (`traceparent`, `tracestate`), if the span is
/// being traced.
pub(crate) fn current() -> Option<Vec<(String, String)>> {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(carrier.into_iter().collect())
}

/// Adds trace context headers taken earlier ([`current`]) to `headers`.
pub(crate) fn insert(headers: OwnedHeaders, carrier: &[(String, String)]) -> OwnedHeaders {
    carrier.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

/// Makes the trace context in `headers`, if any, the parent of `span`.
pub(crate) fn set_parent(span: &Span, headers: &[(String, Vec<u8>)]) {
    let carrier: HashMap<String, String> = headers
        .iter()
        .filter(|(key, _)| key == "traceparent" || key == "tracestate")
        .filter_map(|(key, value)| Some((key.clone(), String::from_utf8(value.clone()).ok()?)))
        .collect();
    if carrier.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to link then.
        let _ = span.set_parent(cx);
    }
}
