//! The Grafana dashboards and the Compose monitoring stack stay in step with the code: every
//! metric a dashboard queries is one the code exports (and a running pipeline serves), and every
//! file Compose mounts from `./deploy` exists.

use crate::common;

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::Pipeline;
use orderflow_schemas::metrics;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every metric name the code defines (`schemas/src/metrics.rs`).
const EXPORTED: &[&str] = &[
    metrics::STAGE_MESSAGES_TOTAL,
    metrics::STAGE_BATCH_SIZE,
    metrics::STAGE_PROCESSING_SECONDS,
    metrics::STAGE_IN_FLIGHT,
    metrics::STAGE_LAG_SECONDS,
    metrics::ERRORS_TOTAL,
    metrics::ORDER_LATENCY_SECONDS,
    metrics::HTTP_REQUESTS_TOTAL,
    metrics::HTTP_REQUEST_DURATION_SECONDS,
    metrics::ORDERS_ACCEPTED_TOTAL,
    metrics::SINK_DELIVERIES_TOTAL,
    metrics::SINK_SEND_SECONDS,
    metrics::SINK_BACKLOG_MESSAGES,
    metrics::SINK_RETRYING_EVENTS,
    metrics::STORE_OPERATION_SECONDS,
    metrics::STORE_ERRORS_TOTAL,
    metrics::ORDER_CACHE_REQUESTS_TOTAL,
    metrics::CONSUMER_LAG_MESSAGES,
    metrics::KAFKA_BROKER_RTT_SECONDS,
    metrics::KAFKA_BROKER_OUTBUF_REQUESTS,
    metrics::KAFKA_BROKER_WAITRESP_REQUESTS,
    metrics::KAFKA_BROKER_UP,
    metrics::KAFKA_PRODUCER_QUEUE_MESSAGES,
    metrics::KAFKA_PRODUCER_QUEUE_BYTES,
];

/// A parsed dashboard: its file name and JSON.
fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            )
        })
        .collect()
}

/// Every string under an `expr` key, anywhere in the tree.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Panels of a dashboard that show data (rows excluded), nested rows included.
fn data_panels(dashboard: &Value) -> usize {
    fn count(panels: &Value) -> usize {
        panels.as_array().map_or(0, |panels| {
            panels
                .iter()
                .map(|p| {
                    let own = usize::from(p["type"] != "row");
                    own + count(&p["panels"])
                })
                .sum()
        })
    }
    count(&dashboard["panels"])
}

/// The metric names in a PromQL expression: identifiers that start with `orderflow_`, with a
/// histogram's `_bucket`/`_sum`/`_count` suffix taken off.
fn metric_names(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        // A label value in quotes or a `$variable` is not a metric name.
        let quoted = start > 0 && matches!(chars[start - 1], '"' | '\'' | '$');
        if word.starts_with("orderflow_") && !quoted {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(&word);
            names.push(base.to_string());
        }
    }
    names
}

/// Every metric name the dashboards query; checks that each dashboard has panels and queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        assert!(
            data_panels(&dashboard) >= 1,
            "{file}: a dashboard without panels"
        );
        assert_eq!(dashboard["schemaVersion"], 39, "{file}: schemaVersion");
        let mut found = Vec::new();
        exprs(&dashboard, &mut found);
        assert!(!found.is_empty(), "{file}: no `expr` in any panel");
        for expr in &found {
            let in_expr = metric_names(expr);
            assert!(
                !in_expr.is_empty(),
                "{file}: no orderflow_ metric in {expr}"
            );
            names.extend(in_expr);
        }
    }
    names
}

#[test]
fn metric_names_are_scanned_from_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(orderflow_order_latency_seconds_bucket{status="orderflow_x"}[5m]))) / orderflow_stage_in_flight"#
        ),
        [
            "orderflow_order_latency_seconds",
            "orderflow_stage_in_flight"
        ]
    );
    assert_eq!(
        metric_names(
            "rate(orderflow_stage_batch_size_sum[1m]) / rate(orderflow_stage_batch_size_count[1m])"
        ),
        ["orderflow_stage_batch_size", "orderflow_stage_batch_size"]
    );
    assert!(metric_names("sum(up)").is_empty());
}

#[test]
fn dashboards_query_only_metrics_the_code_defines() {
    let names = dashboard_metrics();
    assert!(
        names.len() >= 10,
        "the dashboards query only {} metrics: {names:?}",
        names.len()
    );
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !EXPORTED.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "dashboards query metrics the code does not define: {unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_serves_every_metric_the_dashboards_query() {
    let wanted = dashboard_metrics();

    let dir = tempfile::tempdir().unwrap();
    // librdkafka's statistics (consumer lag, broker gauges) every 500 ms instead of 5 s.
    let p = Pipeline::start_with(
        dir.path(),
        &["--kafka-property", "statistics.interval.ms=500"],
    );
    p.wait_until_ready().await;

    // The counters a panel sums are there before anything happened (0, not "No data"):
    // errors, store errors, deliveries per sink.
    let counters: Vec<&String> = wanted.iter().filter(|n| n.ends_with("_total")).collect();
    let served = served_families(&p).await;
    let missing: Vec<&&String> = counters.iter().filter(|n| !served.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "counters not served at start: {missing:?}\nserved: {served:?}"
    );

    common::one_invoiced_one_rejected(&p).await;

    // The bridge runs behind the read model, and the gauges fed by librdkafka's statistics
    // wait for the next report (the lag: for a committed offset): poll until every family is
    // there (or time runs out).
    let deadline = Instant::now() + Duration::from_secs(15);
    let (served, missing) = loop {
        let served = served_families(&p).await;
        let missing: Vec<&String> = wanted.iter().filter(|n| !served.contains(*n)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (served, missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        missing.is_empty(),
        "dashboards query metrics /metrics does not serve: {missing:?}\nserved: {served:?}"
    );
}

/// The metric families `/metrics` serves now.
async fn served_families(p: &Pipeline) -> BTreeSet<String> {
    let response = p.client.get(p.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The host paths of `./deploy/...` volume mounts in docker-compose.yml.
fn deploy_mounts(compose: &str) -> Vec<String> {
    compose
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("- "))
        .map(|entry| entry.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|entry| entry.starts_with("./deploy/"))
        .map(|entry| entry.split(':').next().unwrap().to_string())
        .collect()
}

#[test]
fn compose_mounts_only_files_that_exist() {
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let mounts = deploy_mounts(&compose);
    assert!(
        mounts.len() >= 3,
        "expected the Prometheus config and Grafana mounts: {mounts:?}"
    );
    let missing: Vec<&String> = mounts.iter().filter(|m| !root().join(m).exists()).collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml mounts paths that do not exist: {missing:?}"
    );
    for mount in [
        "./deploy/prometheus/prometheus.yml",
        "./deploy/grafana/dashboards",
    ] {
        assert!(mounts.iter().any(|m| m == mount), "{mount} not mounted");
    }
}
