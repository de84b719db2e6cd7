// Copyright ⓒ 2024-2025 Peter Morgan <peter.james.morgan@gmail.com>
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, LazyLock, Mutex, Weak},
    time::{Duration, Instant},
};

use rama::{Context, Service};
use tansu_sans_io::{
    ApiKey, ErrorCode, FetchRequest, FetchResponse, IsolationLevel,
    fetch_request::{FetchPartition, FetchTopic},
    fetch_response::{
        EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData, SnapshotId,
    },
    metadata_response::MetadataResponseTopic,
    record::deflated::{Batch, Frame},
};
use tokio::{sync::Notify, time::sleep};
use tracing::{debug, error, instrument};

use crate::{Error, OffsetStage, Result, Storage, TopicId, Topition};

/// Fetches waiting for records, by topic name: each waiting fetch registers its own [`Notify`]
/// under every topic it reads, before it reads them, and a produce to a topic wakes them
/// (patch: upstream re-queries the storage in a sleep loop until the max wait has passed).
static WAITING: LazyLock<Mutex<BTreeMap<String, Vec<Weak<Notify>>>>> =
    LazyLock::new(Default::default);

fn wait_for(topic: &str, waiter: &Arc<Notify>) {
    if let Ok(mut waiting) = WAITING.lock() {
        let waiters = waiting.entry(topic.to_owned()).or_default();
        // Fetches that have answered since drop their notify: forget them here.
        waiters.retain(|waiter| waiter.strong_count() > 0);
        waiters.push(Arc::downgrade(waiter));
    }
}

/// Wakes the fetches waiting on `topic` (`None`: every waiting fetch), after records were
/// written to it or a transaction's records became visible.
pub(crate) fn records_written(topic: Option<&str>) {
    let woken = WAITING.lock().map_or_else(
        |_| Vec::new(),
        |mut waiting| match topic {
            Some(topic) => waiting.remove(topic).unwrap_or_default(),
            None => std::mem::take(&mut *waiting).into_values().flatten().collect(),
        },
    );
    for waiter in woken.iter().filter_map(Weak::upgrade) {
        waiter.notify_one();
    }
}

/// Patch: the offsets a fetch last read of each partition, while nothing has been written to it
/// since, so that a fetch of a partition with nothing past its offset answers from memory
/// instead of querying the storage twice (upstream reads every partition of every topic a fetch
/// names, each time: a consumer of many topics paid for all of them whenever one had a record).
///
/// A produce to a partition forgets it ([`partition_written`]); a transaction's end, deleted
/// records or topics and the storage's maintenance forget every partition
/// ([`offsets_changed`]). A read remembers what it found only when nothing was forgotten since
/// it began ([`Ticket`]), so a produce that lands during a read is never hidden.
#[derive(Default)]
struct KnownOffsets {
    /// Raised when every partition is forgotten.
    epoch: u64,
    partitions: HashMap<Topition, Known>,
}

#[derive(Default)]
struct Known {
    /// Raised by every produce to the partition.
    version: u64,
    stage: Option<OffsetStage>,
}

/// Where [`KnownOffsets`] stood when a read of one partition began.
struct Ticket {
    epoch: u64,
    version: u64,
}

static KNOWN: LazyLock<Mutex<KnownOffsets>> = LazyLock::new(Default::default);

/// The partition's offsets, if read since anything was written to it.
fn known_offsets(tp: &Topition) -> Option<OffsetStage> {
    KNOWN
        .lock()
        .ok()
        .and_then(|known| known.partitions.get(tp).and_then(|k| k.stage))
}

fn ticket(tp: &Topition) -> Option<Ticket> {
    KNOWN.lock().ok().map(|known| Ticket {
        epoch: known.epoch,
        version: known.partitions.get(tp).map_or(0, |k| k.version),
    })
}

/// Remembers the offsets a read found, unless the partition was written meanwhile.
fn remember(tp: &Topition, ticket: Option<Ticket>, stage: OffsetStage) {
    let (Some(ticket), Ok(mut known)) = (ticket, KNOWN.lock()) else {
        return;
    };
    if known.epoch != ticket.epoch {
        return;
    }
    let entry = known.partitions.entry(tp.clone()).or_default();
    if entry.version == ticket.version {
        entry.stage = Some(stage);
    }
}

/// Forgets what is known of a partition: records were (or may have been) written to it.
pub(crate) fn partition_written(tp: &Topition) {
    if let Ok(mut known) = KNOWN.lock() {
        let entry = known.partitions.entry(tp.clone()).or_default();
        entry.version += 1;
        entry.stage = None;
    }
}

/// Forgets what is known of every partition: offsets changed other than by a produce.
pub(crate) fn offsets_changed() {
    if let Ok(mut known) = KNOWN.lock() {
        known.epoch += 1;
        known.partitions.clear();
    }
    if let Ok(mut topics) = TOPICS.lock() {
        topics.epoch += 1;
        topics.found.clear();
    }
}

/// Patch: the id and name of each topic a fetch named, as the storage's metadata last found
/// them, so that a fetch does not query the metadata of each of its topics every time it reads
/// (upstream does; for a consumer of ten topics that was ten queries, each building a full
/// metadata answer, per read). Only topics that exist are kept; [`offsets_changed`] (a deleted
/// topic among its causes) forgets them all, and a lookup that began before that is not kept.
#[derive(Default)]
struct KnownTopics {
    epoch: u64,
    found: HashMap<TopicId, ([u8; 16], String)>,
}

static TOPICS: LazyLock<Mutex<KnownTopics>> = LazyLock::new(Default::default);

fn known_topic(topic: &TopicId) -> Option<([u8; 16], String)> {
    TOPICS
        .lock()
        .ok()
        .and_then(|topics| topics.found.get(topic).cloned())
}

fn topics_epoch() -> Option<u64> {
    TOPICS.lock().ok().map(|topics| topics.epoch)
}

fn remember_topic(topic: TopicId, epoch: Option<u64>, id: [u8; 16], name: String) {
    if let (Some(epoch), Ok(mut topics)) = (epoch, TOPICS.lock())
        && topics.epoch == epoch
    {
        _ = topics.found.insert(topic, (id, name));
    }
}

/// A [`Service`] using [`Storage`] as [`Context`] taking [`FetchRequest`] returning [`FetchResponse`].
/// ```
/// use rama::{Context, Layer as _, Service as _, layer::MapStateLayer};
/// use tansu_sans_io::{
///     CreateTopicsRequest, ErrorCode, FetchRequest,
///     create_topics_request::CreatableTopic,
///     fetch_request::{FetchPartition, FetchTopic},
/// };
/// use tansu_storage::{CreateTopicsService, Error, FetchService, StorageContainer};
/// use url::Url;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Error> {
/// const CLUSTER_ID: &str = "tansu";
/// const NODE_ID: i32 = 111;
/// const HOST: &str = "localhost";
/// const PORT: i32 = 9092;
///
/// let storage = StorageContainer::builder()
///     .cluster_id(CLUSTER_ID)
///     .node_id(NODE_ID)
///     .advertised_listener(Url::parse(&format!("tcp://{HOST}:{PORT}"))?)
///     .storage(Url::parse("memory://tansu/")?)
///     .build()
///     .await?;
///
/// let create_topic = {
///     let storage = storage.clone();
///     MapStateLayer::new(|_| storage).into_layer(CreateTopicsService)
/// };
///
/// let name = "abcba";
///
/// let response = create_topic
///     .serve(
///         Context::default(),
///         CreateTopicsRequest::default()
///             .topics(Some(vec![
///                 CreatableTopic::default()
///                     .name(name.into())
///                     .num_partitions(5)
///                     .replication_factor(3)
///                     .assignments(Some([].into()))
///                     .configs(Some([].into())),
///             ]))
///             .validate_only(Some(false)),
///     )
///     .await?;
///
/// let topics = response.topics.unwrap_or_default();
/// assert_eq!(1, topics.len());
/// assert_eq!(ErrorCode::None, ErrorCode::try_from(topics[0].error_code)?);
///
/// let fetch = {
///     let storage = storage.clone();
///     MapStateLayer::new(|_| storage).into_layer(FetchService)
/// };
///
/// let partition = 0;
///
/// let response = fetch
///     .serve(
///         Context::default(),
///         FetchRequest::default()
///             .topics(Some(
///                 [FetchTopic::default()
///                     .topic(Some(name.into()))
///                     .partitions(Some(
///                         [FetchPartition::default().partition(partition)].into(),
///                     ))]
///                 .into(),
///             ))
///             .max_bytes(Some(0))
///             .max_wait_ms(5_000),
///     )
///     .await?;
///
/// let topics = response.responses.as_deref().unwrap_or_default();
/// assert_eq!(1, topics.len());
/// let partitions = topics[0].partitions.as_deref().unwrap_or_default();
/// assert_eq!(1, partitions.len());
/// assert_eq!(
///     ErrorCode::None,
///     ErrorCode::try_from(partitions[0].error_code)?
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct FetchService;

impl ApiKey for FetchService {
    const KEY: i16 = FetchRequest::KEY;
}

impl FetchService {
    #[allow(clippy::too_many_arguments)]
    async fn fetch_partition<G>(
        &self,
        ctx: Context<G>,
        max_wait_ms: Duration,
        min_bytes: u32,
        max_bytes: &mut u32,
        isolation: IsolationLevel,
        topic: &str,
        fetch_partition: &FetchPartition,
    ) -> Result<PartitionData>
    where
        G: Storage,
    {
        debug!(
            ?max_wait_ms,
            ?min_bytes,
            ?max_bytes,
            ?isolation,
            ?fetch_partition
        );

        let partition_index = fetch_partition.partition;
        let tp = Topition::new(topic, partition_index);

        // Patch: nothing past the fetch offset, as far as the last read knows: no query.
        if let Some(stage) = known_offsets(&tp)
            && fetch_partition.fetch_offset >= stage.high_watermark()
        {
            return Ok(Self::partition_data(partition_index, stage, Vec::new()));
        }
        let ticket = ticket(&tp);

        let mut batches = Vec::new();

        let mut offset = fetch_partition.fetch_offset;

        // Patch: the watermarks read after the last records, when the read reached them (upstream
        // read once more to find nothing, then read the watermarks).
        let mut stage_after_read = None;

        loop {
            if *max_bytes == 0 {
                break;
            }

            debug!(offset);

            let mut fetched = ctx
                .state()
                .fetch(&tp, offset, min_bytes, *max_bytes, isolation)
                .await
                .inspect(|r| debug!(?tp, ?offset, ?r))
                .inspect_err(|error| error!(?tp, ?error))?;

            *max_bytes =
                u32::try_from(fetched.byte_size()).map(|bytes| max_bytes.saturating_sub(bytes))?;

            debug!(?offset, ?fetched);

            if fetched.is_empty() || fetched.first().is_some_and(|batch| batch.record_count == 0) {
                break;
            }

            // Patch: on from the end of the last batch, which may have begun before `offset`
            // (batches answered whole) or skipped offsets (compacted records).
            offset = fetched.last().map_or(offset, |batch| {
                offset.max(batch.base_offset + i64::from(batch.last_offset_delta) + 1)
            });
            batches.append(&mut fetched);

            let stage = ctx
                .state()
                .offset_stage(&tp)
                .await
                .inspect_err(|error| error!(?error, ?tp))?;
            let visible = if isolation == IsolationLevel::ReadCommitted {
                stage.last_stable()
            } else {
                stage.high_watermark()
            };
            if offset >= visible {
                stage_after_read = Some(stage);
                break;
            }
        }

        let offset_stage = match stage_after_read {
            Some(stage) => stage,
            None => ctx
                .state()
                .offset_stage(&tp)
                .await
                .inspect_err(|error| error!(?error, ?tp))?,
        };
        remember(&tp, ticket, offset_stage);

        Ok(Self::partition_data(partition_index, offset_stage, batches)).inspect(|r| debug!(?r))
    }

    fn partition_data(
        partition_index: i32,
        offset_stage: OffsetStage,
        batches: Vec<Batch>,
    ) -> PartitionData {
        PartitionData::default()
            .partition_index(partition_index)
            .error_code(ErrorCode::None.into())
            .high_watermark(offset_stage.high_watermark())
            .last_stable_offset(Some(offset_stage.last_stable()))
            .log_start_offset(Some(offset_stage.log_start()))
            .diverging_epoch(None)
            .current_leader(None)
            .snapshot_id(None)
            .aborted_transactions(Some([].into()))
            .preferred_read_replica(Some(-1))
            .records(if batches.is_empty() {
                None
            } else {
                Some(Frame { batches })
            })
    }

    fn unknown_topic_response(&self, fetch: &FetchTopic) -> Result<FetchableTopicResponse> {
        Ok(FetchableTopicResponse::default()
            .topic(fetch.topic.clone())
            .topic_id(Some([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
            .partitions(fetch.partitions.as_ref().map(|partitions| {
                partitions
                    .iter()
                    .map(|partition| {
                        PartitionData::default()
                            .partition_index(partition.partition)
                            .error_code(ErrorCode::UnknownTopicOrPartition.into())
                            .high_watermark(0)
                            .last_stable_offset(Some(0))
                            .log_start_offset(Some(-1))
                            .diverging_epoch(Some(
                                EpochEndOffset::default().epoch(-1).end_offset(-1),
                            ))
                            .current_leader(Some(
                                LeaderIdAndEpoch::default().leader_id(0).leader_epoch(0),
                            ))
                            .snapshot_id(Some(SnapshotId::default().end_offset(-1).epoch(-1)))
                            .aborted_transactions(Some([].into()))
                            .preferred_read_replica(Some(-1))
                            .records(None)
                    })
                    .collect()
            })))
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_topic<G>(
        &self,
        ctx: Context<G>,
        max_wait_ms: Duration,
        min_bytes: u32,
        max_bytes: &mut u32,
        isolation: IsolationLevel,
        fetch: &FetchTopic,
        _is_first: bool,
        waiter: &Arc<Notify>,
    ) -> Result<FetchableTopicResponse>
    where
        G: Storage,
    {
        debug!(?max_wait_ms, ?min_bytes, ?isolation, ?fetch);

        // Patch: the topic's id and name from memory when a fetch found it before.
        let topic = TopicId::from(fetch);
        let found = match known_topic(&topic) {
            Some((topic_id, name)) => Some((Some(topic_id), name)),
            None => {
                let epoch = topics_epoch();
                let metadata = ctx.state().metadata(Some(&[topic.clone()])).await?;
                match metadata.topics().first() {
                    Some(MetadataResponseTopic {
                        error_code,
                        topic_id: Some(topic_id),
                        name: Some(name),
                        ..
                    }) if *error_code == i16::from(ErrorCode::None) => {
                        remember_topic(topic, epoch, *topic_id, name.clone());
                        Some((Some(*topic_id), name.clone()))
                    }
                    // Upstream answers a topic the storage does not know as found, with that
                    // error code and the null id: so does this, without remembering it.
                    Some(MetadataResponseTopic {
                        topic_id,
                        name: Some(name),
                        ..
                    }) => Some((*topic_id, name.clone())),
                    _ => None,
                }
            }
        };

        if let Some((topic_id, ref name)) = found {
            wait_for(name, waiter);

            let mut partitions = Vec::new();

            for fetch_partition in fetch.partitions.as_ref().unwrap_or(&Vec::new()) {
                let partition = self
                    .fetch_partition(
                        ctx.clone(),
                        max_wait_ms,
                        min_bytes,
                        max_bytes,
                        isolation,
                        name,
                        fetch_partition,
                    )
                    .await?;

                partitions.push(partition);
            }

            Ok(FetchableTopicResponse::default()
                .topic(fetch.topic.to_owned())
                .topic_id(topic_id)
                .partitions(Some(partitions)))
        } else {
            self.unknown_topic_response(fetch)
        }
    }

    pub(crate) async fn fetch<G>(
        &self,
        ctx: Context<G>,
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: &mut u32,
        isolation: IsolationLevel,
        topics: &[FetchTopic],
    ) -> Result<Vec<FetchableTopicResponse>>
    where
        G: Storage,
    {
        debug!(?max_wait, ?min_bytes, ?isolation, ?topics);

        if topics.is_empty() {
            Ok(vec![])
        } else {
            let start = Instant::now();
            let mut responses = vec![];
            let mut iteration = 0;
            let mut elapsed = Duration::from_millis(0);
            let mut bytes = 0;

            // Patch: answer as soon as there are records (upstream slept at least half the
            // remaining wait even then), and between reads wait for a produce to one of the
            // topics rather than re-querying the storage on a timer.
            let waiter = Arc::new(Notify::new());

            loop {
                debug!(?elapsed, ?max_wait, ?bytes, ?min_bytes);

                let enumerate = topics.iter().enumerate();
                responses.clear();

                for (i, fetch) in enumerate {
                    let fetch_response = self
                        .fetch_topic(
                            ctx.clone(),
                            max_wait,
                            min_bytes,
                            max_bytes,
                            isolation,
                            fetch,
                            i == 0,
                            &waiter,
                        )
                        .await?;

                    responses.push(fetch_response);
                }

                bytes += u32::try_from(responses.byte_size())?;

                let now = Instant::now();
                elapsed = now.duration_since(start);
                let remaining = max_wait.saturating_sub(elapsed);

                debug!(
                    ?iteration,
                    ?max_wait,
                    ?elapsed,
                    ?remaining,
                    ?bytes,
                    ?min_bytes
                );

                if bytes >= min_bytes.max(1) || remaining.is_zero() {
                    break;
                }

                tokio::select! {
                    _ = waiter.notified() => {}
                    _ = sleep(remaining) => {}
                }

                iteration += 1;
            }

            Ok(responses)
        }
    }
}

impl<G> Service<G, FetchRequest> for FetchService
where
    G: Storage,
{
    type Response = FetchResponse;
    type Error = Error;

    #[instrument(skip(ctx, req))]
    async fn serve(
        &self,
        ctx: Context<G>,
        req: FetchRequest,
    ) -> Result<Self::Response, Self::Error> {
        let responses = Some(if let Some(topics) = req.topics {
            let isolation_level = req
                .isolation_level
                .map_or(Ok(IsolationLevel::ReadUncommitted), |isolation| {
                    IsolationLevel::try_from(isolation)
                })?;

            let max_wait_ms = u64::try_from(req.max_wait_ms).map(Duration::from_millis)?;

            let min_bytes = u32::try_from(req.min_bytes)?;

            const DEFAULT_MAX_BYTES: u32 = 5 * 1024 * 1024;

            let mut max_bytes = req.max_bytes.map_or(Ok(DEFAULT_MAX_BYTES), |max_bytes| {
                u32::try_from(max_bytes).map(|max_bytes| max_bytes.min(DEFAULT_MAX_BYTES))
            })?;

            self.fetch(
                ctx,
                max_wait_ms,
                min_bytes,
                &mut max_bytes,
                isolation_level,
                topics.as_ref(),
            )
            .await?
        } else {
            vec![]
        });

        Ok(FetchResponse::default()
            .throttle_time_ms(Some(0))
            .error_code(Some(ErrorCode::None.into()))
            .session_id(Some(0))
            .node_endpoints(Some([].into()))
            .responses(responses))
        .inspect(|r| debug!(?r))
    }
}

trait ByteSize {
    fn byte_size(&self) -> u64;
}

impl<T> ByteSize for Vec<T>
where
    T: ByteSize,
{
    fn byte_size(&self) -> u64 {
        self.iter().map(|item| item.byte_size()).sum()
    }
}

impl<T> ByteSize for Option<T>
where
    T: ByteSize,
{
    fn byte_size(&self) -> u64 {
        self.as_ref().map_or(0, |some| some.byte_size())
    }
}

impl ByteSize for Batch {
    fn byte_size(&self) -> u64 {
        self.record_data.len() as u64
    }
}

impl ByteSize for Frame {
    fn byte_size(&self) -> u64 {
        self.batches.byte_size()
    }
}

impl ByteSize for PartitionData {
    fn byte_size(&self) -> u64 {
        self.records.byte_size()
    }
}

impl ByteSize for FetchableTopicResponse {
    fn byte_size(&self) -> u64 {
        self.partitions.byte_size()
    }
}
