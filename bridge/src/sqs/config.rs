//! `type = "sqs"`.

use serde::{Deserialize, Serialize};

/// An SQS queue, standard or FIFO (its name ends in `.fifo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsConfig {
    /// The queue's URL. Give this or `queue_name`.
    pub queue_url: Option<String>,
    /// The queue's name, resolved with GetQueueUrl at start (and created when provisioning).
    pub queue_name: Option<String>,
    /// FIFO queues: what keeps messages in order, `order_id` or `customer_id`; it becomes the
    /// MessageGroupId. The MessageDeduplicationId is always the event id.
    pub group_by: GroupBy,
    /// Provisioning only: the queue SQS moves a message to after `max_receive_count` failed
    /// receives (created too; FIFO if its name ends in `.fifo`, as a FIFO queue's must).
    pub dead_letter_queue: Option<String>,
    /// Provisioning only: receives before SQS moves a message to the dead-letter queue.
    pub max_receive_count: u32,
    /// Most bytes of bodies and attributes in one SendMessageBatch (SQS: 262,144; a message
    /// larger than this on its own is rejected and dead-lettered).
    pub max_batch_bytes: usize,
    /// Most SendMessageBatch calls in flight at once.
    pub max_batches_in_flight: usize,
    /// Most deliveries to this sink in flight at once.
    pub max_in_flight: usize,
    /// SendMessageBatch calls per batch before a still-failing entry is handed back to the
    /// consume loop (which retries it with backoff).
    pub attempts: u32,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            queue_url: None,
            queue_name: None,
            group_by: GroupBy::OrderId,
            dead_letter_queue: None,
            max_receive_count: 5,
            max_batch_bytes: 262_144,
            max_batches_in_flight: 4,
            max_in_flight: 100,
            attempts: 3,
        }
    }
}

/// Which id groups a FIFO queue's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    OrderId,
    CustomerId,
}

impl SqsConfig {
    /// The queue's name: `queue_name`, or the last segment of `queue_url`.
    pub fn name(&self) -> Option<&str> {
        self.queue_name.as_deref().or_else(|| {
            self.queue_url
                .as_deref()
                .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
        })
    }

    pub fn is_fifo(&self) -> bool {
        self.name().is_some_and(|n| n.ends_with(".fifo"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.queue_url.is_none() && self.queue_name.is_none() {
            return Err("needs queue_url or queue_name".into());
        }
        if self.max_batch_bytes == 0 || self.max_batches_in_flight == 0 || self.max_in_flight == 0 {
            return Err(
                "max_batch_bytes, max_batches_in_flight and max_in_flight must be > 0".into(),
            );
        }
        if self.attempts == 0 {
            return Err("attempts must be at least 1".into());
        }
        if let Some(dlq) = &self.dead_letter_queue {
            if dlq.ends_with(".fifo") != self.is_fifo() {
                return Err(format!(
                    "dead_letter_queue {dlq}: a FIFO queue needs a FIFO dead-letter queue, a \
                     standard queue a standard one"
                ));
            }
        }
        Ok(())
    }
}
