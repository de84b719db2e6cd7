//! `kill -9` in the middle of a stream of orders: after a restart on the same data dir, every
//! order the API acknowledged is invoiced, once; stock and invoice numbers add up. The stages
//! resume within the wait of `wait_for_status` only because `orderflow run` keeps the consumer
//! session short on its embedded broker (the killed members' sessions must expire first).
//!
//! And the short form of `scripts/crash-test.sh`: a broker process and the pipeline, each
//! killed at random under load, reconciled against the API, the topics, SQS and SES (moto) and
//! the notification file.

use crate::common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use common::{order_body, Pipeline};
use orderflow_schemas::{wire, OrderInvoiced};
use rdkafka::Message;
use tokio::sync::Mutex;

const SKU: &str = "STICKER-001";
const INITIAL_STOCK: i64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Pipeline::start(dir.path()));

    // Eight clients post orders until the process dies under them.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (p, acknowledged) = (p.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            let body = order_body(SKU, 1, "tok_visa");
            for _ in 0..100 {
                let sent = p
                    .client
                    .post(p.url("/v1/orders"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                if response.status() != 202 {
                    break;
                }
                let Ok(v) = response.json::<serde_json::Value>().await else {
                    break;
                };
                acknowledged
                    .lock()
                    .await
                    .push(v["order_id"].as_str().unwrap().to_string());
            }
        }));
    }
    // Kill once some orders are through the API and, typically, others are mid-pipeline.
    loop {
        if acknowledged.lock().await.len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill_9(dir.path());
    for client in clients {
        let _ = client.await;
    }
    drop(p); // reaps the killed process
    let acknowledged = acknowledged.lock().await.clone();
    assert!(acknowledged.len() >= 40);

    // Restart on the same data dir: everything acknowledged gets through, once.
    let p = Pipeline::start(dir.path());
    for id in &acknowledged {
        p.wait_for_status(id, "invoiced").await;
    }
    // Orders whose answer the kill cut off may be in flight still; let them settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let bootstrap = p.bootstrap.clone();
    let invoiced =
        tokio::task::spawn_blocking(move || common::read_all(&bootstrap, "orders.invoiced"))
            .await
            .unwrap();
    // One invoice number per order, however many times its event was (re)produced.
    let mut numbers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for message in &invoiced {
        let event: OrderInvoiced = wire::decode(message.payload().unwrap_or_default()).unwrap();
        numbers
            .entry(event.order_id)
            .or_default()
            .insert(event.invoice_number);
    }
    for (order, its) in &numbers {
        assert_eq!(its.len(), 1, "order {order} has invoices {its:?}");
    }
    for id in &acknowledged {
        assert!(numbers.contains_key(id), "acknowledged order {id} invoiced");
    }
    let invoiced_orders = numbers.len() as i64;
    let mut all: Vec<String> = numbers.into_values().flatten().collect();
    all.sort();
    let expected: Vec<String> = (1..=invoiced_orders)
        .map(|n| format!("INV-{n:08}"))
        .collect();
    assert_eq!(all, expected, "invoice numbers are gapless and unique");
    assert_eq!(
        p.stock(SKU).await,
        INITIAL_STOCK - invoiced_orders,
        "one unit reserved per invoiced order, once"
    );
}

/// `scripts/crash-test.sh --kills 2`, small: its last line says nothing was lost or repeated.
/// Each killed process is started again at once, within its consumer group members' sessions:
/// the broker must form each group again without the dead members (tests/it/consumer_groups.rs
/// checks that on its own).
#[test]
fn the_crash_script_finds_nothing_lost_and_nothing_twice() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/crash-test.sh");
    let out = std::process::Command::new(script)
        .args([
            "--kills",
            "2",
            "--min-gap",
            "8",
            "--gap",
            "10",
            "--rate",
            "6",
        ])
        .env("ORDERFLOW_BIN", env!("CARGO_BIN_EXE_orderflow"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("scripts/crash-test.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kills=2 orders=") && last.ends_with(" lost=0 duplicates=0"),
        "last line: {last:?}"
    );
    assert!(out.status.success(), "{}", out.status);
}

/// SIGKILLs the `orderflow run` whose command line names `data_dir` (this test's).
fn kill_9(data_dir: &std::path::Path) {
    let needle = data_dir.to_string_lossy().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("orderflow") && cmdline.contains(" run ") && cmdline.contains(&needle) {
            // SAFETY: signals a process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
