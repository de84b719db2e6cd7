//! OTLP export (`cargo test --features otlp --test it otlp::`): with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set, `orderflow run` sends its spans over OTLP/HTTP, and an order's spans form one trace,
//! from the HTTP request through every stage (the trace context travels in Kafka headers).

#![cfg(feature = "otlp")]

use crate::common;

use std::collections::{BTreeSet, HashMap};

use common::{order_body, Pipeline};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};
use prost::Message;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::mpsc,
};

/// A minimal OTLP/HTTP collector: answers 200 to every POST and passes on (path, body).
async fn collector() -> (String, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                // Keep-alive: requests one after another on the connection.
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        stream.read_line(&mut line).await.unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let _ = tx.send((path, body));
                    stream
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (endpoint, rx)
}

/// A string attribute of a span.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_spans_are_exported_as_one_trace_across_every_stage() {
    let (endpoint, mut received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start_with_env(
        dir.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "orderflow-test"),
        ],
    );
    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;
    p.wait_for_notifications(|all| {
        all.iter()
            .any(|n| n["order_id"] == *id && n["kind"] == "invoice_ready")
    })
    .await;
    // The exporter sends what it holds when the process exits.
    assert!(p.stop().success());

    let mut spans = Vec::new();
    while let Ok((path, body)) = received.try_recv() {
        assert_eq!(path, "/v1/traces");
        let request = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("an OTLP protobuf trace export");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                });
            assert_eq!(service.as_deref(), Some("orderflow-test"));
            spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    // The request that placed the order and the messages about it (the test's polling
    // `GET /v1/orders/{id}` requests name the order too, each in its own trace).
    let order: Vec<&Span> = spans
        .iter()
        .filter(|s| attribute(s, "order_id").as_deref() == Some(id.as_str()))
        .filter(|s| s.name == "handle_message" || attribute(s, "method").as_deref() == Some("POST"))
        .collect();
    assert!(!order.is_empty(), "no span names order {id}: {spans:#?}");

    // One trace.
    let traces: BTreeSet<&Vec<u8>> = order.iter().map(|s| &s.trace_id).collect();
    let summary: Vec<String> = order
        .iter()
        .map(|s| {
            format!(
                "{} {:?} trace {:02x?} parent {:02x?}",
                s.name,
                attribute(s, "stage"),
                &s.trace_id[..4],
                s.parent_span_id.get(..4)
            )
        })
        .collect();
    assert_eq!(
        traces.len(),
        1,
        "the order's spans are in several traces: {summary:#?}"
    );

    // The request is its root; every stage's span has a parent among the order's spans.
    let by_id: HashMap<&Vec<u8>, &Span> = order.iter().map(|s| (&s.span_id, *s)).collect();
    let roots: Vec<&&Span> = order
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root span");
    assert_eq!(roots[0].name, "http_request");
    assert_eq!(attribute(roots[0], "route").as_deref(), Some("/v1/orders"));
    let mut stages = BTreeSet::new();
    for span in order.iter().filter(|s| s.name == "handle_message") {
        let parent = by_id
            .get(&span.parent_span_id)
            .unwrap_or_else(|| panic!("a stage span without its parent: {span:#?}"));
        let stage = attribute(span, "stage").unwrap();
        // Who produced the event the stage handles.
        let producer = match stage.as_str() {
            "validation" => "http_request",
            _ => "handle_message",
        };
        assert_eq!(parent.name, producer, "{stage}");
        stages.insert(stage);
    }
    assert_eq!(
        stages,
        // The bridge: a stage per sink, and the default routing has one.
        BTreeSet::from(["validation", "payment", "invoicing", "bridge.file"].map(String::from))
    );
}
