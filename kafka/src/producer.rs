//! Producing events.

use std::time::Duration;

use orderflow_schemas::{wire, Event, SchemaIds, TopicKind, Topics};
use rdkafka::{
    message::OwnedHeaders,
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};

use crate::{KafkaConfig, Result, StatsContext};

/// A cheap-to-clone producer of framed events.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer<StatsContext>,
    topics: Topics,
    schemas: SchemaIds,
}

impl EventProducer {
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        let producer = config
            .producer_config()
            .create_with_context(StatsContext::producer())?;
        Ok(EventProducer {
            producer,
            topics: config.topics.clone(),
            schemas: config.schemas.clone(),
        })
    }

    /// Frames `event` (with its type's id in `KafkaConfig::schemas`) and produces it to its topic, keyed by [`Event::key`] (the order id); resolves once the broker
    /// has acknowledged it (acks=all). The record's timestamp is the event's `occurred_at`, so
    /// a consumer sees how old an event is without decoding it (`orderflow_stage_lag_seconds`).
    pub async fn send<E: Event>(&self, event: &E) -> Result<()> {
        let payload = wire::encode_with(&self.schemas, event)?;
        let topic = self.topics.name(E::TOPIC);
        // No headers: the topic and the schema id say what the message is. With the `otlp`
        // feature, the trace context of the span this runs in, when it is traced.
        let headers = OwnedHeaders::new();
        #[cfg(feature = "otlp")]
        let headers = crate::trace::inject(headers);
        self.send_record(
            &topic,
            Some(event.key().as_bytes()),
            &payload,
            headers,
            Some(event.occurred_at()),
        )
        .await
    }

    /// Produces a payload as it is.
    pub async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<()> {
        self.send_record(topic, key, payload, headers, None).await
    }

    /// Produces a payload with a record timestamp (ms since the epoch; `None`: now).
    async fn send_record(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        timestamp: Option<i64>,
    ) -> Result<()> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e.into())
    }

    /// The name of a catalogue topic.
    pub fn topic(&self, kind: TopicKind) -> String {
        self.topics.name(kind)
    }

    /// Waits until everything queued is acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(Timeout::After(timeout));
    }

    /// Asks the cluster for its metadata: a cheap readiness probe.
    pub async fn healthcheck(&self) -> Result<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                .map(|_| ())
        })
        .await
        .map_err(|e| crate::Error::Admin(e.to_string()))?
        .map_err(Into::into)
    }
}
