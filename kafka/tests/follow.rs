//! The order topics' follower (`follow_keys`) against librdkafka's in-process mock cluster:
//! it follows while its keys are wanted, stops once they are not, and starts again, from the
//! end, at the next want.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_kafka::{
    follow::{follow_keys, order_topics, Demand, KeyListener},
    KafkaConfig,
};
use orderflow_schemas::{TopicKind, Topics};
use rdkafka::{
    mocking::MockCluster,
    producer::{DefaultProducerContext, FutureProducer, FutureRecord},
};
use tokio_util::sync::CancellationToken;

mod common;
use common::{wait_for, WAIT};

/// The follower's idle time here: short, so that it stops within the test.
const IDLE: Duration = Duration::from_millis(400);

/// What the follower told its listener, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    Following,
    Key(String),
    Gap,
    Stopped,
}

#[derive(Default)]
struct Listener(Mutex<Vec<Told>>);

impl Listener {
    fn told(&self) -> Vec<Told> {
        self.0.lock().unwrap().clone()
    }
}

impl KeyListener for Listener {
    fn following(&self) {
        self.0.lock().unwrap().push(Told::Following);
    }

    async fn key(&self, key: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        self.0.lock().unwrap().push(Told::Key(key));
    }

    fn gap(&self) {
        self.0.lock().unwrap().push(Told::Gap);
    }

    fn stopped(&self) {
        self.0.lock().unwrap().push(Told::Stopped);
    }
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str) {
    producer
        .send(FutureRecord::to(topic).key(key).payload("{}"), WAIT)
        .await
        .map_err(|(e, _)| e)
        .expect("produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_runs_while_its_keys_are_wanted() {
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster starts");
    let topics = Topics::new(format!("t{}-", uuid::Uuid::now_v7().simple()));
    let kafka = KafkaConfig::new(cluster.bootstrap_servers(), topics);
    for kind in order_topics() {
        cluster
            .create_topic(&kafka.topics.name(kind), 2, 1)
            .expect("topic created");
    }
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let paid = kafka.topics.name(TopicKind::OrdersPaid);

    let listener = Arc::new(Listener::default());
    let demand = Arc::new(Demand::new(IDLE));
    let shutdown = CancellationToken::new();
    let follower = tokio::spawn({
        let (kafka, listener, demand, shutdown) = (
            kafka.clone(),
            listener.clone(),
            demand.clone(),
            shutdown.clone(),
        );
        async move { follow_keys(&kafka, order_topics(), listener, demand, shutdown).await }
    });

    // Nobody wants the keys: nothing is followed, not even once.
    produce(&producer, &paid, "before-anyone").await;
    tokio::time::sleep(3 * IDLE).await;
    assert_eq!(listener.told(), vec![]);

    // A reader wants them, and holds on: followed from the end, so only later keys go by.
    let hold = demand.hold();
    wait_for("following", || listener.told() == vec![Told::Following]).await;
    produce(&producer, &paid, "while-held").await;
    wait_for("the key", || listener.told().len() == 2).await;
    tokio::time::sleep(3 * IDLE).await;
    assert_eq!(
        listener.told(),
        vec![Told::Following, Told::Key("while-held".into())],
        "a hold keeps it going past the idle time"
    );

    // Let go: it stops after the idle time, and keys produced now are not seen.
    drop(hold);
    wait_for("stopped", || listener.told().last() == Some(&Told::Stopped)).await;
    produce(&producer, &paid, "while-stopped").await;

    // A want starts it again, from the end.
    demand.want();
    wait_for("following again", || {
        listener.told().last() == Some(&Told::Following)
    })
    .await;
    produce(&producer, &paid, "after-the-want").await;
    wait_for("the key", || {
        listener.told().last() == Some(&Told::Key("after-the-want".into()))
    })
    .await;
    assert_eq!(
        listener.told(),
        vec![
            Told::Following,
            Told::Key("while-held".into()),
            Told::Stopped,
            Told::Following,
            Told::Key("after-the-want".into()),
        ]
    );

    shutdown.cancel();
    tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower ends at shutdown")
        .unwrap()
        .unwrap();
}
