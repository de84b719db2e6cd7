//! The SQS and SES sinks against moto's AWS emulator, and the webhook sink against a loopback
//! HTTP server, each started by the test.

#[path = "../../tests/common/moto.rs"]
mod moto;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use moto::{attribute, body, Moto};
use orderflow_bridge::{
    config::{BuildContext, SinkConfig},
    ses::SesConfig,
    sqs::SqsConfig,
    webhook::{self, WebhookConfig},
    Delivery, Envelope, Mapping, Sink, SinkError,
};
use orderflow_schemas::{wire, OrderLine, OrderStatus, OrderValidated, PaymentMethod, TopicKind};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

fn validated(order_id: &str, customer_id: &str) -> Envelope {
    let event = OrderValidated {
        event_id: OrderStatus::Validated.event_id(order_id),
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        lines: vec![OrderLine {
            sku: "MUG-001".into(),
            name: "Orderflow mug".into(),
            quantity: 1,
            unit_price_cents: 1250,
            line_total_cents: 1250,
        }],
        currency: "EUR".into(),
        subtotal_cents: 1250,
        tax_cents: 250,
        total_cents: 1500,
        payment: PaymentMethod {
            method: "card".into(),
        },
        occurred_at: 1_700_000_000_000,
        revision: 0,
    };
    Envelope::decode(
        TopicKind::OrdersValidated,
        &orderflow_schemas::SchemaIds::builtin(),
        &wire::encode(&event).unwrap(),
    )
    .unwrap()
    .unwrap()
}

async fn context(moto: &Moto, provision: bool) -> BuildContext {
    let dir = std::env::temp_dir();
    BuildContext::new(&dir, provision, Default::default()).with_sdk_config(moto.sdk_config().await)
}

async fn sqs_sink(moto: &Moto, config: SqsConfig) -> Arc<dyn Sink> {
    SinkConfig::Sqs(config)
        .build("queue", &context(moto, true).await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_batched_under_the_byte_limit_and_all_arrive() {
    let moto = Moto::start().await;
    // About three of our messages fit in 4 KiB: 25 sends need several batches.
    let sink = sqs_sink(
        &moto,
        SqsConfig {
            queue_name: Some("batched".into()),
            max_batch_bytes: 4096,
            ..Default::default()
        },
    )
    .await;
    sink.healthcheck().await.unwrap();
    let envelopes: Vec<Envelope> = (0..25).map(|i| validated(&format!("o{i}"), "c1")).collect();
    let sends = envelopes.iter().map(|e| {
        let sink = sink.clone();
        async move {
            sink.send(&Delivery {
                envelope: e,
                mapping: Mapping::Event,
            })
            .await
        }
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
    let queue = moto.queue_url("batched").await;
    let messages = moto.receive_until(&queue, |ms| ms.len() >= 25).await;
    let orders: HashSet<String> = messages
        .iter()
        .map(|m| attribute(m, "order_id").unwrap())
        .collect();
    assert_eq!(orders.len(), 25);
    let first = messages
        .iter()
        .find(|m| attribute(m, "order_id").as_deref() == Some("o0"));
    let event = body(first.unwrap());
    assert_eq!(event["type"], "order_validated");
    assert_eq!(event["data"]["total_cents"], 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queue_drops_a_second_send_of_the_same_event() {
    let moto = Moto::start().await;
    let sink = sqs_sink(
        &moto,
        SqsConfig {
            queue_name: Some("once.fifo".into()),
            ..Default::default()
        },
    )
    .await;
    let e = validated("o1", "c1");
    for _ in 0..2 {
        sink.send(&Delivery {
            envelope: &e,
            mapping: Mapping::Notification,
        })
        .await
        .unwrap();
    }
    let queue = moto.queue_url("once.fifo").await;
    let mut messages = moto.receive_until(&queue, |ms| !ms.is_empty()).await;
    messages.extend(moto.drain(&queue, std::time::Duration::from_secs(2)).await);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    // The notification mapping: what the customer is told.
    assert_eq!(body(&messages[0])["kind"], "order_confirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_rejected_not_retried() {
    let moto = Moto::start().await;
    let sink = sqs_sink(
        &moto,
        SqsConfig {
            queue_name: Some("small".into()),
            max_batch_bytes: 200,
            ..Default::default()
        },
    )
    .await;
    let e = validated("o1", "c1");
    let error = sink
        .send(&Delivery {
            envelope: &e,
            mapping: Mapping::Event,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SinkError::Rejected(m) if m.contains("too large")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_without_provisioning_fails_the_start_with_its_name() {
    let moto = Moto::start().await;
    let error = match SinkConfig::Sqs(SqsConfig {
        queue_name: Some("nowhere".into()),
        ..Default::default()
    })
    .build("queue", &context(&moto, false).await)
    .await
    {
        Ok(_) => panic!("a missing queue builds"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("nowhere"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ses_sends_the_rendered_email_and_refuses_for_good_an_unverified_sender() {
    let moto = Moto::start().await;
    let config = SesConfig {
        from: "Shop <shop@orderflow.example>".into(),
        max_send_rate: Some(100.0),
        ..Default::default()
    };
    // Without provisioning the sender is unknown to SES: a rejection, not a retry.
    let unverified = SinkConfig::Ses(config.clone())
        .build("email", &context(&moto, false).await)
        .await
        .unwrap();
    let e = validated("o1", "c7");
    let delivery = Delivery {
        envelope: &e,
        mapping: Mapping::Notification,
    };
    assert!(matches!(
        unverified.send(&delivery).await,
        Err(SinkError::Rejected(_))
    ));

    let sink = SinkConfig::Ses(config)
        .build("email", &context(&moto, true).await)
        .await
        .unwrap();
    sink.healthcheck().await.unwrap();
    sink.send(&delivery).await.unwrap();
    let emails = moto.emails().await;
    assert_eq!(emails.len(), 1, "{emails:#?}");
    assert_eq!(emails[0]["subject"], "Your order o1 is confirmed");
    assert!(moto::sent_to(&emails[0], "c7@customers.example"));
    assert!(emails[0]["body"].as_str().unwrap().contains("15.00 EUR"));
}

/// A one-endpoint HTTP server: answers every request with the next status of `statuses`
/// (the last one forever) and records each request's head and body.
async fn http_server(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let status = statuses[n.min(statuses.len() - 1)];
            n += 1;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let read = stream.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..read]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        let read = stream.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..read]);
                    }
                    break (head, buf[end + 4..end + 4 + length].to_vec());
                }
                if read == 0 {
                    return;
                }
            };
            record.lock().unwrap().push((head, body));
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (url, seen)
}

fn webhook_sink(url: &str) -> Arc<dyn Sink> {
    Arc::new(
        WebhookConfig {
            url: url.into(),
            secret: "hook-secret".into(),
            ..Default::default()
        }
        .build("hook")
        .unwrap(),
    )
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

#[tokio::test]
async fn a_webhook_gets_the_event_signed_with_a_timestamp() {
    let (url, seen) = http_server(vec![204]).await;
    let sink = webhook_sink(&url);
    let e = validated("o1", "c1");
    sink.send(&Delivery {
        envelope: &e,
        mapping: Mapping::Event,
    })
    .await
    .unwrap();
    let (head, body) = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("post /hook"), "{head}");
    let timestamp: u64 = header(&head, webhook::TIMESTAMP_HEADER)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        header(&head, webhook::SIGNATURE_HEADER).unwrap(),
        webhook::signature(b"hook-secret", timestamp, &body)
    );
    assert_eq!(
        header(&head, webhook::EVENT_ID_HEADER),
        Some("o1:validated")
    );
    // The same id for receivers that deduplicate on `Idempotency-Key`.
    assert_eq!(
        header(&head, webhook::IDEMPOTENCY_KEY_HEADER),
        Some("o1:validated")
    );
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], "order_validated");
    assert_eq!(event["id"], "o1:validated");
}

#[tokio::test]
async fn webhook_answers_are_classified_retriable_or_rejected() {
    let e = validated("o1", "c1");
    let d = Delivery {
        envelope: &e,
        mapping: Mapping::Event,
    };
    let (url, _) = http_server(vec![503]).await;
    assert!(matches!(
        webhook_sink(&url).send(&d).await,
        Err(SinkError::Retriable(_))
    ));
    let (url, _) = http_server(vec![429]).await;
    assert!(matches!(
        webhook_sink(&url).send(&d).await,
        Err(SinkError::Retriable(_))
    ));
    // A token in the URL's path or query is never in the reason (which the log and the
    // dead-letter record carry).
    let (url, _) = http_server(vec![400]).await;
    let with_token = format!("{url}/t0ken-in-path?key=s3cret-in-query");
    match webhook_sink(&with_token).send(&d).await {
        Err(SinkError::Rejected(reason)) => {
            let reason = reason.to_string();
            assert!(reason.contains("400"), "{reason}");
            assert!(
                !reason.contains("t0ken") && !reason.contains("s3cret"),
                "{reason}"
            );
        }
        other => panic!("a 400 is a rejection: {other:?}"),
    }
    // Nobody listening: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "http://{}/hook?key=s3cret-in-query",
            l.local_addr().unwrap()
        )
    };
    match webhook_sink(&closed).send(&d).await {
        Err(SinkError::Retriable(reason)) => {
            assert!(!reason.to_string().contains("s3cret"), "{reason}")
        }
        other => panic!("a refused connection is retriable: {other:?}"),
    }
}
