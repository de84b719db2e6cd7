//! End to end through the real binary: `orderflow run` on its embedded Kafka-API broker and
//! embedded store, driven over HTTP, observed over HTTP, the Kafka protocol and the file sink.

use crate::common;

use common::{keyed, order_body, read_topic, Pipeline};
use orderflow_schemas::{wire, Event, OrderAccepted, OrderInvoiced, OrderPaid, OrderValidated};
use rdkafka::{
    message::{Headers, OwnedMessage},
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig, Message,
};
use serde_json::{json, Value};

fn statuses(order: &Value) -> Vec<String> {
    order["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap().to_string())
        .collect()
}

/// Decodes the message of `topic` keyed by the order, checking the Confluent frame.
fn find<E: Event>(messages: &[OwnedMessage], order_id: &str) -> Option<E> {
    messages
        .iter()
        .filter(|m| keyed(m, order_id))
        .map(|m| {
            let payload = m.payload().unwrap();
            assert_eq!(payload[0], 0, "magic byte");
            assert_eq!(
                u32::from_be_bytes(payload[1..5].try_into().unwrap()),
                E::SCHEMA_ID
            );
            wire::decode::<E>(payload).expect("decodes with its schema")
        })
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_reaches_invoiced_with_its_timeline_events_and_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    let response = p
        .post_order(&order_body("MUG-001", 2, "tok_visa"), None)
        .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let id = body["order_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/orders/{id}"));

    let order = p.wait_for_status(&id, "invoiced").await;
    assert_eq!(
        statuses(&order),
        ["accepted", "validated", "paid", "invoiced"]
    );
    // 2 × 12.50, plus 20% tax.
    assert_eq!(order["subtotal_cents"], 2500);
    assert_eq!(order["tax_cents"], 500);
    assert_eq!(order["total_cents"], 3000);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["lines"][0]["name"], "Orderflow mug");
    assert!(order["invoice_number"]
        .as_str()
        .unwrap()
        .starts_with("INV-"));
    for entry in order["timeline"].as_array().unwrap() {
        assert!(entry["at"].as_str().unwrap().ends_with('Z'), "{entry}");
    }

    // The events are on the topics, keyed by order id, Avro in the Confluent frame.
    let bootstrap = p.bootstrap.clone();
    let (accepted, validated, paid, invoiced) = tokio::task::spawn_blocking(move || {
        let until = |id: &str| {
            let id = id.to_string();
            move |ms: &[OwnedMessage]| ms.iter().any(|m| keyed(m, &id))
        };
        (
            read_topic(&bootstrap, "orders.accepted", until(&id)),
            read_topic(&bootstrap, "orders.validated", until(&id)),
            read_topic(&bootstrap, "orders.paid", until(&id)),
            read_topic(&bootstrap, "orders.invoiced", until(&id)),
        )
    })
    .await
    .unwrap();
    let id = body["order_id"].as_str().unwrap();
    let a: OrderAccepted = find(&accepted, id).unwrap();
    assert_eq!(a.items[0].sku, "MUG-001");
    assert_eq!(a.shipping_address.city, "Berlin");
    let v: OrderValidated = find(&validated, id).unwrap();
    assert_eq!(v.total_cents, 3000);
    let paid: OrderPaid = find(&paid, id).unwrap();
    assert_eq!(paid.total_cents, 3000);
    let inv: OrderInvoiced = find(&invoiced, id).unwrap();
    assert_eq!(
        inv.invoice_number,
        order["invoice_number"].as_str().unwrap()
    );
    assert_eq!(inv.event_id, format!("{id}:invoiced"));

    // The file sink holds the customer's notifications, one of each (they come from different
    // topics, so in either order).
    let mine = |all: &[serde_json::Value]| -> Vec<String> {
        let mut kinds: Vec<String> = all
            .iter()
            .filter(|n| n["order_id"] == id)
            .map(|n| n["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.sort();
        kinds
    };
    let notes = p.wait_for_notifications(|all| mine(all).len() >= 2).await;
    assert_eq!(mine(&notes), ["invoice_ready", "order_confirmed"]);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_declined_orders_say_why_and_release_stock() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    let unknown = p.place(&order_body("NOPE-404", 1, "tok_visa")).await;
    let order = p.wait_for_status(&unknown, "rejected").await;
    assert_eq!(statuses(&order), ["accepted", "rejected"]);
    assert!(order["timeline"][1]["detail"]
        .as_str()
        .unwrap()
        .contains("NOPE-404"));

    // Only 3 limited prints exist.
    let greedy = p.place(&order_body("LIMITED-001", 4, "tok_visa")).await;
    let order = p.wait_for_status(&greedy, "rejected").await;
    assert!(order["timeline"][1]["detail"]
        .as_str()
        .unwrap()
        .contains("available"));
    assert_eq!(p.stock("LIMITED-001").await, 3);

    // A declined card gives the reserved stock back.
    let before = p.stock("HOODIE-001").await;
    let declined = p.place(&order_body("HOODIE-001", 5, "tok_decline")).await;
    let order = p.wait_for_status(&declined, "payment_failed").await;
    assert_eq!(
        statuses(&order),
        ["accepted", "validated", "payment_failed"]
    );
    assert_eq!(order["timeline"][2]["detail"], "card declined");
    assert_eq!(p.stock("HOODIE-001").await, before);

    // A paid order keeps its stock.
    let paid = p.place(&order_body("HOODIE-001", 5, "tok_visa")).await;
    p.wait_for_status(&paid, "invoiced").await;
    assert_eq!(p.stock("HOODIE-001").await, before - 5);

    let notes = p
        .wait_for_notifications(|all| {
            all.iter()
                .any(|n| n["order_id"] == declined && n["kind"] == "payment_failed")
                && all
                    .iter()
                    .any(|n| n["order_id"] == unknown && n["kind"] == "order_rejected")
        })
        .await;
    assert!(notes
        .iter()
        .any(|n| n["order_id"] == greedy && n["kind"] == "order_rejected"));
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_order_and_never_a_second_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let before = p.stock("TEE-001").await;
    let body = order_body("TEE-001", 2, "tok_visa");

    let first = p.post_order(&body, Some("key-1")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let id = first["order_id"].as_str().unwrap().to_string();
    p.wait_for_status(&id, "invoiced").await;

    let again = p.post_order(&body, Some("key-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["order_id"], id.as_str());
    assert_eq!(again["status"], "invoiced");

    // The same key for another request is refused, naming the header.
    let other = p
        .post_order(&order_body("TEE-001", 3, "tok_visa"), Some("key-1"))
        .await;
    assert_eq!(other.status(), 422);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "header:Idempotency-Key");

    // Stock was taken once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(p.stock("TEE-001").await, before - 2);
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let valid = order_body("MUG-001", 1, "tok_visa");
    let with = |path: &[&str], value: Value| {
        let mut v = valid.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut cur = &mut v;
        for key in parents {
            cur = match key.parse::<usize>() {
                Ok(i) => &mut cur[i],
                Err(_) => &mut cur[*key],
            };
        }
        if value.is_null() {
            cur.as_object_mut().unwrap().remove(*last);
        } else {
            cur[*last] = value;
        }
        v.to_string()
    };
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"sku": format!("S{i}"), "quantity": 1}))
        .collect();
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "malformed JSON",
            "{\"customer_id\": ".into(),
            "application/json",
            400,
            "customer_id",
        ),
        (
            "not JSON at all",
            "<order/>".into(),
            "application/json",
            400,
            "body",
        ),
        (
            "unknown field",
            with(&["coupon"], json!("FREE")),
            "application/json",
            422,
            "coupon",
        ),
        (
            "missing field",
            with(&["items"], Value::Null),
            "application/json",
            422,
            "items",
        ),
        (
            "missing nested field",
            with(&["shipping_address", "city"], Value::Null),
            "application/json",
            422,
            "shipping_address.city",
        ),
        (
            "wrong type",
            with(&["items", "0", "quantity"], json!("two")),
            "application/json",
            422,
            "items[0].quantity",
        ),
        (
            "zero quantity",
            with(&["items", "0", "quantity"], json!(0)),
            "application/json",
            422,
            "items[0].quantity",
        ),
        (
            "negative quantity",
            with(&["items", "0", "quantity"], json!(-3)),
            "application/json",
            422,
            "items[0].quantity",
        ),
        (
            "absurd quantity",
            with(&["items", "0", "quantity"], json!(10_000_000_000i64)),
            "application/json",
            422,
            "items[0].quantity",
        ),
        (
            "no items",
            with(&["items"], json!([])),
            "application/json",
            422,
            "items",
        ),
        (
            "too many items",
            with(&["items"], json!(many)),
            "application/json",
            422,
            "items",
        ),
        (
            "bad country",
            with(&["shipping_address", "country"], json!("Germany")),
            "application/json",
            422,
            "shipping_address.country",
        ),
        (
            "empty token",
            with(&["payment", "token"], json!("")),
            "application/json",
            422,
            "payment.token",
        ),
        (
            "wrong content type",
            valid.to_string(),
            "text/plain",
            415,
            "header:Content-Type",
        ),
        (
            "body over 1 MiB",
            format!("{{\"customer_id\": \"{}\"}}", "x".repeat(1024 * 1024 + 1)),
            "application/json",
            413,
            "body",
        ),
    ];
    for (name, body, content_type, status, field) in cases {
        let response = p
            .client
            .post(p.url("/v1/orders"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{name}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status, "{name}");
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no errors in {problem}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{name}: {problem}");
    }

    // Unknown order and unknown route: 404 problems too.
    for path in ["/v1/orders/does-not-exist", "/v2/nothing"] {
        let response = p.client.get(p.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    // Nothing bad reached the pipeline, and it still takes good orders.
    let id = p.place(&valid).await;
    p.wait_for_status(&id, "invoiced").await;
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_goes_to_the_dead_letter_topic_the_stage_goes_on_and_dlq_list_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &p.bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to("orders.accepted")
                .key("poison-1")
                .payload("{\"not\": \"avro\"}"),
        )
        .unwrap();
    producer.flush(std::time::Duration::from_secs(10)).unwrap();

    let id = p.place(&order_body("BOTTLE-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;

    let bootstrap = p.bootstrap.clone();
    let dead = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "orderflow.dead-letter", |ms| {
            ms.iter().any(|m| keyed(m, "poison-1"))
        })
    })
    .await
    .unwrap();
    let m = dead.iter().find(|m| keyed(m, "poison-1")).unwrap();
    assert_eq!(m.payload().unwrap(), b"{\"not\": \"avro\"}");
    let headers = m.headers().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).to_string())
    };
    assert_eq!(header("orderflow-dlq-stage").as_deref(), Some("validation"));
    assert_eq!(
        header("orderflow-dlq-source-topic").as_deref(),
        Some("orders.accepted")
    );
    assert!(header("orderflow-dlq-reason")
        .unwrap()
        .contains("magic byte"));

    // A poison message on a topic the bridge reads too: the payment stage and each of the
    // bridge's sinks (the default routing's one, the file) park it.
    producer
        .send(
            BaseRecord::to("orders.validated")
                .key("poison-2")
                .payload("garbled"),
        )
        .unwrap();
    producer.flush(std::time::Duration::from_secs(10)).unwrap();
    let dlq_list = |json: bool| {
        let mut args = vec!["dlq", "list", "--brokers", p.bootstrap.as_str()];
        if json {
            args.push("--json");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let parked: Vec<Value> = common::poll_until(
        "dlq list",
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(200),
        || async { serde_json::from_str::<Vec<Value>>(&dlq_list(true)).unwrap() },
        |parked| parked.iter().filter(|m| m["key"] == "poison-2").count() >= 2,
    )
    .await;
    let first = parked.iter().find(|m| m["key"] == "poison-1").unwrap();
    assert_eq!(first["topic"], "orderflow.dead-letter", "{first}");
    assert_eq!(first["stage"], "validation", "{first}");
    assert_eq!(first["source_topic"], "orders.accepted", "{first}");
    assert!(
        first["partition"].is_i64() && first["offset"].is_i64(),
        "{first}"
    );
    assert!(first["timestamp_ms"].as_i64().unwrap() > 0, "{first}");
    assert!(
        first["reason"].as_str().unwrap().contains("magic byte"),
        "{first}"
    );
    let mut stages: Vec<(&str, &str)> = parked
        .iter()
        .filter(|m| m["key"] == "poison-2")
        .map(|m| (m["topic"].as_str().unwrap(), m["stage"].as_str().unwrap()))
        .collect();
    stages.sort();
    assert_eq!(
        stages,
        [
            ("orderflow.bridge.dead-letter", "bridge.file"),
            ("orderflow.dead-letter", "payment"),
        ]
    );
    // The table: a header, a line per parked message, a count.
    let table = dlq_list(false);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TOPIC\tPARTITION\tOFFSET"), "{table}");
    assert_eq!(lines.len(), parked.len() + 2, "{table}");
    assert!(
        lines.iter().any(|l| l.contains("poison-1")
            && l.contains("validation")
            && l.contains("magic byte")),
        "{table}"
    );
    assert!(p.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_orders_topics_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    let first = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    let order = p.wait_for_status(&first, "invoiced").await;
    assert_eq!(order["invoice_number"], "INV-00000001");
    p.wait_for_notifications(|all| {
        all.iter()
            .any(|n| n["order_id"] == first.as_str() && n["kind"] == "invoice_ready")
    })
    .await;
    assert!(p.stop().success(), "SIGTERM exits 0");

    let p = Pipeline::start(dir.path());
    let order = p.order(&first).await;
    assert_eq!(order["status"], "invoiced");
    let second = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    let order = p.wait_for_status(&second, "invoiced").await;
    assert_eq!(order["invoice_number"], "INV-00000002");

    // The broker kept the first run's events.
    let bootstrap = p.bootstrap.clone();
    let (a, b) = (first.clone(), second.clone());
    let invoiced = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "orders.invoiced", |ms| {
            ms.iter().any(|m| keyed(m, &a)) && ms.iter().any(|m| keyed(m, &b))
        })
    })
    .await
    .unwrap();
    assert_eq!(invoiced.iter().filter(|m| keyed(m, &first)).count(), 1);

    // Committed offsets held: nothing of the first run was delivered again.
    let notes = p
        .wait_for_notifications(|all| {
            all.iter()
                .any(|n| n["order_id"] == second.as_str() && n["kind"] == "invoice_ready")
        })
        .await;
    let first_notes = notes
        .iter()
        .filter(|n| n["order_id"] == first.as_str())
        .count();
    assert_eq!(
        first_notes, 2,
        "confirmation + invoice, once each: {notes:#?}"
    );
    assert!(p.stop().success());
}

/// One series line of a Prometheus text exposition: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of a Prometheus text exposition.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a series and its value");
        let value: f64 = value.parse().expect("a numeric value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().expect("closing quote") {
                            (_, '\\') => value.push(chars.next().unwrap().1),
                            (i, '"') => break i,
                            (_, c) => value.push(c),
                        }
                    };
                    labels.push((key.to_string(), value));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_string(), labels)
            }
        };
        samples.push((name, labels, value));
    }
    samples
}

/// The sum of the series of `name` that have every label in `want`.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .into_iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_count_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    common::one_invoiced_one_rejected(&p).await;

    // The bridge runs behind the read model: poll until its counts are in too.
    let stage_ok = |stage: &'static str| {
        move |text: &str| {
            metric(
                text,
                "orderflow_stage_messages_total",
                &[("stage", stage), ("outcome", "ok")],
            )
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let text = loop {
        let response = p.client.get(p.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        // Validated, rejected and invoiced reach the bridge's file sink.
        if stage_ok("bridge.file")(&text) >= 3.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge never counted 3 messages:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    assert!(stage_ok("validation")(&text) >= 2.0, "{text}");
    assert!(stage_ok("payment")(&text) >= 1.0, "{text}");
    assert!(stage_ok("invoicing")(&text) >= 1.0, "{text}");
    assert!(
        metric(
            &text,
            "orderflow_http_requests_total",
            &[
                ("route", "/v1/orders"),
                ("method", "POST"),
                ("status", "202")
            ],
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "orderflow_http_requests_total",
            &[("route", "/v1/orders/{id}"), ("status", "200")],
        ) >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "orderflow_orders_accepted_total", &[]) >= 2.0);
    assert!(
        metric(
            &text,
            "orderflow_store_operation_seconds_count",
            &[("operation", "create_order")],
        ) >= 2.0,
        "{text}"
    );
    // Each stage's step is one store call: both orders reserved (one validated, one
    // rejected), one paid, one invoiced.
    for (step, calls) in [
        ("reserve_step", 2.0),
        ("record_payment_step", 1.0),
        ("invoice_step", 1.0),
    ] {
        assert!(
            metric(
                &text,
                "orderflow_store_operation_seconds_count",
                &[("operation", step)],
            ) >= calls,
            "{step}: {text}"
        );
    }
    assert!(
        metric(
            &text,
            "orderflow_stage_batch_size_count",
            &[("stage", "validation")]
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "orderflow_stage_lag_seconds_count",
            &[("stage", "validation")]
        ) >= 2.0
    );
    for status in ["validated", "rejected", "paid", "invoiced"] {
        assert!(
            metric(
                &text,
                "orderflow_order_latency_seconds_count",
                &[("status", status)]
            ) >= 1.0,
            "no latency for {status}:\n{text}"
        );
    }
    assert!(
        metric(
            &text,
            "orderflow_sink_deliveries_total",
            &[("sink", "file"), ("outcome", "sent")]
        ) >= 3.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "orderflow_stage_in_flight",
            &[("stage", "validation")]
        ),
        0.0
    );
}
