//! Batching for `SendMessageBatch`: which messages go together (at most 10, and under the
//! request's byte limit), and the retry of the entries a batch call failed (SQS answers 200
//! even when some entries failed). The SQS API sits behind [`BatchApi`], so this logic is
//! tested without a server.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    retry::{self, Cause},
    SinkError,
};

/// SQS takes at most this many entries per `SendMessageBatch`.
pub const MAX_ENTRIES: usize = 10;
/// SQS takes at most this many message attributes per message.
pub const MAX_ATTRIBUTES: usize = 10;

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub body: String,
    /// Name, data type (`String`, `Number`), value.
    pub attributes: Vec<(&'static str, &'static str, String)>,
    /// FIFO queues only.
    pub group_id: Option<String>,
    /// FIFO queues only.
    pub dedup_id: Option<String>,
}

impl Entry {
    /// What the entry counts toward the request's size limit: the body and every attribute's
    /// name, type and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(name, data_type, value)| name.len() + data_type.len() + value.len())
                .sum::<usize>()
    }
}

/// One entry of a batch call that SQS did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// The entry's position in the batch passed to [`BatchApi::send_batch`].
    pub index: usize,
    pub code: String,
    pub sender_fault: bool,
    pub message: String,
}

/// `SendMessageBatch` to one queue.
#[async_trait]
pub trait BatchApi: Send + Sync + 'static {
    /// Sends the entries as one batch; returns the entries that failed, or an error for the
    /// whole call.
    async fn send_batch(&self, entries: &[Arc<Entry>]) -> Result<Vec<EntryFailure>, SinkError>;
}

/// Splits entries (by their sizes) into batches of at most `max_entries` entries and
/// `max_bytes` bytes, keeping their order; returns the batches as indices, and the entries
/// that exceed `max_bytes` on their own.
pub fn plan(
    sizes: &[usize],
    max_entries: usize,
    max_bytes: usize,
) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut too_large = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max_bytes {
            too_large.push(i);
            continue;
        }
        if !current.is_empty() && (current.len() == max_entries || bytes + size > max_bytes) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    (batches, too_large)
}

/// Sends one batch, then again only the entries that failed retriably, up to `attempts` calls
/// in all (with backoff between them). Returns each entry's outcome, in order. When a whole
/// call is refused for good and the batch has several entries, each entry is tried alone, so
/// that one bad message does not take the others down with it.
pub async fn send_with_retries(
    api: &dyn BatchApi,
    entries: &[Arc<Entry>],
    attempts: u32,
) -> Vec<Result<(), SinkError>> {
    let mut outcomes: Vec<Option<Result<(), SinkError>>> = vec![None; entries.len()];
    let mut pending: Vec<usize> = (0..entries.len()).collect();
    let mut attempt = 0;
    while !pending.is_empty() {
        let batch: Vec<Arc<Entry>> = pending.iter().map(|&i| entries[i].clone()).collect();
        let mut retry = Vec::new();
        match api.send_batch(&batch).await {
            Ok(failures) => {
                let mut failed: Vec<Option<&EntryFailure>> = vec![None; batch.len()];
                for f in &failures {
                    if let Some(slot) = failed.get_mut(f.index) {
                        *slot = Some(f);
                    }
                }
                for (pos, &i) in pending.iter().enumerate() {
                    match failed[pos] {
                        None => outcomes[i] = Some(Ok(())),
                        Some(f) => {
                            let cause = Cause::BatchEntry {
                                code: &f.code,
                                sender_fault: f.sender_fault,
                            };
                            let error =
                                retry::sink_error(cause, format!("{}: {}", f.code, f.message));
                            if error.is_retriable() {
                                retry.push(i);
                            }
                            outcomes[i] = Some(Err(error));
                        }
                    }
                }
            }
            Err(error @ SinkError::Rejected(_)) if pending.len() > 1 => {
                // Find the entry the call was refused for: each alone.
                for &i in &pending {
                    let alone = Box::pin(send_with_retries(api, &entries[i..=i], attempts)).await;
                    outcomes[i] = alone.into_iter().next().or(Some(Err(error.clone())));
                }
            }
            Err(error) => {
                for &i in &pending {
                    if error.is_retriable() {
                        retry.push(i);
                    }
                    outcomes[i] = Some(Err(error.clone()));
                }
            }
        }
        attempt += 1;
        if attempt >= attempts {
            break;
        }
        pending = retry;
        if !pending.is_empty() {
            tokio::time::sleep(orderflow_kafka::BACKOFF.delay(attempt - 1)).await;
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(SinkError::Retriable("not sent".into()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn batches_hold_at_most_ten_entries_and_stay_under_the_byte_limit() {
        let (batches, too_large) = plan(&[1; 25], 10, 1000);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert!(too_large.is_empty());

        // 400-byte entries under a 1000-byte limit: two per batch.
        let (batches, _) = plan(&[400, 400, 400, 400, 400], 10, 1000);
        assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);

        // Exactly at the limit fits; one byte over starts a new batch.
        let (batches, _) = plan(&[500, 500, 1], 10, 1000);
        assert_eq!(batches, [vec![0, 1], vec![2]]);
    }

    #[test]
    fn an_entry_over_the_limit_alone_is_set_apart_and_the_rest_keep_their_order() {
        let (batches, too_large) = plan(&[10, 2000, 20, 30], 10, 1000);
        assert_eq!(batches, [vec![0, 2, 3]]);
        assert_eq!(too_large, [1]);
    }

    #[test]
    fn size_counts_the_body_and_the_attributes() {
        let entry = Entry {
            body: "12345".into(),
            attributes: vec![("order_id", "String", "o1".into())],
            group_id: None,
            dedup_id: None,
        };
        assert_eq!(entry.size(), 5 + 8 + 6 + 2);
    }

    /// Fails the entries whose body is in `fail` with `code`, `fail_times` times each.
    struct Flaky {
        fail: Vec<&'static str>,
        code: &'static str,
        sender_fault: bool,
        fail_times: usize,
        calls: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl BatchApi for Flaky {
        async fn send_batch(&self, entries: &[Arc<Entry>]) -> Result<Vec<EntryFailure>, SinkError> {
            let mut calls = self.calls.lock().unwrap();
            let round = calls.len();
            calls.push(entries.iter().map(|e| e.body.clone()).collect());
            Ok(entries
                .iter()
                .enumerate()
                .filter(|(_, e)| self.fail.contains(&e.body.as_str()) && round < self.fail_times)
                .map(|(index, _)| EntryFailure {
                    index,
                    code: self.code.into(),
                    sender_fault: self.sender_fault,
                    message: "no".into(),
                })
                .collect())
        }
    }

    fn entries(bodies: &[&str]) -> Vec<Arc<Entry>> {
        bodies
            .iter()
            .map(|b| {
                Arc::new(Entry {
                    body: b.to_string(),
                    attributes: vec![],
                    group_id: None,
                    dedup_id: None,
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn a_partial_failure_resends_only_the_failed_entries() {
        let api = Flaky {
            fail: vec!["b", "d"],
            code: "InternalError",
            sender_fault: false,
            fail_times: 1,
            calls: Mutex::default(),
        };
        let outcomes = send_with_retries(&api, &entries(&["a", "b", "c", "d"]), 3).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let calls = api.calls.lock().unwrap();
        assert_eq!(*calls, [vec!["a", "b", "c", "d"], vec!["b", "d"]]);
    }

    #[tokio::test]
    async fn entries_refused_for_good_are_not_resent_and_say_why() {
        let api = Flaky {
            fail: vec!["b"],
            code: "InvalidParameterValue",
            sender_fault: true,
            fail_times: usize::MAX,
            calls: Mutex::default(),
        };
        let outcomes = send_with_retries(&api, &entries(&["a", "b", "c"]), 3).await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok());
        match &outcomes[1] {
            Err(SinkError::Rejected(reason)) => assert!(reason.contains("InvalidParameterValue")),
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(api.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn entries_still_failing_after_the_last_attempt_stay_retriable() {
        let api = Flaky {
            fail: vec!["a"],
            code: "ThrottlingException",
            sender_fault: true,
            fail_times: usize::MAX,
            calls: Mutex::default(),
        };
        let outcomes = send_with_retries(&api, &entries(&["a", "b"]), 2).await;
        assert!(matches!(outcomes[0], Err(SinkError::Retriable(_))));
        assert!(outcomes[1].is_ok());
        assert_eq!(*api.calls.lock().unwrap(), [vec!["a", "b"], vec!["a"]]);
    }

    /// Refuses any call that contains the body "bad".
    struct RefusesBad;

    #[async_trait]
    impl BatchApi for RefusesBad {
        async fn send_batch(&self, entries: &[Arc<Entry>]) -> Result<Vec<EntryFailure>, SinkError> {
            if entries.iter().any(|e| e.body == "bad") {
                return Err(SinkError::Rejected("InvalidMessageContents".into()));
            }
            Ok(vec![])
        }
    }

    #[tokio::test]
    async fn a_refused_call_is_split_so_only_the_bad_entry_fails() {
        let outcomes = send_with_retries(&RefusesBad, &entries(&["a", "bad", "c"]), 3).await;
        assert!(outcomes[0].is_ok());
        assert!(matches!(outcomes[1], Err(SinkError::Rejected(_))));
        assert!(outcomes[2].is_ok());
    }
}
