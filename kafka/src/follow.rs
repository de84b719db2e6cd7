//! Following the order topics' keys (order ids) from their current end, for readers that keep
//! something per order in memory: the API's order cache drops an order when one of its
//! events goes by.
//!
//! No consumer group: the partitions are assigned by hand, each from its high watermark at
//! start, and no offset is ever committed, so the stages' groups are never touched and every
//! process follows on its own. Partitions added to a topic later are not followed (restart).

use std::{sync::Arc, time::Duration};

use orderflow_schemas::TopicKind;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{KafkaConfig, Result, BACKOFF};

/// The topics that carry an order's events: every catalogue topic but the dead-letter ones.
pub fn order_topics() -> Vec<TopicKind> {
    TopicKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, TopicKind::DeadLetter | TopicKind::BridgeDeadLetter))
        .collect()
}

/// What [`follow_keys`] tells its caller.
pub trait KeyListener: Send + Sync + 'static {
    /// Following from here on: every event produced from now is seen.
    fn following(&self);
    /// A message's key went by (the next is not read before this is done).
    fn key(&self, key: &[u8]) -> impl std::future::Future<Output = ()> + Send;
    /// Messages may have been missed (a consumer error): forget everything.
    fn gap(&self);
}

/// Calls `listener` with the key of every message on `topics` from now until `shutdown`.
/// Setting up is retried while the broker does not answer.
pub async fn follow_keys(
    config: &KafkaConfig,
    topics: Vec<TopicKind>,
    listener: Arc<impl KeyListener>,
    shutdown: CancellationToken,
) -> Result<()> {
    let names: Vec<String> = topics.iter().map(|k| config.topics.name(*k)).collect();
    let mut attempt = 0;
    let consumer = loop {
        let (config, names) = (config.clone(), names.clone());
        let setup = tokio::task::spawn_blocking(move || assign_at_end(&config, &names)).await;
        match setup {
            Ok(Ok(consumer)) => break consumer,
            Ok(Err(e)) => {
                warn!(error = %e, attempt, "Cannot follow the order topics yet; retrying.")
            }
            Err(e) => warn!(error = %e, "Following the order topics failed to start."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(BACKOFF.delay(attempt.min(6))) => {}
        }
        attempt += 1;
    };
    info!(topics = ?names, "Following the order topics.");
    listener.following();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => match message {
                Ok(m) => {
                    if let Some(key) = m.key() {
                        listener.key(key).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "Following the order topics: consumer error.");
                    listener.gap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// A consumer assigned every partition of `topics` at its high watermark (blocking calls).
fn assign_at_end(config: &KafkaConfig, topics: &[String]) -> Result<StreamConsumer> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    // Never joined (the partitions are assigned), but librdkafka wants a group id.
    let mut client = config.consumer_config(&format!(
        "{}orderflow-follow-{}-{}",
        config.topics.prefix(),
        std::process::id(),
        orderflow_schemas::now_millis()
    ));
    client
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0");
    let consumer: StreamConsumer = client.create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        for t in metadata.topics() {
            if t.partitions().is_empty() {
                return Err(crate::Error::Admin(format!(
                    "topic {topic} has no partitions yet"
                )));
            }
            for p in t.partitions() {
                let (_, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
                assignment.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
            }
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}
