// Patch: this module is new (Orderflow's embedded broker).

//! The latest record batches of each partition, kept as they were produced, so that consumers
//! at the head of a partition are answered from memory instead of reading back, row by row,
//! records written a moment before.
//!
//! Only what a fetch from the database would also return is kept: batches produced outside a
//! transaction, uncompressed, with one offset per record, and only once their produce has
//! committed. A fetch is answered from here only when the batch holding its offset and the
//! ones after it are here without a gap; otherwise it reads the database as before. Batches
//! are answered whole, as Kafka does (a client skips the records before the offset it asked
//! for).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use bytes::Bytes;
use tansu_sans_io::record::deflated;

use crate::Topition;

/// How many bytes of batches are kept per partition; older batches go first.
const BYTES_PER_PARTITION: usize = 1024 * 1024;

/// How many partitions have batches kept; a partition beyond is read from the database.
const MAX_PARTITIONS: usize = 1024;

/// The attribute bits a kept batch has clear: compression (0..=2), transactional (4) and
/// control (5).
const NOT_KEPT: i16 = 0b0011_0111;

#[derive(Debug, Default)]
pub(crate) struct Tail {
    partitions: Mutex<HashMap<Topition, Batches>>,
}

#[derive(Debug, Default)]
struct Batches {
    /// By base offset.
    by_offset: BTreeMap<i64, deflated::Batch>,
    bytes: usize,
}

fn size(batch: &deflated::Batch) -> usize {
    batch.record_data.len() + 61
}

/// The offset after a batch's last record.
fn end(batch: &deflated::Batch) -> i64 {
    batch.base_offset + i64::from(batch.last_offset_delta) + 1
}

impl Tail {
    /// Whether a batch of this form may be kept once produced.
    pub(crate) fn keeps(transaction_id: Option<&str>, batch: &deflated::Batch) -> bool {
        transaction_id.is_none()
            && batch.magic == 2
            && batch.attributes & NOT_KEPT == 0
            && batch.record_count > 0
            && i64::from(batch.last_offset_delta) + 1 == i64::from(batch.record_count)
    }

    /// A batch committed at `base_offset` (see [`Tail::keeps`]).
    pub(crate) fn produced(&self, topition: &Topition, base_offset: i64, batch: deflated::Batch) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if !partitions.contains_key(topition) && partitions.len() >= MAX_PARTITIONS {
            return;
        }
        let batches = partitions.entry(topition.clone()).or_default();
        // Its own copy: the records may be a slice of the whole produce request.
        let batch = deflated::Batch {
            base_offset,
            record_data: Bytes::copy_from_slice(&batch.record_data),
            ..batch
        };
        batches.bytes += size(&batch);
        if let Some(replaced) = batches.by_offset.insert(base_offset, batch) {
            batches.bytes -= size(&replaced);
        }
        while batches.bytes > BYTES_PER_PARTITION {
            let Some((_, oldest)) = batches.by_offset.pop_first() else {
                break;
            };
            batches.bytes -= size(&oldest);
        }
    }

    /// The kept batches from the one holding `offset` on, without a gap, each ending at or
    /// before `visible`, until they reach `max_bytes` (the first one counts even if larger);
    /// `None` when the batch holding `offset` is not kept.
    pub(crate) fn fetch(
        &self,
        topition: &Topition,
        offset: i64,
        visible: i64,
        max_bytes: u32,
    ) -> Option<Vec<deflated::Batch>> {
        let partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let batches = partitions.get(topition)?;
        let (_, first) = batches.by_offset.range(..=offset).next_back()?;
        if end(first) <= offset || end(first) > visible {
            return None;
        }
        let mut found = vec![first.clone()];
        let mut bytes = first.record_data.len();
        let mut next = end(first);
        for (&base, batch) in batches.by_offset.range(next..) {
            if base != next
                || end(batch) > visible
                || bytes + batch.record_data.len() > max_bytes as usize
            {
                break;
            }
            bytes += batch.record_data.len();
            next = end(batch);
            found.push(batch.clone());
        }
        Some(found)
    }

    /// Forgets every batch of a topic (deleted).
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|topition, _| topition.topic() != topic);
    }

    /// Forgets every batch (records were deleted or compacted).
    pub(crate) fn clear(&self) {
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
