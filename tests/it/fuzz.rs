//! Property tests of everything that comes from outside the process: the order JSON the API
//! parses, the Avro / Confluent wire-format payloads the stages decode, and each stage's handler
//! fed arbitrary and garbled messages. None may panic; every failure is a typed error (a
//! problem naming the field, a `DecodeError`) or a poison verdict with its reason, which the
//! consume loop turns into a dead-letter record.
//!
//! Inputs are drawn from a small corpus (`tests/it/fuzz/`: order bodies, one valid event of each
//! type) and mutated: bytes flipped, cut, inserted, JSON leaves replaced by other values, and
//! plain random bytes. A failing case is saved to `tests/it/fuzz.proptest-regressions` and
//! replayed first on every run (commit it). Cases per property: `ORDERFLOW_FUZZ_CASES` (by
//! default 256, and 128 for the handlers, which write to a store and produce: a few seconds
//! for the whole file); each test prints how many inputs it ran.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use orderflow_bridge::{file::FileSink, log::LogConfig, BridgeHandler, Routing, Sink};
use orderflow_ingest::orders::{parse_json, validate, CreateOrderRequest};
use orderflow_kafka::{EventProducer, Handler, HandlerError, Incoming, KafkaConfig};
use orderflow_processors::{
    payment::RefundHandler, validation::ModificationHandler, InvoicingHandler, PaymentHandler,
    SimulatedGateway, ValidationHandler,
};
use orderflow_schemas::{
    wire, AccountVerificationRequested, Event, OrderAccepted, OrderCancelled, OrderInvoiced,
    OrderModified, OrderPaid, OrderRejected, OrderShipped, OrderValidated, PaymentFailed,
    PaymentRefunded, SchemaIds, TopicKind, Topics,
};
use orderflow_store::{EmbeddedStore, Store};
use proptest::{
    prelude::*,
    test_runner::{Config, FileFailurePersistence},
};
use rdkafka::{mocking::MockCluster, producer::DefaultProducerContext};
use serde_json::Value;

const ORDERS: &str = include_str!("fuzz/orders.json");
const EVENTS: &str = include_str!("fuzz/events.json");

/// `ORDERFLOW_FUZZ_CASES` cases, or `default`.
fn config(default: u32) -> Config {
    let cases = std::env::var("ORDERFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Counts the inputs a test ran, and how many were taken and refused; says so at its end.
struct Executions {
    test: &'static str,
    count: AtomicU64,
    taken: AtomicU64,
    started: Instant,
}

impl Executions {
    fn new(test: &'static str) -> Self {
        Executions {
            test,
            count: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The last input was taken (parsed, decoded, handled), not refused.
    fn taken(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Executions {
    fn drop(&mut self) {
        let (count, taken) = (
            self.count.load(Ordering::Relaxed),
            self.taken.load(Ordering::Relaxed),
        );
        eprintln!(
            "fuzz {}: {count} executions ({taken} taken, {} refused) in {:?}",
            self.test,
            count - taken,
            self.started.elapsed()
        );
    }
}

/// A byte-level change to an input.
#[derive(Debug, Clone)]
enum Mutation {
    /// Sets the byte at this position (modulo the length) to the value.
    Set(usize, u8),
    /// Cuts the input at this position (modulo the length + 1).
    Cut(usize),
    /// Inserts bytes at this position.
    Insert(usize, Vec<u8>),
    /// Removes the byte at this position.
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Cut),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = *b;
            }
            Mutation::Cut(i) => bytes.truncate(i % (bytes.len() + 1)),
            Mutation::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Remove(i) if !bytes.is_empty() => {
                bytes.remove(i % bytes.len());
            }
            _ => {}
        }
    }
    bytes
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        Just(Value::String(String::new())),
        Just(Value::String("MUG-001".into())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the `n`th node of `value` (depth first, modulo the count) by `with`; `remove`
/// drops it from its object or array instead.
fn replace_nth(value: &mut Value, n: usize, with: Value, remove: bool) {
    change_nth(value, n, |_| with, remove)
}

/// Replaces the `n`th node of `value` by what `with` makes of it (or removes it).
fn change_nth(value: &mut Value, n: usize, with: impl FnOnce(&Value) -> Value, remove: bool) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    type With<'a> = Option<Box<dyn FnOnce(&Value) -> Value + 'a>>;
    fn walk(v: &mut Value, n: &mut usize, with: &mut With<'_>, remove: bool) -> bool {
        // Returns true when the node to change is a direct child removed here.
        let children: Vec<String> = match v {
            Value::Object(o) => o.keys().cloned().collect(),
            _ => Vec::new(),
        };
        match v {
            Value::Array(a) => {
                for i in 0..a.len() {
                    if *n == 0 {
                        if remove {
                            a.remove(i);
                        } else {
                            a[i] = with.take().map_or(Value::Null, |f| f(&a[i]));
                        }
                        return true;
                    }
                    *n -= 1;
                    if walk(&mut a[i], n, with, remove) {
                        return true;
                    }
                }
            }
            Value::Object(o) => {
                for key in children {
                    if *n == 0 {
                        if remove {
                            o.remove(&key);
                        } else {
                            let new = with.take().map_or(Value::Null, |f| f(&o[&key]));
                            o.insert(key, new);
                        }
                        return true;
                    }
                    *n -= 1;
                    if walk(o.get_mut(&key).unwrap(), n, with, remove) {
                        return true;
                    }
                }
            }
            _ => {}
        }
        false
    }
    let total = count(value);
    if total <= 1 {
        *value = with(value);
        return;
    }
    // Node 0 is the root itself: start from its first child.
    let mut n = n % (total - 1);
    walk(value, &mut n, &mut Some(Box::new(with)), remove);
}

/// A value of the same JSON type as `old`, from the random candidates: a string for a string,
/// a number for a number, and so on (what a schema lets through, to reach the checks after it).
fn same_type(old: &Value, text: String, number: i64, flag: bool) -> Value {
    match old {
        Value::String(_) => Value::String(text),
        Value::Number(_) => Value::from(number),
        Value::Bool(_) => Value::Bool(flag),
        other => other.clone(),
    }
}

/// A string or number a client might send: random, or near a limit.
fn text_and_number() -> impl Strategy<Value = (String, i64)> {
    let text = prop_oneof![
        any::<String>(),
        Just(String::new()),
        Just(" ".into()),
        Just("x".repeat(201)),
        Just("\u{0}\u{7f}\n".into()),
        "[A-Z]{1,8}-[0-9]{3}",
    ];
    let number = prop_oneof![
        any::<i64>(),
        -2i64..1002,
        Just(i64::from(i32::MAX) + 1),
        Just(i64::MIN),
    ];
    (text, number)
}

/// An order body: a corpus entry, changed as JSON or as bytes, or random bytes.
fn order_body() -> impl Strategy<Value = Vec<u8>> {
    let corpus: Vec<String> = serde_json::from_str(ORDERS).expect("tests/it/fuzz/orders.json");
    let n = corpus.len();
    let structured = {
        let corpus = corpus.clone();
        (0..n, any::<usize>(), json_value(), any::<bool>()).prop_map(
            move |(i, at, with, remove)| match serde_json::from_str::<Value>(&corpus[i]) {
                Ok(mut v) => {
                    replace_nth(&mut v, at, with, remove);
                    serde_json::to_vec(&v).unwrap()
                }
                Err(_) => corpus[i].clone().into_bytes(),
            },
        )
    };
    let typed = {
        let corpus = corpus.clone();
        (0..2usize, any::<usize>(), text_and_number(), any::<bool>()).prop_map(
            move |(i, at, (text, number), flag)| {
                let mut v: Value = serde_json::from_str(&corpus[i]).unwrap();
                change_nth(&mut v, at, |old| same_type(old, text, number, flag), false);
                serde_json::to_vec(&v).unwrap()
            },
        )
    };
    let bytes = (0..n, prop::collection::vec(mutation(), 1..6))
        .prop_map(move |(i, ms)| mutate(corpus[i].clone().into_bytes(), &ms));
    prop_oneof![
        4 => typed,
        3 => structured,
        3 => bytes,
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

#[test]
fn the_order_json_never_panics_and_every_refusal_names_a_field() {
    let executions = Executions::new("order JSON");
    proptest!(config(256), |(body in order_body())| {
        executions.one();
        match parse_json::<CreateOrderRequest>(&body) {
            Ok(request) => {
                let errors = validate(&request);
                if errors.is_empty() {
                    executions.taken();
                }
                for e in errors {
                    prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
                }
            }
            Err(problem) => {
                prop_assert!((400..500).contains(&problem.status), "{problem:?}");
                prop_assert!(!problem.errors.is_empty(), "{problem:?}");
                for e in &problem.errors {
                    prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{problem:?}");
                }
            }
        }
    });
}

/// The corpus event of type `E`, encoded as the stages produce it.
fn encoded<E: Event>() -> Vec<u8> {
    let events: Value = serde_json::from_str(EVENTS).expect("tests/it/fuzz/events.json");
    let name = E::NAME.rsplit('.').next().unwrap();
    let event: E = serde_json::from_value(events[name].clone())
        .unwrap_or_else(|e| panic!("tests/it/fuzz/events.json: {name}: {e}"));
    wire::encode(&event).unwrap()
}

/// The corpus event of type `E` with one JSON leaf replaced, when the result is still an `E`
/// (odd values the schema allows: empty ids, negative or huge amounts, control characters).
fn odd_event<E: Event>(at: usize, with: Value) -> Option<Vec<u8>> {
    let events: Value = serde_json::from_str(EVENTS).unwrap();
    let name = E::NAME.rsplit('.').next().unwrap();
    let mut v = events[name].clone();
    // Mostly a value of the same type (the event stays an `E`), else anything.
    let (text, number, flag) = match &with {
        Value::String(s) => (Some(s.clone()), None, None),
        Value::Number(n) => (None, n.as_i64(), None),
        Value::Bool(b) => (None, None, Some(*b)),
        _ => (None, None, None),
    };
    change_nth(
        &mut v,
        at,
        |old| match (old, text, number, flag) {
            (Value::String(_), Some(t), _, _) => Value::String(t),
            (Value::Number(_), _, Some(n), _) => Value::from(n),
            (Value::Bool(_), _, _, Some(b)) => Value::Bool(b),
            (Value::String(_) | Value::Number(_) | Value::Bool(_), ..) => old.clone(),
            _ => with,
        },
        false,
    );
    let event: E = serde_json::from_value(v).ok()?;
    wire::encode(&event).ok()
}

/// Every input topic a handler below reads, with an encoder of its event type.
type Encoder = fn() -> Vec<u8>;
type OddEncoder = fn(usize, Value) -> Option<Vec<u8>>;
const TOPICS: [(TopicKind, Encoder, OddEncoder); 11] = [
    (
        TopicKind::OrdersAccepted,
        encoded::<OrderAccepted>,
        odd_event::<OrderAccepted>,
    ),
    (
        TopicKind::OrdersModified,
        encoded::<OrderModified>,
        odd_event::<OrderModified>,
    ),
    (
        TopicKind::OrdersValidated,
        encoded::<OrderValidated>,
        odd_event::<OrderValidated>,
    ),
    (
        TopicKind::OrdersRejected,
        encoded::<OrderRejected>,
        odd_event::<OrderRejected>,
    ),
    (
        TopicKind::OrdersPaid,
        encoded::<OrderPaid>,
        odd_event::<OrderPaid>,
    ),
    (
        TopicKind::PaymentFailed,
        encoded::<PaymentFailed>,
        odd_event::<PaymentFailed>,
    ),
    (
        TopicKind::OrdersInvoiced,
        encoded::<OrderInvoiced>,
        odd_event::<OrderInvoiced>,
    ),
    (
        TopicKind::OrdersCancelled,
        encoded::<OrderCancelled>,
        odd_event::<OrderCancelled>,
    ),
    (
        TopicKind::OrdersShipped,
        encoded::<OrderShipped>,
        odd_event::<OrderShipped>,
    ),
    (
        TopicKind::OrdersRefunded,
        encoded::<PaymentRefunded>,
        odd_event::<PaymentRefunded>,
    ),
    (
        TopicKind::AccountsVerification,
        encoded::<AccountVerificationRequested>,
        odd_event::<AccountVerificationRequested>,
    ),
];

/// A payload for topic number `t`: its corpus event mutated, random bytes behind a valid
/// header (so that they reach the Avro decoder), plain random bytes, or an odd valid event.
fn payload() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let t = 0..TOPICS.len();
    prop_oneof![
        4 => (t.clone(), prop::collection::vec(mutation(), 1..6))
            .prop_map(|(t, ms)| (t, mutate((TOPICS[t].1)(), &ms))),
        2 => (t.clone(), prop::collection::vec(any::<u8>(), 0..128)).prop_map(|(t, tail)| {
            let mut bytes = (TOPICS[t].1)()[..5].to_vec();
            bytes.extend(tail);
            (t, bytes)
        }),
        1 => (t.clone(), prop::collection::vec(any::<u8>(), 0..64)),
        3 => (t, any::<usize>(), json_value()).prop_map(|(t, at, with)| {
            let bytes = (TOPICS[t].2)(at, with).unwrap_or_else(|| (TOPICS[t].1)());
            (t, bytes)
        }),
    ]
}

/// Decodes a payload as the event of topic number `t`.
fn decode(t: usize, ids: &SchemaIds, payload: &[u8]) -> Result<(), String> {
    fn d<E: Event>(ids: &SchemaIds, p: &[u8]) -> Result<(), String> {
        wire::decode_with::<E>(ids, p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    match TOPICS[t].0 {
        TopicKind::OrdersAccepted => d::<OrderAccepted>(ids, payload),
        TopicKind::OrdersModified => d::<OrderModified>(ids, payload),
        TopicKind::OrdersValidated => d::<OrderValidated>(ids, payload),
        TopicKind::OrdersRejected => d::<OrderRejected>(ids, payload),
        TopicKind::OrdersPaid => d::<OrderPaid>(ids, payload),
        TopicKind::PaymentFailed => d::<PaymentFailed>(ids, payload),
        TopicKind::OrdersInvoiced => d::<OrderInvoiced>(ids, payload),
        TopicKind::OrdersCancelled => d::<OrderCancelled>(ids, payload),
        TopicKind::OrdersShipped => d::<OrderShipped>(ids, payload),
        TopicKind::OrdersRefunded => d::<PaymentRefunded>(ids, payload),
        _ => d::<AccountVerificationRequested>(ids, payload),
    }
}

#[test]
fn the_wire_decoder_never_panics_and_says_why_it_refuses() {
    let executions = Executions::new("Avro wire decoder");
    let ids = SchemaIds::builtin();
    for (t, (_, encode, _)) in TOPICS.iter().enumerate() {
        decode(t, &ids, &encode()).expect("the corpus decodes");
    }
    proptest!(config(256), |((t, bytes) in payload())| {
        executions.one();
        match decode(t, &ids, &bytes) {
            Ok(()) => executions.taken(),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    });
}

/// Every stage's handler over one embedded store and a mock Kafka cluster.
struct Stages {
    runtime: tokio::runtime::Runtime,
    handlers: Vec<(&'static str, Vec<TopicKind>, Box<dyn DynHandler>)>,
    _cluster: MockCluster<'static, DefaultProducerContext>,
    _dir: tempfile::TempDir,
}

/// A handler behind a trait object (the `Handler` trait returns `impl Future`).
trait DynHandler: Send + Sync {
    fn handle<'a>(
        &'a self,
        m: &'a Incoming,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'a>>;
}

impl<H: Handler> DynHandler for H {
    fn handle<'a>(
        &'a self,
        m: &'a Incoming,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'a>>
    {
        Box::pin(Handler::handle(self, m))
    }
}

fn stages() -> Stages {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).expect("mock cluster starts");
    let kafka = KafkaConfig::new(cluster.bootstrap_servers(), Topics::default());
    for kind in TopicKind::ALL {
        cluster
            .create_topic(&kafka.topics.name(kind), 1, 1)
            .expect("topic created");
    }
    let _guard = runtime.enter();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let producer = EventProducer::new(&kafka).unwrap();
    let validation = Arc::new(ValidationHandler::new(
        store.clone(),
        producer.clone(),
        1900,
    ));
    let payment = Arc::new(PaymentHandler::new(
        store.clone(),
        producer.clone(),
        Arc::new(SimulatedGateway::new(100_000)),
    ));
    let file: Arc<dyn Sink> = Arc::new(FileSink::open(&dir.path().join("out.jsonl")).unwrap());
    let log: Arc<dyn Sink> = Arc::new(LogConfig::default().build("log"));
    let routing = Arc::new(Routing::notifications_to(vec![file, log]));
    let mut handlers: Vec<(&'static str, Vec<TopicKind>, Box<dyn DynHandler>)> = vec![
        (
            "validation",
            vec![TopicKind::OrdersAccepted],
            Box::new(ValidationHandler::new(
                store.clone(),
                producer.clone(),
                1900,
            )),
        ),
        (
            "modification",
            vec![TopicKind::OrdersModified],
            Box::new(ModificationHandler(validation)),
        ),
        (
            "payment",
            vec![TopicKind::OrdersValidated],
            Box::new(PaymentHandler::new(
                store.clone(),
                producer.clone(),
                Arc::new(SimulatedGateway::new(100_000)),
            )),
        ),
        (
            "refund",
            vec![TopicKind::OrdersCancelled],
            Box::new(RefundHandler(payment)),
        ),
        (
            "invoicing",
            vec![TopicKind::OrdersPaid],
            Box::new(InvoicingHandler::new(store.clone(), producer.clone())),
        ),
    ];
    let bridge_inputs = routing.inputs();
    for (name, h) in ["bridge.file", "bridge.log"]
        .into_iter()
        .zip(BridgeHandler::per_sink(store, routing))
    {
        handlers.push((name, bridge_inputs.clone(), Box::new(h)));
    }
    Stages {
        runtime,
        handlers,
        _cluster: cluster,
        _dir: dir,
    }
}

#[test]
fn every_stage_handler_takes_garbled_messages_without_panicking_and_parks_them_with_a_reason() {
    let executions = Executions::new("stage handlers");
    let stages = stages();
    proptest!(config(128), |((t, bytes) in payload(), key in prop::option::of("[a-z0-9:-]{0,16}"))| {
        let kind = TOPICS[t].0;
        let m = Incoming {
            topic: Topics::default().name(kind),
            kind: Some(kind),
            partition: 0,
            offset: 0,
            key: key.map(String::into_bytes),
            payload: bytes,
            headers: Vec::new(),
            schemas: SchemaIds::builtin(),
        };
        for (stage, inputs, handler) in &stages.handlers {
            if !inputs.contains(&kind) {
                continue;
            }
            executions.one();
            let outcome = stages.runtime.block_on(handler.handle(&m));
            match outcome {
                Ok(()) => executions.taken(),
                Err(HandlerError::Poison(reason)) => prop_assert!(!reason.is_empty(), "{stage}"),
                // Nothing here is unavailable (store and broker are up): a retry would loop on
                // this message for ever.
                Err(HandlerError::Retriable(e)) => {
                    prop_assert!(false, "{stage}: retriable for a message it can never take: {e}")
                }
            }
        }
    });
}
