//! The pipeline at a glance, for admins: `GET /v1/pipeline` (a JSON summary) and
//! `GET /v1/pipeline/events` (the same every second, as server-sent events), read from this
//! process's own Prometheus metrics ([`orderflow_schemas::metrics`]).
//!
//! Under `orderflow run` every stage and the bridge share the process, so the summary covers the
//! whole pipeline; a lone `orderflow ingest` only knows its own part (accepted orders, the
//! latency of nothing): the stages' numbers are on their own `/metrics`.

use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::State, response::Response, Json};
use orderflow_schemas::metrics;
use prometheus::proto::{MetricFamily, MetricType};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{auth::Caller, problem::Problem, ApiState};

/// The window orders per second are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How often the event stream sends a summary.
const TICK: Duration = Duration::from_secs(1);

/// The pipeline as this process's metrics show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PipelineSummary {
    /// When this was taken.
    #[schema(format = DateTime)]
    pub at: String,
    /// Orders that reached each status since the process started (`accepted`: placed through
    /// this API).
    pub orders: BTreeMap<String, u64>,
    /// Orders per second reaching each status, over the last 10 seconds.
    pub orders_per_second: BTreeMap<String, f64>,
    /// From an order's acceptance to each later status (end to end: `invoiced`).
    pub latency: BTreeMap<String, Latency>,
    /// Messages each stage sent to the dead-letter topic.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Messages waiting on the topics for each stage's consumer, from librdkafka's statistics
    /// (every 5 s); the bridge's is the sinks' backlog.
    pub backlog: BTreeMap<String, i64>,
    /// Messages each stage is handling now.
    pub in_flight: BTreeMap<String, i64>,
    /// Deliveries per sink, by outcome (`sent`, `skipped_duplicate`, `failed`).
    pub sinks: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A latency distribution, in seconds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Latency {
    pub count: u64,
    pub mean_seconds: f64,
    /// The upper bound of the histogram bucket that holds the 95th percentile.
    pub p95_seconds: f64,
}

/// Earlier status counts, for the rates.
static SAMPLES: Mutex<VecDeque<(Instant, BTreeMap<String, u64>)>> = Mutex::new(VecDeque::new());

/// The summary now.
pub fn summary() -> PipelineSummary {
    let m = metrics::metrics();
    // Every family present in a scrape (a labelled one shows once it has a series).
    let families = metrics::registry().gather();
    let mut s = PipelineSummary {
        at: crate::orders::rfc3339(orderflow_schemas::now_millis()),
        orders: BTreeMap::new(),
        orders_per_second: BTreeMap::new(),
        latency: BTreeMap::new(),
        dead_lettered: BTreeMap::new(),
        backlog: BTreeMap::new(),
        in_flight: BTreeMap::new(),
        sinks: BTreeMap::new(),
    };
    s.orders.insert("accepted".into(), m.orders_accepted.get());
    for family in &families {
        read_family(family, &mut s);
    }
    s.orders_per_second = rates(&s.orders, Instant::now());
    s
}

fn label<'a>(metric: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

fn read_family(family: &MetricFamily, s: &mut PipelineSummary) {
    let name = family.name();
    for metric in family.get_metric() {
        match (name, family.get_field_type()) {
            (metrics::ORDER_LATENCY_SECONDS, MetricType::HISTOGRAM) => {
                let Some(status) = label(metric, "status") else {
                    continue;
                };
                let h = metric.get_histogram();
                let count = h.get_sample_count();
                s.orders.insert(status.to_string(), count);
                let buckets: Vec<(f64, u64)> = h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
                s.latency.insert(
                    status.to_string(),
                    Latency {
                        count,
                        mean_seconds: if count == 0 {
                            0.0
                        } else {
                            h.get_sample_sum() / count as f64
                        },
                        p95_seconds: quantile(&buckets, count, 0.95),
                    },
                );
            }
            (metrics::STAGE_MESSAGES_TOTAL, MetricType::COUNTER) => {
                if let (Some(stage), Some(metrics::outcome::DEAD_LETTERED)) =
                    (label(metric, "stage"), label(metric, "outcome"))
                {
                    *s.dead_lettered.entry(stage.to_string()).or_default() +=
                        metric.get_counter().get_value() as u64;
                }
            }
            (metrics::CONSUMER_LAG_MESSAGES, MetricType::GAUGE) => {
                if let Some(stage) = label(metric, "stage") {
                    *s.backlog.entry(stage.to_string()).or_default() +=
                        metric.get_gauge().get_value() as i64;
                }
            }
            (metrics::STAGE_IN_FLIGHT, MetricType::GAUGE) => {
                if let Some(stage) = label(metric, "stage") {
                    *s.in_flight.entry(stage.to_string()).or_default() +=
                        metric.get_gauge().get_value() as i64;
                }
            }
            (metrics::SINK_DELIVERIES_TOTAL, MetricType::COUNTER) => {
                if let (Some(sink), Some(outcome)) =
                    (label(metric, "sink"), label(metric, "outcome"))
                {
                    *s.sinks
                        .entry(sink.to_string())
                        .or_default()
                        .entry(outcome.to_string())
                        .or_default() += metric.get_counter().get_value() as u64;
                }
            }
            _ => {}
        }
    }
}

/// The upper bound of the bucket holding quantile `q` (the last finite bound past them all).
fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let rank = (q * count as f64).ceil() as u64;
    let finite = buckets.iter().filter(|(bound, _)| bound.is_finite());
    let mut last = 0.0;
    for (bound, cumulative) in finite {
        last = *bound;
        if *cumulative >= rank {
            return *bound;
        }
    }
    last
}

/// Per second since the oldest sample of the window, recording `counts` as the newest.
fn rates(counts: &BTreeMap<String, u64>, now: Instant) -> BTreeMap<String, f64> {
    let mut samples = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    while samples.len() > 1
        && samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
    {
        samples.pop_front();
    }
    let rates = match samples.front() {
        Some((at, before)) if now.duration_since(*at) >= Duration::from_millis(500) => {
            let seconds = now.duration_since(*at).as_secs_f64();
            counts
                .iter()
                .map(|(status, n)| {
                    let then = before.get(status).copied().unwrap_or(0);
                    (status.clone(), n.saturating_sub(then) as f64 / seconds)
                })
                .collect()
        }
        _ => counts.keys().map(|k| (k.clone(), 0.0)).collect(),
    };
    samples.push_back((now, counts.clone()));
    if samples.len() > 600 {
        samples.pop_front();
    }
    rates
}

/// `GET /v1/pipeline`.
#[utoipa::path(
    get,
    path = "/v1/pipeline",
    operation_id = "pipeline_summary",
    tag = "operations",
    summary = "The pipeline at a glance (admin)",
    description = "Orders by status (totals and per second over the last 10 s), the latency \
        from acceptance to each status, dead-lettered messages per stage, the backlog of each \
        stage's consumer (the bridge's: the sinks'), and deliveries per sink, from this \
        process's metrics: complete under `orderflow run`, where every stage shares the \
        process.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The summary.", body = PipelineSummary),
        (status = 401, description = "No valid access token.", body = Problem,
         content_type = "application/problem+json"),
        (status = 403, description = "Not an admin.", body = Problem,
         content_type = "application/problem+json"),
    ),
)]
pub async fn get(caller: Caller) -> Result<Json<PipelineSummary>, Problem> {
    caller.require_admin()?;
    Ok(Json(summary()))
}

/// `GET /v1/pipeline/events`.
#[utoipa::path(
    get,
    path = "/v1/pipeline/events",
    operation_id = "pipeline_events",
    tag = "operations",
    summary = "The pipeline at a glance, live (admin; server-sent events)",
    description = "The summary of `GET /v1/pipeline` every second, as `summary` events whose \
        data is its JSON, until the client closes the stream.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stream: `event: summary` / `data: {…}` each second.",
         body = String, content_type = "text/event-stream"),
        (status = 401, description = "No valid access token.", body = Problem,
         content_type = "application/problem+json"),
        (status = 403, description = "Not an admin.", body = Problem,
         content_type = "application/problem+json"),
    ),
)]
pub async fn events(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Response, Problem> {
    caller.require_admin()?;
    let closing = state.live.closing();
    let ticks = tokio::time::interval(TICK);
    let stream = futures::stream::unfold((ticks, closing), |(mut ticks, closing)| async move {
        tokio::select! {
            _ = closing.cancelled() => None,
            _ = ticks.tick() => {
                let json = serde_json::to_string(&summary()).unwrap_or_default();
                let event = axum::response::sse::Event::default().event("summary").data(json);
                Some((Ok::<_, Infallible>(event), (ticks, closing)))
            }
        }
    });
    Ok(crate::live::sse(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quantile_is_the_bound_of_its_bucket() {
        let buckets = [(0.1, 50), (0.5, 90), (1.0, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&buckets, 100, 0.5), 0.1);
        assert_eq!(quantile(&buckets, 100, 0.95), 1.0);
        assert_eq!(quantile(&buckets, 0, 0.95), 0.0);
        let over = [(0.1, 0), (f64::INFINITY, 3)];
        assert_eq!(quantile(&over, 3, 0.95), 0.1, "past every bound: the last");
    }

    #[test]
    fn counts_become_rates_over_the_window() {
        let start = Instant::now();
        let counts = |n: u64| BTreeMap::from([("invoiced-rate-test".to_string(), n)]);
        rates(&counts(10), start);
        let r = rates(&counts(30), start + Duration::from_secs(2));
        assert_eq!(r["invoiced-rate-test"], 10.0);
    }
}
