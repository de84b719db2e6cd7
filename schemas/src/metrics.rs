//! Prometheus metrics, shared by every stage: the metric names, one process-wide registry, and
//! the text exposition that `GET /metrics` serves.
//!
//! Names carry the `orderflow_` prefix; counters end in `_total`, durations are histograms in
//! `_seconds`; labels are few and bounded (stage, outcome, sink, status, operation, route; topic,
//! partition, client and broker for the gauges fed by librdkafka's statistics).
//! Every metric is registered on first use of [`metrics()`] or [`render`]; a labelled family
//! shows up in a scrape once it has its first series.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Messages a stage finished, by `stage` and `outcome` ([`outcome`]).
pub const STAGE_MESSAGES_TOTAL: &str = "orderflow_stage_messages_total";
/// Messages per batch a stage took from the consumer, by `stage` (a count, not seconds).
pub const STAGE_BATCH_SIZE: &str = "orderflow_stage_batch_size";
/// Time to handle one message, retries and dead-lettering included, by `stage`.
pub const STAGE_PROCESSING_SECONDS: &str = "orderflow_stage_processing_seconds";
/// Messages a stage is handling right now, by `stage`.
pub const STAGE_IN_FLIGHT: &str = "orderflow_stage_in_flight";
/// Age of a consumed event when the stage receives it (now − its `occurred_at`, which the
/// producer sets as the record timestamp), by `stage`.
pub const STAGE_LAG_SECONDS: &str = "orderflow_stage_lag_seconds";
/// The one errors counter, by `stage` and `error_type` ([`error_type`]).
pub const ERRORS_TOTAL: &str = "orderflow_errors_total";
/// From an order's acceptance to each later status, by `status`.
pub const ORDER_LATENCY_SECONDS: &str = "orderflow_order_latency_seconds";
/// HTTP requests answered, by `route` (the matched route, or `unmatched`), `method`, `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "orderflow_http_requests_total";
/// HTTP request durations, by `route` and `method`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "orderflow_http_request_duration_seconds";
/// Orders newly accepted by the API (idempotent replays not counted).
pub const ORDERS_ACCEPTED_TOTAL: &str = "orderflow_orders_accepted_total";
/// Events the API's changes queued in the store's outbox that the relay has not put on their
/// topics yet: counted up as operations queue them, set exactly at each look of the relay.
pub const OUTBOX_EVENTS: &str = "orderflow_outbox_events";
/// Events the outbox relay put on their topics.
pub const OUTBOX_RELAYED_TOTAL: &str = "orderflow_outbox_relayed_total";
/// Notification deliveries per sink, by `sink` and `outcome` ([`outcome`]).
pub const SINK_DELIVERIES_TOTAL: &str = "orderflow_sink_deliveries_total";
/// Time a sink takes to take one notification, by `sink`.
pub const SINK_SEND_SECONDS: &str = "orderflow_sink_send_seconds";
/// Messages a sink has still to go through on its input topics (the high watermarks − its
/// consumer group's committed offsets), by `sink`. Read from outside the sink's consumer, so it
/// keeps growing while the sink is stuck retrying.
pub const SINK_BACKLOG_MESSAGES: &str = "orderflow_sink_backlog_messages";
/// Events a sink failed to take with a retriable error and is retrying now, by `sink`.
pub const SINK_RETRYING_EVENTS: &str = "orderflow_sink_retrying_events";
/// Store call durations, by `operation` (the `Store` method).
pub const STORE_OPERATION_SECONDS: &str = "orderflow_store_operation_seconds";
/// Store calls that failed, by `operation`.
pub const STORE_ERRORS_TOTAL: &str = "orderflow_store_errors_total";
/// Order reads the API answered from its in-process cache (`outcome` `hit`) or
/// from the store (`miss`).
pub const ORDER_CACHE_REQUESTS_TOTAL: &str = "orderflow_order_cache_requests_total";
/// 1 while the API follows the order topics (for its cache and live streams), 0 while nothing
/// reads orders through it and it does not.
pub const ORDER_FOLLOWER_FOLLOWING: &str = "orderflow_order_follower_following";

// From librdkafka's statistics (`statistics.interval.ms`, every 5 s by default): gauges set on
// each report, so they are as fresh as the last one.

/// Messages in a partition after the stage's committed offset (the partition's high watermark
/// − the committed offset), by `stage`, `topic`, `partition`: for the partitions the stage's
/// consumer owns and has committed on. A partition that moves to another consumer leaves.
pub const CONSUMER_LAG_MESSAGES: &str = "orderflow_consumer_lag_messages";
/// Mean round-trip time of requests to a broker over the last statistics interval, by
/// `client` ([`client`]) and `broker` (librdkafka's name, `host:port/node-id`).
pub const KAFKA_BROKER_RTT_SECONDS: &str = "orderflow_kafka_broker_rtt_seconds";
/// Requests waiting to be sent to a broker, by `client` and `broker`.
pub const KAFKA_BROKER_OUTBUF_REQUESTS: &str = "orderflow_kafka_broker_outbuf_requests";
/// Requests sent to a broker and waiting for its response, by `client` and `broker`.
pub const KAFKA_BROKER_WAITRESP_REQUESTS: &str = "orderflow_kafka_broker_waitresp_requests";
/// 1 while the client's connection to a broker is up, 0 otherwise, by `client` and `broker`.
pub const KAFKA_BROKER_UP: &str = "orderflow_kafka_broker_up";
/// Messages in the producer's queues: produced but not yet acknowledged by the broker.
pub const KAFKA_PRODUCER_QUEUE_MESSAGES: &str = "orderflow_kafka_producer_queue_messages";
/// Bytes of the messages in the producer's queues.
pub const KAFKA_PRODUCER_QUEUE_BYTES: &str = "orderflow_kafka_producer_queue_bytes";

/// Values of the `outcome` label.
pub mod outcome {
    /// A stage handled the message on the first attempt.
    pub const OK: &str = "ok";
    /// A stage handled the message after one or more retriable failures.
    pub const RETRIED: &str = "retried";
    /// A stage sent the message to the dead-letter topic.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// A sink took the notification.
    pub const SENT: &str = "sent";
    /// The sink had delivered this notification before.
    pub const SKIPPED_DUPLICATE: &str = "skipped_duplicate";
    /// The sink failed to take the notification.
    pub const FAILED: &str = "failed";
}

/// Values of the `error_type` label of [`ERRORS_TOTAL`].
pub mod error_type {
    /// A handler failure that may pass; the message is retried.
    pub const RETRIABLE: &str = "retriable";
    /// A message that cannot be handled; it goes to the dead-letter topic.
    pub const POISON: &str = "poison";
    /// The consumer reported an error while receiving.
    pub const CONSUMER: &str = "consumer";
    /// Producing to the dead-letter topic failed; it is retried.
    pub const DEAD_LETTER_PRODUCE: &str = "dead_letter_produce";
}

/// Values of the `client` label of the broker gauges: which Kafka client of the process.
pub mod client {
    /// The process's producer (every stage and the API share one).
    pub const PRODUCER: &str = "producer";
    // A stage's consumer is labelled with the stage's name (`validation`, …, `bridge`).
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Buckets for durations: 0.5 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for batch sizes (the consume loop takes at most 1000 by default).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// Every Orderflow metric, registered in [`registry()`].
pub struct Metrics {
    pub stage_messages: IntCounterVec,
    pub stage_batch_size: HistogramVec,
    pub stage_processing: HistogramVec,
    pub stage_in_flight: IntGaugeVec,
    pub stage_lag: HistogramVec,
    pub errors: IntCounterVec,
    pub order_latency: HistogramVec,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub orders_accepted: IntCounter,
    pub outbox_events: IntGauge,
    pub outbox_relayed: IntCounter,
    pub order_cache_requests: IntCounterVec,
    pub order_follower_following: IntGauge,
    pub sink_deliveries: IntCounterVec,
    pub sink_send: HistogramVec,
    pub sink_backlog: IntGaugeVec,
    pub sink_retrying: IntGaugeVec,
    pub store_operation: HistogramVec,
    pub store_errors: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub broker_rtt: GaugeVec,
    pub broker_outbuf: IntGaugeVec,
    pub broker_waitresp: IntGaugeVec,
    pub broker_up: IntGaugeVec,
    pub producer_queue_messages: IntGauge,
    pub producer_queue_bytes: IntGauge,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = &*REGISTRY;
    Metrics {
        stage_messages: counter_vec(
            registry,
            STAGE_MESSAGES_TOTAL,
            "Messages a stage finished, by outcome.",
            &["stage", "outcome"],
        ),
        stage_batch_size: histogram_vec(
            registry,
            STAGE_BATCH_SIZE,
            "Messages per batch taken from the consumer.",
            &["stage"],
            BATCH_BUCKETS,
        ),
        stage_processing: histogram_vec(
            registry,
            STAGE_PROCESSING_SECONDS,
            "Time to handle one message, retries included.",
            &["stage"],
            SECONDS_BUCKETS,
        ),
        stage_in_flight: gauge_vec(
            registry,
            STAGE_IN_FLIGHT,
            "Messages a stage is handling now.",
            &["stage"],
        ),
        stage_lag: histogram_vec(
            registry,
            STAGE_LAG_SECONDS,
            "Age of a consumed event when the stage receives it.",
            &["stage"],
            SECONDS_BUCKETS,
        ),
        errors: counter_vec(
            registry,
            ERRORS_TOTAL,
            "Errors, by stage and type.",
            &["stage", "error_type"],
        ),
        order_latency: histogram_vec(
            registry,
            ORDER_LATENCY_SECONDS,
            "Time from an order's acceptance to a later status.",
            &["status"],
            SECONDS_BUCKETS,
        ),
        http_requests: counter_vec(
            registry,
            HTTP_REQUESTS_TOTAL,
            "HTTP requests answered.",
            &["route", "method", "status"],
        ),
        http_request_duration: histogram_vec(
            registry,
            HTTP_REQUEST_DURATION_SECONDS,
            "HTTP request durations.",
            &["route", "method"],
            SECONDS_BUCKETS,
        ),
        orders_accepted: register(
            registry,
            IntCounter::new(ORDERS_ACCEPTED_TOTAL, "Orders newly accepted by the API."),
        ),
        outbox_events: register(
            registry,
            IntGauge::new(
                OUTBOX_EVENTS,
                "Events in the outbox the relay has not put on their topics yet.",
            ),
        ),
        outbox_relayed: register(
            registry,
            IntCounter::new(
                OUTBOX_RELAYED_TOTAL,
                "Events the outbox relay put on their topics.",
            ),
        ),
        order_cache_requests: counter_vec(
            registry,
            ORDER_CACHE_REQUESTS_TOTAL,
            "Order reads answered from the API's cache (hit) or the store (miss).",
            &["outcome"],
        ),
        order_follower_following: register(
            registry,
            IntGauge::new(
                ORDER_FOLLOWER_FOLLOWING,
                "1 while the API follows the order topics for its cache and live streams.",
            ),
        ),
        sink_deliveries: counter_vec(
            registry,
            SINK_DELIVERIES_TOTAL,
            "Notification deliveries per sink, by outcome.",
            &["sink", "outcome"],
        ),
        sink_send: histogram_vec(
            registry,
            SINK_SEND_SECONDS,
            "Time a sink takes to take one notification.",
            &["sink"],
            SECONDS_BUCKETS,
        ),
        sink_backlog: gauge_vec(
            registry,
            SINK_BACKLOG_MESSAGES,
            "Messages a sink has still to go through on its input topics.",
            &["sink"],
        ),
        sink_retrying: gauge_vec(
            registry,
            SINK_RETRYING_EVENTS,
            "Events a sink is retrying after a retriable failure.",
            &["sink"],
        ),
        store_operation: histogram_vec(
            registry,
            STORE_OPERATION_SECONDS,
            "Store call durations, by operation.",
            &["operation"],
            SECONDS_BUCKETS,
        ),
        store_errors: counter_vec(
            registry,
            STORE_ERRORS_TOTAL,
            "Store calls that failed, by operation.",
            &["operation"],
        ),
        consumer_lag: gauge_vec(
            registry,
            CONSUMER_LAG_MESSAGES,
            "Messages in a partition after the stage's committed offset.",
            &["stage", "topic", "partition"],
        ),
        broker_rtt: register(
            registry,
            GaugeVec::new(
                Opts::new(
                    KAFKA_BROKER_RTT_SECONDS,
                    "Mean round-trip time to a broker over the last statistics interval.",
                ),
                BROKER_LABELS,
            ),
        ),
        broker_outbuf: gauge_vec(
            registry,
            KAFKA_BROKER_OUTBUF_REQUESTS,
            "Requests waiting to be sent to a broker.",
            BROKER_LABELS,
        ),
        broker_waitresp: gauge_vec(
            registry,
            KAFKA_BROKER_WAITRESP_REQUESTS,
            "Requests sent to a broker, waiting for the response.",
            BROKER_LABELS,
        ),
        broker_up: gauge_vec(
            registry,
            KAFKA_BROKER_UP,
            "1 while the connection to a broker is up.",
            BROKER_LABELS,
        ),
        producer_queue_messages: register(
            registry,
            IntGauge::new(
                KAFKA_PRODUCER_QUEUE_MESSAGES,
                "Messages in the producer's queues, not yet acknowledged.",
            ),
        ),
        producer_queue_bytes: register(
            registry,
            IntGauge::new(
                KAFKA_PRODUCER_QUEUE_BYTES,
                "Bytes of the messages in the producer's queues.",
            ),
        ),
    }
});

/// The labels of the broker gauges.
const BROKER_LABELS: &[&str] = &["client", "broker"];

fn register<C>(registry: &Registry, collector: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    // The names and labels are constants: an error here is a programming mistake.
    let collector = collector.expect("metric definition is valid");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric is registered once");
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The process-wide registry, with every Orderflow metric in it.
pub fn registry() -> &'static Registry {
    LazyLock::force(&METRICS);
    &REGISTRY
}

/// Every metric in the Prometheus text exposition format (version 0.0.4, [`CONTENT_TYPE`]).
pub fn render() -> String {
    let families = registry().gather();
    let mut out = Vec::new();
    // Writing to a Vec fails only on invalid metric data, which the registry does not hold.
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Seconds from `from_ms` to `to_ms` (both ms since the epoch), never negative (clocks of
/// different hosts may disagree a little).
pub fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    (to_ms.saturating_sub(from_ms)).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_every_family_with_its_samples() {
        metrics()
            .stage_messages
            .with_label_values(&["test-stage", outcome::OK])
            .inc_by(3);
        metrics()
            .store_operation
            .with_label_values(&["test_op"])
            .observe(0.002);
        let text = render();
        assert!(
            text.contains("orderflow_stage_messages_total{outcome=\"ok\",stage=\"test-stage\"} 3")
        );
        assert!(text.contains("orderflow_store_operation_seconds_count{operation=\"test_op\"} 1"));
        // An unlabelled metric is there from the start.
        assert!(text.contains("# TYPE orderflow_orders_accepted_total counter"));
        assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn names_follow_the_conventions() {
        let counters = [
            STAGE_MESSAGES_TOTAL,
            ERRORS_TOTAL,
            HTTP_REQUESTS_TOTAL,
            ORDERS_ACCEPTED_TOTAL,
            SINK_DELIVERIES_TOTAL,
            STORE_ERRORS_TOTAL,
            ORDER_CACHE_REQUESTS_TOTAL,
        ];
        let seconds = [
            STAGE_PROCESSING_SECONDS,
            STAGE_LAG_SECONDS,
            ORDER_LATENCY_SECONDS,
            HTTP_REQUEST_DURATION_SECONDS,
            SINK_SEND_SECONDS,
            STORE_OPERATION_SECONDS,
        ];
        let gauges = [
            STAGE_IN_FLIGHT,
            SINK_BACKLOG_MESSAGES,
            SINK_RETRYING_EVENTS,
            CONSUMER_LAG_MESSAGES,
            KAFKA_BROKER_RTT_SECONDS,
            KAFKA_BROKER_OUTBUF_REQUESTS,
            KAFKA_BROKER_WAITRESP_REQUESTS,
            KAFKA_BROKER_UP,
            KAFKA_PRODUCER_QUEUE_MESSAGES,
            KAFKA_PRODUCER_QUEUE_BYTES,
            ORDER_FOLLOWER_FOLLOWING,
        ];
        for name in counters.iter().chain(&seconds).chain(&gauges) {
            assert!(name.starts_with("orderflow_"), "{name}");
        }
        assert!(counters.iter().all(|n| n.ends_with("_total")));
        assert!(seconds.iter().all(|n| n.ends_with("_seconds")));
        assert!(gauges.iter().all(|n| !n.ends_with("_total")));
    }

    #[test]
    fn seconds_between_is_never_negative() {
        assert_eq!(seconds_between(1_000, 3_500), 2.5);
        assert_eq!(seconds_between(3_500, 1_000), 0.0);
    }
}
