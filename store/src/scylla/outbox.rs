//! [`OutboxStore`] on ScyllaDB: `store/migrations/scylla/0011_outbox.cql`.
//!
//! ScyllaDB has no transaction across partitions, so an event cannot be written in the same
//! write as the change it announces (an order's partition, a verification email's row). The
//! outbox holds *intents* instead, confirmed by the state the change records:
//!
//! - **Intent first.** A call that may announce a change inserts an intent row (the event's
//!   type and id, the record whose state confirms it, the instance that wrote it) before its
//!   decisive write (the order's batch, the cancel's or ship's final step, a modification's
//!   fence, the `paid` timeline entry, the verification email's record), and makes the change
//!   only once the intent is written ([`Announce`]). So a change is never recorded without an
//!   intent naming it. A call that turns out to change nothing (its conditional write was not
//!   applied: a repeat, or a racing call won) deletes its intent at once; a call whose
//!   decisive write failed with an unknown outcome keeps it, since the write may have been
//!   made. A call that finds the change made before it writes nothing.
//! - **Confirmed by the recorded state.** [`OutboxStore::outbox`] returns an intent only once
//!   its change is recorded: the order's timeline has the event id (for `OrderAccepted`, the
//!   order exists), or the verification email's record exists. The event is then built from
//!   what is recorded, with the builders every store uses ([`crate::outbox`]): the cancel's
//!   first reason and time with the refund of the approved payment, the shipping time, the
//!   revision's items, the payment taken.
//! - **Kept whole** (`body`): the events whose content the recorded state may no longer hold
//!   are written whole in their intent and relayed as written once confirmed. A modification's
//!   `OrderModified`: a later revision replaces the order's items, so once the order has moved
//!   on the intent's are relayed, provided the revision's timeline entry has the intent's time
//!   (else the intent is a racing call's whose fence lost, and it is dropped). A transfer's
//!   `OrderCancelled` announced again with its refund: an entry of its own, apart from the
//!   cancel's. And the verification event, confirmed by its email's record (its clear code is
//!   not in it).
//! - **Unconfirmed intents** are those of calls under way and of calls that failed before
//!   their change. A call makes its decisive write only while its intent is younger than
//!   [`FRESH_MS`] (it writes a fresh one first otherwise); the write is then made within the
//!   driver's request timeout (30 s), or by the batchlog's replay for a logged batch (about a
//!   minute), or by the next Paxos round on the partition for a lightweight transaction left
//!   half-way. An intent still unconfirmed after [`ORPHAN_MS`] is checked once more with a
//!   serial read of its order (which completes such a round) and deleted if its change is
//!   still not recorded.
//! - **Racing calls.** Several intents with one event id (two requests cancelling one order, a
//!   call retried after a crash; kept whole or not, never both) come back as one entry, whose [`Queued::position`] names each
//!   row (`shard:timeuuid`, comma-separated), so relaying it deletes them all.
//! - **Owners.** Each [`ScyllaStore`] has a random id, written with its intents. `outbox`
//!   returns its own intents at once and those of other instances only once they are
//!   [`TAKEOVER_MS`] old: a running instance relays what it writes, and the intents of one
//!   that stopped are relayed by the others. A takeover while the owner is only slow relays
//!   an event twice, with the same event id (the relay promises at least once anyway).
//! - **The table.** [`SHARDS`] partitions (by a hash of the event id), clustered by a timeuuid
//!   the writing instance makes (time-ordered; strictly increasing within an instance), so a
//!   shard reads oldest first. Rows are written with a TTL of 7 days: an intent nobody relays
//!   or deletes (of an event type this build does not know) does not stay for ever.
//!
//! **Tombstones.** A queue table is all deletions: each relayed intent leaves a tombstone in its
//! shard's partition, and a read from the start of the partition walks over every tombstone not
//! yet purged, which compaction does only after the table's `gc_grace_seconds`. Two things keep
//! that small. The table's `gc_grace_seconds` is 3 hours instead of 10 days. And each instance
//! remembers per shard where the live intents start (the oldest it read, or
//! [`FLOOR_SLACK_MS`] ago if that is older, for intents written since with an earlier
//! position) and reads from there, so a steady relay walks over the tombstones of the last
//! minutes, not of the last days; a new instance reads each shard from its start once. The
//! short grace period's cost: a replica down for longer than 3 hours (the default hint window,
//! within which hinted handoff delivers the deletions) and not repaired before it rejoins may
//! bring a deleted intent back. Its event is then relayed again with the same event id (which
//! the consumers of the relay expect anyway), and the row goes with its TTL at the latest:
//! repeated, never lost.
//!
//! Limits: the instances' clocks must agree within about a minute (positions are the writer's
//! time, the read floor and the ages the reader's). A decisive write that failed, whose call
//! was given up, and that reaches a quorum only later through hinted handoff (a majority of
//! its replicas down at the time) can outlive its intent: its announcement is lost unless the
//! caller repeats the call.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, OnceLock,
    },
};

use async_trait::async_trait;
use futures::future::{join_all, try_join_all};
use orderflow_schemas::{
    now_millis, Event, OrderAccepted, OrderCancelled, OrderModified, OrderPaid, OrderShipped,
};
use scylla::{
    frame::types::Consistency,
    statement::prepared::PreparedStatement,
    value::{CqlTimeuuid, MaybeUnset},
};

use super::{from_json, order_from_rows, prepare, retry, to_json, OrderRow, ScyllaStore};
use crate::{
    cancellation_event, outbox as build, OrderRecord, OrderStore, OutboxEvent, OutboxStore,
    PaymentRecord, PaymentStore, Queued, Result, StoreError,
};

/// Partitions of the outbox.
const SHARDS: i32 = 8;
/// How long an intent lives at most (seconds): 7 days.
const TTL_SECS: i32 = 7 * 24 * 60 * 60;
/// A call makes its decisive write only while its intent is younger than this; it writes a
/// fresh one first otherwise.
const FRESH_MS: i64 = 30_000;
/// Other instances' intents are relayed once this old (their owner stopped, or is slow).
const TAKEOVER_MS: i64 = 30_000;
/// An intent whose change is not recorded this long after it was written belongs to a call
/// that failed before its change (see the module docs): it is deleted.
const ORPHAN_MS: i64 = 5 * 60_000;
/// Each shard is read from its oldest live intent, or from this long ago if that is older: an
/// intent is written (visible) at most [`FRESH_MS`] after its position before its change, and
/// the rest covers the instances' clocks disagreeing.
const FLOOR_SLACK_MS: i64 = 2 * 60_000;
/// Groups of intents confirmed at once (each reads its order, and its payment).
const CONFIRM_AT_ONCE: usize = 16;
/// Timeuuid ticks (100 ns) from the Gregorian calendar's start (1582-10-15) to the Unix epoch.
const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;

pub(super) struct Outbox {
    insert: PreparedStatement,
    delete: PreparedStatement,
    page: PreparedStatement,
    /// An order's partition as `order_get` reads it, serially: completes a lightweight
    /// transaction left half-way before an intent is given up.
    order_get_serial: PreparedStatement,
    /// This instance's id, written with its intents.
    owner: String,
    /// Per shard, the Unix time (ms) before which this instance knows of no live intent.
    floors: Mutex<[i64; SHARDS as usize]>,
}

impl Outbox {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let q = Consistency::LocalQuorum;
        Ok(Outbox {
            insert: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.outbox (shard, position, event_id, name, subject, owner, \
                     body) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
                ),
                q,
            )
            .await?,
            delete: prepare(
                session,
                format!("DELETE FROM {ks}.outbox WHERE shard = ? AND position = ?"),
                q,
            )
            .await?,
            page: prepare(
                session,
                format!(
                    "SELECT position, event_id, name, subject, owner, body FROM {ks}.outbox \
                     WHERE shard = ? AND position >= ? LIMIT ?"
                ),
                q,
            )
            .await?,
            order_get_serial: prepare(
                session,
                format!(
                    "SELECT {} FROM {ks}.orders WHERE order_id = ?",
                    super::ORDER_COLUMNS
                ),
                Consistency::LocalSerial,
            )
            .await?,
            owner: format!("{:016x}", random_u64()),
            floors: Mutex::new([i64::MIN; SHARDS as usize]),
        })
    }

    fn floors(&self) -> [i64; SHARDS as usize] {
        *self.floors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves each shard's floor up to where its live intents start, as read at `now`.
    fn advance(&self, pages: &[Vec<Row>], now: i64) {
        let mut floors = self.floors.lock().unwrap_or_else(|e| e.into_inner());
        for (floor, page) in floors.iter_mut().zip(pages) {
            *floor = (*floor).max(next_floor(page, now));
        }
    }
}

/// A shard's new floor after reading `page` (its intents from the old floor, oldest first) at
/// `now`: the oldest intent read, or [`FLOOR_SLACK_MS`] before `now` if that is older.
fn next_floor(page: &[Row], now: i64) -> i64 {
    let slack = now.saturating_sub(FLOOR_SLACK_MS);
    page.first()
        .map_or(slack, |row| millis_of(&row.slot.position).min(slack))
}

/// Random bits from OpenSSL's generator (the process id and time if it fails).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match openssl::rand::rand_bytes(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// Timeuuid ticks (100 ns since 1582-10-15) of a Unix time in ms (from the Unix epoch on).
fn ticks_at(ms: i64) -> u64 {
    (ms.max(0) as u64)
        .saturating_mul(10_000)
        .saturating_add(GREGORIAN_OFFSET)
}

/// The version-1 UUID with these ticks and low 64 bits (clock sequence and node; the variant
/// bits are set here).
fn timeuuid(ticks: u64, low: u64) -> CqlTimeuuid {
    let time_low = ticks & 0xffff_ffff;
    let time_mid = (ticks >> 32) & 0xffff;
    let time_high = (ticks >> 48) & 0x0fff;
    let high = (time_low << 32) | (time_mid << 16) | 0x1000 | time_high;
    let low = (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    CqlTimeuuid::from_u64_pair(high, low)
}

/// The Unix time (ms) of a timeuuid.
fn millis_of(position: &CqlTimeuuid) -> i64 {
    let (high, _) = position.as_u64_pair();
    let ticks = ((high & 0x0fff) << 48) | (((high >> 16) & 0xffff) << 32) | (high >> 32);
    i64::try_from(ticks.saturating_sub(GREGORIAN_OFFSET) / 10_000).unwrap_or(i64::MAX)
}

/// The least timeuuid of a millisecond in ScyllaDB's order (the low bytes compare as signed
/// bytes, and 0x80 is the least).
fn first_at(ms: i64) -> CqlTimeuuid {
    timeuuid(ticks_at(ms), 0x8080_8080_8080_8080)
}

/// A new position at `now` (ms): ticks strictly increasing within the process, the low bits
/// random per process, so positions of different processes never collide.
fn next_position(now: i64) -> CqlTimeuuid {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static NODE: OnceLock<u64> = OnceLock::new();
    let now = ticks_at(now);
    let ticks = match LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        Some(now.max(last + 1))
    }) {
        Ok(last) | Err(last) => now.max(last + 1),
    };
    timeuuid(ticks, *NODE.get_or_init(random_u64))
}

/// The shard of an event id: FNV-1a ([`orderflow_schemas::stable_digest`]), so every build
/// and platform agrees.
fn shard_of(event_id: &str) -> i32 {
    let digest = orderflow_schemas::stable_digest(event_id.as_bytes());
    let hash = u64::from_str_radix(&digest, 16).unwrap_or(0);
    (hash % SHARDS as u64) as i32
}

/// Where one intent is: its partition and clustering key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    shard: i32,
    position: CqlTimeuuid,
}

/// The [`Queued::position`] of the intents `slots`.
fn encode(slots: &[Slot]) -> String {
    slots
        .iter()
        .map(|slot| format!("{}:{}", slot.shard, slot.position))
        .collect::<Vec<_>>()
        .join(",")
}

/// The intents a [`Queued::position`] names.
fn decode(position: &str) -> Result<Vec<Slot>> {
    let invalid = || StoreError::Invalid(format!("not an outbox position: {position:?}"));
    position
        .split(',')
        .map(|part| {
            let (shard, uuid) = part.split_once(':').ok_or_else(invalid)?;
            let shard: i32 = shard.parse().map_err(|_| invalid())?;
            if !(0..SHARDS).contains(&shard) {
                return Err(invalid());
            }
            let position: CqlTimeuuid = uuid.parse().map_err(|_| invalid())?;
            Ok(Slot { shard, position })
        })
        .collect()
}

/// `position, event_id, name, subject, owner, body`.
type RowTuple = (
    CqlTimeuuid,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// One intent as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    slot: Slot,
    event_id: String,
    /// The event's type, [`Event::NAME`].
    name: String,
    /// The record whose state confirms the event: the order's id, or the verification email's
    /// event id.
    subject: String,
    owner: String,
    /// The event itself ([`OutboxEvent`] JSON), for an event confirmed by a verification email.
    body: Option<String>,
}

impl Row {
    fn of(shard: i32, (position, event_id, name, subject, owner, body): RowTuple) -> Self {
        Row {
            slot: Slot { shard, position },
            event_id: event_id.unwrap_or_default(),
            name: name.unwrap_or_default(),
            subject: subject.unwrap_or_default(),
            owner: owner.unwrap_or_default(),
            body,
        }
    }

    fn age(&self, now: i64) -> i64 {
        now.saturating_sub(millis_of(&self.slot.position))
    }
}

/// The intents to look at, oldest first, one group per event id (in the order of each group's
/// oldest intent), those kept whole apart from the others: an `OrderCancelled` announced
/// again with the refund of a transfer is an event of its own. Each shard's page holds its oldest intents, at most `page`; when a page is
/// full the shard may have more beyond it, so only intents up to the end of the earliest full
/// page are taken: everything older than that has been read from every shard.
fn groups(pages: Vec<Vec<Row>>, page: usize) -> Vec<Vec<Row>> {
    let cutoff = pages
        .iter()
        .filter(|rows| rows.len() >= page)
        .filter_map(|rows| rows.last().map(|row| row.slot.position))
        .min();
    let mut rows: Vec<Row> = pages
        .into_iter()
        .flatten()
        .filter(|row| cutoff.is_none_or(|cutoff| row.slot.position <= cutoff))
        .collect();
    rows.sort_by_key(|row| (row.slot.position, row.slot.shard));
    let mut index: HashMap<(String, bool), usize> = HashMap::new();
    let mut groups: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let key = (row.event_id.clone(), row.body.is_some());
        match index.get(&key) {
            Some(&i) => groups[i].push(row),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![row]);
            }
        }
    }
    groups
}

/// Whether this instance (`owner`) relays the group now: one of its intents is its own, or
/// old enough to be taken over.
fn ours(group: &[Row], owner: &str, now: i64) -> bool {
    group
        .iter()
        .any(|row| row.owner == owner || row.age(now) >= TAKEOVER_MS)
}

/// What the recorded state says of an intent.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The change is recorded: its event.
    Relay(OutboxEvent),
    /// The change is recorded, but a later one supersedes its event.
    Stale,
    /// The change is not recorded (yet).
    Unrecorded,
    /// An event type this build does not know: left to the instance that wrote it.
    Unknown,
}

fn relay<E: Event>(event: &E) -> Result<Verdict> {
    OutboxEvent::of(event).map(Verdict::Relay)
}

/// The order events an intent may announce.
const ORDER_EVENTS: [&str; 5] = [
    OrderAccepted::NAME,
    OrderCancelled::NAME,
    OrderShipped::NAME,
    OrderModified::NAME,
    OrderPaid::NAME,
];

/// What the order as recorded (`None`: there is none) and its payment say of the intent `row`
/// of an order event.
fn order_verdict(
    row: &Row,
    order: Option<&OrderRecord>,
    payment: Option<&PaymentRecord>,
) -> Result<Verdict> {
    let name = row.name.as_str();
    if !ORDER_EVENTS.contains(&name) {
        return Ok(Verdict::Unknown);
    }
    let Some(order) = order else {
        return Ok(Verdict::Unrecorded);
    };
    if name == OrderAccepted::NAME {
        // The order is its own change.
        return relay(&build::accepted(order));
    }
    let Some(entry) = order.timeline.iter().find(|t| t.event_id == row.event_id) else {
        return Ok(Verdict::Unrecorded);
    };
    let whole = row
        .body
        .as_deref()
        .map(|body| from_json::<OutboxEvent>("outbox event", body))
        .transpose()?;
    if name == OrderCancelled::NAME {
        // Kept whole: announced again by a transfer, with its refund.
        if let Some(event) = whole {
            return Ok(Verdict::Relay(event));
        }
        let refund = payment
            .filter(|p| p.approved)
            .map(|p| (p.amount_cents, p.currency.clone()));
        return relay(&cancellation_event(order, refund));
    }
    if name == OrderShipped::NAME {
        return relay(&build::shipped(order));
    }
    if name == OrderModified::NAME {
        if OrderModified::event_id_for(&order.order_id, order.revision) == row.event_id {
            return relay(&build::modified(order));
        }
        // A later revision: the order no longer has this one's items, the intent does (when
        // it is the call that recorded the revision: the same time).
        return Ok(match whole {
            Some(event) if event.occurred_at == entry.at => Verdict::Relay(event),
            _ => Verdict::Stale,
        });
    }
    // OrderPaid, of the payment recorded (a bank transfer, recorded before the intent).
    match payment.and_then(|payment| build::paid(order, payment)) {
        Some(paid) => relay(&paid),
        None => Ok(Verdict::Unrecorded),
    }
}

/// The outbox intent of one call that may announce a change (see the module docs): written
/// before the call's first decisive write, written again when it has grown old, deleted when
/// the call changed nothing.
pub(super) struct Announce<'a> {
    store: &'a ScyllaStore,
    name: String,
    event_id: String,
    subject: String,
    body: Option<String>,
    /// The intents written, the last one current, with their time (ms).
    written: Mutex<Vec<(Slot, i64)>>,
    /// Whether this call made the change.
    applied: AtomicBool,
    /// Whether a decisive write failed: it may have been made, so the intents stay.
    unsure: AtomicBool,
}

impl ScyllaStore {
    /// The intent of a call that may make the change `E` with id `event_id` announces, on the
    /// order `order_id`.
    pub(super) fn announce<E: Event>(&self, event_id: String, order_id: &str) -> Announce<'_> {
        Announce {
            store: self,
            name: E::NAME.to_string(),
            event_id,
            subject: order_id.to_string(),
            body: None,
            written: Mutex::new(Vec::new()),
            applied: AtomicBool::new(false),
            unsure: AtomicBool::new(false),
        }
    }

    /// The intent of `event`, kept whole, confirmed by the record `subject` names: the order
    /// of an order event, the verification email (by event id) of any other.
    pub(super) fn announce_whole(
        &self,
        event: &OutboxEvent,
        subject: &str,
    ) -> Result<Announce<'_>> {
        Ok(Announce {
            store: self,
            name: event.name.clone(),
            event_id: event.event_id.clone(),
            subject: subject.to_string(),
            body: Some(to_json(event)?),
            written: Mutex::new(Vec::new()),
            applied: AtomicBool::new(false),
            unsure: AtomicBool::new(false),
        })
    }
}

impl Announce<'_> {
    /// Makes sure an intent younger than [`FRESH_MS`] is written.
    pub(super) async fn intend(&self) -> Result<()> {
        let current = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied();
        if current.is_some_and(|(_, at)| now_millis().saturating_sub(at) < FRESH_MS) {
            return Ok(());
        }
        let position = next_position(now_millis());
        let slot = Slot {
            shard: shard_of(&self.event_id),
            position,
        };
        let outbox = &self.store.outbox;
        self.store
            .run(
                &outbox.insert,
                (
                    slot.shard,
                    slot.position,
                    self.event_id.as_str(),
                    self.name.as_str(),
                    self.subject.as_str(),
                    outbox.owner.as_str(),
                    // Unset rather than null: a null would write a tombstone for the cell.
                    self.body
                        .as_deref()
                        .map_or(MaybeUnset::Unset, MaybeUnset::Set),
                    TTL_SECS,
                ),
            )
            .await?;
        let at = millis_of(&position);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((slot, at));
        if now_millis().saturating_sub(at) >= FRESH_MS {
            return Err(StoreError::Unavailable(format!(
                "writing the outbox intent of {} took too long",
                self.event_id
            )));
        }
        Ok(())
    }

    /// Runs the call's decisive write `change` once a fresh intent is written.
    pub(super) async fn decide<T>(&self, change: impl Future<Output = Result<T>>) -> Result<T> {
        self.intend().await?;
        let outcome = change.await;
        if outcome.is_err() {
            self.unsure.store(true, Ordering::Relaxed);
        }
        outcome
    }

    /// This call made the change.
    pub(super) fn applied(&self) {
        self.applied.store(true, Ordering::Relaxed);
    }

    /// The call is over: deletes its intents when it changed nothing (and no decisive write of
    /// it may have been made). A failure is logged: the intent then goes as unconfirmed, or is
    /// relayed as a repeat of the event with its id.
    pub(super) async fn settle(&self) {
        if self.applied.load(Ordering::Relaxed) || self.unsure.load(Ordering::Relaxed) {
            return;
        }
        let slots: Vec<Slot> = self
            .written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(slot, _)| *slot)
            .collect();
        self.store.forget_intents(&slots).await;
    }
}

impl ScyllaStore {
    async fn read_shard(&self, shard: i32, floor: i64, page: usize) -> Result<Vec<Row>> {
        let limit = i32::try_from(page).unwrap_or(i32::MAX);
        let rows: Vec<RowTuple> = self
            .rows(&self.outbox.page, (shard, first_at(floor), limit))
            .await?;
        Ok(rows.into_iter().map(|row| Row::of(shard, row)).collect())
    }

    async fn delete_intent(&self, slot: Slot) -> Result<()> {
        retry("outbox_relayed", || async {
            self.run(&self.outbox.delete, (slot.shard, slot.position))
                .await
                .map(|_| ())
        })
        .await
    }

    /// Deletes intents as bookkeeping: a failure is logged.
    async fn forget_intents(&self, slots: &[Slot]) {
        let results = join_all(slots.iter().map(|slot| self.delete_intent(*slot))).await;
        for result in results {
            if let Err(e) = result {
                tracing::warn!(error = %e, "Could not delete an outbox intent.");
            }
        }
    }

    async fn get_order_serial(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        let rows: Vec<OrderRow> = self
            .rows(&self.outbox.order_get_serial, (order_id,))
            .await?;
        order_from_rows(order_id, rows)
    }

    /// Whether the change of the intent `row` is recorded, and its event built from it.
    async fn verdict(&self, row: &Row, serial: bool) -> Result<Verdict> {
        if let (false, Some(body)) = (ORDER_EVENTS.contains(&row.name.as_str()), &row.body) {
            // The verification event: its email's record is written after it. Whether the code
            // has expired is the bridge's business, as for an event queued by the embedded
            // store; the record's TTL ends with it.
            let email = self
                .get_verification_email_impl(&row.subject, i64::MIN)
                .await?;
            return Ok(match email {
                Some(_) => Verdict::Relay(from_json("outbox event", body)?),
                None => Verdict::Unrecorded,
            });
        }
        if !ORDER_EVENTS.contains(&row.name.as_str()) {
            return Ok(Verdict::Unknown);
        }
        let order_id = row.subject.as_str();
        let order = if serial {
            self.get_order_serial(order_id).await?
        } else {
            self.get_order(order_id).await?
        };
        // The payment, for the events that carry it (read only when the change is recorded).
        let payment = match &order {
            Some(order)
                if [OrderCancelled::NAME, OrderPaid::NAME].contains(&row.name.as_str())
                    && order.timeline.iter().any(|t| t.event_id == row.event_id) =>
            {
                self.get_payment(order_id).await?
            }
            _ => None,
        };
        order_verdict(row, order.as_ref(), payment.as_ref())
    }

    /// The event of a group of intents with one event id, if its change is recorded; deletes
    /// the intents that are stale or were given up.
    async fn judge(&self, group: &[Row], now: i64) -> Result<Option<OutboxEvent>> {
        let first = &group[0];
        match self.verdict(first, false).await? {
            Verdict::Relay(event) => return Ok(Some(event)),
            Verdict::Unknown => return Ok(None),
            Verdict::Stale => {
                let slots: Vec<Slot> = group.iter().map(|row| row.slot).collect();
                self.forget_intents(&slots).await;
                return Ok(None);
            }
            Verdict::Unrecorded => {}
        }
        let given_up: Vec<Slot> = group
            .iter()
            .filter(|row| row.age(now) >= ORPHAN_MS)
            .map(|row| row.slot)
            .collect();
        if given_up.is_empty() {
            return Ok(None);
        }
        match self.verdict(first, true).await? {
            Verdict::Relay(event) => Ok(Some(event)),
            Verdict::Stale => {
                let slots: Vec<Slot> = group.iter().map(|row| row.slot).collect();
                self.forget_intents(&slots).await;
                Ok(None)
            }
            Verdict::Unrecorded => {
                tracing::info!(
                    event_id = first.event_id,
                    "Deleted an outbox intent whose change was never made."
                );
                self.forget_intents(&given_up).await;
                Ok(None)
            }
            Verdict::Unknown => Ok(None),
        }
    }
}

#[async_trait]
impl OutboxStore for ScyllaStore {
    async fn outbox(&self, limit: usize) -> Result<Vec<Queued>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_millis();
        // Room for intents passed over (under way, another instance's); the rest is read next
        // time.
        let page = limit.saturating_mul(2).clamp(64, 2_000);
        let floors = self.outbox.floors();
        let pages = try_join_all(
            (0..SHARDS).map(|shard| self.read_shard(shard, floors[shard as usize], page)),
        )
        .await?;
        self.outbox.advance(&pages, now);
        let candidates: Vec<Vec<Row>> = groups(pages, page)
            .into_iter()
            .filter(|group| ours(group, &self.outbox.owner, now))
            .collect();
        let mut out = Vec::with_capacity(limit.min(candidates.len()));
        for chunk in candidates.chunks(CONFIRM_AT_ONCE) {
            let events = try_join_all(chunk.iter().map(|group| self.judge(group, now))).await?;
            for (group, event) in chunk.iter().zip(events) {
                let Some(event) = event else { continue };
                let slots: Vec<Slot> = group.iter().map(|row| row.slot).collect();
                out.push(Queued {
                    position: encode(&slots),
                    event,
                });
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    async fn outbox_relayed(&self, positions: &[String]) -> Result<()> {
        let mut slots = Vec::new();
        for position in positions {
            slots.extend(decode(position)?);
        }
        try_join_all(slots.into_iter().map(|slot| self.delete_intent(slot))).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use orderflow_schemas::OrderStatus;

    use super::*;

    fn row(shard: i32, ms: i64, event_id: &str, owner: &str) -> Row {
        Row {
            slot: Slot {
                shard,
                position: timeuuid(ticks_at(ms), 0x1234_5678_9abc_def0),
            },
            event_id: event_id.into(),
            name: OrderAccepted::NAME.into(),
            subject: "o".into(),
            owner: owner.into(),
            body: None,
        }
    }

    #[test]
    fn positions_are_version_1_and_carry_their_time() {
        let ms = 1_750_000_000_123;
        for low in [0, u64::MAX, 0x1234_5678_9abc_def0] {
            let position = timeuuid(ticks_at(ms) + 9_999, low);
            let (high, low) = position.as_u64_pair();
            assert_eq!((high >> 12) & 0xf, 1, "version 1: {position}");
            assert_eq!(low >> 62, 0b10, "RFC 4122 variant: {position}");
            assert_eq!(millis_of(&position), ms);
        }
        assert_eq!(millis_of(&first_at(ms)), ms);
        assert_eq!(millis_of(&first_at(i64::MIN)), 0);
        // Another test may have moved the process's clock ahead of `ms`: never behind it.
        let position = next_position(ms);
        assert_eq!((position.as_u64_pair().0 >> 12) & 0xf, 1);
        assert!(millis_of(&position) >= ms);
    }

    #[test]
    fn positions_increase_within_the_process_and_follow_time() {
        let ms = 1_750_000_000_000;
        let a = next_position(ms);
        let b = next_position(ms);
        let c = next_position(ms - 5);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(first_at(ms) <= a);
        // Time first, whatever the low bits; the read's lower bound is below any position of
        // its millisecond.
        for low in [0, u64::MAX, 0x8000_0000_0000_0000, 0x7f7f_7f7f_7f7f_7f7f] {
            let at = timeuuid(ticks_at(ms), low);
            assert!(first_at(ms) <= at, "{low:x}");
            assert!(at < timeuuid(ticks_at(ms + 1), 0), "{low:x}");
            assert!(at < first_at(ms + 1), "{low:x}");
        }
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("o:accepted"), shard_of("o:accepted"));
        let shards: std::collections::HashSet<i32> = (0..200)
            .map(|i| shard_of(&format!("order-{i}:paid")))
            .collect();
        assert!(shards.iter().all(|s| (0..SHARDS).contains(s)));
        assert_eq!(shards.len(), SHARDS as usize, "every shard is used");
    }

    #[test]
    fn positions_round_trip_and_bad_ones_are_refused() {
        let slots = vec![
            Slot {
                shard: 3,
                position: next_position(1_000),
            },
            Slot {
                shard: 7,
                position: next_position(2_000),
            },
        ];
        let encoded = encode(&slots);
        assert_eq!(encoded.matches(',').count(), 1, "{encoded}");
        assert_eq!(decode(&encoded).unwrap(), slots);
        let one = encode(&slots[..1]);
        assert_eq!(decode(&one).unwrap(), slots[..1]);
        for bad in [
            "",
            "3",
            "x:1",
            "8:00000000-0000-1000-8000-000000000000",
            "-1:00000000-0000-1000-8000-000000000000",
            "0:not-a-uuid",
            "00000000000000000042",
        ] {
            assert!(
                matches!(decode(bad), Err(StoreError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn intents_group_by_event_id_oldest_first() {
        let pages = vec![
            vec![row(0, 10, "a", "me"), row(0, 40, "c", "me")],
            vec![row(1, 20, "b", "me"), row(1, 30, "a", "other")],
        ];
        let groups = groups(pages, 64);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.event_id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["a", "a"], vec!["b"], vec!["c"]]);
        assert_eq!(groups[0][1].owner, "other");
    }

    #[test]
    fn a_full_page_cuts_off_what_other_shards_have_beyond_it() {
        // Shard 0 returned a full page of 2 ending at 20: it may hold more from 20 on, so
        // shard 1's intent at 30 is not yet the next oldest.
        let pages = vec![
            vec![row(0, 10, "a", "me"), row(0, 20, "b", "me")],
            vec![row(1, 15, "x", "me"), row(1, 30, "y", "me")],
            vec![],
        ];
        let ids: Vec<String> = groups(pages, 2)
            .into_iter()
            .map(|g| g[0].event_id.clone())
            .collect();
        assert_eq!(ids, ["a", "x", "b"]);
    }

    #[test]
    fn other_owners_intents_wait_for_the_takeover() {
        let now = 1_000_000;
        let young = row(0, now - 1_000, "a", "other");
        let old = row(0, now - TAKEOVER_MS, "a", "other");
        let mine = row(0, now, "a", "me");
        assert!(!ours(std::slice::from_ref(&young), "me", now));
        assert!(ours(&[young.clone(), old], "me", now));
        assert!(ours(&[young, mine], "me", now));
    }

    #[test]
    fn floors_trail_the_oldest_intent_and_the_slack() {
        let now = 10_000_000;
        assert_eq!(next_floor(&[], now), now - FLOOR_SLACK_MS);
        let old = row(0, now - 3 * FLOOR_SLACK_MS, "a", "me");
        assert_eq!(next_floor(&[old], now), now - 3 * FLOOR_SLACK_MS);
        let young = row(0, now - 1_000, "a", "me");
        assert_eq!(next_floor(&[young], now), now - FLOOR_SLACK_MS);
    }

    fn recorded(order_id: &str) -> OrderRecord {
        let entry = |status: OrderStatus, event_id: String, at, detail: Option<&str>| {
            crate::TimelineEntry {
                status,
                event_id,
                at,
                detail: detail.map(str::to_string),
            }
        };
        OrderRecord {
            order_id: order_id.into(),
            customer_id: "c1".into(),
            status: OrderStatus::Cancelled,
            items: vec![orderflow_schemas::OrderItem {
                sku: "A".into(),
                quantity: 3,
            }],
            shipping_address: None,
            payment_method: Some("bank_transfer".into()),
            pricing: Some(crate::Pricing {
                lines: Vec::new(),
                currency: "EUR".into(),
                subtotal_cents: 1_000,
                tax_cents: 200,
                total_cents: 1_200,
            }),
            invoice_number: None,
            created_at: 100,
            updated_at: 500,
            timeline: vec![
                entry(
                    OrderStatus::Accepted,
                    OrderStatus::Accepted.event_id(order_id),
                    100,
                    None,
                ),
                entry(
                    OrderStatus::Validated,
                    OrderModified::event_id_for(order_id, 1),
                    200,
                    Some("revision 1"),
                ),
                entry(
                    OrderStatus::Paid,
                    OrderStatus::Paid.event_id(order_id),
                    300,
                    Some("ref-1"),
                ),
                entry(
                    OrderStatus::Cancelled,
                    OrderStatus::Cancelled.event_id(order_id),
                    400,
                    Some("changed my mind"),
                ),
            ],
            revision: 1,
            payment_claim: Some(1),
        }
    }

    fn intent<E: Event>(event_id: String) -> Row {
        Row {
            name: E::NAME.into(),
            event_id,
            subject: "o".into(),
            ..row(0, 1, "", "me")
        }
    }

    #[test]
    fn order_events_are_built_from_the_recorded_state() {
        let order = recorded("o");
        let payment = PaymentRecord {
            order_id: "o".into(),
            amount_cents: 1_200,
            currency: "EUR".into(),
            approved: true,
            payment_id: Some("ref-1".into()),
            reason: None,
            at: 300,
        };
        let verdict = |row: &Row, payment: Option<&PaymentRecord>| {
            order_verdict(row, Some(&order), payment).unwrap()
        };
        let relayed = |event| Verdict::Relay(event);

        let accepted = intent::<OrderAccepted>(OrderStatus::Accepted.event_id("o"));
        assert_eq!(
            verdict(&accepted, None),
            relayed(OutboxEvent::of(&build::accepted(&order)).unwrap())
        );
        assert_eq!(
            order_verdict(&accepted, None, None).unwrap(),
            Verdict::Unrecorded,
            "no order: its call failed or is under way"
        );

        let cancelled = intent::<OrderCancelled>(OrderStatus::Cancelled.event_id("o"));
        let Verdict::Relay(event) = verdict(&cancelled, Some(&payment)) else {
            panic!("the cancel is recorded");
        };
        let event: OrderCancelled = event.decode().unwrap();
        assert_eq!(
            (
                event.reason.as_deref(),
                event.occurred_at,
                event.paid,
                event.refund_cents
            ),
            (Some("changed my mind"), 400, true, 1_200)
        );
        let declined = PaymentRecord {
            approved: false,
            ..payment.clone()
        };
        let Verdict::Relay(event) = verdict(&cancelled, Some(&declined)) else {
            panic!("the cancel is recorded");
        };
        assert!(!event.decode::<OrderCancelled>().unwrap().paid);

        let paid = intent::<OrderPaid>(OrderStatus::Paid.event_id("o"));
        assert_eq!(
            verdict(&paid, Some(&payment)),
            relayed(OutboxEvent::of(&build::paid(&order, &payment).unwrap()).unwrap())
        );
        assert_eq!(verdict(&paid, None), Verdict::Unrecorded, "no payment");

        let shipped = intent::<OrderShipped>(OrderStatus::Shipped.event_id("o"));
        assert_eq!(verdict(&shipped, None), Verdict::Unrecorded, "not shipped");
    }

    #[test]
    fn a_modification_is_announced_only_at_the_order_s_revision() {
        let mut order = recorded("o");
        let r1 = intent::<OrderModified>(OrderModified::event_id_for("o", 1));
        let r2 = intent::<OrderModified>(OrderModified::event_id_for("o", 2));
        assert_eq!(
            order_verdict(&r1, Some(&order), None).unwrap(),
            Verdict::Relay(OutboxEvent::of(&build::modified(&order)).unwrap())
        );
        assert_eq!(
            order_verdict(&r2, Some(&order), None).unwrap(),
            Verdict::Unrecorded,
            "its fence is not recorded"
        );
        order.revision = 2;
        order.timeline.push(crate::TimelineEntry {
            status: OrderStatus::Validated,
            event_id: OrderModified::event_id_for("o", 2),
            at: 250,
            detail: None,
        });
        assert_eq!(
            order_verdict(&r1, Some(&order), None).unwrap(),
            Verdict::Stale,
            "revision 2 supersedes it, and the intent does not hold revision 1's items"
        );
        // Kept whole by the call that recorded revision 1 (its time): relayed as it was.
        let whole = |occurred_at| {
            OutboxEvent::of(&OrderModified {
                event_id: OrderModified::event_id_for("o", 1),
                order_id: "o".into(),
                customer_id: "c1".into(),
                revision: 1,
                items: Vec::new(),
                occurred_at,
            })
            .unwrap()
        };
        let kept = Row {
            body: Some(to_json(&whole(200)).unwrap()),
            ..r1.clone()
        };
        assert_eq!(
            order_verdict(&kept, Some(&order), None).unwrap(),
            Verdict::Relay(whole(200))
        );
        let other_call = Row {
            body: Some(to_json(&whole(199)).unwrap()),
            ..r1
        };
        assert_eq!(
            order_verdict(&other_call, Some(&order), None).unwrap(),
            Verdict::Stale,
            "a racing call's intent, whose fence lost"
        );
    }

    #[test]
    fn a_cancellation_announced_again_is_an_entry_of_its_own() {
        let order = recorded("o");
        let again =
            OutboxEvent::of(&cancellation_event(&order, Some((1_200, "EUR".into())))).unwrap();
        let whole = Row {
            body: Some(to_json(&again).unwrap()),
            ..intent::<OrderCancelled>(OrderStatus::Cancelled.event_id("o"))
        };
        assert_eq!(
            order_verdict(&whole, Some(&order), None).unwrap(),
            Verdict::Relay(again)
        );
        let first = Row {
            slot: Slot {
                shard: 1,
                position: timeuuid(ticks_at(5), 0),
            },
            ..intent::<OrderCancelled>(OrderStatus::Cancelled.event_id("o"))
        };
        let racing = Row {
            slot: Slot {
                shard: 1,
                position: timeuuid(ticks_at(6), 0),
            },
            ..first.clone()
        };
        let later = Row {
            slot: Slot {
                shard: 2,
                position: timeuuid(ticks_at(9), 0),
            },
            ..whole
        };
        let grouped = groups(vec![vec![first, racing], vec![later]], 64);
        let sizes: Vec<(usize, bool)> = grouped
            .iter()
            .map(|g| (g.len(), g[0].body.is_some()))
            .collect();
        assert_eq!(sizes, [(2, false), (1, true)]);
    }

    #[test]
    fn unknown_event_types_are_left_alone() {
        let row = Row {
            name: "io.orderflow.events.SomethingNew".into(),
            ..row(0, 1, "o:new", "me")
        };
        assert_eq!(
            order_verdict(&row, Some(&recorded("o")), None).unwrap(),
            Verdict::Unknown
        );
    }
}
