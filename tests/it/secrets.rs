//! Secrets stay off the event log: through the real `orderflow run`, card orders (approved and
//! declined), a bank-transfer order and an account registration leave no card token and no
//! verification code on any topic (every topic on the broker, every partition, from the
//! beginning, dead-letter topics included), no card token in the log or the file sink, and the
//! code only in the verification email itself. The orders still get invoiced or fail as they
//! did, the account still verifies with the emailed code, and a card order whose token is gone
//! fails its payment with a clear reason.

use crate::common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{order_body, produce_raw, Pipeline};
use orderflow_schemas::{Address, OrderAccepted, OrderItem, OrderStatus, PaymentMethod};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};
use serde_json::{json, Value};

/// One record of the broker: its topic, and its key, value and headers as bytes.
struct Record {
    topic: String,
    bytes: Vec<u8>,
}

/// Every record of every topic the broker lists (all partitions, from the beginning).
fn every_record(bootstrap: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("secrets-scan-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(None, timeout).unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic.name(), partition.id(), timeout)
                .unwrap();
            if high > low {
                assignment
                    .add_partition_offset(topic.name(), partition.id(), Offset::Offset(low))
                    .unwrap();
                ends.insert((topic.name().to_string(), partition.id()), high);
            }
        }
    }
    assert!(
        metadata
            .topics()
            .iter()
            .any(|t| t.name() == "orderflow.dead-letter"),
        "the broker lists the dead-letter topic"
    );
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "partitions never read to their end: {ends:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut bytes = m.key().unwrap_or_default().to_vec();
                bytes.push(0);
                bytes.extend_from_slice(m.payload().unwrap_or_default());
                if let Some(headers) = m.headers() {
                    use rdkafka::message::Headers;
                    for header in headers.iter() {
                        bytes.push(0);
                        bytes.extend_from_slice(header.key.as_bytes());
                        bytes.push(0);
                        bytes.extend_from_slice(header.value.unwrap_or_default());
                    }
                }
                records.push(Record {
                    topic: m.topic().to_string(),
                    bytes,
                });
            }
            Some(Err(e)) => panic!("reading the broker: {e}"),
            None => {}
        }
        // Done with a partition once the next offset to read is its end (transaction markers
        // and compacted gaps included).
        let positions = consumer.position().unwrap();
        for element in positions.elements() {
            let key = (element.topic().to_string(), element.partition());
            if let (Some(end), Offset::Offset(next)) = (ends.get(&key), element.offset()) {
                if next >= *end {
                    ends.remove(&key);
                }
            }
        }
    }
    records
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Where `code` stands as a word of its own in `text` (not inside a longer run of letters and
/// digits, such as a timestamp's fraction).
fn has_word(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

async fn post(p: &Pipeline, path: &str, body: Value) -> reqwest::Response {
    p.anonymous
        .post(p.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// An order body for `customer` paying with `method` and `token`.
fn paying(customer: &str, method: &str, token: &str) -> Value {
    let mut body = order_body("MUG-001", 1, token);
    body["customer_id"] = json!(customer);
    body["payment"] = json!({"method": method, "token": token});
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_card_token_or_verification_code_reaches_a_topic_a_log_or_a_sink() {
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("orderflow.log");
    let p = Pipeline::start_logging_to(dir.path(), &[], "debug", &log_file);
    p.wait_until_ready().await;

    // An account: its code comes by email (the file sink) and verifies it.
    let registered = post(
        &p,
        "/v1/auth/register",
        json!({"name": "Grace Hopper", "email": "grace@example.com",
               "password": "correct horse", "confirm": "correct horse"}),
    )
    .await;
    assert_eq!(registered.status(), 202);
    // Register tells nothing about accounts: the admin's list has Grace's id.
    let grace = p.account_id("grace@example.com").await;
    let code = p.emailed_code(&grace, 0).await;

    // Card orders with tokens of their own (the simulated gateway approves `tok_…`), a declined
    // one, and one paid by bank transfer.
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let card_tokens = [
        format!("tok_secret_a_{unique}"),
        format!("tok_secret_b_{unique}"),
    ];
    let declined_token = "tok_decline".to_string();
    let transfer_token = format!("iban-secret-{unique}");
    let mut cards = Vec::new();
    for token in &card_tokens {
        cards.push(p.place(&paying("cust-secrets", "card", token)).await);
    }
    let declined = p
        .place(&paying("cust-secrets", "card", &declined_token))
        .await;
    let transfer = p
        .place(&paying("cust-secrets", "bank_transfer", &transfer_token))
        .await;

    // A card order whose token is gone (here: an `OrderAccepted` from elsewhere, for an order
    // the API never kept a token for) fails its payment, saying why, and nothing loops.
    let orphan = uuid::Uuid::now_v7().to_string();
    let orphan_event = OrderAccepted {
        event_id: OrderStatus::Accepted.event_id(&orphan),
        order_id: orphan.clone(),
        customer_id: "cust-secrets".into(),
        items: vec![OrderItem {
            sku: "MUG-001".into(),
            quantity: 1,
        }],
        shipping_address: Address {
            name: "Ada Lovelace".into(),
            line1: "1 Main St".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
        payment: PaymentMethod {
            method: "card".into(),
        },
        occurred_at: orderflow_schemas::now_millis(),
    };
    produce_raw(
        &p.bootstrap,
        "orders.accepted",
        &orphan,
        orderflow_schemas::encode(&orphan_event).unwrap(),
    )
    .await;

    // The orders go where they went before.
    for id in &cards {
        p.wait_for_status(id, "invoiced").await;
    }
    let failed = p.wait_for_status(&declined, "payment_failed").await;
    assert!(
        failed.to_string().contains("card declined"),
        "the gateway saw the declining token: {failed}"
    );
    p.wait_for_status(&transfer, "validated").await;
    let orphaned = p.wait_for_status(&orphan, "payment_failed").await;
    assert!(
        orphaned
            .to_string()
            .contains(orderflow_processors::payment::TOKEN_EXPIRED),
        "{orphaned}"
    );
    p.wait_for_notifications(|all| {
        let has =
            |id: &str, kind: &str| all.iter().any(|n| n["order_id"] == id && n["kind"] == kind);
        cards.iter().all(|id| has(id, "invoice_ready"))
            && has(&declined, "payment_failed")
            && has(&orphan, "payment_failed")
            && has(&transfer, "order_confirmed")
    })
    .await;

    // The emailed code still verifies the account.
    let verified = post(
        &p,
        "/v1/auth/verify",
        json!({"email": "grace@example.com", "code": code}),
    )
    .await;
    assert_eq!(verified.status(), 200);
    assert_eq!(verified.json::<Value>().await.unwrap()["verified"], true);

    // Nothing secret on any topic.
    let mut secrets: Vec<&str> = card_tokens.iter().map(String::as_str).collect();
    secrets.extend([
        declined_token.as_str(),
        transfer_token.as_str(),
        code.as_str(),
    ]);
    let records = every_record(&p.bootstrap);
    let count = |topic: &str| records.iter().filter(|r| r.topic == topic).count();
    assert!(count("orders.accepted") >= 5, "the scan read the orders");
    assert!(count("orders.validated") >= 5, "the scan read the orders");
    assert!(
        count("accounts.verification") >= 1,
        "the scan read the account"
    );
    for record in &records {
        for secret in &secrets {
            assert!(
                !contains(&record.bytes, secret),
                "{secret:?} is on topic {}: {:?}",
                record.topic,
                String::from_utf8_lossy(&record.bytes)
            );
        }
    }
    assert!(p.stop().success());

    // No card token in the log; the code only where its email is.
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(!log.is_empty());
    for token in &secrets[..secrets.len() - 1] {
        assert!(!log.contains(token), "{token:?} is in the log");
    }
    assert!(
        !has_word(&log, &code),
        "the verification code is in the log"
    );
    let sink = std::fs::read_to_string(dir.path().join("notifications.jsonl")).unwrap();
    for line in sink.lines() {
        for token in &secrets[..secrets.len() - 1] {
            assert!(
                !line.contains(token),
                "{token:?} is in the file sink: {line}"
            );
        }
        let note: Value = serde_json::from_str(line).unwrap();
        if note["kind"] != "verify_email" {
            assert!(!has_word(line, &code), "the code is in {line}");
        }
    }
}
