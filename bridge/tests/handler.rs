//! The bridge stage over the embedded store, with sinks that fail on purpose: what is retried,
//! what is dead-lettered, and that a sink that took an event never gets it twice.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use async_trait::async_trait;
use orderflow_bridge::{BridgeHandler, Delivery, Routing, Sink, SinkError};
use orderflow_kafka::{Handler, HandlerError, Incoming};
use orderflow_schemas::{wire, OrderRejected, TopicKind};
use orderflow_store::{EmbeddedStore, Store};

/// Fails its first `failures` sends with `error`, then takes everything; counts what it took.
struct Flaky {
    name: &'static str,
    failures: AtomicUsize,
    error: SinkError,
    taken: Mutex<Vec<String>>,
}

impl Flaky {
    fn new(name: &'static str, failures: usize, error: SinkError) -> Arc<Flaky> {
        Arc::new(Flaky {
            name,
            failures: AtomicUsize::new(failures),
            error,
            taken: Mutex::default(),
        })
    }

    fn taken(&self) -> Vec<String> {
        self.taken.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sink for Flaky {
    fn name(&self) -> &str {
        self.name
    }

    async fn send(&self, d: &Delivery<'_>) -> Result<(), SinkError> {
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(self.error.clone());
        }
        self.taken.lock().unwrap().push(d.envelope.id.clone());
        Ok(())
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn rejected(order_id: &str) -> Incoming {
    let event = OrderRejected {
        event_id: format!("{order_id}:rejected"),
        order_id: order_id.into(),
        customer_id: "c1".into(),
        reason_code: "unknown_sku".into(),
        reason: "unknown SKU NOPE".into(),
        occurred_at: 1,
    };
    Incoming {
        topic: "orders.rejected".into(),
        kind: Some(TopicKind::OrdersRejected),
        partition: 0,
        offset: 0,
        key: Some(order_id.as_bytes().to_vec()),
        payload: wire::encode(&event).unwrap(),
        headers: vec![],
        schemas: orderflow_schemas::SchemaIds::builtin(),
    }
}

fn handler(dir: &tempfile::TempDir, sinks: Vec<Arc<dyn Sink>>) -> BridgeHandler {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    BridgeHandler::new(store, Arc::new(Routing::notifications_to(sinks)))
}

#[tokio::test]
async fn a_retriable_failure_retries_and_the_sinks_that_took_it_are_not_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let steady = Flaky::new("steady", 0, SinkError::Retriable("x".into()));
    let flaky = Flaky::new("flaky", 1, SinkError::Retriable("throttled".into()));
    let h = handler(&dir, vec![steady.clone(), flaky.clone()]);
    let m = rejected("o1");

    match h.handle(&m).await {
        Err(HandlerError::Retriable(e)) => assert!(e.contains("sink flaky"), "{e}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    h.handle(&m).await.unwrap();
    // And once more, as after a redelivery.
    h.handle(&m).await.unwrap();
    assert_eq!(steady.taken(), ["o1:rejected"]);
    assert_eq!(flaky.taken(), ["o1:rejected"]);
}

#[tokio::test]
async fn a_rejection_is_poison_naming_the_sink_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = Flaky::new("refusing", 1, SinkError::Rejected("too large".into()));
    let h = handler(&dir, vec![refusing]);
    match h.handle(&rejected("o1")).await {
        Err(HandlerError::Poison(e)) => {
            assert!(e.contains("sink refusing rejected it: too large"), "{e}")
        }
        other => panic!("expected poison, got {other:?}"),
    }
}

#[tokio::test]
async fn an_undecodable_event_is_poison_and_unrouted_topics_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Flaky::new("s", 0, SinkError::Retriable("x".into()));
    let h = handler(&dir, vec![sink.clone()]);
    let mut bad = rejected("o1");
    bad.payload = b"not avro".to_vec();
    assert!(matches!(h.handle(&bad).await, Err(HandlerError::Poison(_))));
    // Accepted orders notify nobody: not routed by default.
    let mut accepted = rejected("o2");
    accepted.kind = Some(TopicKind::OrdersAccepted);
    accepted.payload = b"whatever".to_vec();
    h.handle(&accepted).await.unwrap();
    assert!(sink.taken().is_empty());
}
