//! The consume loop (`run_consumer`) against librdkafka's in-process mock cluster: real Kafka
//! protocol, real consumer groups and offset commits, no server to install.
//!
//! Every test gets its own mock cluster and a random topic prefix (hence its own consumer
//! groups). The mock broker delays the first join of a group by 3 s, like a real broker's
//! `group.initial.rebalance.delay.ms`, so each test takes a few seconds.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use orderflow_kafka::{
    consume::dlq_headers, groups::GroupView, run_consumer, EventProducer, Handler, HandlerError,
    Incoming, KafkaConfig, StageConfig,
};
use orderflow_schemas::{metrics, TopicKind, Topics};
use rdkafka::{
    consumer::{BaseConsumer, Consumer, StreamConsumer},
    message::{Header, Headers, OwnedHeaders},
    mocking::MockCluster,
    producer::{DefaultProducerContext, FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;
use common::{wait_for, WAIT};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A mock cluster with the input topic (`orders.accepted`) and the dead-letter topic created
/// under a random prefix, and a plain producer for test input.
struct Env {
    kafka: KafkaConfig,
    input: String,
    producer: FutureProducer,
    events: EventProducer,
    // Dropped last: clients must go before the cluster they talk to.
    _cluster: MockCluster<'static, DefaultProducerContext>,
}

impl Env {
    fn new(input_partitions: i32) -> Env {
        Env::with_properties(input_partitions, &[])
    }

    fn with_properties(input_partitions: i32, properties: &[(&str, &str)]) -> Env {
        let cluster = MockCluster::new(3).expect("mock cluster starts");
        let topics = Topics::new(format!("t{}-", uuid::Uuid::now_v7().simple()));
        let mut kafka = KafkaConfig::new(cluster.bootstrap_servers(), topics);
        // Shorter than the default 10 s, so that a rebalance waiting for members is quicker.
        kafka
            .properties
            .push(("session.timeout.ms".into(), "6000".into()));
        kafka.properties.extend(
            properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let input = kafka.topics.name(TopicKind::OrdersAccepted);
        cluster
            .create_topic(&input, input_partitions, 1)
            .expect("input topic created");
        cluster
            .create_topic(&kafka.topics.name(TopicKind::DeadLetter), 1, 1)
            .expect("dead-letter topic created");
        let producer: FutureProducer = kafka.producer_config().create().expect("test producer");
        let events = EventProducer::new(&kafka).expect("event producer");
        Env {
            kafka,
            input,
            producer,
            events,
            _cluster: cluster,
        }
    }

    fn stage(&self, name: &str) -> StageConfig {
        StageConfig::new(&self.kafka, name, vec![TopicKind::OrdersAccepted])
    }

    /// Produces `(key, payload)` messages to the input topic in this order (enqueued one after
    /// another on an idempotent producer, so per partition the offsets follow this order) and
    /// returns where each one landed: `(partition, offset)`.
    async fn produce(&self, messages: &[(&str, &str)]) -> Vec<(i32, i64)> {
        self.produce_with_headers(messages, OwnedHeaders::new())
            .await
    }

    async fn produce_with_headers(
        &self,
        messages: &[(&str, &str)],
        headers: OwnedHeaders,
    ) -> Vec<(i32, i64)> {
        let deliveries: Vec<_> = messages
            .iter()
            .map(|(key, payload)| {
                let record = FutureRecord::to(&self.input)
                    .key(*key)
                    .payload(*payload)
                    .headers(headers.clone());
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("message enqueued")
            })
            .collect();
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let delivery = tokio::time::timeout(WAIT, delivery)
                .await
                .expect("produce acknowledged within 20 s")
                .expect("delivery report")
                .map_err(|(e, _)| e)
                .expect("message produced");
            positions.push((delivery.partition, delivery.offset));
        }
        positions
    }

    /// Starts `run_consumer` for `stage` in a task.
    fn start(&self, stage: StageConfig, handler: Arc<Recorder>) -> Running {
        let shutdown = CancellationToken::new();
        let kafka = self.kafka.clone();
        let events = self.events.clone();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            run_consumer(&kafka, stage, handler, events, token)
                .await
                .map_err(|e| e.to_string())
        });
        Running { shutdown, task }
    }

    /// The offsets committed by `group` on the input topic, per partition.
    async fn committed(&self, group: &str, partitions: i32) -> BTreeMap<i32, Offset> {
        let mut config = self.kafka.consumer_config(group);
        config.set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create().expect("offset reader");
        let input = self.input.clone();
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&input, p);
            }
            let committed = consumer
                .committed_offsets(tpl, WAIT)
                .expect("committed offsets fetched");
            committed
                .elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect()
        })
        .await
        .expect("offset reader task")
    }
}

/// A running `run_consumer` task.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

impl Running {
    /// Cancels the shutdown token and waits (bounded) for `run_consumer` to return `Ok`;
    /// returns how long that took.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("run_consumer returns within 20 s of shutdown")
            .expect("run_consumer task does not panic");
        result.expect("run_consumer returns Ok");
        started.elapsed()
    }
}

/// What a test handler does with one attempt at a message: `(message, attempt)`, attempt
/// counting from 0 per payload.
type Decide = dyn Fn(&Incoming, u32) -> Result<(), HandlerError> + Send + Sync;

/// A handler that records every attempt and every success, and decides the outcome with a
/// closure.
struct Recorder {
    decide: Box<Decide>,
    /// Sleep a few milliseconds in some attempts, so that keys handled concurrently interleave.
    jitter: bool,
    /// Every attempt: (key, payload).
    attempts: Mutex<Vec<(String, String)>>,
    /// Every successful handling, in the order it completed: (key, payload).
    handled: Mutex<Vec<(String, String)>>,
}

impl Recorder {
    fn new(
        decide: impl Fn(&Incoming, u32) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        Recorder::build(false, decide)
    }

    fn build(
        jitter: bool,
        decide: impl Fn(&Incoming, u32) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            decide: Box::new(decide),
            jitter,
            attempts: Mutex::new(Vec::new()),
            handled: Mutex::new(Vec::new()),
        })
    }

    fn accepting_all() -> Arc<Recorder> {
        Recorder::new(|_, _| Ok(()))
    }

    fn handled(&self) -> Vec<(String, String)> {
        self.handled.lock().unwrap().clone()
    }

    fn handled_payloads(&self) -> Vec<String> {
        self.handled().into_iter().map(|(_, p)| p).collect()
    }

    fn attempts_of(&self, payload: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p == payload)
            .count()
    }

    fn has_handled(&self, payload: &str) -> bool {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p)| p == payload)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Handler for Recorder {
    async fn handle(&self, message: &Incoming) -> Result<(), HandlerError> {
        let key = text(message.key.as_deref().unwrap_or_default());
        let payload = text(&message.payload);
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let attempt = attempts.iter().filter(|(_, p)| *p == payload).count();
            attempts.push((key.clone(), payload.clone()));
            attempt as u32
        };
        if self.jitter {
            tokio::time::sleep(Duration::from_millis(message.offset.unsigned_abs() % 4)).await;
        }
        let outcome = (self.decide)(message, attempt);
        if outcome.is_ok() {
            self.handled.lock().unwrap().push((key, payload));
        }
        outcome
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 200 messages over 20 keys on 3 partitions, handled in small batches by a handler that takes
/// varying time: every message is handled exactly once, and per key in produce order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_handled_in_key_order() {
    let env = Env::new(3);
    let messages: Vec<(String, String)> = (0..200)
        .map(|i| (format!("order-{}", i % 20), format!("{}:{i}", i % 20)))
        .collect();
    let refs: Vec<(&str, &str)> = messages
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_str()))
        .collect();
    // Half before the stage starts, half while it runs.
    env.produce(&refs[..100]).await;

    let handler = Recorder::build(true, |_, _| Ok(()));
    let mut stage = env.stage("test-stage");
    stage.max_batch = 32;
    let running = env.start(stage, handler.clone());
    wait_for("the first messages to be handled", || {
        !handler.handled().is_empty()
    })
    .await;
    env.produce(&refs[100..]).await;
    wait_for("all 200 messages to be handled", || {
        handler.handled().len() >= 200
    })
    .await;
    // Give a duplicate delivery, if any, the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;

    let handled = handler.handled();
    assert_eq!(handled.len(), 200, "each message handled exactly once");
    let mut expected: HashMap<&str, Vec<&str>> = HashMap::new();
    for (key, payload) in &messages {
        expected.entry(key).or_default().push(payload);
    }
    let mut actual: HashMap<&str, Vec<&str>> = HashMap::new();
    for (key, payload) in &handled {
        actual.entry(key).or_default().push(payload);
    }
    assert_eq!(actual.len(), 20, "all 20 keys handled");
    for (key, want) in &expected {
        assert_eq!(
            actual.get(key),
            Some(want),
            "messages with key {key} handled in produce order"
        );
    }
}

/// A message whose handler fails retriably 3 times is retried until it succeeds (4 attempts);
/// the messages after it are handled too, and those with its key only after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_failures_are_retried_until_success() {
    let env = Env::new(1);
    let handler = Recorder::new(|m, attempt| {
        if m.payload == b"flaky" && attempt < 3 {
            Err(HandlerError::Retriable("store unavailable".into()))
        } else {
            Ok(())
        }
    });
    let positions = env
        .produce(&[
            ("a", "a-1"),
            ("b", "b-1"),
            ("a", "flaky"),
            ("a", "a-3"),
            ("b", "b-2"),
            ("c", "c-1"),
            ("a", "a-4"),
        ])
        .await;
    assert!(positions.iter().all(|(p, _)| *p == 0));
    let running = env.start(env.stage("test-stage"), handler.clone());
    wait_for("all 7 messages to be handled", || {
        handler.handled().len() >= 7
    })
    .await;
    running.stop().await;

    assert_eq!(handler.attempts_of("flaky"), 4, "3 failures, then success");
    let handled = handler.handled_payloads();
    assert_eq!(handled.len(), 7, "every message handled once: {handled:?}");
    for payload in ["a-1", "b-1", "flaky", "a-3", "b-2", "c-1", "a-4"] {
        assert!(handled.iter().any(|p| p == payload), "{payload} handled");
    }
    let key_a: Vec<String> = handler
        .handled()
        .into_iter()
        .filter(|(k, _)| k == "a")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(
        key_a,
        ["a-1", "flaky", "a-3", "a-4"],
        "same-key messages wait for the retried one"
    );
}

/// A poison message goes, as it came, to the dead-letter topic with the reason and its origin
/// in headers; it is not retried, and the loop goes on with the next messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic() {
    let env = Env::new(3);
    let handler = Recorder::new(|m, _| {
        if m.payload == b"\x00poison\xff" {
            Err(HandlerError::Poison("bad payload".into()))
        } else {
            Ok(())
        }
    });
    env.produce(&[("order-1", "before-1"), ("order-2", "before-2")])
        .await;
    // The poison message carries a header of its own, which must survive.
    let poison = FutureRecord::to(&env.input)
        .key("order-1")
        .payload(&b"\x00poison\xff"[..])
        .headers(OwnedHeaders::new().insert(Header {
            key: "orderflow-event-type",
            value: Some("OrderAccepted"),
        }));
    let (poison_partition, poison_offset) =
        tokio::time::timeout(WAIT, env.producer.send(poison, WAIT))
            .await
            .expect("poison produced within 20 s")
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
            .expect("poison produced");
    env.produce(&[("order-1", "after-1"), ("order-3", "after-3")])
        .await;

    let running = env.start(env.stage("test-stage"), handler.clone());
    wait_for("the 4 good messages to be handled", || {
        handler.handled().len() >= 4
    })
    .await;

    // Read the dead-letter topic from the beginning, outside any group.
    let dlq = env.kafka.topics.name(TopicKind::DeadLetter);
    let reader: StreamConsumer = env
        .kafka
        .consumer_config(&format!("{}dlq-reader", env.kafka.topics.prefix()))
        .create()
        .expect("dead-letter reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlq, 0, Offset::Beginning)
        .expect("partition added");
    reader.assign(&tpl).expect("dead-letter partition assigned");
    let dead = tokio::time::timeout(WAIT, reader.recv())
        .await
        .expect("a dead-lettered message within 20 s")
        .expect("dead-lettered message read")
        .detach();

    assert_eq!(dead.key(), Some(&b"order-1"[..]), "original key");
    assert_eq!(
        dead.payload(),
        Some(&b"\x00poison\xff"[..]),
        "original payload"
    );
    let headers: HashMap<String, String> = dead
        .headers()
        .expect("dead-lettered message has headers")
        .iter()
        .map(|h| (h.key.to_string(), text(h.value.unwrap_or_default())))
        .collect();
    let header = |name: &str| headers.get(name).map(String::as_str);
    assert_eq!(header(dlq_headers::REASON), Some("bad payload"));
    assert_eq!(header(dlq_headers::STAGE), Some("test-stage"));
    assert_eq!(header(dlq_headers::SOURCE_TOPIC), Some(env.input.as_str()));
    assert_eq!(
        header(dlq_headers::SOURCE_PARTITION),
        Some(poison_partition.to_string().as_str())
    );
    assert_eq!(
        header(dlq_headers::SOURCE_OFFSET),
        Some(poison_offset.to_string().as_str())
    );
    assert_eq!(
        header("orderflow-event-type"),
        Some("OrderAccepted"),
        "the message's own headers are kept"
    );

    // Only the poison message was dead-lettered, and only once.
    let another = tokio::time::timeout(Duration::from_secs(1), reader.recv()).await;
    assert!(
        another.is_err(),
        "nothing else on the dead-letter topic, got {:?}",
        another.map(|r| r.map(|m| m.detach()))
    );
    drop(reader);
    running.stop().await;

    assert_eq!(
        handler.attempts_of("\u{0}poison\u{fffd}"),
        1,
        "a poison message is not retried"
    );
    let mut handled = handler.handled_payloads();
    handled.sort();
    assert_eq!(handled, ["after-1", "after-3", "before-1", "before-2"]);
}

/// At-least-once: a stage stopped while a message keeps failing retriably returns without
/// committing that message's batch; the next consumer of the group gets it again, but not the
/// messages of batches that completed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_for_finished_batches() {
    let env = Env::new(1);
    let first = Recorder::new(|m, _| {
        if m.payload == b"stuck" {
            Err(HandlerError::Retriable("gateway down".into()))
        } else {
            Ok(())
        }
    });
    let round_1 = [
        ("order-1", "r1-1"),
        ("order-2", "r1-2"),
        ("order-3", "r1-3"),
        ("order-1", "r1-4"),
    ];
    env.produce(&round_1).await;
    let running = env.start(env.stage("test-stage"), first.clone());
    wait_for("round 1 to be handled", || first.handled().len() >= 4).await;

    // Round 2 comes in a later batch, since round 1 was fully handled before it was produced.
    env.produce(&[
        ("order-4", "r2-1"),
        ("order-1", "stuck"),
        ("order-1", "r2-3"),
    ])
    .await;
    wait_for("the stuck message to be retried", || {
        first.attempts_of("stuck") >= 3
    })
    .await;
    let took = running.stop().await;
    assert!(
        took < Duration::from_secs(10),
        "run_consumer returned {took:?} after shutdown"
    );
    assert!(!first.has_handled("stuck"));
    assert!(
        !first.has_handled("r2-3"),
        "a message waits for the one before it with the same key"
    );

    // A new member of the same group picks up where the committed offsets say.
    let second = Recorder::accepting_all();
    let running = env.start(env.stage("test-stage"), second.clone());
    wait_for("the stuck message to be redelivered", || {
        second.has_handled("stuck") && second.has_handled("r2-3")
    })
    .await;
    // Leave time for anything else that would be (wrongly) redelivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;

    let redelivered = second.handled_payloads();
    for (_, payload) in round_1 {
        assert!(
            !redelivered.iter().any(|p| p == payload),
            "{payload} was in a completed batch but was delivered again: {redelivered:?}"
        );
    }
    let order_1: Vec<String> = second
        .handled()
        .into_iter()
        .filter(|(k, _)| k == "order-1")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(order_1, ["stuck", "r2-3"]);
}

/// With nothing in flight, shutdown returns promptly and the offsets of everything handled are
/// committed (with the periodic auto-commit made too slow to do it instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_shutdown_is_prompt_and_commits() {
    let env = Env::with_properties(3, &[("auto.commit.interval.ms", "600000")]);
    let messages: Vec<(String, String)> = (0..30)
        .map(|i| (format!("order-{}", i % 7), format!("m-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = messages
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_str()))
        .collect();
    let positions = env.produce(&refs).await;
    let mut expected: BTreeMap<i32, Offset> = (0..3).map(|p| (p, Offset::Invalid)).collect();
    for (partition, offset) in positions {
        let next = Offset::Offset(offset + 1);
        let entry = expected.get_mut(&partition).expect("partition 0..3");
        if *entry == Offset::Invalid || next.to_raw() > entry.to_raw() {
            *entry = next;
        }
    }

    let handler = Recorder::accepting_all();
    let stage = env.stage("test-stage");
    let group = stage.group_id.clone();
    let running = env.start(stage, handler.clone());
    wait_for("all 30 messages to be handled", || {
        handler.handled().len() >= 30
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let took = running.stop().await;
    assert!(
        took < Duration::from_secs(5),
        "run_consumer took {took:?} to return after shutdown"
    );
    assert_eq!(handler.handled().len(), 30);
    assert_eq!(
        env.committed(&group, 3).await,
        expected,
        "committed offsets = last handled offset + 1 per partition"
    );
}

/// The consumer lag gauge of `stage` on `topic`'s `partition`, as a scrape shows it.
fn consumer_lag(stage: &str, topic: &str, partition: i32) -> Option<i64> {
    let series = format!(
        "{}{{partition=\"{partition}\",stage=\"{stage}\",topic=\"{topic}\"}} ",
        metrics::CONSUMER_LAG_MESSAGES
    );
    metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
}

/// A handler that takes its time over every message.
struct Slow {
    each: Duration,
    handled: Mutex<usize>,
}

impl Handler for Slow {
    async fn handle(&self, _: &Incoming) -> Result<(), HandlerError> {
        tokio::time::sleep(self.each).await;
        *self.handled.lock().unwrap() += 1;
        Ok(())
    }
}

/// A stage that falls behind shows its backlog as consumer lag on the partition (from
/// librdkafka's statistics, which the consumer reads between batches), and the lag goes back
/// to 0 once it has caught up and committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_shows_a_backlog_and_clears_when_the_stage_catches_up() {
    let env = Env::with_properties(1, &[("statistics.interval.ms", "100")]);
    let handler = Arc::new(Slow {
        each: Duration::from_millis(250),
        handled: Mutex::new(0),
    });
    let mut stage = env.stage("lag-stage");
    // One message per batch: the consumer polls (and reads its statistics) between messages.
    stage.max_batch = 1;
    let (shutdown, kafka, events) = (
        CancellationToken::new(),
        env.kafka.clone(),
        env.events.clone(),
    );
    let task = tokio::spawn({
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        async move { run_consumer(&kafka, stage, handler, events, shutdown).await }
    });
    let lag = || consumer_lag("lag-stage", &env.input, 0);

    let backlog: Vec<(String, String)> = (0..24)
        .map(|i| ("order-1".to_string(), format!("m{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = backlog
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_str()))
        .collect();
    env.produce(&refs).await;
    // 24 messages at 250 ms each: about 6 s of backlog, committed every second.
    wait_for("a lag of 5 messages or more", || {
        lag().is_some_and(|l| l >= 5)
    })
    .await;
    wait_for("the backlog to be handled", || {
        *handler.handled.lock().unwrap() == 24
    })
    .await;
    wait_for("the lag to be 0", || lag() == Some(0)).await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the stage stops")
        .expect("no panic")
        .expect("run_consumer returns Ok");
}

#[tokio::test]
async fn a_group_view_reads_a_backlog_and_starts_a_new_group_where_another_had_got_to() {
    let env = Env::new(2);
    let messages: Vec<(String, String)> = (0..10)
        .map(|i| (format!("order-{i}"), format!("m-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = messages
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_str()))
        .collect();
    env.produce(&refs[..6]).await;

    // A stage reads the first 6 and commits (on shutdown).
    let handler = Recorder::accepting_all();
    let stage = env.stage("old-stage");
    let old = stage.group_id.clone();
    let running = env.start(stage, handler.clone());
    wait_for("6 messages to be handled", || handler.handled().len() >= 6).await;
    running.stop().await;
    env.produce(&refs[6..]).await;

    let (kafka, topics) = (env.kafka.clone(), vec![env.input.clone()]);
    let new = format!("{old}.new");
    let (old_backlog, fresh_backlog, seeded, again, new_backlog) =
        tokio::task::spawn_blocking(move || {
            let old = GroupView::new(&kafka, &old, topics.clone()).unwrap();
            let new = GroupView::new(&kafka, &new, topics.clone()).unwrap();
            let fresh_backlog = new.backlog().unwrap();
            let seeded = new.start_where(&old).unwrap();
            // Once it has offsets of its own, it is left alone.
            let again = new.start_where(&old).unwrap();
            (
                old.backlog().unwrap(),
                fresh_backlog,
                seeded,
                again,
                new.backlog().unwrap(),
            )
        })
        .await
        .unwrap();
    assert_eq!(old_backlog, 4, "the 4 produced after the stage stopped");
    assert_eq!(
        fresh_backlog, 10,
        "a group without offsets starts at the earliest"
    );
    assert!(seeded && !again);
    assert_eq!(new_backlog, 4, "the new group starts where the old one was");
}
