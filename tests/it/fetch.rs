//! Fetches on Orderflow's broker (`orderflow broker`, its storage patched in
//! vendor/tansu-storage): a consumer waiting on many partitions is answered as soon as a record
//! lands in any of them, and a partition the broker remembers as having nothing new never hides
//! a record produced since. Each record comes back with its own headers, in the order they
//! were written, and the same whether the broker answers from the latest batches it keeps in
//! memory or from its database.

use crate::common;

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig, Message, Offset, TopicPartitionList,
};

const TOPICS: usize = 4;
const PARTITIONS: i32 = 3;

/// How long the test waits for one record before it fails. Far beyond the consumer's
/// `fetch.wait.max.ms`: a record that a stale answer hid would stay hidden (nothing else is
/// produced to its partition while the test waits for it), so this is a bound on "never".
const NEVER: Duration = Duration::from_secs(30);

#[test]
fn a_consumer_of_many_partitions_gets_every_record_however_they_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, bootstrap) = common::start_broker(dir.path());

    let run = uuid::Uuid::now_v7();
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("fetch-{run}-{i}")).collect();
    let wanted: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
    common::create_topics(&bootstrap, &wanted);

    // Every partition assigned by hand from its start, with the long fetch wait `orderflow
    // run` uses on its embedded broker: an answer has to come from a produce's wake-up.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("fetch-{run}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5000")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for topic in &topics {
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let send = |topic: &str, partition: i32, value: &str| {
        producer
            .send(
                BaseRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    };

    // One record at a time, each waited for before the next, walking the partitions in an
    // order that revisits some at once and leaves others alone for a while; then pairs
    // produced back to back into one partition and into two.
    let places = (0..36).map(|i: usize| {
        let topic = (i * 7 + i / 5) % TOPICS;
        let partition = ((i * 5 + i / 3) % PARTITIONS as usize) as i32;
        (topic, partition)
    });
    for (i, (topic, partition)) in places.enumerate() {
        let value = format!("single-{i}");
        send(&topics[topic], partition, &value);
        let got = read_until(&consumer, 1);
        assert_eq!(
            got,
            vec![value],
            "record {i} on {}/{partition}",
            topics[topic]
        );
    }
    for i in 0..6 {
        let (a, b) = (format!("pair-{i}-a"), format!("pair-{i}-b"));
        send(&topics[i % TOPICS], 1, &a);
        if i % 2 == 0 {
            send(&topics[i % TOPICS], 1, &b);
        } else {
            send(&topics[(i + 1) % TOPICS], 2, &b);
        }
        let mut got = read_until(&consumer, 2);
        got.sort();
        assert_eq!(got, vec![a, b], "pair {i}");
    }
}

#[test]
fn every_record_comes_back_with_its_own_headers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, bootstrap) = common::start_broker(dir.path());
    let topic = format!("headers-{}", uuid::Uuid::now_v7());
    common::create_topics(&bootstrap, &[(&topic, 1)]);

    // Record i carries i % 4 headers (none for some), one of them without a value; they go in
    // batches of several records, so one fetch returns records with and without headers.
    let headers_of = |i: usize| -> Vec<(String, Option<String>)> {
        (0..i % 4)
            .map(|h| {
                let value = (h != 1).then(|| format!("value-{i}-{h}"));
                (format!("key-{h}"), value)
            })
            .collect()
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    const RECORDS: usize = 40;
    for i in 0..RECORDS {
        let mut headers = OwnedHeaders::new();
        for (key, value) in headers_of(i) {
            headers = headers.insert(Header {
                key: &key,
                value: value.as_deref(),
            });
        }
        producer
            .send(
                BaseRecord::<(), _>::to(&topic)
                    .payload(&format!("record-{i}"))
                    .headers(headers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        if i % 10 == 9 {
            producer.flush(Duration::from_secs(10)).unwrap();
        }
    }

    // From the start, and from the middle of the partition.
    for from in [0, 17] {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("{topic}-{from}"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(from as i64))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let start = Instant::now();
        let mut next = from;
        while next < RECORDS {
            assert!(start.elapsed() < NEVER, "records from {next} did not come");
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.unwrap();
            assert_eq!(message.offset(), next as i64);
            assert_eq!(
                message.payload_view::<str>().unwrap().unwrap(),
                format!("record-{next}")
            );
            let got: Vec<(String, Option<String>)> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = h.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                            (h.key.to_string(), value)
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(got, headers_of(next), "the headers of record {next}");
            next += 1;
        }
    }
}

/// The broker answers a fetch of the latest uncompressed batches from memory, and reads older
/// records, compressed batches and everything after a restart from its database: a consumer
/// gets the same records at the same offsets either way, from any offset, even one in the
/// middle of a batch.
#[test]
fn records_read_from_memory_and_from_the_database_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let broker = common::broker_on(dir.path(), port);
    let topic = format!("tail-{}", uuid::Uuid::now_v7());
    common::create_topics(&bootstrap, &[(&topic, 1)]);

    // 3 MB in groups of 100 records, every other group lz4-compressed: more than the broker
    // keeps in memory, so the first records are only in its database.
    const RECORDS: usize = 3000;
    let producer = |compression: &str| -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "5")
            .set("compression.type", compression)
            .create()
            .unwrap()
    };
    let (plain, lz4) = (producer("none"), producer("lz4"));
    for group in 0..RECORDS / 100 {
        let producer = if group % 2 == 0 { &plain } else { &lz4 };
        for i in group * 100..(group + 1) * 100 {
            producer
                .send(
                    BaseRecord::to(&topic)
                        .key(&i.to_string())
                        .payload(&value_of(i)),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }

    for from in [0, 1234, RECORDS - 37] {
        read_all_from(&bootstrap, &topic, from, RECORDS);
    }
    // Killed and started again: nothing in memory, all from the database.
    drop(broker);
    let _broker = common::broker_on(dir.path(), port);
    for from in [0, RECORDS - 37] {
        read_all_from(&bootstrap, &topic, from, RECORDS);
    }
}

/// Record `i`'s value: about 1 kB, its number first.
fn value_of(i: usize) -> String {
    format!("record-{i}-{}", "x".repeat(1000))
}

/// Reads partition 0 of `topic` from `from` up to `records`, checking every record's offset,
/// key and value.
fn read_all_from(bootstrap: &str, topic: &str, from: usize, records: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("{topic}-{from}-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(from as i64))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let start = Instant::now();
    let mut next = from;
    while next < records {
        assert!(
            start.elapsed() < NEVER,
            "reading from {from}: records from {next} did not come"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        assert_eq!(message.offset(), next as i64, "reading from {from}");
        assert_eq!(
            message.key_view::<str>().unwrap().unwrap(),
            next.to_string(),
            "reading from {from}"
        );
        assert_eq!(
            message.payload_view::<str>().unwrap().unwrap(),
            value_of(next),
            "reading from {from}"
        );
        next += 1;
    }
}

/// Reads until `count` records have come (or fails after [`NEVER`]), and makes sure no more
/// follow at once.
fn read_until(consumer: &BaseConsumer, count: usize) -> Vec<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < count {
        assert!(
            start.elapsed() < NEVER,
            "only {got:?} of {count} records came in {NEVER:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            got.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
        }
    }
    if let Some(extra) = consumer.poll(Duration::from_millis(100)) {
        panic!(
            "a record more than expected: {:?}",
            extra.unwrap().payload()
        );
    }
    got
}
