//! A consumer group's position, read from outside the group: its backlog (messages after its
//! committed offsets), and a new group started where another one had got to.
//!
//! The client here never subscribes, so it never joins the group and never disturbs its
//! members; it only asks the group coordinator for committed offsets (OffsetFetch) and the
//! partition leaders for watermarks (ListOffsets). Every call blocks: run it on
//! `spawn_blocking`.

use std::time::Duration;

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    Offset, TopicPartitionList,
};

use crate::{KafkaConfig, Result};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A read-only view of one consumer group's offsets on a set of topics.
pub struct GroupView {
    consumer: BaseConsumer,
    topics: Vec<String>,
}

impl GroupView {
    /// A view of `group` on `topics` (full names).
    pub fn new(kafka: &KafkaConfig, group: &str, topics: Vec<String>) -> Result<Self> {
        let mut config = kafka.consumer_config(group);
        // Nobody reads this client's statistics, and it commits only when told.
        config
            .set("statistics.interval.ms", "0")
            .set("enable.auto.commit", "false");
        Ok(GroupView {
            consumer: config.create()?,
            topics,
        })
    }

    /// Every partition of the topics (a topic that does not exist yet has none).
    fn partitions(&self) -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = self.consumer.fetch_metadata(Some(topic), TIMEOUT)?;
            for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
                for p in t.partitions() {
                    list.add_partition(t.name(), p.id());
                }
            }
        }
        Ok(list)
    }

    /// The group's committed offsets (`Offset::Invalid` where it has none).
    fn committed(&self) -> Result<TopicPartitionList> {
        let partitions = self.partitions()?;
        Ok(self.consumer.committed_offsets(partitions, TIMEOUT)?)
    }

    /// Messages on the topics after the group's committed offsets; a partition without a
    /// committed offset counts from its low watermark (the group starts at the earliest).
    pub fn backlog(&self) -> Result<i64> {
        let mut total = 0;
        for e in self.committed()?.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
            let from = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            total += (high - from).max(0);
        }
        Ok(total)
    }

    /// When this group has no committed offset on any partition and `other` has some, commits
    /// `other`'s offsets as this group's, so that this group starts where `other` had got to;
    /// true if it did. Fails (and changes nothing) while this group has active members.
    pub fn start_where(&self, other: &GroupView) -> Result<bool> {
        let mine = self.committed()?;
        if mine
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(_)))
        {
            return Ok(false);
        }
        let theirs = other.committed()?;
        let mut seed = TopicPartitionList::new();
        for e in theirs.elements() {
            if let Offset::Offset(o) = e.offset() {
                seed.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
            }
        }
        if seed.count() == 0 {
            return Ok(false);
        }
        self.consumer.commit(&seed, CommitMode::Sync)?;
        Ok(true)
    }
}
