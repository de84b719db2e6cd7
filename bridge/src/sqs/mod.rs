//! The SQS sink: each delivery becomes one message, sent with `SendMessageBatch`.
//!
//! Concurrent sends are gathered by a batching task into batches of at most 10 messages and
//! `max_batch_bytes` ([`batch::plan`]), at most `max_batches_in_flight` calls at once; entries
//! SQS failed are sent again alone ([`batch::send_with_retries`]). Every message carries the
//! attributes `event_type`, `event_id`, `order_id`, `customer_id` and `schema_id`. On a FIFO
//! queue the MessageGroupId is the order (or customer) id and the MessageDeduplicationId the
//! event id, so a redelivered event is dropped by SQS within its 5-minute window, and by the
//! bridge's delivered-markers after that.

pub mod batch;
pub mod config;

use std::{collections::HashMap, sync::Arc};

use async_trait::async_trait;
use aws_sdk_sqs::{
    types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry},
    Client,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{info, warn};

use self::batch::{BatchApi, Entry, EntryFailure, MAX_ATTRIBUTES, MAX_ENTRIES};
pub use self::config::{GroupBy, SqsConfig};
use crate::{aws, config::BuildContext, ConfigError, Delivery, Sink, SinkError};

/// An entry waiting to be sent, and where to say how it went.
type Pending = (Arc<Entry>, oneshot::Sender<Result<(), SinkError>>);

pub struct SqsSink {
    name: String,
    queue_url: String,
    fifo: bool,
    group_by: GroupBy,
    max_batch_bytes: usize,
    client: Client,
    entries: mpsc::UnboundedSender<Pending>,
}

impl SqsConfig {
    /// Resolves (or, when provisioning, creates) the queue and starts the batching task.
    pub async fn build(&self, name: &str, ctx: &BuildContext) -> Result<SqsSink, ConfigError> {
        self.validate().map_err(|e| ConfigError::sink(name, e))?;
        let client = Client::new(ctx.aws().await?);
        let queue_url = if ctx.provision {
            self.provision(&client).await
        } else if let Some(url) = &self.queue_url {
            Ok(url.clone())
        } else {
            let queue = self.queue_name.as_deref().unwrap_or_default();
            client
                .get_queue_url()
                .queue_name(queue)
                .send()
                .await
                .map_err(|e| aws::sdk_error(&format!("GetQueueUrl {queue}"), &e).to_string())
                .and_then(|o| {
                    o.queue_url
                        .ok_or_else(|| "GetQueueUrl gave no URL".to_string())
                })
        }
        .map_err(|e| ConfigError::sink(name, e))?;
        info!(sink = name, queue_url = %queue_url, fifo = self.is_fifo(), "SQS sink ready.");
        Ok(SqsSink::start(name, queue_url, self, client))
    }

    /// Creates the queue (and its dead-letter queue) unless they exist; returns its URL.
    async fn provision(&self, client: &Client) -> Result<String, String> {
        let queue = self.name().unwrap_or_default().to_string();
        let mut attributes = HashMap::new();
        if let Some(dlq) = &self.dead_letter_queue {
            let dlq_url = create_queue(client, dlq, HashMap::new()).await?;
            let arn = client
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| aws::sdk_error(&format!("GetQueueAttributes {dlq}"), &e).to_string())?
                .attributes
                .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                .ok_or_else(|| format!("{dlq} has no ARN"))?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": self.max_receive_count.to_string(),
            });
            attributes.insert(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        create_queue(client, &queue, attributes).await
    }
}

/// CreateQueue, FIFO when the name says so; an existing queue is kept as it is.
async fn create_queue(
    client: &Client,
    name: &str,
    mut attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, String> {
    if name.ends_with(".fifo") {
        attributes.insert(QueueAttributeName::FifoQueue, "true".into());
    }
    match client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attributes))
        .send()
        .await
    {
        Ok(out) => {
            info!(queue = name, "SQS queue provisioned.");
            out.queue_url
                .ok_or_else(|| "CreateQueue gave no URL".into())
        }
        // It exists with other attributes: leave it, use it.
        Err(e)
            if aws::error_code(&e).is_some_and(|c| {
                c.contains("QueueAlreadyExists") || c.contains("QueueNameExists")
            }) =>
        {
            warn!(
                queue = name,
                "SQS queue exists with other attributes; using it as it is."
            );
            client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| aws::sdk_error(&format!("GetQueueUrl {name}"), &e).to_string())?
                .queue_url
                .ok_or_else(|| "GetQueueUrl gave no URL".into())
        }
        Err(e) => Err(aws::sdk_error(&format!("CreateQueue {name}"), &e).to_string()),
    }
}

impl SqsSink {
    /// The sink for the queue at `queue_url`, with its batching task.
    fn start(name: &str, queue_url: String, config: &SqsConfig, client: Client) -> SqsSink {
        let api = Arc::new(SqsApi {
            client: client.clone(),
            queue_url: queue_url.clone(),
        });
        let (entries, queue) = mpsc::unbounded_channel();
        tokio::spawn(batcher(
            api,
            queue,
            config.max_batch_bytes,
            config.max_batches_in_flight,
            config.attempts,
        ));
        SqsSink {
            name: name.to_string(),
            queue_url,
            fifo: config.is_fifo(),
            group_by: config.group_by,
            max_batch_bytes: config.max_batch_bytes,
            client,
            entries,
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The message for a delivery.
    fn entry(&self, d: &Delivery<'_>) -> Result<Entry, SinkError> {
        let e = d.envelope;
        let body = String::from_utf8(d.body()?)
            .map_err(|e| SinkError::Rejected(format!("body is not UTF-8: {e}")))?;
        let attributes = vec![
            ("event_type", "String", e.event_type.as_str().to_string()),
            ("event_id", "String", e.id.clone()),
            ("order_id", "String", e.order_id.clone()),
            ("customer_id", "String", e.customer_id.clone()),
            ("schema_id", "Number", e.schema_id.to_string()),
        ];
        debug_assert!(attributes.len() <= MAX_ATTRIBUTES);
        let (group_id, dedup_id) = if self.fifo {
            let group = match self.group_by {
                GroupBy::OrderId => &e.order_id,
                GroupBy::CustomerId => &e.customer_id,
            };
            (Some(fifo_id(group)), Some(fifo_id(&e.id)))
        } else {
            (None, None)
        };
        Ok(Entry {
            body,
            attributes,
            group_id,
            dedup_id,
        })
    }
}

/// A MessageGroupId / MessageDeduplicationId: at most 128 characters, printable ASCII. Ours are
/// uuids and `<uuid>:<step>`; anything else is replaced by its SHA-256.
fn fifo_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id.to_string()
    } else {
        hex::encode(Sha256::digest(id.as_bytes()))
    }
}

#[async_trait]
impl Sink for SqsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, delivery: &Delivery<'_>) -> Result<(), SinkError> {
        let entry = self.entry(delivery)?;
        if entry.size() > self.max_batch_bytes {
            return Err(SinkError::Rejected(format!(
                "message too large for SQS: {} bytes, the limit is {}",
                entry.size(),
                self.max_batch_bytes
            )));
        }
        let (reply, done) = oneshot::channel();
        self.entries
            .send((Arc::new(entry), reply))
            .map_err(|_| SinkError::Retriable("SQS batching task stopped".into()))?;
        done.await
            .map_err(|_| SinkError::Retriable("SQS batching task stopped".into()))?
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws::sdk_error("GetQueueAttributes", &e))
    }
}

/// Gathers what is queued into batches and sends them, at most `in_flight` calls at once.
async fn batcher(
    api: Arc<dyn BatchApi>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    max_bytes: usize,
    in_flight: usize,
    attempts: u32,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        // Wait for a free call slot first: meanwhile more entries queue up to join the batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut pending = vec![first];
        while pending.len() < MAX_ENTRIES * in_flight {
            match queue.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let sizes: Vec<usize> = pending.iter().map(|(e, _)| e.size()).collect();
        let (batches, too_large) = batch::plan(&sizes, MAX_ENTRIES, max_bytes);
        let mut slots: Vec<Option<Pending>> = pending.into_iter().map(Some).collect();
        for i in too_large {
            if let Some((entry, reply)) = slots[i].take() {
                let _ = reply.send(Err(SinkError::Rejected(format!(
                    "message too large for SQS: {} bytes, the limit is {max_bytes}",
                    entry.size()
                ))));
            }
        }
        let mut permit = Some(permit);
        for indices in batches {
            let group: Vec<Pending> = indices.iter().filter_map(|&i| slots[i].take()).collect();
            let permit = match permit.take() {
                Some(p) => p,
                None => match permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let api = api.clone();
            tokio::spawn(async move {
                let (entries, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let outcomes = batch::send_with_retries(api.as_ref(), &entries, attempts).await;
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
                drop(permit);
            });
        }
    }
}

/// SendMessageBatch to the sink's queue.
struct SqsApi {
    client: Client,
    queue_url: String,
}

#[async_trait]
impl BatchApi for SqsApi {
    async fn send_batch(&self, entries: &[Arc<Entry>]) -> Result<Vec<EntryFailure>, SinkError> {
        let mut request = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let attributes = e
                .attributes
                .iter()
                .map(|(name, data_type, value)| {
                    MessageAttributeValue::builder()
                        .data_type(*data_type)
                        .string_value(value)
                        .build()
                        .map(|v| (name.to_string(), v))
                })
                .collect::<Result<HashMap<_, _>, _>>()
                .map_err(|e| SinkError::Rejected(format!("message attribute: {e}")))?;
            request.push(
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&e.body)
                    .set_message_group_id(e.group_id.clone())
                    .set_message_deduplication_id(e.dedup_id.clone())
                    .set_message_attributes(Some(attributes))
                    .build()
                    .map_err(|e| SinkError::Rejected(format!("batch entry: {e}")))?,
            );
        }
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(request))
            .send()
            .await
            .map_err(|e| aws::sdk_error("SendMessageBatch", &e))?;
        Ok(out
            .failed
            .into_iter()
            .map(|f| EntryFailure {
                index: f.id.parse().unwrap_or(usize::MAX),
                code: f.code,
                sender_fault: f.sender_fault,
                message: f.message.unwrap_or_default(),
            })
            .collect())
    }
}
