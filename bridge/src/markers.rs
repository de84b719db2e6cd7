//! A sink's delivered-markers, asked and set for many events in one store call.
//!
//! The consume loop hands a sink's stage a batch of events and handles them concurrently: each
//! asks whether the sink has it and, once sent, marks it. [`Markers`] gathers the asks made while
//! its previous ask was in flight into one [`DeliveryStore::delivered`] call, and the marks into
//! one [`DeliveryStore::mark_delivered`] call, as the embedded store's writer gathers writes into
//! one commit: a batch of events costs a few store calls instead of two per event. An ask or a
//! mark made alone goes to the store at once.
//!
//! Each kind of call has its own task, started on first use (and again if it ever stopped);
//! asks never wait behind a mark's commit. The tasks end with the [`Markers`], and hold the
//! store only during a call, so that a stopped stage leaves nothing open.
//!
//! [`DeliveryStore::delivered`]: orderflow_store::DeliveryStore::delivered
//! [`DeliveryStore::mark_delivered`]: orderflow_store::DeliveryStore::mark_delivered

use std::sync::{Arc, Mutex, Weak};

use orderflow_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most event ids one store call takes; more wait for the next.
const MAX_IDS: usize = 1024;

/// What an asker gets back: whether the sink has the event (an ask), or `true` (a mark).
type Reply = oneshot::Sender<Result<bool, StoreError>>;

#[derive(Debug, Clone, Copy)]
enum Op {
    Ask,
    Mark,
}

/// One sink's delivered-markers.
pub(crate) struct Markers {
    store: Weak<dyn Store>,
    sink: String,
    asks: Mutex<Option<Queue>>,
    marks: Mutex<Option<Queue>>,
}

type Queue = mpsc::UnboundedSender<(String, Reply)>;

impl Markers {
    /// The markers of sink `sink` in `store` (which the caller keeps open).
    pub(crate) fn new(store: &Arc<dyn Store>, sink: &str) -> Self {
        Markers {
            store: Arc::downgrade(store),
            sink: sink.to_string(),
            asks: Mutex::new(None),
            marks: Mutex::new(None),
        }
    }

    /// Whether the sink has the event `id` already.
    pub(crate) async fn delivered(&self, id: &str) -> Result<bool, StoreError> {
        self.call(Op::Ask, id).await
    }

    /// Notes that the sink has the event `id`; done once the marker is durable.
    pub(crate) async fn mark_delivered(&self, id: &str) -> Result<(), StoreError> {
        self.call(Op::Mark, id).await.map(|_| ())
    }

    async fn call(&self, op: Op, id: &str) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue(op)
            .send((id.to_string(), reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The queue of `op`'s task, which is started if it is not running.
    fn queue(&self, op: Op) -> Queue {
        let mut queue = match op {
            Op::Ask => &self.asks,
            Op::Mark => &self.marks,
        }
        .lock()
        .unwrap_or_else(|e| e.into_inner());
        match &*queue {
            Some(running) if !running.is_closed() => running.clone(),
            _ => {
                let (sender, requests) = mpsc::unbounded_channel();
                tokio::spawn(serve(self.store.clone(), self.sink.clone(), op, requests));
                *queue = Some(sender.clone());
                sender
            }
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the sink's delivered-markers task has stopped".into())
}

/// Answers `op` requests, all those queued at once in one store call, until every sender is gone.
async fn serve(
    store: Weak<dyn Store>,
    sink: String,
    op: Op,
    mut requests: mpsc::UnboundedReceiver<(String, Reply)>,
) {
    let mut group = Vec::with_capacity(MAX_IDS);
    while requests.recv_many(&mut group, MAX_IDS).await > 0 {
        let (ids, replies): (Vec<String>, Vec<Reply>) = group.drain(..).unzip();
        let answers = match store.upgrade() {
            None => Err(StoreError::Unavailable("the store is closed".into())),
            Some(store) => match op {
                Op::Ask => store.delivered(&sink, &ids).await,
                Op::Mark => store
                    .mark_delivered(&sink, &ids)
                    .await
                    .map(|()| vec![true; ids.len()]),
            },
        };
        match answers {
            Ok(answers) => {
                for (i, reply) in replies.into_iter().enumerate() {
                    let _ = reply.send(Ok(answers.get(i).copied().unwrap_or(false)));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::join_all;
    use orderflow_store::{EmbeddedStore, Store};

    use super::Markers;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_asks_and_marks_see_the_store_as_single_calls_would() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let markers = Markers::new(&store, "file");
        let other = Markers::new(&store, "log");
        let ids: Vec<String> = (0..300).map(|i| format!("event-{i}")).collect();

        let asked = join_all(ids.iter().map(|id| markers.delivered(id))).await;
        assert!(asked.into_iter().all(|a| !a.unwrap()));

        // Every other event marked, concurrently: exactly those read back as delivered, and
        // only at this sink.
        let marked = join_all(ids.iter().step_by(2).map(|id| markers.mark_delivered(id))).await;
        assert!(marked.into_iter().all(|m| m.is_ok()));
        let asked = join_all(ids.iter().map(|id| markers.delivered(id))).await;
        for (i, a) in asked.into_iter().enumerate() {
            assert_eq!(a.unwrap(), i % 2 == 0, "event-{i}");
        }
        assert_eq!(
            store.delivered("file", &ids[..2]).await.unwrap(),
            vec![true, false]
        );
        let elsewhere = join_all(ids.iter().map(|id| other.delivered(id))).await;
        assert!(elsewhere.into_iter().all(|a| !a.unwrap()));
    }

    #[tokio::test]
    async fn a_closed_store_is_an_error_not_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let markers = Markers::new(&store, "file");
        drop(store);
        assert!(markers.delivered("event-1").await.is_err());
        assert!(markers.mark_delivered("event-1").await.is_err());
    }
}
