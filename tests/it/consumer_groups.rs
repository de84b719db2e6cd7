//! Consumer groups on Orderflow's broker (`orderflow broker`: tansu's group coordinator, patched
//! in vendor/tansu-broker). A member killed with SIGKILL never leaves its group; once its
//! session expires the group forms again without it, so that a member started at once in its
//! place (a stage's process restarted after a crash) reads the partitions it had.
//!
//! The members are processes of their own (`tests/python/group_member.py`, librdkafka through
//! confluent-kafka), with the consumer session Orderflow uses on its embedded broker (6 s).

use crate::common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rdkafka::{
    producer::{BaseProducer, BaseRecord, Producer},
    ClientConfig,
};
use serde_json::{json, Value};

const PARTITIONS: i32 = 3;

/// How long a test waits for the group to settle before it fails: far beyond the 6 s session
/// (a stuck group never settles).
const SETTLE: Duration = Duration::from_secs(90);

/// `orderflow broker` on a free port, with a topic of three partitions.
struct Broker {
    _dir: tempfile::TempDir,
    _process: common::Killed,
    bootstrap: String,
    topic: String,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let (process, bootstrap) = common::start_broker(dir.path());
        let topic = format!("groups-{}", uuid::Uuid::now_v7());
        common::create_topics(&bootstrap, &[(&topic, PARTITIONS)]);
        Broker {
            _dir: dir,
            _process: process,
            bootstrap,
            topic,
        }
    }

    /// Produces `value` to each partition and waits until the broker has them.
    fn produce_to_every_partition(&self, value: &str) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        for partition in 0..PARTITIONS {
            producer
                .send(
                    BaseRecord::<(), _>::to(&self.topic)
                        .partition(partition)
                        .payload(&format!("{value}-{partition}")),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
    }
}

/// A group member's process and what it has said so far.
struct Member {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<Value>,
    /// Its assignment as of its last line.
    assigned: BTreeSet<i64>,
    /// The values of the records it read.
    read: BTreeSet<String>,
}

impl Member {
    fn start(name: &'static str, broker: &Broker, group: &str) -> Member {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/group_member.py");
        let args = json!({
            "bootstrap": broker.bootstrap,
            "group": group,
            "topic": broker.topic,
            "kafka": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1500},
        });
        let mut child = Command::new(common::python())
            .args(["-W", "ignore", script, &args.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Member {
            name,
            child,
            lines,
            assigned: BTreeSet::new(),
            read: BTreeSet::new(),
        }
    }

    /// Takes in what the member has said since the last call.
    fn update(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            if let Some(partitions) = line["assigned"].as_array() {
                self.assigned = partitions.iter().filter_map(Value::as_i64).collect();
            } else if line.get("revoked").is_some() {
                self.assigned.clear();
            } else if let Some(value) = line["record"]["value"].as_str() {
                self.read.insert(value.to_string());
            }
        }
    }

    /// SIGKILL: the member never leaves the group.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds for the members; panics after [`SETTLE`] with what each said.
fn wait_for(what: &str, members: &mut [&mut Member], done: impl Fn(&[&mut Member]) -> bool) {
    let deadline = Instant::now() + SETTLE;
    loop {
        for member in members.iter_mut() {
            member.update();
        }
        if done(members) {
            return;
        }
        let state: BTreeMap<&str, (Vec<i64>, Vec<String>)> = members
            .iter()
            .map(|m| {
                (
                    m.name,
                    (
                        m.assigned.iter().copied().collect(),
                        m.read.iter().cloned().collect(),
                    ),
                )
            })
            .collect();
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SETTLE:?}; (assigned, read) per member: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn every_partition() -> BTreeSet<i64> {
    (0..i64::from(PARTITIONS)).collect()
}

/// The values `Broker::produce_to_every_partition(value)` wrote.
fn produced(value: &str) -> BTreeSet<String> {
    (0..PARTITIONS).map(|p| format!("{value}-{p}")).collect()
}

/// How long after the kill the replacement starts: at once, and after as long as Orderflow's
/// pipeline takes to start again (both within the killed member's session).
const RESTARTS: [Duration; 2] = [Duration::ZERO, Duration::from_secs(4)];

/// Runs `scenario` for each of [`RESTARTS`] at the same time, each in a group of its own.
fn for_each_restart(scenario: fn(&Broker, &str, Duration)) {
    let broker = Broker::start();
    std::thread::scope(|scope| {
        let runs: Vec<_> = RESTARTS
            .iter()
            .map(|&delay| {
                let broker = &broker;
                scope.spawn(move || {
                    let group = format!("stage-{}", uuid::Uuid::now_v7());
                    scenario(broker, &group, delay)
                })
            })
            .collect();
        for run in runs {
            if let Err(panic) = run.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// A stage's only member is killed and its process started again within the dead member's
/// session: the new member gets every partition and reads what is produced after.
#[test]
fn a_sole_member_killed_and_replaced_at_once_gets_every_partition() {
    for_each_restart(|broker, group, delay| {
        let mut first = Member::start("first", broker, group);
        wait_for(
            "the first member gets every partition",
            &mut [&mut first],
            |m| m[0].assigned == every_partition(),
        );

        first.kill();
        std::thread::sleep(delay);
        let mut second = Member::start("second", broker, group);
        let tag = format!("{group}-after-the-kill");
        broker.produce_to_every_partition(&tag);

        wait_for(
            &format!("{group}: the member started {delay:?} after the kill reads every partition"),
            &mut [&mut second],
            |m| m[0].assigned == every_partition() && produced(&tag).is_subset(&m[0].read),
        );
    });
}

/// One of two members is killed and replaced within its session: the survivor and the new
/// member share every partition between them, and together read what is produced after.
#[test]
fn one_of_two_members_killed_and_replaced_at_once_leaves_no_partition_unread() {
    for_each_restart(|broker, group, delay| {
        let mut killed = Member::start("killed", broker, group);
        let mut survivor = Member::start("survivor", broker, group);
        wait_for(
            "the two members share every partition",
            &mut [&mut killed, &mut survivor],
            |m| {
                !m[0].assigned.is_empty()
                    && !m[1].assigned.is_empty()
                    && m[0].assigned.is_disjoint(&m[1].assigned)
                    && &m[0].assigned | &m[1].assigned == every_partition()
            },
        );

        killed.kill();
        std::thread::sleep(delay);
        let mut replacement = Member::start("replacement", broker, group);
        let tag = format!("{group}-after-the-kill");
        broker.produce_to_every_partition(&tag);

        wait_for(
            &format!("{group}: the survivor and a replacement started {delay:?} after the kill read every partition"),
            &mut [&mut survivor, &mut replacement],
            |m| {
                m[0].assigned.is_disjoint(&m[1].assigned)
                    && &m[0].assigned | &m[1].assigned == every_partition()
                    && produced(&tag).is_subset(&(&m[0].read | &m[1].read))
            },
        );
    });
}
