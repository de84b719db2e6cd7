//! Orderflow's Kafka plumbing, shared by ingest, the processors and the bridge. Everything
//! talks the Kafka protocol through rdkafka, whatever the broker (embedded tansu, Redpanda,
//! Kafka, librdkafka's mock cluster in tests).
//!
//! # Layout
//! - [`KafkaConfig`]: bootstrap servers, topic names and librdkafka properties, turned into
//!   producer, consumer and admin configs with throughput-minded defaults.
//! - [`producer::EventProducer`]: frames events and produces them keyed by order id.
//! - [`consume`]: the consume loop every stage runs: batches, per-key ordering, retries with
//!   backoff, dead-lettering of poison messages, offsets stored only after the work is done.
//! - [`admin`]: topic creation.
//! - [`groups`]: a consumer group's backlog and committed offsets, read from outside it.
//! - [`stats`]: librdkafka's statistics (`statistics.interval.ms`) as Prometheus gauges:
//!   consumer lag per partition, broker round-trip times and queues, the producer's queue.
//! - `trace` (feature `otlp`): the W3C trace context in message headers, across stages.
//! - [`replay`]: re-driving a dead-letter topic to the topics its messages came from;
//!   [`parked`]: listing what is on the dead-letter topics.
//! - [`follow`]: the keys of the order topics from their end, without a consumer group (the
//!   API's order cache).

pub mod admin;
pub mod consume;
pub mod follow;
pub mod groups;
pub mod parked;
pub mod producer;
pub mod replay;
pub mod stats;
#[cfg(feature = "otlp")]
mod trace;

use std::time::Duration;

use orderflow_schemas::{registry::RegistryClient, Backoff, SchemaIds, Topics};
use rdkafka::ClientConfig;

pub use consume::{run_consumer, Handler, HandlerError, Incoming, StageConfig};
pub use producer::{EventProducer, TraceContext};
pub use stats::StatsContext;

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Encode(#[from] orderflow_schemas::EncodeError),
    #[error("kafka admin: {0}")]
    Admin(String),
}

impl Error {
    /// Whether trying again can help. Only a payload the broker refuses as too large, and a
    /// payload we cannot encode, are final.
    pub fn is_retriable(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        match self {
            Error::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::InvalidRecord)
            ),
            Error::Encode(_) => false,
            Error::Admin(_) => true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach the cluster and name the topics.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub topics: Topics,
    /// librdkafka properties applied last, over Orderflow's defaults (`--kafka-property`,
    /// `ORDERFLOW_KAFKA_*`).
    pub properties: Vec<(String, String)>,
    /// The schema ids events are framed with and decoded by: the built-in ones, or the
    /// registry's (set at start-up).
    pub schemas: SchemaIds,
    /// The registry the ids came from, if any: the consume loop asks it about ids registered
    /// after start-up.
    pub registry: Option<RegistryClient>,
}

/// Never prints the value of a property that holds a credential (`sasl.password`,
/// `ssl.key.password`, `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, …).
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "jaas", "token", "key.pem"]
                    .iter()
                    .any(|s| k.contains(s));
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("properties", &properties)
            .field("schemas", &self.schemas)
            .field("registry", &self.registry)
            .finish()
    }
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, topics: Topics) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topics,
            properties: Vec::new(),
            schemas: SchemaIds::builtin(),
            registry: None,
        }
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "orderflow")
            .set("broker.address.family", "v4");
        config
    }

    fn overrides(&self, config: &mut ClientConfig, allowed: fn(&str) -> bool) {
        for (k, v) in &self.properties {
            if allowed(k) {
                config.set(k, v);
            }
        }
    }

    /// The settings of a long-lived client: the base, and a statistics report every 5 s for
    /// [`StatsContext`] (`statistics.interval.ms`; 0 turns them off).
    fn monitored(&self) -> ClientConfig {
        let mut config = self.base();
        config.set(
            "statistics.interval.ms",
            stats::DEFAULT_INTERVAL_MS.to_string(),
        );
        config
    }

    /// A producer that batches (linger, compression), retries, and never duplicates on retry.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.monitored();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000");
        self.overrides(&mut config, |k| !is_consumer_only(k));
        config
    }

    /// A consumer in `group` that stores offsets only when told, and commits stored offsets in
    /// the background.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.monitored();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("session.timeout.ms", "10000")
            .set("partition.assignment.strategy", "cooperative-sticky");
        self.overrides(&mut config, |k| !is_producer_only(k));
        config
    }

    /// Checks the properties with librdkafka as each kind of client gets them, without
    /// connecting: one it does not know, or a value this build cannot take (a codec, TLS), is
    /// an error that names it.
    pub fn check(&self) -> Result<()> {
        self.producer_config().create_native_config()?;
        self.consumer_config("orderflow-check")
            .create_native_config()?;
        self.admin_config().create_native_config()?;
        Ok(())
    }

    /// A short-lived admin client (no statistics: nothing reads them).
    pub fn admin_config(&self) -> ClientConfig {
        let mut config = self.base();
        self.overrides(&mut config, |k| {
            !is_consumer_only(k) && !is_producer_only(k) && k != "statistics.interval.ms"
        });
        config
    }
}

fn is_producer_only(key: &str) -> bool {
    matches!(
        key,
        "enable.idempotence"
            | "acks"
            | "linger.ms"
            | "queue.buffering.max.ms"
            | "batch.num.messages"
            | "batch.size"
            | "compression.type"
            | "compression.codec"
            | "message.timeout.ms"
            | "delivery.timeout.ms"
            | "message.send.max.retries"
            | "retries"
            | "compression.level"
            | "queue.buffering.max.messages"
            | "queue.buffering.max.kbytes"
            | "transactional.id"
            | "transaction.timeout.ms"
    )
}

fn is_consumer_only(key: &str) -> bool {
    matches!(
        key,
        "group.id"
            | "enable.auto.commit"
            | "auto.commit.interval.ms"
            | "enable.auto.offset.store"
            | "auto.offset.reset"
            | "fetch.wait.max.ms"
            | "session.timeout.ms"
            | "heartbeat.interval.ms"
            | "max.poll.interval.ms"
            | "group.instance.id"
            | "group.protocol"
            | "partition.assignment.strategy"
            | "isolation.level"
            | "fetch.min.bytes"
            | "fetch.max.bytes"
            | "max.partition.fetch.bytes"
            | "queued.min.messages"
            | "queued.max.messages.kbytes"
    )
}

/// How long the stages wait before retry number `attempt` (0-based) of a Kafka operation:
/// exponential from 50 ms, capped at 5 s, with up to 25% jitter so that stages do not retry in
/// lock step.
pub const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(50),
    max: Duration::from_secs(5),
    jitter_percent: 25,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_the_debug_form() {
        let mut config = KafkaConfig::new("b:9092", Topics::default());
        config.properties = vec![
            ("sasl.username".into(), "orderflow".into()),
            ("sasl.password".into(), "hunter2-secret".into()),
            (
                "sasl.oauthbearer.client.secret".into(),
                "oauth-secret".into(),
            ),
        ];
        let shown = format!("{config:?}");
        assert!(shown.contains("orderflow"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("oauth-secret"),
            "{shown}"
        );
    }

    #[test]
    fn overrides_reach_only_the_clients_they_apply_to() {
        let mut config = KafkaConfig::new("127.0.0.1:9092", Topics::default());
        config.properties = vec![
            ("linger.ms".into(), "20".into()),
            ("fetch.wait.max.ms".into(), "10".into()),
            ("security.protocol".into(), "plaintext".into()),
            ("heartbeat.interval.ms".into(), "1500".into()),
        ];
        let p = config.producer_config();
        assert_eq!(p.get("linger.ms"), Some("20"));
        assert_eq!(p.get("fetch.wait.max.ms"), None);
        assert_eq!(p.get("security.protocol"), Some("plaintext"));
        let c = config.consumer_config("g");
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        // A group property given to a producer or an admin client is a CONFWARN at start.
        assert_eq!(c.get("heartbeat.interval.ms"), Some("1500"));
        assert_eq!(p.get("heartbeat.interval.ms"), None);
        assert_eq!(config.admin_config().get("heartbeat.interval.ms"), None);
    }

    #[test]
    fn properties_are_checked_before_anything_connects() {
        let mut config = KafkaConfig::new("127.0.0.1:9092", Topics::default());
        config.properties = vec![
            ("compression.type".into(), "zstd".into()),
            ("security.protocol".into(), "sasl_ssl".into()),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
        ];
        config.check().expect("zstd, TLS and SCRAM are built in");
        config.properties = vec![("compresion.type".into(), "zstd".into())];
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("compresion.type"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn producer_and_consumers_report_statistics_unless_told_otherwise() {
        let mut config = KafkaConfig::new("127.0.0.1:9092", Topics::default());
        assert_eq!(
            config.producer_config().get("statistics.interval.ms"),
            Some("5000")
        );
        assert_eq!(
            config.consumer_config("g").get("statistics.interval.ms"),
            Some("5000")
        );
        config.properties = vec![("statistics.interval.ms".into(), "250".into())];
        assert_eq!(
            config.consumer_config("g").get("statistics.interval.ms"),
            Some("250")
        );
        assert_eq!(config.admin_config().get("statistics.interval.ms"), None);
    }
}
