//! Re-driving a dead-letter topic (`orderflow dlq replay`): every message goes back to the
//! topic it came from (its `orderflow-dlq-source-topic` header) with its key, its payload and
//! its original headers, so that the stage that gave up on it tries again, e.g. once a sink's
//! configuration is fixed. The stages are idempotent, so replaying a message whose effects
//! partly happened does nothing twice.
//!
//! The replay reads as the consumer group `<prefix>orderflow-dlq-replay` and commits each
//! partition's offset after the re-driven messages are acknowledged, so running it twice does
//! not replay the same dead letters twice. It stops at the end each partition had when it
//! started: a message that is still poison comes back to the dead-letter topic while the
//! replay runs, and is left for the next replay instead of being re-driven again and again.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use rdkafka::{
    consumer::{CommitMode, Consumer, StreamConsumer},
    error::KafkaError,
    message::{Header, Headers, OwnedHeaders},
    Message, Offset, TopicPartitionList,
};
use tracing::{info, warn};

use crate::{consume::dlq_headers, EventProducer, KafkaConfig, Result};

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Messages produced back to their source topic.
    pub replayed: u64,
    /// Messages without a source-topic header: left where they are.
    pub skipped: u64,
}

/// The headers the dead-lettering added; a replayed message leaves them behind.
const DLQ_HEADERS: [&str; 5] = [
    dlq_headers::REASON,
    dlq_headers::STAGE,
    dlq_headers::SOURCE_TOPIC,
    dlq_headers::SOURCE_PARTITION,
    dlq_headers::SOURCE_OFFSET,
];

/// Replays `topic` (a full topic name) from where the last replay stopped to the end it had
/// when the replay started. `idle` bounds the wait for the next message or the end of a
/// partition.
pub async fn replay_dead_letters(
    kafka: &KafkaConfig,
    topic: &str,
    producer: &EventProducer,
    idle: Duration,
) -> Result<ReplayReport> {
    let group = format!("{}orderflow-dlq-replay", kafka.topics.prefix());
    let mut config = kafka.consumer_config(&group);
    config
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    let partitions = partition_count(&consumer, topic).await?;
    // Where each partition ends now: the replay stops there.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for partition in 0..partitions as i32 {
        let (_, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
        })?;
        ends.insert(partition, high);
    }
    info!(topic, group, partitions, "Replaying dead letters.");

    let mut report = ReplayReport::default();
    let mut at_end: HashSet<i32> = HashSet::new();
    while at_end.len() < partitions {
        let message = match tokio::time::timeout(idle, consumer.recv()).await {
            Err(_) => {
                warn!(
                    topic,
                    "No message and no partition end within the idle time; stopping."
                );
                break;
            }
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
                continue;
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(m)) => m,
        };
        let end = ends.get(&message.partition()).copied().unwrap_or(i64::MAX);
        if message.offset() >= end {
            // Dead-lettered after the replay started (perhaps one it re-drove): the next
            // replay's.
            at_end.insert(message.partition());
            continue;
        }
        let source = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == dlq_headers::SOURCE_TOPIC)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        });
        match source {
            Some(source) => {
                let mut headers = OwnedHeaders::new();
                if let Some(original) = message.headers() {
                    for h in original.iter().filter(|h| !DLQ_HEADERS.contains(&h.key)) {
                        headers = headers.insert(Header {
                            key: h.key,
                            value: h.value,
                        });
                    }
                }
                producer
                    .send_raw(
                        &source,
                        message.key(),
                        message.payload().unwrap_or_default(),
                        headers,
                    )
                    .await?;
                report.replayed += 1;
            }
            None => {
                warn!(
                    topic,
                    partition = message.partition(),
                    offset = message.offset(),
                    "Dead letter without a source topic; skipped."
                );
                report.skipped += 1;
            }
        }
        let mut done = TopicPartitionList::new();
        done.add_partition_offset(
            topic,
            message.partition(),
            Offset::Offset(message.offset() + 1),
        )?;
        consumer.commit(&done, CommitMode::Sync)?;
        if message.offset() + 1 >= end {
            at_end.insert(message.partition());
        }
    }
    info!(
        topic,
        replayed = report.replayed,
        skipped = report.skipped,
        "Replay done."
    );
    Ok(report)
}

/// How many partitions `topic` has (0 when it does not exist).
async fn partition_count(consumer: &StreamConsumer, topic: &str) -> Result<usize> {
    let client = consumer.client();
    let metadata = tokio::task::block_in_place(|| {
        client.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0))
}
