//! The bridge's AWS sinks end to end: the real `orderflow run --bridge-config …` binary against
//! moto's AWS emulator (SQS and SES), both started by the test on loopback ports; and the
//! sinks' isolation from each other, with a webhook receiver in the test.

use crate::common;

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use common::{
    keyed,
    moto::{attribute, body, sent_to, Moto},
    order_body, produce_raw, read_topic, Pipeline,
};
use orderflow_kafka::consume::dlq_headers;
use rdkafka::{
    message::{Headers, OwnedMessage},
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig, Message,
};
use serde_json::Value;

const AWS_LOCAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/bridge/aws-local.toml");
const CUSTOMER_EMAIL: &str = "cust-1@customers.example";

fn start(dir: &Path, config: &Path, moto: &Moto) -> Pipeline {
    Pipeline::start_with_env(
        dir,
        &["--bridge-config", config.to_str().unwrap()],
        &moto.env(),
    )
}

/// Receives from `queue` until a message for `order_id` is there: that message, and every
/// message received meanwhile.
async fn message_for(
    moto: &Moto,
    queue: &str,
    order_id: &str,
) -> (
    aws_sdk_sqs::types::Message,
    Vec<aws_sdk_sqs::types::Message>,
) {
    let for_order =
        |m: &aws_sdk_sqs::types::Message| attribute(m, "order_id").as_deref() == Some(order_id);
    let messages = moto
        .receive_until(queue, |ms| ms.iter().any(for_order))
        .await;
    let m = messages.iter().find(|m| for_order(m)).unwrap().clone();
    (m, messages)
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("bridge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// SQS messages by their `event_id` attribute, counting repeats.
fn by_event_id(messages: &[aws_sdk_sqs::types::Message]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in messages {
        *seen
            .entry(attribute(m, "event_id").unwrap_or_default())
            .or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_shows_up_as_sqs_messages_and_emails_to_its_customer() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The config the README shows, as shipped: it provisions queues and the sender.
    let p = start(dir.path(), Path::new(AWS_LOCAL), &moto);
    let ready = p.wait_until_ready().await;
    assert_eq!(ready["sinks"], "ok", "{ready}");

    let id = p.place(&order_body("MUG-001", 2, "tok_visa")).await;
    let order = p.wait_for_status(&id, "invoiced").await;
    let declined = p.place(&order_body("MUG-001", 1, "tok_decline")).await;
    p.wait_for_status(&declined, "payment_failed").await;

    // Created orders: the standard queue, the event as JSON, attributes to filter on.
    let created = moto.queue_url("orderflow-orders-created").await;
    let (m, _) = message_for(&moto, &created, &id).await;
    let m = &m;
    assert_eq!(
        attribute(m, "event_type").as_deref(),
        Some("order_accepted")
    );
    assert_eq!(attribute(m, "event_id"), Some(format!("{id}:accepted")));
    assert_eq!(attribute(m, "schema_id").as_deref(), Some("1"));
    let event = body(m);
    assert_eq!(event["type"], "order_accepted");
    assert_eq!(event["order_id"], id.as_str());
    assert_eq!(event["data"]["items"][0]["sku"], "MUG-001");

    // Paid orders: the FIFO queue, one group per order, deduplicated by event id.
    let paid = moto.queue_url("orderflow-orders-paid.fifo").await;
    let (m, messages) = message_for(&moto, &paid, &id).await;
    let m = &m;
    let system = m.attributes().unwrap();
    assert_eq!(
        system
            .get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
            .map(String::as_str),
        Some(id.as_str())
    );
    assert_eq!(
        system
            .get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageDeduplicationId)
            .cloned(),
        Some(format!("{id}:paid"))
    );
    assert_eq!(body(m)["data"]["total_cents"], 3000);
    // The declined order was never paid.
    assert!(!messages
        .iter()
        .any(|m| attribute(m, "order_id").as_deref() == Some(&declined)));

    // Emails: confirmation and invoice for the first order, payment failed for the second.
    let invoice = order["invoice_number"].as_str().unwrap().to_string();
    let emails = moto
        .emails_until(|es| {
            let subjects: Vec<&str> = es.iter().filter_map(|e| e["subject"].as_str()).collect();
            subjects.contains(&format!("Your order {id} is confirmed").as_str())
                && subjects.contains(&format!("Invoice {invoice} for your order {id}").as_str())
                && subjects.contains(&format!("Payment for your order {declined} failed").as_str())
        })
        .await;
    for e in &emails {
        assert!(sent_to(e, CUSTOMER_EMAIL), "{e}");
        assert_eq!(e["source"], "Orderflow <orders@orderflow.example>");
    }
    let confirmation = emails
        .iter()
        .find(|e| e["subject"] == format!("Your order {id} is confirmed"))
        .unwrap();
    // moto keeps the HTML part.
    let html = confirmation["body"].as_str().unwrap();
    assert!(html.contains("2 × Orderflow mug"), "{html}");
    assert!(html.contains("30.00 EUR"), "{html}");
    assert!(p.stop().success());
}

/// The AWS sinks over TLS, through the SDK's HTTPS client (rustls with ring): moto behind
/// stunnel with a certificate from a private CA, which the bridge trusts only through
/// `SSL_CERT_FILE` (the client reads the system's trust store, where that variable points).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_sink_reaches_an_https_endpoint_whose_ca_the_trust_store_holds() {
    let Some(stunnel) = crate::managed_kafka::stunnel() else {
        eprintln!(
            "SKIPPED: no stunnel4 on this machine (scripts/test.sh installs it with apt-get when \
             it runs as root)"
        );
        return;
    };
    let moto = Moto::start().await;
    let tls = tempfile::tempdir().unwrap();
    crate::managed_kafka::private_ca(tls.path());
    let (port, _stunnel) = crate::managed_kafka::tls_in_front_of(stunnel, tls.path(), moto.port);
    let mut env: Vec<(&str, String)> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_ENDPOINT_URL")
        .collect();
    env.push(("AWS_ENDPOINT_URL", format!("https://127.0.0.1:{port}")));
    env.push((
        "SSL_CERT_FILE",
        tls.path().join("ca.pem").to_str().unwrap().to_string(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CREATED_ONLY);
    let p = Pipeline::start_with_env(
        dir.path(),
        &["--bridge-config", config.to_str().unwrap()],
        &env,
    );
    let ready = p.wait_until_ready().await;
    assert_eq!(ready["sinks"], "ok", "{ready}");

    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    // Read back over moto's plain port: the message went through the TLS one.
    let created = moto.queue_url("created").await;
    let (m, _) = message_for(&moto, &created, &id).await;
    assert_eq!(body(&m)["type"], "order_accepted");
    assert!(p.stop().success());
}

const CREATED_ONLY: &str = r#"
provision = true
[sinks.orders_created]
type = "sqs"
queue_name = "created"
[[routes]]
events = ["order_accepted"]
sinks = ["orders_created"]
mapping = "event"
"#;

const FIFO_ONLY: &str = r#"
provision = true
[sinks.orders_paid]
type = "sqs"
queue_name = "paid.fifo"
[[routes]]
events = ["order_paid"]
sinks = ["orders_paid"]
"#;

/// Produces messages again, as a producer retry or a replay would.
fn produce_again(bootstrap: &str, messages: &[OwnedMessage]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for m in messages {
        producer
            .send(
                BaseRecord::to(m.topic())
                    .key(m.key().unwrap())
                    .payload(m.payload().unwrap()),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fifo_queue_gets_each_event_once_across_a_restart_and_redelivery() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FIFO_ONLY);
    let data = dir.path().join("data");

    let p = start(&data, &config, &moto);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(p.place(&order_body("STICKER-001", 1, "tok_visa")).await);
    }
    for id in &ids {
        p.wait_for_status(id, "invoiced").await;
    }
    assert!(p.stop().success());

    let p = start(&data, &config, &moto);
    // The paid events come to the bridge again, after the restart.
    let (bootstrap, first) = (p.bootstrap.clone(), ids.clone());
    tokio::task::spawn_blocking(move || {
        let paid = read_topic(&bootstrap, "orders.paid", |ms| {
            first.iter().all(|id| ms.iter().any(|m| keyed(m, id)))
        });
        produce_again(&bootstrap, &paid);
    })
    .await
    .unwrap();
    for _ in 0..5 {
        ids.push(p.place(&order_body("STICKER-001", 1, "tok_visa")).await);
    }
    for id in &ids {
        p.wait_for_status(id, "invoiced").await;
    }
    let queue = moto.queue_url("paid.fifo").await;
    let expected: Vec<String> = ids.iter().map(|id| format!("{id}:paid")).collect();
    let mut messages = moto
        .receive_until(&queue, |ms| {
            let seen = by_event_id(ms);
            expected.iter().all(|e| seen.contains_key(e))
        })
        .await;
    // Anything sent twice would be there by now.
    messages.extend(moto.drain(&queue, Duration::from_secs(3)).await);
    let seen = by_event_id(&messages);
    for e in &expected {
        assert_eq!(seen.get(e), Some(&1), "{e} received once: {seen:?}");
    }
    assert_eq!(messages.len(), expected.len(), "{seen:?}");
    let metrics = p.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("orderflow_sink_deliveries_total{")
                && l.contains("outcome=\"skipped_duplicate\"")
                && l.contains("sink=\"orders_paid\"")),
        "the redelivered events were seen and skipped:\n{metrics}"
    );
    assert!(p.stop().success());
}

const SQS_ONLY: &str = r#"
provision = true
[sinks.created]
type = "sqs"
queue_name = "created"
[sinks.paid]
type = "sqs"
queue_name = "paid.fifo"
[[routes]]
events = ["order_accepted"]
sinks = ["created"]
[[routes]]
events = ["order_paid"]
sinks = ["paid"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_aws_down_the_bridge_retries_and_delivers_everything_once_it_is_back() {
    let mut moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SQS_ONLY);
    let p = start(&dir.path().join("data"), &config, &moto);
    p.wait_until_ready().await;

    moto.stop();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(p.place(&order_body("STICKER-001", 1, "tok_visa")).await);
    }
    // The pipeline goes on without AWS; only the bridge waits.
    for id in &ids {
        p.wait_for_status(id, "invoiced").await;
    }
    // It is retrying (and says so in its readiness).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = p.metrics().await;
        if metrics.lines().any(|l| {
            l.starts_with("orderflow_errors_total{")
                && l.contains("stage=\"bridge.")
                && l.contains("error_type=\"retriable\"")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge never retried:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // AWS is back, empty (moto keeps nothing): the queues are provisioned again.
    moto.restart().await;
    let created = moto.create_queue("created").await;
    let paid = moto.create_queue("paid.fifo").await;

    for (queue, step) in [(&created, "accepted"), (&paid, "paid")] {
        let expected: Vec<String> = ids.iter().map(|id| format!("{id}:{step}")).collect();
        let mut messages = moto
            .receive_until(queue, |ms| {
                let seen = by_event_id(ms);
                expected.iter().all(|e| seen.contains_key(e))
            })
            .await;
        messages.extend(moto.drain(queue, Duration::from_secs(2)).await);
        let seen = by_event_id(&messages);
        for e in &expected {
            assert_eq!(seen.get(e), Some(&1), "{queue}: {e} once: {seen:?}");
        }
    }
    assert!(p.stop().success());
}

const UNVERIFIED_SENDER: &str = r#"
[sinks.email]
type = "ses"
from = "shop@unverified.example"
max_send_rate = 100
[[routes]]
events = ["order_validated"]
sinks = ["email"]
"#;

fn header(m: &OwnedMessage, key: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_poison_events_go_to_the_bridge_dead_letter_topic_and_replay_redrives_them() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), UNVERIFIED_SENDER);
    let p = start(&dir.path().join("data"), &config, &moto);

    // SES refuses the sender (not verified): the event goes to the bridge's dead-letter topic.
    let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
    p.wait_for_status(&id, "invoiced").await;
    // A message on a bridge input that is not an event at all.
    produce_raw(
        &p.bootstrap,
        "orders.validated",
        "poison-1",
        b"not avro".to_vec(),
    )
    .await;

    let (bootstrap, order_id) = (p.bootstrap.clone(), id.clone());
    let dead = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "orderflow.bridge.dead-letter", |ms| {
            ms.iter().any(|m| keyed(m, "poison-1")) && ms.iter().any(|m| keyed(m, &order_id))
        })
    })
    .await
    .unwrap();
    let refused = dead.iter().find(|m| keyed(m, &id)).unwrap();
    let reason = header(refused, dlq_headers::REASON).unwrap();
    assert!(reason.contains("sink email rejected it"), "{reason}");
    assert!(reason.contains("MessageRejected"), "{reason}");
    assert_eq!(
        header(refused, dlq_headers::STAGE).as_deref(),
        Some("bridge.email")
    );
    assert_eq!(
        header(refused, dlq_headers::SOURCE_TOPIC).as_deref(),
        Some("orders.validated")
    );
    let poison = dead.iter().find(|m| keyed(m, "poison-1")).unwrap();
    assert_eq!(poison.payload(), Some(b"not avro".as_slice()));
    assert!(header(poison, dlq_headers::REASON).is_some());
    assert!(moto.emails().await.is_empty());

    // Fix the cause, re-drive the dead letters: the email goes out, once.
    moto.verify_identity("shop@unverified.example").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "dlq",
            "replay",
            "--brokers",
            &p.bootstrap,
            "--idle-secs",
            "5",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The refused event and the poison message, each at least once (a stage may re-emit an
    // event after a rebalance: at least once, deduplicated downstream).
    let replayed: u64 = stdout
        .split_once(": ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout:?}"));
    assert!(replayed >= 2, "{stdout}");
    let subject = format!("Your order {id} is confirmed");
    moto.emails_until(|es| es.iter().any(|e| e["subject"] == subject))
        .await;
    // Time enough for a duplicate, if there were to be one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emails: Vec<Value> = moto.emails().await;
    assert_eq!(
        emails.iter().filter(|e| e["subject"] == subject).count(),
        1,
        "{emails:#?}"
    );
    assert!(p.stop().success());
}

/// A webhook receiver on 127.0.0.1 that answers 503 until told to recover, then 200; it keeps
/// the event id of every request it took, and counts those it refused.
struct Hook {
    url: String,
    up: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    taken: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    async fn start() -> Hook {
        let up = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicUsize::new(0));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let (u, r, t) = (up.clone(), refused.clone(), taken.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let (u, r, t) = (u.clone(), r.clone(), t.clone());
                async move {
                    if !u.load(Ordering::SeqCst) {
                        r.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let id = headers
                        .get("x-orderflow-event-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    t.lock().unwrap().push(id);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hook {
            url,
            up,
            refused,
            taken,
        }
    }

    fn taken(&self) -> Vec<String> {
        self.taken.lock().unwrap().clone()
    }
}

/// The value of one sample of `/metrics` (0 when it is not there).
async fn sample(p: &Pipeline, name: &str, sink: &str) -> f64 {
    let text = p.metrics().await;
    let series = format!("{name}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many times each value occurs.
fn counted<'a>(values: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for v in values {
        *seen.entry(v.to_string()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_503_delays_only_itself_and_then_everything_arrives_once() {
    let moto = Moto::start().await;
    let hook = Hook::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
provision = true
[sinks.hook]
type = "webhook"
url = "{}"
secret = "test-secret"
[sinks.file]
type = "file"
[sinks.created]
type = "sqs"
queue_name = "created"
[sinks.email]
type = "ses"
from = "Shop <shop@orderflow.example>"
recipient = "{{{{ customer_id }}}}@customers.example"
max_send_rate = 100
[[routes]]
events = ["order_accepted"]
sinks = ["created", "hook"]
[[routes]]
events = ["order_validated", "order_invoiced"]
sinks = ["email", "file", "hook"]
"#,
            hook.url
        ),
    );
    let data = dir.path().join("data");
    let p = Pipeline::start_with_env(
        &data,
        &[
            "--bridge-config",
            config.to_str().unwrap(),
            "--kafka-property",
            "statistics.interval.ms=500",
        ],
        &moto.env(),
    );
    p.wait_until_ready().await;

    let placed = std::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(p.place(&order_body("MUG-001", 1, "tok_visa")).await);
    }
    let orders: Vec<Value> =
        futures::future::join_all(ids.iter().map(|id| p.wait_for_status(id, "invoiced"))).await;

    // With the webhook down, the file, SQS and SES get everything.
    p.wait_for_notifications(|ns| {
        ids.iter()
            .all(|id| ns.iter().filter(|n| n["order_id"] == id.as_str()).count() >= 2)
    })
    .await;
    let file_done = placed.elapsed();
    let created = moto.queue_url("created").await;
    moto.receive_until(&created, |ms| {
        let seen = by_event_id(ms);
        ids.iter()
            .all(|id| seen.contains_key(&format!("{id}:accepted")))
    })
    .await;
    let sqs_done = placed.elapsed();
    let mut subjects: Vec<String> = ids
        .iter()
        .zip(&orders)
        .flat_map(|(id, order)| {
            [
                format!("Your order {id} is confirmed"),
                format!(
                    "Invoice {} for your order {id}",
                    order["invoice_number"].as_str().unwrap()
                ),
            ]
        })
        .collect();
    moto.emails_until(|es| {
        subjects
            .iter()
            .all(|s| es.iter().any(|e| e["subject"] == s.as_str()))
    })
    .await;
    let ses_done = placed.elapsed();
    assert!(hook.taken().is_empty());
    assert!(hook.refused.load(Ordering::SeqCst) > 0);

    // The webhook's trouble shows: events retrying, a backlog; the file's backlog drains.
    common::poll_until(
        "the webhook's retry state and backlog, the file's backlog",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            (
                sample(&p, "orderflow_sink_retrying_events", "hook").await,
                sample(&p, "orderflow_sink_backlog_messages", "hook").await,
                sample(&p, "orderflow_sink_backlog_messages", "file").await,
            )
        },
        |&(retrying, hook_backlog, file_backlog)| {
            retrying >= 1.0 && hook_backlog >= 1.0 && file_backlog == 0.0
        },
    )
    .await;

    // Still down, and more orders: they reach the file, SQS and SES as the first did.
    let second = std::time::Instant::now();
    for _ in 0..2 {
        let id = p.place(&order_body("MUG-001", 1, "tok_visa")).await;
        let order = p.wait_for_status(&id, "invoiced").await;
        subjects.push(format!("Your order {id} is confirmed"));
        subjects.push(format!(
            "Invoice {} for your order {id}",
            order["invoice_number"].as_str().unwrap()
        ));
        ids.push(id);
    }
    p.wait_for_notifications(|ns| {
        ids.iter()
            .all(|id| ns.iter().filter(|n| n["order_id"] == id.as_str()).count() >= 2)
    })
    .await;
    moto.receive_until(&created, |ms| {
        let seen = by_event_id(ms);
        ids[3..]
            .iter()
            .all(|id| seen.contains_key(&format!("{id}:accepted")))
    })
    .await;
    moto.emails_until(|es| {
        subjects
            .iter()
            .all(|s| es.iter().any(|e| e["subject"] == s.as_str()))
    })
    .await;
    let second_done = second.elapsed();
    assert!(hook.taken().is_empty());

    // The webhook recovers: it gets every event, and its retry state clears.
    let down_for = placed.elapsed();
    hook.up.store(true, Ordering::SeqCst);
    let expected: Vec<String> = ids
        .iter()
        .flat_map(|id| ["accepted", "validated", "invoiced"].map(|s| format!("{id}:{s}")))
        .collect();
    common::poll_until(
        "the webhook's deliveries",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { hook.taken() },
        |taken| expected.iter().all(|e| taken.contains(e)),
    )
    .await;
    let hook_done = placed.elapsed();
    common::poll_until(
        "the webhook's retry state",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || sample(&p, "orderflow_sink_retrying_events", "hook"),
        |&retrying| retrying == 0.0,
    )
    .await;
    eprintln!(
        "sink isolation: 3 orders; with the webhook answering 503, the file had everything \
         after {file_done:?}, SQS after {sqs_done:?}, SES after {ses_done:?}; 2 more orders \
         placed with the webhook still down reached file, SQS and SES in {second_done:?}; the \
         webhook was down for {down_for:?} ({} requests refused) and had everything {:?} \
         after it recovered",
        hook.refused.load(Ordering::SeqCst),
        hook_done - down_for
    );

    // Stopped, nothing more can arrive: each sink has each event once.
    assert!(p.stop().success());
    let taken = hook.taken();
    let seen = counted(taken.iter().map(String::as_str));
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "webhook: {seen:?}");

    let lines = std::fs::read_to_string(data.join("notifications.jsonl")).unwrap();
    let file: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen = counted(file.iter().filter_map(|n| n["id"].as_str()));
    assert_eq!(seen.len(), 2 * ids.len(), "file: {seen:?}");
    assert!(seen.values().all(|&n| n == 1), "file: {seen:?}");

    let emails = moto.emails().await;
    let seen = counted(emails.iter().filter_map(|e| e["subject"].as_str()));
    for s in &subjects {
        assert_eq!(seen.get(s), Some(&1), "{s}: {seen:?}");
    }
    assert_eq!(emails.len(), subjects.len(), "{seen:?}");

    // Every message the queue took was received above (each once, kept invisible): nothing
    // is left, so nothing was sent twice.
    let left = moto
        .sqs()
        .await
        .get_queue_attributes()
        .queue_url(&created)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = left.attributes().unwrap();
    let count = |name| {
        attributes
            .get(&name)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages),
        0
    );
    assert_eq!(
        count(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ids.len()
    );
}
