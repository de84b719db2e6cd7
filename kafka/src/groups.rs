//! A consumer group's position, read from outside the group: its backlog (messages after its
//! committed offsets), and a new group started where another one had got to.
//!
//! The client here never subscribes, so it never joins the group and never disturbs its
//! members; it only asks the group coordinator for committed offsets (OffsetFetch) and the
//! partition leaders for watermarks (ListOffsets). A backlog is three requests whatever the
//! number of partitions (one OffsetFetch, one ListOffsets per leader for the low and one for
//! the high watermarks; the topics' partitions are read again once a minute), since the
//! bridge reads each sink's every few seconds. Every call blocks: run it on
//! `spawn_blocking`.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    Offset, TopicPartitionList,
};

use crate::{KafkaConfig, Result};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a view counts on the partitions it last read: a partition added to a topic shows
/// in the backlog within this time.
const PARTITIONS_TTL: Duration = Duration::from_secs(60);

/// The partitions (topic, partition) of a view's topics, and when they were read.
type KnownPartitions = (Instant, Vec<(String, i32)>);

/// A read-only view of one consumer group's offsets on a set of topics.
pub struct GroupView {
    consumer: BaseConsumer,
    topics: Vec<String>,
    /// The topics' partitions and when they were read.
    partitions: Mutex<Option<KnownPartitions>>,
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
            partitions: Mutex::new(None),
        })
    }

    /// Every partition of the topics (a topic that does not exist yet has none), from the
    /// cluster's metadata; once every topic exists, that metadata is read again only when
    /// [`PARTITIONS_TTL`] old.
    fn partitions(&self) -> Result<TopicPartitionList> {
        let mut known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let partitions = match &*known {
            Some((at, partitions)) if at.elapsed() < PARTITIONS_TTL => partitions.clone(),
            _ => {
                let mut partitions = Vec::new();
                let mut every_topic = true;
                for topic in &self.topics {
                    let metadata = self.consumer.fetch_metadata(Some(topic), TIMEOUT)?;
                    for t in metadata.topics() {
                        if t.error().is_some() || t.partitions().is_empty() {
                            every_topic = false;
                            continue;
                        }
                        for p in t.partitions() {
                            partitions.push((t.name().to_string(), p.id()));
                        }
                    }
                }
                *known = every_topic.then(|| (Instant::now(), partitions.clone()));
                partitions
            }
        };
        let mut list = TopicPartitionList::new();
        for (topic, partition) in &partitions {
            list.add_partition(topic, *partition);
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
        let committed = self.committed()?;
        if committed.count() == 0 {
            return Ok(0);
        }
        let low = self.watermarks(&committed, Offset::Beginning)?;
        let high = self.watermarks(&committed, Offset::End)?;
        let mut total = 0;
        for e in committed.elements() {
            let key = (e.topic().to_string(), e.partition());
            let (low, high) = (low.get(&key).copied(), high.get(&key).copied());
            let low = low.unwrap_or(0);
            let from = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            total += (high.unwrap_or(from) - from).max(0);
        }
        Ok(total)
    }

    /// The low (`Offset::Beginning`) or high (`Offset::End`) watermark of every partition in
    /// `partitions`, in one ListOffsets request per partition leader; a partition whose
    /// leader answers without an offset is left out.
    fn watermarks(
        &self,
        partitions: &TopicPartitionList,
        which: Offset,
    ) -> Result<HashMap<(String, i32), i64>> {
        let mut query = TopicPartitionList::new();
        for e in partitions.elements() {
            query.add_partition_offset(e.topic(), e.partition(), which)?;
        }
        let answer = self.consumer.offsets_for_times(query, TIMEOUT)?;
        let mut offsets = HashMap::new();
        for e in answer.elements() {
            e.error()?;
            if let Offset::Offset(o) = e.offset() {
                offsets.insert((e.topic().to_string(), e.partition()), o);
            }
        }
        Ok(offsets)
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
