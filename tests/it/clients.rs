//! The Kafka clients a downstream team would pick read our topics from `orderflow run`'s
//! embedded broker: Debian's kcat (librdkafka 2.0.2, whose ApiVersions parsing older brokers'
//! answers must suit), kafka-python and kafkajs (clients of their own, without librdkafka), each
//! in the way the README shows or a consumer group. confluent-kafka is in schema_registry.rs,
//! rdkafka in every stage.
//!
//! kcat and kafkajs come from scripts/test.sh (Debian's package; npm into the target dir); where
//! either is missing its test says SKIPPED and passes.

use crate::common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use common::{order_body, python, Pipeline};
use serde_json::{json, Value};

/// An order placed and invoiced on a fresh pipeline: the pipeline and the order's id.
async fn invoiced_order(dir: &std::path::Path) -> (Pipeline, String) {
    let p = Pipeline::start(dir);
    let order = p.place(&order_body("MUG-001", 2, "tok_visa")).await;
    p.wait_for_status(&order, "invoiced").await;
    (p, order)
}

/// Runs a peer to its end off the async runtime; its stdout, or a failure with its stderr.
async fn run(mut command: Command, what: &'static str) -> Vec<u8> {
    let out = tokio::task::spawn_blocking(move || {
        command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// kcat with the librdkafka it was installed with: `cargo test` puts the build's directories on
/// `LD_LIBRARY_PATH`, and rdkafka-sys leaves a newer librdkafka there.
fn kcat() -> Command {
    let mut kcat = Command::new("kcat");
    kcat.env_remove("LD_LIBRARY_PATH");
    kcat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_kcat_lists_and_reads_our_topics() {
    let Ok(version) = kcat().arg("-V").output() else {
        eprintln!(
            "SKIPPED: no kcat on this machine (scripts/test.sh installs Debian's with apt-get \
             when it runs as root)"
        );
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout);
    let librdkafka = version
        .split_whitespace()
        .skip_while(|word| *word != "librdkafka")
        .nth(1)
        .unwrap_or("unknown");
    eprintln!("kcat on librdkafka {librdkafka}");
    let dir = tempfile::tempdir().unwrap();
    let (p, order) = invoiced_order(dir.path()).await;

    let mut list = kcat();
    list.args(["-b", &p.bootstrap, "-L", "-m", "10"]);
    let listed = String::from_utf8(run(list, "kcat -L").await).unwrap();
    assert!(
        listed.contains("topic \"orders.invoiced\""),
        "kcat -L: {listed}"
    );

    // The README's command, with a format that shows each record's key and value size.
    let mut consume = kcat();
    consume.args([
        "-b",
        &p.bootstrap,
        "-C",
        "-t",
        "orders.invoiced",
        "-e",
        "-m",
        "10",
        "-f",
        "%k %o %S\\n",
    ]);
    let read = String::from_utf8(run(consume, "kcat -C").await).unwrap();
    let line = read
        .lines()
        .find(|line| line.starts_with(&order))
        .unwrap_or_else(|| panic!("kcat -C read no record keyed {order}: {read}"));
    let size: usize = line.split(' ').nth(2).unwrap().parse().unwrap();
    assert!(size > 5 + order.len(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_reads_and_decodes_a_topic_in_a_consumer_group() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (p, order) = invoiced_order(dir.path()).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/kafka_python_consumer.py"
    );
    let args = json!({
        "bootstrap": p.bootstrap,
        "registry": p.http,
        "topic": "orders.invoiced",
        "key": order,
        "group": "downstream-kafka-python",
        "timeout_s": 30,
    });
    let mut command = Command::new(python);
    command.args(["-W", "ignore", script, &args.to_string()]);
    let out: Value =
        serde_json::from_slice(&run(command, "kafka_python_consumer.py").await).unwrap();

    assert_eq!(out["key"], order);
    let record = &out["record"];
    assert_eq!(record["order_id"], order);
    assert_eq!(record["event_id"], format!("{order}:invoiced"));
    assert!(
        record["invoice_number"]
            .as_str()
            .is_some_and(|n| n.starts_with("INV-")),
        "{record}"
    );
    assert!(
        record["total_cents"].as_i64().is_some_and(|c| c > 0),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkajs_reads_a_topic_in_a_consumer_group() {
    let Some(modules) = std::env::var_os("ORDERFLOW_TEST_NODE_MODULES").map(PathBuf::from) else {
        eprintln!(
            "SKIPPED: no kafkajs (scripts/test.sh installs it from npm when Node.js is there, \
             and sets ORDERFLOW_TEST_NODE_MODULES)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (p, order) = invoiced_order(dir.path()).await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/kafkajs_consumer.js"
    );
    let args = json!({
        "bootstrap": p.bootstrap,
        "topic": "orders.invoiced",
        "key": order,
        "group": "downstream-kafkajs",
        "timeout_s": 30,
    });
    let mut command = Command::new("node");
    command
        .env("NODE_PATH", &modules)
        .args([script, &args.to_string()]);
    let out: Value = serde_json::from_slice(&run(command, "kafkajs_consumer.js").await).unwrap();

    assert_eq!(out["key"], order);
    // The Confluent wire format (magic byte 0, then the schema id), with the order id among the
    // Avro record's strings.
    assert_eq!(out["magic"], 0);
    let value = out["value_hex"].as_str().unwrap();
    assert!(
        value.contains(&hex(order.as_bytes())),
        "the value does not hold the order id: {value}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
