//! The API's events go through the store's outbox: written with the change they announce,
//! relayed once. A downstream team reading our topics sees each event once however often a
//! client repeats its requests.

use std::collections::BTreeSet;

use crate::common::{self, order_body, Pipeline};
use serde_json::Value;

/// The same order posted three times with one `Idempotency-Key`, then shipped twice: one
/// record of the order on each of its topics, from the API's (accepted, shipped) to the
/// stages' (validated, paid, invoiced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_its_topic_once_however_often_a_request_is_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());
    p.wait_until_ready().await;

    let body = order_body("STICKER-001", 1, "tok_visa");
    let key = uuid::Uuid::now_v7().to_string();
    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let response = p.post_order(&body, Some(&key)).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert!(status.is_success(), "{status}: {answer}");
        ids.insert(answer["order_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one key, one order: {ids:?}");
    let id = ids.pop_first().unwrap();
    p.wait_for_status(&id, "invoiced").await;

    for _ in 0..2 {
        let response = p
            .client
            .post(p.url(&format!("/v1/orders/{id}/ship")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    p.wait_for_notifications(|all| {
        all.iter()
            .any(|n| n["kind"] == "order_shipped" && n["order_id"] == id.as_str())
    })
    .await;

    let bootstrap = p.bootstrap.clone();
    let id_ = id.clone();
    let counts = tokio::task::spawn_blocking(move || {
        [
            "orders.accepted",
            "orders.validated",
            "orders.paid",
            "orders.invoiced",
            "orders.shipped",
        ]
        .map(|topic| {
            let records = common::read_all(&bootstrap, topic);
            (
                topic,
                records.iter().filter(|m| common::keyed(m, &id_)).count(),
            )
        })
    })
    .await
    .unwrap();
    for (topic, count) in counts {
        assert_eq!(count, 1, "order {id} on {topic}");
    }
}

/// The broker dies (SIGKILL) under a running pipeline: orders are still accepted (their
/// events wait in the outbox, `orderflow_outbox_events` counts them), a cancel of an order
/// placed before is answered too, and once the broker is back every one of them goes through,
/// each event on its topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_taken_while_the_broker_is_down_go_through_when_it_is_back() {
    let (broker_dir, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = common::free_port();
    let broker_guard = common::broker_on(broker_dir.path(), port);
    let brokers = format!("127.0.0.1:{port}");
    // An external broker: no demo accounts, an admin of its own.
    let p = Pipeline::start_with(
        dir.path(),
        &[
            "--brokers",
            &brokers,
            "--admin-email",
            "admin@shop.example",
            "--admin-password",
            "a long admin password",
        ],
    );
    p.wait_until_ready().await;
    let before = p.place(&order_body("STICKER-001", 1, "tok_visa")).await;
    p.wait_for_status(&before, "invoiced").await;

    drop(broker_guard); // SIGKILL
    let mut during = Vec::new();
    for _ in 0..3 {
        let response = p
            .post_order(&order_body("STICKER-001", 1, "tok_visa"), None)
            .await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "accepted while the broker is down: {answer}");
        during.push(answer["order_id"].as_str().unwrap().to_string());
    }
    let response = p
        .client
        .post(p.url(&format!("/v1/orders/{before}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "cancelled while the broker is down");
    let waiting = common::poll_until(
        "the outbox to hold the events",
        std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(100),
        || async {
            let text = p.metrics().await;
            text.lines()
                .find_map(|l| l.strip_prefix("orderflow_outbox_events "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        },
        |waiting| *waiting >= 4.0,
    )
    .await;
    assert!(waiting >= 4.0);
    for id in &during {
        assert_eq!(p.order(id).await["status"], "accepted");
    }

    let _broker = common::broker_on(broker_dir.path(), port);
    for id in &during {
        p.wait_for_status(id, "invoiced").await;
    }
    p.wait_for_status(&before, "cancelled").await;
    p.wait_for_notifications(|all| {
        all.iter()
            .any(|n| n["kind"] == "order_cancelled" && n["order_id"] == before.as_str())
    })
    .await;

    let bootstrap = p.bootstrap.clone();
    let ids: Vec<String> = during.iter().chain([&before]).cloned().collect();
    let (accepted, cancelled) = tokio::task::spawn_blocking(move || {
        (
            common::read_all(&bootstrap, "orders.accepted"),
            common::read_all(&bootstrap, "orders.cancelled"),
        )
    })
    .await
    .unwrap();
    for id in &ids {
        let n = accepted.iter().filter(|m| common::keyed(m, id)).count();
        assert_eq!(n, 1, "order {id} on orders.accepted");
    }
    let n = cancelled
        .iter()
        .filter(|m| common::keyed(m, &before))
        .count();
    assert_eq!(n, 1, "order {before} on orders.cancelled");
}
