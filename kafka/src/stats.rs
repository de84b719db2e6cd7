//! librdkafka's statistics as Prometheus gauges.
//!
//! Every client Orderflow creates (the producer, each stage's consumer) asks librdkafka for a
//! statistics report every `statistics.interval.ms` (5 s by default, see
//! [`KafkaConfig`](crate::KafkaConfig)); [`StatsContext`] reads the few fields operators watch
//! and sets the gauges in `orderflow_schemas::metrics`:
//!
//! - per partition a stage's consumer owns: the consumer lag in messages (high watermark −
//!   committed offset);
//! - per broker and client: round-trip time, requests waiting to be sent and waiting for a
//!   response, whether the connection is up;
//! - for the producer: messages and bytes in its queues.
//!
//! A series that a report no longer has (a partition moved to another consumer, a broker left)
//! is removed, so the gauges describe the last report and nothing older.
//!
//! A consumer hands over its reports when the stage polls it, between batches: while a stage
//! is stuck inside a batch (retrying a message), its consumer's gauges keep their last values;
//! `orderflow_stage_in_flight` and `orderflow_errors_total{error_type="retriable"}` show that
//! case. The producer's are read by its own polling thread, always on time.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use orderflow_schemas::metrics;
use rdkafka::{client::ClientContext, consumer::ConsumerContext};
use serde::Deserialize;
use tracing::debug;

/// The statistics interval Orderflow's producer and consumers use unless
/// `statistics.interval.ms` is set.
pub const DEFAULT_INTERVAL_MS: u32 = 5_000;

/// A client context that turns statistics reports into gauges.
pub struct StatsContext {
    /// The `client` label: `producer`, or the stage whose consumer this is.
    client: String,
    kind: ClientKind,
    /// The label sets the last report set, to remove those the next one lacks.
    last: Mutex<Series>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    Producer,
    Consumer,
}

#[derive(Default)]
struct Series {
    /// `(topic, partition)` of the consumer lag gauge.
    partitions: HashSet<(String, String)>,
    /// Broker names of the broker gauges.
    brokers: HashSet<String>,
}

impl StatsContext {
    /// The context of the process's producer.
    pub fn producer() -> Self {
        Self::new(metrics::client::PRODUCER, ClientKind::Producer)
    }

    /// The context of a stage's consumer.
    pub fn consumer(stage: &str) -> Self {
        Self::new(stage, ClientKind::Consumer)
    }

    fn new(client: &str, kind: ClientKind) -> Self {
        StatsContext {
            client: client.to_string(),
            kind,
            last: Mutex::new(Series::default()),
        }
    }

    /// Sets the gauges from one JSON report.
    fn record(&self, json: &[u8]) {
        let report: Report = match serde_json::from_slice(json) {
            Ok(report) => report,
            Err(error) => {
                debug!(client = %self.client, %error, "Unreadable librdkafka statistics.");
                return;
            }
        };
        let m = metrics::metrics();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());

        let mut brokers = HashSet::new();
        for broker in report.brokers.values().filter(|b| b.nodeid >= 0) {
            let labels = [self.client.as_str(), broker.name.as_str()];
            m.broker_up
                .with_label_values(&labels)
                .set(i64::from(broker.state == "UP"));
            m.broker_outbuf
                .with_label_values(&labels)
                .set(broker.outbuf_cnt);
            m.broker_waitresp
                .with_label_values(&labels)
                .set(broker.waitresp_cnt);
            // No requests in the interval: no new round-trip time, keep the last one.
            if let Some(rtt) = broker.rtt.as_ref().filter(|w| w.cnt > 0) {
                m.broker_rtt
                    .with_label_values(&labels)
                    .set(rtt.avg as f64 / 1_000_000.0);
            }
            brokers.insert(broker.name.clone());
        }
        for gone in last.brokers.difference(&brokers) {
            let labels = [self.client.as_str(), gone.as_str()];
            let _ = m.broker_up.remove_label_values(&labels);
            let _ = m.broker_outbuf.remove_label_values(&labels);
            let _ = m.broker_waitresp.remove_label_values(&labels);
            let _ = m.broker_rtt.remove_label_values(&labels);
        }
        last.brokers = brokers;

        match self.kind {
            ClientKind::Producer => {
                m.producer_queue_messages.set(report.msg_cnt);
                m.producer_queue_bytes.set(report.msg_size);
            }
            ClientKind::Consumer => {
                let mut partitions = HashSet::new();
                for (topic, lag) in report.consumer_lags() {
                    m.consumer_lag
                        .with_label_values(&[self.client.as_str(), topic, &lag.partition])
                        .set(lag.messages);
                    partitions.insert((topic.to_string(), lag.partition));
                }
                for (topic, partition) in last.partitions.difference(&partitions) {
                    let _ = m.consumer_lag.remove_label_values(&[
                        self.client.as_str(),
                        topic.as_str(),
                        partition.as_str(),
                    ]);
                }
                last.partitions = partitions;
            }
        }
    }
}

impl ClientContext for StatsContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.record(statistics);
    }
}

impl ConsumerContext for StatsContext {}

/// The part of a librdkafka statistics report (its `STATISTICS.md`) that the gauges need.
#[derive(Debug, Deserialize)]
struct Report {
    /// Messages in the producer's queues.
    #[serde(default)]
    msg_cnt: i64,
    /// Their size in bytes.
    #[serde(default)]
    msg_size: i64,
    #[serde(default)]
    brokers: HashMap<String, BrokerReport>,
    #[serde(default)]
    topics: HashMap<String, TopicReport>,
}

#[derive(Debug, Deserialize)]
struct BrokerReport {
    /// `host:port/node-id`, or `…/bootstrap` and logical names for non-brokers.
    name: String,
    /// -1 for the bootstrap connection and the logical brokers (group coordinator).
    nodeid: i32,
    /// `UP`, `DOWN`, `INIT`, `CONNECT`, …
    state: String,
    outbuf_cnt: i64,
    waitresp_cnt: i64,
    /// Round-trip times over the last interval, in microseconds.
    rtt: Option<Window>,
}

#[derive(Debug, Deserialize)]
struct Window {
    avg: i64,
    cnt: i64,
}

#[derive(Debug, Deserialize)]
struct TopicReport {
    #[serde(default)]
    partitions: HashMap<String, PartitionReport>,
}

#[derive(Debug, Deserialize)]
struct PartitionReport {
    /// -1 for librdkafka's internal "unassigned" partition.
    partition: i32,
    /// `active` (and `offset-query`, …) while this consumer owns the partition; `none`,
    /// `stopping` or `stopped` when it does not.
    #[serde(default)]
    fetch_state: String,
    /// High watermark − committed offset; -1 while either is unknown.
    #[serde(default = "unknown")]
    consumer_lag: i64,
}

fn unknown() -> i64 {
    -1
}

/// One partition's lag.
#[derive(Debug, PartialEq)]
struct Lag {
    partition: String,
    messages: i64,
}

impl Report {
    /// The lag of every partition the consumer owns and knows the lag of, by topic.
    fn consumer_lags(&self) -> Vec<(&str, Lag)> {
        let mut lags = Vec::new();
        for (topic, report) in &self.topics {
            for p in report.partitions.values() {
                let owned = !matches!(p.fetch_state.as_str(), "none" | "stopping" | "stopped");
                if p.partition >= 0 && owned && p.consumer_lag >= 0 {
                    lags.push((
                        topic.as_str(),
                        Lag {
                            partition: p.partition.to_string(),
                            messages: p.consumer_lag,
                        },
                    ));
                }
            }
        }
        lags.sort_by(|a, b| (a.0, &a.1.partition).cmp(&(b.0, &b.1.partition)));
        lags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consumer's report as librdkafka writes it, trimmed to a few fields per object (the
    /// real one has dozens more, which the parser ignores).
    fn consumer_report(lag_p0: i64, p1_state: &str) -> String {
        format!(
            r#"{{
              "name": "orderflow#consumer-1", "type": "consumer", "msg_cnt": 0, "msg_size": 0,
              "brokers": {{
                "127.0.0.1:9092/bootstrap": {{"name": "127.0.0.1:9092/bootstrap", "nodeid": -1,
                  "state": "DOWN", "outbuf_cnt": 0, "waitresp_cnt": 0,
                  "rtt": {{"min": 0, "max": 0, "avg": 0, "cnt": 0}}}},
                "GroupCoordinator": {{"name": "GroupCoordinator", "nodeid": -1, "state": "UP",
                  "outbuf_cnt": 0, "waitresp_cnt": 1}},
                "127.0.0.1:9092/1": {{"name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP",
                  "outbuf_cnt": 2, "waitresp_cnt": 1,
                  "rtt": {{"min": 900, "max": 4100, "avg": 2500, "cnt": 12, "p99": 4095}}}}
              }},
              "topics": {{
                "orders.accepted": {{"topic": "orders.accepted", "partitions": {{
                  "0": {{"partition": 0, "fetch_state": "active", "consumer_lag": {lag_p0}}},
                  "1": {{"partition": 1, "fetch_state": "{p1_state}", "consumer_lag": 7}},
                  "2": {{"partition": 2, "fetch_state": "active", "consumer_lag": -1}},
                  "-1": {{"partition": -1, "fetch_state": "none", "consumer_lag": -1}}
                }}}}
              }}
            }}"#
        )
    }

    /// The lag gauge's value, if the series exists (looked up in a scrape, since asking the
    /// gauge for it would create it).
    fn lag(stage: &str, topic: &str, partition: &str) -> Option<i64> {
        let wanted = format!(
            "{}{{partition=\"{partition}\",stage=\"{stage}\",topic=\"{topic}\"}} ",
            metrics::CONSUMER_LAG_MESSAGES
        );
        metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix(&wanted).map(|v| v.parse().unwrap()))
    }

    #[test]
    fn a_report_sets_lag_for_owned_partitions_and_broker_gauges_for_real_brokers() {
        let context = StatsContext::consumer("stats-test-a");
        context.record(consumer_report(42, "active").as_bytes());

        assert_eq!(lag("stats-test-a", "orders.accepted", "0"), Some(42));
        assert_eq!(lag("stats-test-a", "orders.accepted", "1"), Some(7));
        // Lag unknown (nothing committed yet), and the internal partition: no series.
        assert_eq!(lag("stats-test-a", "orders.accepted", "2"), None);
        assert_eq!(lag("stats-test-a", "orders.accepted", "-1"), None);

        let m = metrics::metrics();
        let labels = ["stats-test-a", "127.0.0.1:9092/1"];
        assert_eq!(m.broker_up.with_label_values(&labels).get(), 1);
        assert_eq!(m.broker_outbuf.with_label_values(&labels).get(), 2);
        assert_eq!(m.broker_waitresp.with_label_values(&labels).get(), 1);
        assert_eq!(m.broker_rtt.with_label_values(&labels).get(), 0.0025);
        let text = metrics::render();
        assert!(!text.contains("127.0.0.1:9092/bootstrap"), "{text}");
        assert!(!text.contains("GroupCoordinator"), "{text}");
    }

    #[test]
    fn a_partition_the_consumer_gave_up_leaves_the_gauge() {
        let context = StatsContext::consumer("stats-test-b");
        context.record(consumer_report(3, "active").as_bytes());
        assert_eq!(lag("stats-test-b", "orders.accepted", "1"), Some(7));

        context.record(consumer_report(0, "stopped").as_bytes());
        assert_eq!(lag("stats-test-b", "orders.accepted", "0"), Some(0));
        assert_eq!(lag("stats-test-b", "orders.accepted", "1"), None);
    }

    #[test]
    fn the_producer_reports_its_queue() {
        let context = StatsContext::producer();
        context.record(
            br#"{"name": "orderflow#producer-1", "type": "producer", "msg_cnt": 17,
                 "msg_size": 4096, "brokers": {}, "topics": {}}"#,
        );
        let m = metrics::metrics();
        assert_eq!(m.producer_queue_messages.get(), 17);
        assert_eq!(m.producer_queue_bytes.get(), 4096);
    }

    #[test]
    fn an_unreadable_report_changes_nothing() {
        let context = StatsContext::consumer("stats-test-c");
        context.record(consumer_report(5, "active").as_bytes());
        context.record(b"{not json");
        assert_eq!(lag("stats-test-c", "orders.accepted", "0"), Some(5));
    }
}
