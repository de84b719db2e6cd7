//! Logs: with `--log-format json`, every line is a JSON object, and the lines written while an
//! order is handled (by the HTTP API, by each stage) carry the order id in their span; the
//! stages' message spans at debug level, a line at info level or above naming its message
//! itself.

use crate::common;

use std::collections::BTreeSet;

use common::{order_body, produce_raw, Pipeline};
use serde_json::Value;

/// The spans a JSON log line was written in (tracing-subscriber's `spans` list, outermost
/// first).
fn spans(line: &Value) -> Vec<&Value> {
    line["spans"]
        .as_array()
        .map(|spans| spans.iter().collect())
        .unwrap_or_default()
}

/// Whether the JSON log file has a line written while the log sink's stage handled `event_type`
/// of `order_id`.
fn log_sink_handled(log_file: &std::path::Path, order_id: &str, event_type: &str) -> bool {
    let text = std::fs::read_to_string(log_file).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|line| {
            spans(&line).into_iter().any(|s| {
                s["name"] == "handle_message"
                    && s["stage"] == "bridge.log"
                    && s["event_type"] == event_type
                    && s["order_id"] == order_id
            })
        })
}

/// A bridge config that routes the notifications to the log sink as well as to the file
/// (the default routing has the file alone); its path, as an argument of `orderflow run`.
fn with_log_sink(dir: &std::path::Path) -> String {
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        r#"
[sinks.log]
type = "log"

[sinks.file]
type = "file"

[[routes]]
events = ["order_validated", "order_rejected", "payment_failed", "order_invoiced"]
sinks = ["log", "file"]
"#,
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_order_id_of_the_request_and_of_each_stage() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("orderflow.log");
    let routing = with_log_sink(dir.path());
    let p = Pipeline::start_logging_to(
        dir.path(),
        &["--log-format", "json", "--bridge-config", &routing],
        // The message spans, each stage's "Message handled." line (debug) in its span, and
        // the API's "Order accepted." (debug) in its request's.
        "info,orderflow::messages=debug,orderflow_kafka=debug,orderflow_ingest::ops=debug",
        &log_file,
    );
    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    let other = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;
    p.wait_for_status(&other, "invoiced").await;
    p.wait_for_notifications(|all| {
        [&id, &other].iter().all(|order| {
            all.iter()
                .any(|n| n["order_id"] == **order && n["kind"] == "invoice_ready")
        })
    })
    .await;
    // The notifications above are the file sink's; the log sink is a stage of its own, which
    // may come to the same events a little later: stop once it has handled both invoices.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ![&id, &other]
        .iter()
        .all(|order| log_sink_handled(&log_file, order, "OrderInvoiced"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log sink did not handle both orders' OrderInvoiced within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(p.stop().success());

    let text = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(!lines.is_empty(), "no log lines");

    // The span of the request that accepted the order.
    let accepted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Order accepted." && l["fields"]["order_id"] == *id)
        .unwrap_or_else(|| panic!("no \"Order accepted.\" line for {id}:\n{text}"));
    let request = spans(accepted)
        .into_iter()
        .find(|s| s["name"] == "http_request")
        .unwrap_or_else(|| panic!("\"Order accepted.\" outside an http_request span: {accepted}"));
    assert_eq!(request["order_id"], *id, "{request}");
    assert_eq!(request["route"], "/v1/orders");
    assert_eq!(request["method"], "POST");

    // Every stage handled the order's events in spans that name the order, what the event was
    // and where it came from.
    let mut handled = BTreeSet::new();
    for line in &lines {
        for span in spans(line) {
            if span["name"] != "handle_message" || span["order_id"] != *id {
                continue;
            }
            assert!(span["partition"].is_i64(), "{span}");
            assert!(span["offset"].is_i64(), "{span}");
            handled.insert((
                span["stage"].as_str().unwrap().to_string(),
                span["event_type"].as_str().unwrap().to_string(),
                span["topic"].as_str().unwrap().to_string(),
            ));
        }
    }
    let expected: BTreeSet<(String, String, String)> = [
        ("validation", "OrderAccepted", "orders.accepted"),
        ("payment", "OrderValidated", "orders.validated"),
        ("invoicing", "OrderPaid", "orders.paid"),
        // The two sinks of the routing, each its own stage.
        ("bridge.file", "OrderValidated", "orders.validated"),
        ("bridge.file", "OrderInvoiced", "orders.invoiced"),
        ("bridge.log", "OrderValidated", "orders.validated"),
        ("bridge.log", "OrderInvoiced", "orders.invoiced"),
    ]
    .into_iter()
    .map(|(s, e, t)| (s.into(), e.into(), t.into()))
    .collect();
    assert_eq!(handled, expected, "stages that logged in a span with {id}");

    // A line in one order's span is about that order: the bridge's notification lines name
    // the order their span names.
    for line in &lines {
        if line["fields"]["message"] != "Notification." {
            continue;
        }
        let span = spans(line)
            .into_iter()
            .find(|s| s["name"] == "handle_message")
            .unwrap_or_else(|| panic!("a notification outside a message span: {line}"));
        assert_eq!(span["order_id"], line["fields"]["order_id"], "{line}");
    }
}

/// A normal start, an order and a clean stop (SIGTERM) log no librdkafka warning (a property
/// given to a client kind it does not apply to is a CONFWARN) and no error at all: none while
/// running, none after "Stopped." (clients that outlive the embedded broker report it down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_and_stop_log_no_warning_from_librdkafka_and_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("orderflow.log");
    let p = Pipeline::start_logging_to(dir.path(), &[], "info", &log_file);
    p.wait_until_ready().await;
    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;
    assert!(p.stop().success());

    let text = std::fs::read_to_string(&log_file).unwrap();
    assert!(text.contains("Stopped."), "no \"Stopped.\" line:\n{text}");
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            let warn_or_error = l.contains(" WARN ") || l.contains(" ERROR ");
            l.contains(" ERROR ") || (warn_or_error && l.contains("rdkafka"))
        })
        .collect();
    assert!(bad.is_empty(), "{}\n---\n{text}", bad.join("\n"));
}

/// At the default level the message spans are off, and the stage's warning about a message it
/// cannot handle names that message itself: order id (its key), event type, stage, and where
/// it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_info_level_a_dead_lettered_message_is_named_by_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("orderflow.log");
    let routing = with_log_sink(dir.path());
    let p = Pipeline::start_logging_to(
        dir.path(),
        &["--log-format", "json", "--bridge-config", &routing],
        "info",
        &log_file,
    );
    produce_raw(
        &p.bootstrap,
        "orders.accepted",
        "poison-1",
        b"not avro".to_vec(),
    )
    .await;
    // An order behind it: its log sink line shows the stages went on.
    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;

    let lines = |text: &str| -> Vec<Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    };
    // The stage's warning, and the log sink's line for the order (a stage of its own, which
    // may come to the order's events a little after it is invoiced).
    let dead_lettered = |lines: &[Value]| -> Option<Value> {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "Dead-lettering message.")
            .cloned()
    };
    let delivered = |lines: &[Value]| {
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "Delivery." && l["fields"]["order_id"] == *id)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let line = loop {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        let all = lines(&text);
        if let (Some(line), true) = (dead_lettered(&all), delivered(&all)) {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no \"Dead-lettering message.\" line, or no log sink line for {id}, within 60 s:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(p.stop().success());

    let fields = &line["fields"];
    assert_eq!(fields["order_id"], "poison-1", "{line}");
    assert_eq!(fields["event_type"], "OrderAccepted", "{line}");
    assert_eq!(fields["stage"], "validation", "{line}");
    assert_eq!(fields["topic"], "orders.accepted", "{line}");
    assert!(fields["offset"].is_i64(), "{line}");
    assert!(
        fields["reason"].as_str().unwrap().contains("magic byte"),
        "{line}"
    );

    // Not one line in a message span.
    let text = std::fs::read_to_string(&log_file).unwrap();
    for l in text.lines() {
        let l: Value = serde_json::from_str(l).unwrap();
        assert!(
            spans(&l).iter().all(|s| s["name"] != "handle_message"),
            "a message span at info level: {l}"
        );
    }
}
