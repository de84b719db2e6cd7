//! What is parked on the dead-letter topics (`orderflow dlq list`): every message from the
//! start of each partition to its end at the time of asking, with the headers the
//! dead-lettering added (reason, stage, source topic, partition and offset).
//!
//! Read-only: the partitions are assigned by hand and no offset is ever committed, so listing
//! changes nothing for `orderflow dlq replay` or anyone else.

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    Message, Offset, TopicPartitionList,
};
use serde::Serialize;

use crate::{consume::dlq_headers, Error, KafkaConfig, Result};

/// One dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedMessage {
    /// The dead-letter topic it is on, and where.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Its key (the order id), as text (lossy for keys that are not UTF-8).
    pub key: Option<String>,
    /// Why it was parked (`orderflow-dlq-reason`).
    pub reason: Option<String>,
    /// The stage that parked it (`validation`, …, `bridge.<sink>`).
    pub stage: Option<String>,
    /// Where it came from.
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// When it was parked: the record's timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The payload's size in bytes (the payload itself is not shown: it may be anything).
    pub payload_bytes: usize,
}

/// Lists every message on `topics` (full names; a topic that does not exist has none), in
/// topic, partition and offset order. `timeout` bounds the whole read.
pub async fn list_parked(
    kafka: &KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<ParkedMessage>> {
    let (kafka, topics) = (kafka.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || read_all(&kafka, &topics, timeout))
        .await
        .map_err(|e| Error::Admin(format!("listing dead letters failed: {e}")))?
}

fn read_all(
    kafka: &KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<ParkedMessage>> {
    let deadline = Instant::now() + timeout;
    let group = format!("{}orderflow-dlq-list", kafka.topics.prefix());
    let mut config = kafka.consumer_config(&group);
    config
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0");
    let consumer: BaseConsumer = config.create()?;
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::Admin(format!("timed out reading {what}")))
    };

    // Every partition with something on it, from its low watermark; where it ends now.
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), left("the topics' metadata")?)?;
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                let (low, high) =
                    consumer.fetch_watermarks(t.name(), p.id(), left("the watermarks")?)?;
                if high > low {
                    assignment.add_partition_offset(t.name(), p.id(), Offset::Offset(low))?;
                    ends.push((t.name().to_string(), p.id(), high));
                }
            }
        }
    }
    let mut parked = Vec::new();
    if ends.is_empty() {
        return Ok(parked);
    }
    consumer.assign(&assignment)?;
    // The next offset to read, per partition.
    let mut next: Vec<i64> = vec![-1; ends.len()];
    let done = |next: &[i64]| ends.iter().zip(next).all(|((_, _, high), n)| n >= high);
    while !done(&next) {
        let Some(message) =
            consumer.poll(left("the dead letters")?.min(Duration::from_millis(200)))
        else {
            continue;
        };
        let m = message?;
        let Some(i) = ends
            .iter()
            .position(|(t, p, _)| t == m.topic() && *p == m.partition())
        else {
            continue;
        };
        next[i] = m.offset() + 1;
        if m.offset() >= ends[i].2 {
            continue;
        }
        let header = |key: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        parked.push(ParkedMessage {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            reason: header(dlq_headers::REASON),
            stage: header(dlq_headers::STAGE),
            source_topic: header(dlq_headers::SOURCE_TOPIC),
            source_partition: header(dlq_headers::SOURCE_PARTITION).and_then(|v| v.parse().ok()),
            source_offset: header(dlq_headers::SOURCE_OFFSET).and_then(|v| v.parse().ok()),
            timestamp_ms: m.timestamp().to_millis(),
            payload_bytes: m.payload().map_or(0, <[u8]>::len),
        });
    }
    parked
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    Ok(parked)
}
