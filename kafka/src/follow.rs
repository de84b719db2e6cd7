//! Following the order topics' keys (order ids) from their current end, for readers that keep
//! something per order in memory: the API's order cache drops an order when one of its
//! events goes by.
//!
//! No consumer group: the partitions are assigned by hand, each from its high watermark at
//! start, and no offset is ever committed, so the stages' groups are never touched and every
//! process follows on its own. Partitions added to a topic later are not followed (restart).
//!
//! Only while someone wants the keys ([`Demand`]): reading every event of every order costs
//! the broker and this process about as much as a stage does, so a follower nobody has
//! wanted for a while stops, and starts again, from the end, at the next want.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use orderflow_schemas::TopicKind;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    Message, Offset, TopicPartitionList,
};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{KafkaConfig, Result, BACKOFF};

/// The topics that carry an order's events: every catalogue topic but the dead-letter ones.
pub fn order_topics() -> Vec<TopicKind> {
    TopicKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, TopicKind::DeadLetter | TopicKind::BridgeDeadLetter))
        .collect()
}

/// What [`follow_keys`] tells its caller.
pub trait KeyListener: Send + Sync + 'static {
    /// Following from here on: every event produced from now is seen.
    fn following(&self);
    /// A message's key went by (the next is not read before this is done).
    fn key(&self, key: &[u8]) -> impl std::future::Future<Output = ()> + Send;
    /// Messages may have been missed (a consumer error): forget everything.
    fn gap(&self);
    /// Not following any more (nobody wanted the keys for a while): keys from now on are not
    /// seen until [`following`](Self::following) again.
    fn stopped(&self);
}

/// Whether anyone wants the keys: [`follow_keys`] follows while so, and stops once nobody has
/// for `idle`. A want is a few atomic operations, cheap enough for every read.
#[derive(Debug)]
pub struct Demand {
    idle: Duration,
    /// Holders that want the keys for as long as they last ([`Demand::hold`]).
    holds: AtomicUsize,
    /// When the keys were last wanted, in ms since `epoch`.
    last: AtomicU64,
    epoch: Instant,
    /// Wakes a stopped follower (a permit left while it follows costs it one more look).
    wake: Notify,
}

/// Wants the keys until dropped (see [`Demand::hold`]).
#[derive(Debug)]
pub struct Hold(Arc<Demand>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::SeqCst);
        // Counts as a want: the idle time starts now.
        self.0.want();
    }
}

impl Demand {
    /// Nobody wants the keys yet; a follower stops once nobody has wanted them for `idle`.
    pub fn new(idle: Duration) -> Self {
        Demand {
            idle,
            holds: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: Notify::new(),
        }
    }

    /// The keys are wanted now (a read that the keys keep right).
    pub fn want(&self) {
        self.last.store(self.now_ms(), Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The keys are wanted until the answer is dropped (a live stream).
    pub fn hold(self: &Arc<Self>) -> Hold {
        self.holds.fetch_add(1, Ordering::SeqCst);
        self.want();
        Hold(self.clone())
    }

    fn now_ms(&self) -> u64 {
        // Never 0, which means never wanted.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether someone holds the keys or wanted them within the idle time.
    fn wanted(&self) -> bool {
        if self.holds.load(Ordering::SeqCst) > 0 {
            return true;
        }
        let last = self.last.load(Ordering::SeqCst);
        last != 0 && self.now_ms().saturating_sub(last) < self.idle.as_millis() as u64
    }

    /// Waits until the keys are wanted; `false` if `shutdown` came first.
    async fn until_wanted(&self, shutdown: &CancellationToken) -> bool {
        loop {
            // Registered before the look, so a want between the two is not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.wanted() {
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = woken => {}
            }
        }
    }
}

/// Calls `listener` with the key of every message on `topics` while `demand` wants them, from
/// when it does, until `shutdown`. Setting up is retried while the broker does not answer.
pub async fn follow_keys(
    config: &KafkaConfig,
    topics: Vec<TopicKind>,
    listener: Arc<impl KeyListener>,
    demand: Arc<Demand>,
    shutdown: CancellationToken,
) -> Result<()> {
    let names: Vec<String> = topics.iter().map(|k| config.topics.name(*k)).collect();
    while demand.until_wanted(&shutdown).await {
        let Some(consumer) = set_up(config, &names, &shutdown).await else {
            return Ok(());
        };
        info!(topics = ?names, "Following the order topics.");
        listener.following();
        let done = follow(&consumer, &*listener, &demand, &shutdown).await;
        listener.stopped();
        drop(consumer);
        if done {
            return Ok(());
        }
        info!(
            idle = ?demand.idle,
            "Stopped following the order topics: no order read and no live stream for a while."
        );
    }
    Ok(())
}

/// A consumer at the end of `names`, retried until the broker answers; `None` on `shutdown`.
async fn set_up(
    config: &KafkaConfig,
    names: &[String],
    shutdown: &CancellationToken,
) -> Option<StreamConsumer> {
    let mut attempt = 0;
    loop {
        let (config, names) = (config.clone(), names.to_vec());
        let setup = tokio::task::spawn_blocking(move || assign_at_end(&config, &names)).await;
        match setup {
            Ok(Ok(consumer)) => return Some(consumer),
            Ok(Err(e)) => {
                warn!(error = %e, attempt, "Cannot follow the order topics yet; retrying.")
            }
            Err(e) => warn!(error = %e, "Following the order topics failed to start."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(BACKOFF.delay(attempt.min(6))) => {}
        }
        attempt += 1;
    }
}

/// Hands `consumer`'s keys to `listener` until nobody wants them (`false`) or `shutdown`
/// (`true`).
async fn follow(
    consumer: &StreamConsumer,
    listener: &impl KeyListener,
    demand: &Demand,
    shutdown: &CancellationToken,
) -> bool {
    // Looks whether the keys are still wanted a few times per idle time.
    let mut look = tokio::time::interval((demand.idle / 4).max(Duration::from_millis(10)));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return true,
            _ = look.tick() => {
                if !demand.wanted() {
                    return false;
                }
            }
            message = consumer.recv() => match message {
                Ok(m) => {
                    if let Some(key) = m.key() {
                        listener.key(key).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "Following the order topics: consumer error.");
                    listener.gap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// A consumer assigned every partition of `topics` at its high watermark (blocking calls).
fn assign_at_end(config: &KafkaConfig, topics: &[String]) -> Result<StreamConsumer> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    // Never joined (the partitions are assigned), but librdkafka wants a group id.
    let mut client = config.consumer_config(&format!(
        "{}orderflow-follow-{}-{}",
        config.topics.prefix(),
        std::process::id(),
        orderflow_schemas::now_millis()
    ));
    client
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0");
    let consumer: StreamConsumer = client.create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        for t in metadata.topics() {
            if t.partitions().is_empty() {
                return Err(crate::Error::Admin(format!(
                    "topic {topic} has no partitions yet"
                )));
            }
            for p in t.partitions() {
                let (_, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
                assignment.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
            }
        }
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_want_lasts_the_idle_time() {
        let demand = Demand::new(IDLE);
        assert!(!demand.wanted(), "nobody wanted the keys yet");
        demand.want();
        assert!(demand.wanted());
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        assert!(demand.wanted());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!demand.wanted());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_wants_the_keys_until_it_is_dropped_and_the_idle_time_after() {
        let demand = Arc::new(Demand::new(IDLE));
        let hold = demand.hold();
        tokio::time::sleep(3 * IDLE).await;
        assert!(demand.wanted(), "held");
        drop(hold);
        tokio::time::sleep(IDLE / 2).await;
        assert!(demand.wanted(), "the idle time counts from the drop");
        tokio::time::sleep(IDLE).await;
        assert!(!demand.wanted());
    }

    #[tokio::test(start_paused = true)]
    async fn a_want_wakes_a_stopped_follower() {
        let demand = Arc::new(Demand::new(IDLE));
        let shutdown = CancellationToken::new();
        let waiting = tokio::spawn({
            let (demand, shutdown) = (demand.clone(), shutdown.clone());
            async move { demand.until_wanted(&shutdown).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "nobody wants the keys");
        demand.want();
        assert!(waiting.await.unwrap(), "woken by the want");
        // And shutdown ends a wait.
        tokio::time::sleep(2 * IDLE).await;
        let waiting = tokio::spawn({
            let (demand, shutdown) = (demand.clone(), shutdown.clone());
            async move { demand.until_wanted(&shutdown).await }
        });
        shutdown.cancel();
        assert!(!waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_want_does_not_start_the_follower() {
        let demand = Demand::new(IDLE);
        // Wanted while the follower followed: it left a wake-up behind.
        demand.want();
        tokio::time::sleep(2 * IDLE).await;
        let shutdown = CancellationToken::new();
        let wait = demand.until_wanted(&shutdown);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), wait)
                .await
                .is_err(),
            "not wanted any more: the follower stays stopped"
        );
    }
}
