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
