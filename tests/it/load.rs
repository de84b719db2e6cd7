//! `orderflow load` against `orderflow run`: every order it sends is counted once, accepted and
//! come to its outcome (invoiced, or declined and rejected in a mix), in a closed loop and at a
//! fixed rate, and its JSON summary says so; with
//! `--accept-only`, against `orderflow ingest` alone.

use crate::common;

use std::process::Command;

use common::Pipeline;
use serde_json::Value;

/// Runs `orderflow load --url url --brokers bootstrap --json args…`; its output.
async fn run_load(url: &str, bootstrap: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .args(["load", "--url", url, "--brokers", bootstrap, "--json"])
        .args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// The JSON summary (the last line) of a load that succeeded.
fn summary(args: &[&str], out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "orderflow load {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Runs `orderflow load` with `args` against `p`; its JSON summary.
async fn load(p: &Pipeline, args: &[&str]) -> Value {
    let mut all = vec!["--token", p.admin.token(), "--timeout-secs", "60"];
    all.extend_from_slice(args);
    summary(&all, &run_load(&p.http, &p.bootstrap, &all).await)
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

    assert_eq!(
        closed["outcomes"],
        serde_json::json!({"invoiced": 60}),
        "{closed}"
    );

    // Right after, at a fixed rate, a mix: the first orders' events come while the consumer
    // starts; a tenth of the cards are declined and a tenth of the SKUs unknown, each order
    // awaited on the topic of the outcome it is meant to have.
    let open = load(
        &p,
        &[
            "--rate",
            "40",
            "--duration",
            "2s",
            "--declines",
            "10",
            "--unknown-skus",
            "10",
        ],
    )
    .await;
    assert_eq!(open["mode"], "open");
    assert_eq!(open["accepted"], 80, "{open}");
    assert_eq!(open["completed"], 80, "{open}");
    assert_eq!(
        open["outcomes"],
        serde_json::json!({"invoiced": 64, "payment_failed": 8, "rejected": 8}),
        "{open}"
    );
    assert_eq!(open["unexpected"], serde_json::json!({}), "{open}");
    assert_eq!(open["duplicates"], 0, "{open}");
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `orderflow args…` and reads its output (stdout, or stderr when `from_stderr`) until
/// a line holds `marker`; returns the process and the rest of that line after `marker`.
fn spawn_until(args: &[&str], from_stderr: bool, marker: &str) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command.args(args).env("RUST_LOG", "info");
    if from_stderr {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = Child(command.spawn().expect("orderflow starts"));
    let out: Box<dyn std::io::Read + Send> = if from_stderr {
        Box::new(child.0.stderr.take().unwrap())
    } else {
        Box::new(child.0.stdout.take().unwrap())
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("orderflow {args:?} printed no '{marker}' within 60 s"));
        if let Some(at) = line.find(marker) {
            // Keep draining, so that the process never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, line[at + marker.len()..].trim().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_only_measures_an_api_with_no_stage_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (_broker, bootstrap) = spawn_until(
        &[
            "broker",
            "--data-dir",
            data,
            "--kafka-listen",
            "127.0.0.1:0",
        ],
        false,
        "Kafka bootstrap:",
    );
    // The topics, as a deployment creates them, and the demo accounts and catalogue (the load
    // logs in as the demo customer).
    for args in [
        &["topics", "create", "--brokers", &bootstrap][..],
        &["seed", "--data-dir", data, "--brokers", &bootstrap][..],
    ] {
        let done = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    let secret = "a-test-secret-of-at-least-32-bytes-long";
    let (_api, addr) = spawn_until(
        &[
            "ingest",
            "--data-dir",
            data,
            "--brokers",
            &bootstrap,
            "--http",
            "127.0.0.1:0",
            "--jwt-secret",
            secret,
        ],
        true,
        "HTTP API listening. addr=",
    );
    let url = format!("http://{addr}");

    let args = ["--accept-only", "--orders", "40", "--concurrency", "4"];
    let out = run_load(&url, &bootstrap, &args).await;
    let summary = summary(&args, &out);
    assert_eq!(summary["accepted"], 40, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert!(
        summary["accepted_per_s"].as_f64().unwrap() > 0.0,
        "{summary}"
    );
    assert!(summary["completed"].is_null(), "{summary}");
    assert!(summary["e2e_p99_ms"].is_null(), "{summary}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not waited for (--accept-only)"),
        "{stdout}"
    );

    // Waiting for invoices from an API with nothing behind it: read with the built-in ids (it
    // serves no registry), and told plainly that the orders were not invoiced.
    let out = run_load(&url, &bootstrap, &["--orders", "3", "--timeout-secs", "3"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("reading events with the built-in ids"),
        "{stderr}"
    );
    assert!(
        stderr.contains("3 orders did not come to their outcome in time"),
        "{stderr}"
    );
}
