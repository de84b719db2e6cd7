//! `orderflow load` against `orderflow run`: every order it sends is counted once, accepted and
//! invoiced, in a closed loop and at a fixed rate, and its JSON summary says so.

use crate::common;

use std::process::Command;

use common::Pipeline;
use serde_json::Value;

/// Runs `orderflow load` with `args` against `p`; its JSON summary (the last line).
async fn load(p: &Pipeline, args: &[&str]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .args([
            "load",
            "--url",
            &p.http,
            "--brokers",
            &p.bootstrap,
            "--json",
        ])
        .args(["--token", p.admin.token(), "--timeout-secs", "60"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "orderflow load {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_load_sends_is_counted_once_accepted_and_invoiced() {
    let dir = tempfile::tempdir().unwrap();
    let p = Pipeline::start(dir.path());

    let closed = load(&p, &["--orders", "60", "--concurrency", "8"]).await;
    assert_eq!(closed["mode"], "closed");
    assert_eq!(closed["accepted"], 60, "{closed}");
    assert_eq!(closed["completed"], 60, "{closed}");
    assert_eq!(closed["duplicates"], 0, "{closed}");
    assert_eq!(closed["errors"], serde_json::json!({}), "{closed}");
    assert!(closed["e2e_p99_ms"].as_u64().unwrap() > 0, "{closed}");

    // Right after, at a fixed rate: the first orders' events come while the consumer starts.
    let open = load(&p, &["--rate", "40", "--duration", "2s"]).await;
    assert_eq!(open["mode"], "open");
    assert_eq!(open["accepted"], 80, "{open}");
    assert_eq!(open["completed"], 80, "{open}");
    assert_eq!(open["duplicates"], 0, "{open}");
}
