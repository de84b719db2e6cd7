//! The bridge's per-sink stages over the embedded store, with sinks that fail on purpose: what
//! is retried, what is dead-lettered, that a sink that took an event never gets it twice, and
//! that one sink's failures are its own.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use async_trait::async_trait;
use orderflow_bridge::{BridgeHandler, Delivery, Routing, Sink, SinkError};
use orderflow_kafka::{Handler, HandlerError, Incoming};
use orderflow_schemas::{
    wire, AccountVerificationRequested, OrderRejected, OrderStatus, TopicKind,
};
use orderflow_store::{Account, EmbeddedStore, Store, VerificationEmail};

/// Fails its first `failures` sends with `error`, then takes everything; counts what it took.
struct Flaky {
    name: &'static str,
    failures: AtomicUsize,
    error: SinkError,
    taken: Mutex<Vec<String>>,
    /// The body of each delivery taken.
    bodies: Mutex<Vec<String>>,
    /// What it answers to [`Sink::reads_event_data`].
    reads_data: bool,
    /// The event's fields (`Envelope::data`) of each delivery taken.
    data: Mutex<Vec<serde_json::Value>>,
    /// The customer's address (`Envelope::email`) of each delivery taken.
    emails: Mutex<Vec<Option<String>>>,
}

impl Flaky {
    fn new(name: &'static str, failures: usize, error: SinkError) -> Arc<Flaky> {
        Arc::new(Flaky {
            name,
            failures: AtomicUsize::new(failures),
            error,
            taken: Mutex::default(),
            bodies: Mutex::default(),
            reads_data: true,
            data: Mutex::default(),
            emails: Mutex::default(),
        })
    }

    /// Takes everything, and reads only the notification (not the event's fields, not the
    /// customer's address).
    fn notifications_only(name: &'static str) -> Arc<Flaky> {
        let mut sink = Flaky::new(name, 0, SinkError::Retriable("x".into()));
        Arc::get_mut(&mut sink).unwrap().reads_data = false;
        sink
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
        let body = String::from_utf8(d.body()?).unwrap();
        self.bodies.lock().unwrap().push(body);
        self.data.lock().unwrap().push(d.envelope.data.clone());
        self.emails.lock().unwrap().push(d.envelope.email.clone());
        Ok(())
    }

    fn reads_event_data(&self) -> bool {
        self.reads_data
    }

    fn reads_customer_email(&self) -> bool {
        self.reads_data
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn rejected(order_id: &str) -> Incoming {
    let event = OrderRejected {
        event_id: OrderStatus::Rejected.event_id(order_id),
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

fn verification(event_id: &str) -> Incoming {
    let now = orderflow_schemas::now_millis();
    let event = AccountVerificationRequested {
        event_id: event_id.into(),
        customer_id: "c1".into(),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        expires_at: now + 15 * 60_000,
        occurred_at: now,
    };
    Incoming {
        topic: "accounts.verification".into(),
        kind: Some(TopicKind::AccountsVerification),
        partition: 0,
        offset: 0,
        key: Some(b"c1".to_vec()),
        payload: wire::encode(&event).unwrap(),
        headers: vec![],
        schemas: orderflow_schemas::SchemaIds::builtin(),
    }
}

/// Keeps `code` in the store for the verification email of event `event_id`, as the API does
/// when it asks for one; it expires 15 minutes after `now`.
async fn keep_code(store: &dyn Store, event_id: &str, code: &str, now: i64) {
    store
        .put_verification_email(
            VerificationEmail {
                event_id: event_id.into(),
                code: code.into(),
                expires_at: now + 15 * 60_000,
            },
            None,
        )
        .await
        .unwrap();
}

/// The stage of the first sink.
fn handler(dir: &tempfile::TempDir, sinks: Vec<Arc<dyn Sink>>) -> BridgeHandler {
    handlers(dir, sinks).0.remove(0)
}

/// One stage per sink, in the order given.
fn handlers(
    dir: &tempfile::TempDir,
    sinks: Vec<Arc<dyn Sink>>,
) -> (Vec<BridgeHandler>, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let handlers =
        BridgeHandler::per_sink(store.clone(), Arc::new(Routing::notifications_to(sinks)));
    (handlers, store)
}

fn handler_with_store(
    dir: &tempfile::TempDir,
    sinks: Vec<Arc<dyn Sink>>,
) -> (BridgeHandler, Arc<dyn Store>) {
    let (mut handlers, store) = handlers(dir, sinks);
    (handlers.remove(0), store)
}

#[tokio::test]
async fn a_verification_email_carries_the_code_from_the_store_once_and_then_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let flaky = Flaky::new("flaky", 1, SinkError::Retriable("throttled".into()));
    let (h, store) = handler_with_store(&dir, vec![flaky.clone()]);
    let now = orderflow_schemas::now_millis();
    keep_code(&*store, "c1:verify:1", "048213", now).await;
    let m = verification("c1:verify:1");
    assert!(!String::from_utf8_lossy(&m.payload).contains("048213"));

    // A retriable failure keeps the code for the retry.
    assert!(matches!(
        h.handle(&m).await,
        Err(HandlerError::Retriable(_))
    ));
    assert!(store
        .get_verification_email("c1:verify:1", now)
        .await
        .unwrap()
        .is_some());
    h.handle(&m).await.unwrap();
    let bodies = flaky.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert!(
        bodies[0].contains("Your verification code is 048213."),
        "{}",
        bodies[0]
    );
    // Sent: the code has left the store, and a redelivery sends nothing (and does not fail).
    assert_eq!(
        store
            .get_verification_email("c1:verify:1", now)
            .await
            .unwrap(),
        None
    );
    h.handle(&m).await.unwrap();
    assert_eq!(flaky.taken(), ["c1:verify:1"]);

    // A code that is gone (expired, never kept) sends nothing and is not retried.
    h.handle(&verification("c1:verify:2")).await.unwrap();
    assert_eq!(flaky.taken(), ["c1:verify:1"]);
}

#[tokio::test]
async fn a_sink_that_reads_only_notifications_gets_them_whole_without_event_fields_or_address() {
    let dir = tempfile::tempdir().unwrap();
    let lean = Flaky::notifications_only("lean");
    let full = Flaky::new("full", 0, SinkError::Retriable("x".into()));
    let (hs, store) = handlers(&dir, vec![lean.clone(), full.clone()]);
    store
        .create_account(Account {
            customer_id: "c1".into(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            role: "customer".into(),
            password_hash: String::new(),
            verified: true,
            disabled: false,
            created_at: 1,
            updated_at: 1,
        })
        .await
        .unwrap();

    let m = rejected("o1");
    hs[0].handle(&m).await.unwrap();
    hs[1].handle(&m).await.unwrap();
    let lean_bodies = lean.bodies.lock().unwrap().clone();
    let full_bodies = full.bodies.lock().unwrap().clone();
    assert_eq!(lean_bodies, full_bodies, "the same notification");
    assert!(
        lean_bodies[0].contains("unknown SKU NOPE"),
        "{}",
        lean_bodies[0]
    );
    assert_eq!(lean.data.lock().unwrap()[0], serde_json::Value::Null);
    assert_eq!(full.data.lock().unwrap()[0]["reason"], "unknown SKU NOPE");
    assert_eq!(lean.emails.lock().unwrap()[0], None);
    assert_eq!(
        full.emails.lock().unwrap()[0].as_deref(),
        Some("ada@example.com")
    );

    // A verification email is made from the event's fields: it has its code all the same.
    let now = orderflow_schemas::now_millis();
    keep_code(&*store, "c1:verify:1", "048213", now).await;
    hs[0].handle(&verification("c1:verify:1")).await.unwrap();
    let bodies = lean.bodies.lock().unwrap().clone();
    assert!(
        bodies[1].contains("Your verification code is 048213."),
        "{}",
        bodies[1]
    );
}

#[tokio::test]
async fn a_retriable_failure_retries_its_own_sink_only_and_nothing_is_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let steady = Flaky::new("steady", 0, SinkError::Retriable("x".into()));
    let flaky = Flaky::new("flaky", 2, SinkError::Retriable("throttled".into()));
    let (hs, _) = handlers(&dir, vec![steady.clone(), flaky.clone()]);
    let (steady_stage, flaky_stage) = (&hs[0], &hs[1]);
    let m = rejected("o1");

    // The failing sink's stage retries; the other's has delivered meanwhile.
    for _ in 0..2 {
        match flaky_stage.handle(&m).await {
            Err(HandlerError::Retriable(e)) => assert!(e.contains("sink flaky"), "{e}"),
            other => panic!("expected a retry, got {other:?}"),
        }
        steady_stage.handle(&m).await.unwrap();
    }
    assert_eq!(steady.taken(), ["o1:rejected"]);
    assert!(flaky.taken().is_empty());
    flaky_stage.handle(&m).await.unwrap();
    // And once more each, as after a redelivery.
    flaky_stage.handle(&m).await.unwrap();
    steady_stage.handle(&m).await.unwrap();
    assert_eq!(steady.taken(), ["o1:rejected"]);
    assert_eq!(flaky.taken(), ["o1:rejected"]);
}

#[tokio::test]
async fn a_verification_code_stays_until_every_sink_routed_for_it_has_the_email() {
    let dir = tempfile::tempdir().unwrap();
    let steady = Flaky::new("steady", 0, SinkError::Retriable("x".into()));
    let flaky = Flaky::new("flaky", 1, SinkError::Retriable("throttled".into()));
    let (hs, store) = handlers(&dir, vec![steady.clone(), flaky.clone()]);
    let now = orderflow_schemas::now_millis();
    keep_code(&*store, "c1:verify:1", "048213", now).await;
    let m = verification("c1:verify:1");
    hs[0].handle(&m).await.unwrap();
    assert!(hs[1].handle(&m).await.is_err());
    // One sink has the email, the other is retrying: the code is still there for it.
    assert!(store
        .get_verification_email("c1:verify:1", now)
        .await
        .unwrap()
        .is_some());
    hs[1].handle(&m).await.unwrap();
    assert_eq!(
        store
            .get_verification_email("c1:verify:1", now)
            .await
            .unwrap(),
        None
    );
    for sink in [&steady, &flaky] {
        let bodies = sink.bodies.lock().unwrap().clone();
        assert_eq!(bodies.len(), 1, "{}", sink.name);
        assert!(bodies[0].contains("048213"), "{}", bodies[0]);
    }
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
