//! [`OrderStore`] on ScyllaDB: orders, their final step (cancel, ship), modifications and
//! payment claims, and the orders awaiting a bank transfer.
//!
//! # Cancel and ship
//! Migration: `store/migrations/scylla/0005_order_lifecycle.cql`.
//!
//! The final step of an order is the static column `orders.lifecycle`, set by one conditional
//! batch on the order's partition: `UPDATE … SET lifecycle = ? IF lifecycle = null` together
//! with the step's timeline row. Of a racing cancel and ship exactly one applies; the loser
//! reads the winner from the LWT's answer. The timeline row is written by the same Paxos round,
//! so a read of the order (its status is the timeline's furthest step) sees the final step as
//! soon as the call returns. A cancel then releases the order's stock with the idempotent
//! [`CatalogueStore::release`]; a repeated cancel (after a crash between the two) releases again, which
//! gives back whatever is still held and nothing twice.
//!
//! The call that sets the final step announces it: its outbox intent is written before the
//! conditional batch and deleted when the batch finds a final step already ([`super::outbox`]).
//!
//! # Modifications and payment claims
//! Migration: `store/migrations/scylla/0006_order_revisions.cql`.
//!
//! The redb store changes the order, its reservation and the stock in one transaction. Here
//! they live apart (the order's partition, its `reservations` row, one row per product), so a
//! modification runs in steps, under the order's reservation lease (the one reservations and
//! releases take, so no release or second modification of the order runs meanwhile):
//!
//! 1. **Stock first.** Each changed SKU's units move by compare-and-set on the product (as a
//!    reservation moves them), recording the SKU's delta in `holds["<order>@r<revision>"]`, a
//!    key of the new revision: an attempt whose answer was lost is seen, never applied twice.
//!    A SKU short of units (a discontinued product gives back but takes nothing) stops the
//!    modification and what moved is moved back: all or nothing.
//! 2. **The fence**, the commit point: one conditional batch on the order's partition,
//!    `UPDATE … SET revision = n, items = …, pricing = null IF revision = n-1 AND payment_claim
//!    = null AND lifecycle = null` with the timeline row `<order>:modified:r<n>`. A claim (`IF
//!    lifecycle = null AND revision = …`), a cancel or a ship (`IF lifecycle = null`) are
//!    conditional writes on the same partition, so Paxos orders them: of a racing modification
//!    and claim exactly one applies. A refused fence moves the stock back and answers
//!    `NotModifiable`.
//!    The fence is announced: an outbox intent for the revision's `OrderModified` is written
//!    before it and deleted when it is refused ([`super::outbox`]).
//! 3. The reservation row records the new lines and revision (`IF owner = me`, giving up the
//!    lease), then the holds of the revision are dropped.
//!
//! Stock never moves twice and is never lost, whatever step a crash stops after: the next
//! holder of the lease (a retried or later modification, a release, a cancel or a ship, once
//! the 30 s lease ran out) first [`reconciles`](ScyllaStore::reconcile) the reservation with
//! the order, read serially:
//! - **crash before the fence**: the order is still at the reservation's revision, so what is
//!   held under the next revision's key moved for nothing and is moved back;
//! - **crash between the fence and step 3**: the order is one revision ahead and the stock
//!   matches it; the reservation's lines are planned again from the order's items (no stock
//!   moves) and recorded with the next decision. Until then [`CatalogueStore::reserve`] answers the old
//!   reservation (the API publishes `orders.modified` only once `modify_order` answered, and
//!   its retry with the same quantities finishes the swap and answers `Modified`);
//! - **crash after step 3, before the holds are dropped**: stale `holds` entries, which move no
//!   stock (as for reservations).
//!
//! Limits: as for reservations, a lease owner stalled past its lease could race the next owner
//! (it checks the lease before each step, not atomically with it). Reconciling costs a release,
//! cancel or ship one serial read of the order and one more read of each of its products. A
//! validation step that prices an earlier revision reads the order's revision before it writes
//! the pricing (not atomically): one racing the fence itself can leave its pricing on the new
//! revision until that revision's own validation re-prices it.
//!
//! Revision 0 is stored as null (the rows written before 0006 have no revision), and the
//! conditions on revision 0 are separate statements with a literal `= null`: a bound null in
//! an `IF` condition is not guaranteed to compare as the literal does.
//!
//! # Orders awaiting a bank transfer
//! Migration: `store/migrations/scylla/0008_unpaid_orders.cql`.
//!
//! An order paid by bank transfer gets a row in `unpaid_orders` (by time placed, one partition)
//! and in `unpaid_orders_by_customer` in the batch that writes it. The rows go when its payment
//! is claimed, it is cancelled, or its expiry is announced ([`OrderStore::forget_unpaid_order`]);
//! those deletions follow the decisive write, so a crash between the two leaves a row behind,
//! which the next sweep meets and forgets (the order no longer awaits a transfer).
//!
//! The expiry is the cancel's conditional batch with one more condition: `IF lifecycle = null
//! AND payment_claim = null`. A claim is `IF lifecycle = null AND … payment_claim = null` on the
//! same partition, so Paxos orders the two and exactly one applies.
//!
//! The per-customer cap reads the customer's rows and their orders before the order is written:
//! calls of one customer racing each other may each see a free place, so the cap can be passed
//! by as many orders as were placed at the same moment. It bounds hoarding; it is not a
//! transaction (the embedded store's is).

use std::time::Duration;

use futures::future::try_join_all;
use orderflow_schemas::{
    OrderAccepted, OrderCancelled, OrderItem, OrderModified, OrderPaid, OrderShipped, OrderStatus,
};
use scylla::{
    frame::types::Consistency,
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
        SerialConsistency,
    },
    value::CqlValue,
};

use super::outbox::Announce;
use super::*;
use crate::{
    awaits_transfer, CancelOutcome, CatalogueStore, CreateOrder, ExpireOutcome, LinePrice,
    ModificationPlan, ModifyOutcome, OrderChange, OrderRecord, OrderStore, OutboxEvent,
    PaymentClaim, PaymentStore, Reservation, ReservedLine, Result, ShipOutcome, StatusUpdate,
    StoreError, MAX_ORDER_REVISIONS,
};

#[async_trait]
impl OrderStore for ScyllaStore {
    async fn create_order(
        &self,
        order: OrderRecord,
        idempotency: Option<IdempotencyKey>,
        payment_token: Option<PaymentToken>,
        max_unpaid: Option<u32>,
    ) -> Result<CreateOrder> {
        let announce = self.announce::<OrderAccepted>(
            OrderStatus::Accepted.event_id(&order.order_id),
            &order.order_id,
        );
        let outcome = retry("create_order", || {
            self.create_order_once(&order, idempotency.as_ref(), max_unpaid, &announce)
        })
        .await?;
        // A repeat, a refusal or a lost race: nothing to announce.
        announce.settle().await;
        // The token goes on the order's partition right after the order: a crash in between
        // leaves an order without one, which the payment stage declines as expired (the
        // customer orders again); never a token without its order.
        if let (CreateOrder::Created, Some(token)) = (&outcome, &payment_token) {
            retry("put_payment_token", || {
                self.put_payment_token_impl(&order.order_id, token, order.created_at)
            })
            .await?;
        }
        Ok(outcome)
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        let rows: Vec<OrderRow> = self.rows(&self.q.order_get, (order_id,)).await?;
        order_from_rows(order_id, rows)
    }

    async fn list_customer_orders(
        &self,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let last_bucket = match before {
            None => i32::MAX,
            Some(before) => match uuid_v7_millis(before) {
                Some(ms) => bucket_at(ms),
                None => match self.get_order(before).await? {
                    Some(o) => bucket_of(&o.order_id, o.created_at),
                    None => i32::MAX,
                },
            },
        };
        let buckets: Vec<(i32,)> = self
            .rows(&self.q.customer_buckets, (customer_id, last_bucket))
            .await?;
        let mut ids: Vec<String> = Vec::with_capacity(limit);
        let mut seen = std::collections::HashSet::new();
        for (bucket,) in buckets {
            let want = i32::try_from(limit - ids.len()).unwrap_or(i32::MAX);
            let page: Vec<(String,)> = match before {
                Some(before) if bucket == last_bucket => {
                    self.rows(
                        &self.q.customer_page_before,
                        (customer_id, bucket, before, want),
                    )
                    .await?
                }
                _ => {
                    self.rows(&self.q.customer_page, (customer_id, bucket, want))
                        .await?
                }
            };
            // An order whose id is not a UUIDv7 may sit in two buckets (indexed by event time).
            ids.extend(
                page.into_iter()
                    .map(|(id,)| id)
                    .filter(|id| seen.insert(id.clone())),
            );
            if ids.len() >= limit {
                break;
            }
        }
        let orders = try_join_all(ids.iter().map(|id| self.get_order(id))).await?;
        Ok(orders.into_iter().flatten().collect())
    }

    async fn list_orders(
        &self,
        filter: &OrderFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Pages of ids are read at least this large, so that a selective filter does not cost
        // one round trip per order.
        let page_size = i32::try_from(limit.max(50)).unwrap_or(i32::MAX);
        let mut out: Vec<OrderRecord> = Vec::with_capacity(limit);
        let mut seen = std::collections::HashSet::new();

        // One customer: its own (30-day) index, read page by page.
        if let Some(customer_id) = &filter.customer_id {
            let mut cursor = before.map(str::to_string);
            loop {
                let page = self
                    .list_customer_orders(customer_id, cursor.as_deref(), page_size as usize)
                    .await?;
                let Some(last) = page.last() else { break };
                cursor = Some(last.order_id.clone());
                let full = page.len() == page_size as usize;
                for order in page {
                    if filter.matches(&order) && seen.insert(order.order_id.clone()) {
                        out.push(order);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                if !full {
                    break;
                }
            }
            return Ok(out);
        }

        // Everyone: day partitions, newest first, within the filter's time range (a day of
        // margin either side: the day is the id's time, the filter is on `created_at`).
        let before_day = before.map(|b| day_of(b, i64::MAX));
        let newest = [before_day, filter.to.map(|to| day_at(to).saturating_add(1))]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(i32::MAX);
        let oldest = filter
            .from
            .map_or(i32::MIN, |from| day_at(from).saturating_sub(1));
        let days: Vec<(i32,)> = self.rows(&self.q.days, (newest, oldest)).await?;
        for (day,) in days {
            let mut cursor: Option<String> = match before {
                Some(before) if Some(day) == before_day => Some(before.to_string()),
                _ => None,
            };
            loop {
                let page: Vec<(String,)> = match &cursor {
                    Some(c) => {
                        self.rows(&self.q.day_page_before, (day, c.as_str(), page_size))
                            .await?
                    }
                    None => self.rows(&self.q.day_page, (day, page_size)).await?,
                };
                let Some((last,)) = page.last() else { break };
                cursor = Some(last.clone());
                let full = page.len() == page_size as usize;
                let ids: Vec<String> = page
                    .into_iter()
                    .map(|(id,)| id)
                    .filter(|id| before.is_none_or(|b| id.as_str() < b))
                    .filter(|id| seen.insert(id.clone()))
                    .collect();
                let orders = try_join_all(ids.iter().map(|id| self.get_order(id))).await?;
                for order in orders.into_iter().flatten() {
                    if filter.matches(&order) {
                        out.push(order);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn apply_status(&self, update: StatusUpdate) -> Result<()> {
        retry("apply_status", || self.apply_status_once(&update)).await
    }

    async fn cancel_order(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
    ) -> Result<CancelOutcome> {
        let outcome = self.cancel_order_retried(order_id, reason, at).await?;
        if matches!(outcome, CancelOutcome::Cancelled { .. }) {
            self.unpaid_settled(order_id).await;
        }
        Ok(outcome)
    }

    async fn ship_order(&self, order_id: &str, at: i64) -> Result<ShipOutcome> {
        self.ship_order_retried(order_id, at).await
    }

    async fn modify_order(
        &self,
        order_id: &str,
        items: Vec<OrderItem>,
        at: i64,
    ) -> Result<ModifyOutcome> {
        self.modify_order_retried(order_id, &crate::OrderChange::Quantities(items), at)
            .await
    }

    async fn reprice_order(
        &self,
        order_id: &str,
        prices: Vec<crate::LinePrice>,
        at: i64,
    ) -> Result<ModifyOutcome> {
        self.modify_order_retried(order_id, &crate::OrderChange::Prices(prices), at)
            .await
    }

    async fn mark_paid(&self, payment: &PaymentRecord) -> Result<Option<OrderRecord>> {
        let order_id = payment.order_id.as_str();
        let Some(order) = self.get_order(order_id).await? else {
            return Ok(None);
        };
        let event_id = OrderStatus::Paid.event_id(order_id);
        if crate::outbox::paid(&order, payment).is_none()
            || order.timeline.iter().any(|t| t.event_id == event_id)
        {
            // Not priced, or paid already: nothing changes.
            return Ok(Some(order));
        }
        // The intents come first ([`outbox`]); `OrderPaid` is built from the payment recorded.
        let paid = self.announce::<OrderPaid>(event_id.clone(), order_id);
        paid.intend().await?;
        // Cancelled before the transfer was recorded: announced again, with its refund (an
        // event of its own, kept whole).
        let refund = Some((payment.amount_cents, payment.currency.clone()));
        let mut cancelled = None;
        if order.status == OrderStatus::Cancelled {
            let again = self.announce_whole(
                &OutboxEvent::of(&cancellation_event(&order, refund.clone()))?,
                order_id,
            )?;
            again.intend().await?;
            cancelled = Some(again);
        }
        let update = StatusUpdate::paid(&order, payment);
        retry("mark_paid", || paid.decide(self.apply_status_once(&update))).await?;
        let order = self.get_order(order_id).await?;
        if let (None, Some(order)) = (&cancelled, &order) {
            if order.status == OrderStatus::Cancelled {
                // Cancelled while the payment was being marked.
                self.announce_whole(
                    &OutboxEvent::of(&cancellation_event(order, refund))?,
                    order_id,
                )?
                .intend()
                .await?;
            }
        }
        Ok(order)
    }

    async fn list_unpaid_orders(
        &self,
        placed_before: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        self.list_unpaid_impl(placed_before, limit).await
    }

    async fn expire_unpaid_order(
        &self,
        order_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<ExpireOutcome> {
        self.expire_unpaid_retried(order_id, reason, at).await
    }

    async fn forget_unpaid_order(&self, order_id: &str) -> Result<()> {
        self.forget_unpaid_impl(order_id).await
    }
}

impl ScyllaStore {
    /// One attempt of [`OrderStore::apply_status`].
    async fn apply_status_once(&self, update: &StatusUpdate) -> Result<()> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<Option<CqlValue>>> = Vec::new();
        batch.append_statement(self.q.order_entry_with_customer.clone());
        values.push(vec![
            text(&update.order_id),
            text(&update.event_id),
            text(update.status.as_str()),
            Some(CqlValue::BigInt(update.at)),
            update.detail.as_deref().and_then(text),
            text(&update.customer_id),
        ]);
        // A late step of an earlier revision does not price the order's current one.
        let pricing = match &update.pricing {
            Some(pricing) if self.prices_current_revision(update).await? => Some(pricing),
            _ => None,
        };
        if let Some(pricing) = pricing {
            batch.append_statement(self.q.order_pricing.clone());
            values.push(vec![
                Some(CqlValue::Text(to_json(pricing)?)),
                text(&update.order_id),
            ]);
        }
        if let Some(number) = &update.invoice_number {
            batch.append_statement(self.q.order_invoice_number.clone());
            values.push(vec![text(number), text(&update.order_id)]);
        }
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        // One partition: applied together. The index rows are idempotent upserts beside it
        // (for orders this store never saw created).
        let bucket = bucket_of(&update.order_id, update.at);
        let day = day_of(&update.order_id, update.at);
        let (written, indexed, bucketed, day_indexed, day_marked) = tokio::join!(
            self.session.batch(&batch, values),
            self.run(
                &self.q.customer_order,
                (
                    update.customer_id.as_str(),
                    bucket,
                    update.order_id.as_str()
                ),
            ),
            self.run(
                &self.q.customer_bucket,
                (update.customer_id.as_str(), bucket)
            ),
            self.run(
                &self.q.day_order,
                (day, update.order_id.as_str(), update.customer_id.as_str()),
            ),
            self.run(&self.q.day_mark, (day,)),
        );
        written.map_err(unavailable)?;
        indexed?;
        bucketed?;
        day_indexed?;
        day_marked?;
        Ok(())
    }
}

// --- Cancel and ship ---------------------------------------------------------------------

pub(super) struct LifecycleStatements {
    /// Sets the final step unless there is one.
    finish: PreparedStatement,
    pub(super) refund_get: PreparedStatement,
    pub(super) refund_insert: PreparedStatement,
}

impl LifecycleStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let cql =
            format!("UPDATE {ks}.orders SET lifecycle = ? WHERE order_id = ? IF lifecycle = null");
        let mut finish = session
            .prepare(cql.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot prepare `{cql}`: {e}")))?;
        finish.set_is_idempotent(true);
        finish.set_consistency(Consistency::LocalQuorum);
        let refund_get = prepare(
            session,
            format!("SELECT refund FROM {ks}.refunds WHERE order_id = ?"),
            Consistency::LocalSerial,
        )
        .await?;
        let refund_insert = prepare(
            session,
            format!("INSERT INTO {ks}.refunds (order_id, refund) VALUES (?, ?) IF NOT EXISTS"),
            Consistency::LocalQuorum,
        )
        .await?;
        Ok(LifecycleStatements {
            finish,
            refund_get,
            refund_insert,
        })
    }
}

/// What the conditional batch found.
enum Finish {
    /// This call set the final step.
    Applied,
    /// The order had this final step already.
    Already(OrderStatus),
}

impl ScyllaStore {
    /// Sets `status` (cancelled or shipped) as the order's final step with its timeline entry,
    /// unless it has a final step already.
    async fn finish(
        &self,
        order_id: &str,
        status: OrderStatus,
        detail: Option<&str>,
        at: i64,
    ) -> Result<Finish> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.lifecycle.finish.clone());
        batch.append_statement(self.q.order_entry.clone());
        let values: Vec<Vec<Option<CqlValue>>> = vec![
            vec![text(status.as_str()), text(order_id)],
            vec![
                text(order_id),
                text(&status.event_id(order_id)),
                text(status.as_str()),
                Some(CqlValue::BigInt(at)),
                detail.and_then(text),
            ],
        ];
        let lwt = self.lwt_batch(batch, values).await?;
        if lwt.applied {
            return Ok(Finish::Applied);
        }
        match lwt.text("lifecycle").as_deref() {
            Some("cancelled") => Ok(Finish::Already(OrderStatus::Cancelled)),
            Some("shipped") => Ok(Finish::Already(OrderStatus::Shipped)),
            Some(other) => Err(StoreError::Corrupt(format!(
                "order {order_id}: lifecycle {other:?}"
            ))),
            // Not applied, yet no final step: a lost race with a timeout; try again.
            None => Err(raced()),
        }
    }

    async fn cancel_once(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
        announce: &Announce<'_>,
    ) -> Result<CancelOutcome> {
        let Some(order) = self.get_order(order_id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        match order.status {
            OrderStatus::Shipped => return Ok(CancelOutcome::Shipped),
            OrderStatus::Cancelled => {}
            _ => match announce
                .decide(self.finish(order_id, OrderStatus::Cancelled, reason, at))
                .await?
            {
                Finish::Applied => announce.applied(),
                Finish::Already(OrderStatus::Cancelled) => {}
                Finish::Already(_) => return Ok(CancelOutcome::Shipped),
            },
        }
        self.release(order_id).await?;
        let paid = self
            .get_payment(order_id)
            .await?
            .is_some_and(|p| p.approved);
        let order = self.get_order(order_id).await?.ok_or_else(raced)?;
        Ok(CancelOutcome::Cancelled {
            order: Box::new(order),
            paid,
        })
    }

    async fn ship_once(
        &self,
        order_id: &str,
        at: i64,
        announce: &Announce<'_>,
    ) -> Result<ShipOutcome> {
        let Some(order) = self.get_order(order_id).await? else {
            return Ok(ShipOutcome::NotFound);
        };
        match order.status {
            OrderStatus::Shipped => {
                // A crash after the ship and before the settling: settle now (nothing twice).
                self.settle_once(order_id, &super::Lease::new(), false)
                    .await?;
                return Ok(ShipOutcome::Shipped(Box::new(order)));
            }
            OrderStatus::Paid | OrderStatus::Invoiced => {}
            other => return Ok(ShipOutcome::NotReady(other)),
        }
        match announce
            .decide(self.finish(order_id, OrderStatus::Shipped, None, at))
            .await?
        {
            Finish::Applied => announce.applied(),
            Finish::Already(OrderStatus::Shipped) => {}
            Finish::Already(other) => return Ok(ShipOutcome::NotReady(other)),
        }
        // The shipped units leave `reserved` (idempotent: a repeated ship settles what is left).
        self.settle_once(order_id, &super::Lease::new(), false)
            .await?;
        let order = self.get_order(order_id).await?.ok_or_else(raced)?;
        Ok(ShipOutcome::Shipped(Box::new(order)))
    }

    pub(super) async fn cancel_order_retried(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
    ) -> Result<CancelOutcome> {
        let announce =
            self.announce::<OrderCancelled>(OrderStatus::Cancelled.event_id(order_id), order_id);
        let outcome = retry("cancel_order", || {
            self.cancel_once(order_id, reason, at, &announce)
        })
        .await?;
        announce.settle().await;
        Ok(outcome)
    }

    pub(super) async fn ship_order_retried(&self, order_id: &str, at: i64) -> Result<ShipOutcome> {
        let announce =
            self.announce::<OrderShipped>(OrderStatus::Shipped.event_id(order_id), order_id);
        let outcome = retry("ship_order", || self.ship_once(order_id, at, &announce)).await?;
        announce.settle().await;
        Ok(outcome)
    }
}

// --- Modifications and payment claims ----------------------------------------------------

pub(super) struct ModifyStatements {
    /// The columns an order's fence is conditioned on, read serially (a decision depends on it).
    fence_get: PreparedStatement,
    /// The same, at LOCAL_QUORUM: for answers from facts that never go back.
    fence_peek: PreparedStatement,
    /// An order's revision (LOCAL_QUORUM), for `apply_status`.
    revision_get: PreparedStatement,
    /// Claims the payment of revision 0 (stored as null).
    claim_r0: PreparedStatement,
    /// Claims the payment of a later revision.
    claim_rn: PreparedStatement,
    /// Moves an order from revision 0 (null) to 1.
    fence_r0: PreparedStatement,
    /// Moves an order from revision n to n + 1.
    fence_rn: PreparedStatement,
}

impl ModifyStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let fence_columns = format!(
            "SELECT customer_id, items, revision, payment_claim, lifecycle, line_prices FROM \
             {ks}.orders WHERE order_id = ? LIMIT 1"
        );
        let fence_get = prepare(session, fence_columns.clone(), Consistency::LocalSerial).await?;
        let fence_peek = prepare(session, fence_columns, Consistency::LocalQuorum).await?;
        let revision_get = prepare(
            session,
            format!("SELECT revision FROM {ks}.orders WHERE order_id = ? LIMIT 1"),
            Consistency::LocalQuorum,
        )
        .await?;
        let lwt = |cql: String| async move {
            let mut statement = prepare(session, cql, Consistency::LocalQuorum).await?;
            statement.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            Ok::<_, StoreError>(statement)
        };
        let claim = format!("UPDATE {ks}.orders SET payment_claim = ? WHERE order_id = ?");
        let fence = format!(
            "UPDATE {ks}.orders SET revision = ?, items = ?, line_prices = ?, pricing = null \
             WHERE order_id = ?"
        );
        Ok(ModifyStatements {
            fence_get,
            fence_peek,
            revision_get,
            claim_r0: lwt(format!(
                "{claim} IF lifecycle = null AND revision = null AND payment_claim = null"
            ))
            .await?,
            claim_rn: lwt(format!(
                "{claim} IF lifecycle = null AND revision = ? AND payment_claim = null"
            ))
            .await?,
            fence_r0: lwt(format!(
                "{fence} IF revision = null AND payment_claim = null AND lifecycle = null"
            ))
            .await?,
            fence_rn: lwt(format!(
                "{fence} IF revision = ? AND payment_claim = null AND lifecycle = null"
            ))
            .await?,
        })
    }
}

/// `customer_id, items, revision, payment_claim, lifecycle, line_prices`.
type FenceRow = (
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<String>,
);

/// The columns of an order that the fence and the claims are conditioned on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fence {
    /// The items of the order's revision (JSON).
    items: Option<String>,
    /// Null reads as 0.
    revision: i32,
    payment_claim: Option<i32>,
    lifecycle: Option<String>,
    /// The unit prices of the revision's lines (JSON); null: the reservation's stand.
    line_prices: Option<String>,
}

impl Fence {
    /// The fence of an order row; `None` for a partition without an order (no customer).
    fn from_row(
        (customer_id, items, revision, payment_claim, lifecycle, line_prices): FenceRow,
    ) -> Option<Self> {
        customer_id.map(|_| Fence {
            items,
            revision: revision.unwrap_or(0),
            payment_claim,
            lifecycle,
            line_prices,
        })
    }

    /// What a refused conditional write found.
    fn from_lwt(lwt: &Lwt) -> Self {
        Fence {
            items: None,
            revision: lwt.int("revision").unwrap_or(0),
            payment_claim: lwt.int("payment_claim"),
            lifecycle: lwt.text("lifecycle"),
            line_prices: None,
        }
    }
}

impl Lwt {
    fn int(&self, name: &str) -> Option<i32> {
        match self.value(name) {
            Some(CqlValue::Int(v)) => Some(*v),
            _ => None,
        }
    }
}

/// The `holds` key of an order's stock moves for `revision`.
fn hold_key(order_id: &str, revision: i32) -> String {
    format!("{order_id}@r{revision}")
}

/// The final step `orders.lifecycle` names.
fn final_status(order_id: &str, lifecycle: &str) -> Result<OrderStatus> {
    match lifecycle {
        "cancelled" => Ok(OrderStatus::Cancelled),
        "shipped" => Ok(OrderStatus::Shipped),
        other => Err(StoreError::Corrupt(format!(
            "order {order_id}: lifecycle {other:?}"
        ))),
    }
}

/// What a claim of revision `asked` answers, when the order's fence decides it: `None` when
/// the claim is still to be written (or lost a race and is tried again).
fn claim_answer(order_id: &str, asked: i32, fence: &Fence) -> Result<Option<PaymentClaim>> {
    if let Some(lifecycle) = &fence.lifecycle {
        return Ok(Some(PaymentClaim::Final(final_status(
            order_id, lifecycle,
        )?)));
    }
    if fence.revision > asked {
        return Ok(Some(PaymentClaim::Stale {
            current: fence.revision,
        }));
    }
    if fence.revision < asked {
        return Err(StoreError::Invalid(format!(
            "order {order_id} has no revision {asked} (it is at {})",
            fence.revision
        )));
    }
    match fence.payment_claim {
        Some(claimed) if claimed == asked => Ok(Some(PaymentClaim::Granted)),
        Some(claimed) => Err(StoreError::Corrupt(format!(
            "order {order_id}: payment claimed for revision {claimed} at revision {asked}"
        ))),
        None => Ok(None),
    }
}

/// Whether the order's quantities may still change.
fn modifiable(order: &OrderRecord) -> bool {
    order.status == OrderStatus::Validated && order.payment_claim.is_none()
}

fn refused(order: &OrderRecord) -> ModifyOutcome {
    ModifyOutcome::NotModifiable {
        status: order.status,
        claimed: order.payment_claim.is_some(),
    }
}

/// Each SKU of `lines` once, in order.
fn skus_of(lines: &[ReservedLine]) -> Vec<&str> {
    let mut skus: Vec<&str> = Vec::with_capacity(lines.len());
    for line in lines {
        if !skus.contains(&line.sku.as_str()) {
            skus.push(line.sku.as_str());
        }
    }
    skus
}

/// A reservation brought in line with its order by [`ScyllaStore::reconcile`].
pub(super) struct Reconciled {
    pub(super) lines: Vec<ReservedLine>,
    pub(super) revision: i32,
    /// Whether this differs from what the reservation row records (a modification got past
    /// its fence and no further): the next decision records it.
    pub(super) completed: bool,
    /// The order's fence, read serially; `None` when the store has no such order.
    fence: Option<Fence>,
}

impl ScyllaStore {
    async fn read_fence(&self, order_id: &str, serial: bool) -> Result<Option<Fence>> {
        let statement = if serial {
            &self.modify.fence_get
        } else {
            &self.modify.fence_peek
        };
        Ok(self
            .first::<FenceRow>(statement, (order_id,))
            .await?
            .and_then(Fence::from_row))
    }

    /// Whether `update`'s pricing is for the order's current revision (or a later one): a late
    /// step of an earlier revision does not price the current one. One LOCAL_QUORUM read.
    pub(super) async fn prices_current_revision(&self, update: &StatusUpdate) -> Result<bool> {
        let current = self
            .first::<(Option<i32>,)>(&self.modify.revision_get, (update.order_id.as_str(),))
            .await?
            .and_then(|(revision,)| revision)
            .unwrap_or(0);
        Ok(update.revision >= current)
    }

    /// Brings the reservation (`lines` at `revision`, under `lease`) in line with its order,
    /// after a modification that stopped part-way (see the module docs): finishes one that got
    /// past its fence (new lines, no stock moves), and moves back what one that did not get
    /// there moved. Idempotent.
    pub(super) async fn reconcile(
        &self,
        order_id: &str,
        lease: &Lease,
        lines: Vec<ReservedLine>,
        revision: i32,
    ) -> Result<Reconciled> {
        let fence = self.read_fence(order_id, true).await?;
        let order_revision = fence.as_ref().map_or(0, |f| f.revision);
        if order_revision < revision {
            tracing::warn!(
                order_id,
                order_revision,
                revision,
                "The reservation is ahead of its order; left as it is."
            );
            return Ok(Reconciled {
                lines,
                revision,
                completed: false,
                fence,
            });
        }
        let mut current = Reconciled {
            lines,
            revision,
            completed: false,
            fence,
        };
        if order_revision > revision {
            let items: Vec<OrderItem> = match current.fence.as_ref().and_then(|f| f.items.as_ref())
            {
                Some(items) => from_json("order items", items)?,
                None => Vec::new(),
            };
            let Ok(Ok(plan)) = ModificationPlan::new(&current.lines, &items) else {
                return Err(StoreError::Corrupt(format!(
                    "order {order_id}: the items of revision {order_revision} do not fit its \
                     reservation of revision {revision}"
                )));
            };
            let prices: Vec<LinePrice> =
                match current.fence.as_ref().and_then(|f| f.line_prices.as_ref()) {
                    Some(prices) => from_json("line prices", prices)?,
                    None => Vec::new(),
                };
            // The stock moved before the fence; its holds are only bookkeeping now.
            let key = hold_key(order_id, order_revision);
            self.drop_holds(&key, &skus_of(&current.lines)).await?;
            tracing::info!(
                order_id,
                revision = order_revision,
                "Finished a modification that stopped after its fence."
            );
            current.lines = ModificationPlan::priced(plan.lines, &prices);
            current.revision = order_revision;
            current.completed = true;
        }
        let next = hold_key(order_id, current.revision + 1);
        if self
            .undo_moves(order_id, &next, &skus_of(&current.lines), lease)
            .await?
        {
            tracing::info!(
                order_id,
                revision = current.revision + 1,
                "Moved back the stock of a modification that stopped before its fence."
            );
        }
        Ok(current)
    }

    /// Moves back whatever `holds[key]` records on these SKUs and drops the entries; whether
    /// there was any.
    async fn undo_moves(
        &self,
        order_id: &str,
        key: &str,
        skus: &[&str],
        lease: &Lease,
    ) -> Result<bool> {
        let mut touched: Vec<&str> = Vec::new();
        for sku in skus {
            loop {
                lease.check(order_id)?;
                let Some(row) = self.read_product(sku).await? else {
                    break;
                };
                let Some(&held) = row.holds.get(key) else {
                    break;
                };
                if !touched.contains(sku) {
                    touched.push(sku);
                }
                if held == 0 || self.move_stock(&row, key, -held, 0).await? {
                    break;
                }
                tokio::time::sleep(jitter(Duration::from_millis(2))).await;
            }
        }
        if touched.is_empty() {
            return Ok(false);
        }
        self.drop_holds(key, &touched).await?;
        Ok(true)
    }

    /// Gives up the lease, recording the reservation first when reconciling changed it.
    async fn leave(
        &self,
        order_id: &str,
        lease: &Lease,
        current: &Reconciled,
        reserved_at: i64,
    ) -> Result<()> {
        if !current.completed {
            return self.let_go(order_id, lease).await;
        }
        let reservation = Reservation::Reserved {
            lines: current.lines.clone(),
            at: reserved_at,
            released: false,
            revision: current.revision,
        };
        self.decide(order_id, lease, &reservation).await
    }

    /// The fence (see the module docs): moves the order from revision `current` to the next
    /// with `items` and its lines' `prices`, clears its pricing and adds the timeline row
    /// (`detail`), unless its payment was claimed, it is final or it is no longer at `current`.
    /// Whether it applied.
    async fn fence(
        &self,
        order_id: &str,
        (items, prices): (&[OrderItem], &[LinePrice]),
        current: i32,
        at: i64,
        detail: String,
    ) -> Result<bool> {
        let next = current + 1;
        let mut batch = Batch::new(BatchType::Logged);
        let mut fence_values = vec![
            Some(CqlValue::Int(next)),
            Some(CqlValue::Text(to_json(&items)?)),
            Some(CqlValue::Text(to_json(&prices)?)),
            text(order_id),
        ];
        if current == 0 {
            batch.append_statement(self.modify.fence_r0.clone());
        } else {
            batch.append_statement(self.modify.fence_rn.clone());
            fence_values.push(Some(CqlValue::Int(current)));
        }
        batch.append_statement(self.q.order_entry.clone());
        let values: Vec<Vec<Option<CqlValue>>> = vec![
            fence_values,
            vec![
                text(order_id),
                text(&OrderModified::event_id_for(order_id, next)),
                text(OrderStatus::Validated.as_str()),
                Some(CqlValue::BigInt(at)),
                Some(CqlValue::Text(detail)),
            ],
        ];
        Ok(self.lwt_batch(batch, values).await?.applied)
    }

    async fn modify_once(
        &self,
        order_id: &str,
        change: &OrderChange,
        at: i64,
        lease: &Lease,
    ) -> Result<ModifyOutcome> {
        let Some(order) = self.get_order(order_id).await? else {
            return Ok(ModifyOutcome::NotFound);
        };
        let items = change.items(&order.items);
        if !modifiable(&order) {
            return Ok(refused(&order));
        }
        let outcome = match self.claim(order_id, lease, false).await? {
            Claim::Missing => return Ok(refused(&order)),
            Claim::Owned(outcome) => outcome,
            Claim::Decided(_) => unreachable!("claim without create never answers Decided"),
        };
        let Some(Reservation::Reserved {
            lines,
            at: reserved_at,
            released: false,
            revision,
        }) = outcome
        else {
            // Rejected, released or still being decided: nothing to modify.
            self.let_go(order_id, lease).await?;
            return Ok(refused(&order));
        };
        let current = self.reconcile(order_id, lease, lines, revision).await?;

        // The order as read serially, under the lease: the fence's expected revision.
        let fence = match &current.fence {
            Some(fence) if fence.revision == current.revision => fence.clone(),
            Some(fence) => {
                self.leave(order_id, lease, &current, reserved_at).await?;
                return Err(StoreError::Corrupt(format!(
                    "order {order_id} is at revision {}, its reservation at {}",
                    fence.revision, current.revision
                )));
            }
            None => {
                self.leave(order_id, lease, &current, reserved_at).await?;
                return Err(raced());
            }
        };
        if fence.payment_claim.is_some() || fence.lifecycle.is_some() {
            self.leave(order_id, lease, &current, reserved_at).await?;
            let order = self.get_order(order_id).await?.ok_or_else(raced)?;
            return Ok(refused(&order));
        }
        let plan = match change.plan(&current.lines) {
            Ok(Ok(plan)) => plan,
            Ok(Err(refusal)) => {
                self.leave(order_id, lease, &current, reserved_at).await?;
                return Ok(refusal);
            }
            Err(e) => {
                self.leave(order_id, lease, &current, reserved_at).await?;
                return Err(e);
            }
        };
        if plan.is_unchanged(&current.lines) {
            self.leave(order_id, lease, &current, reserved_at).await?;
            let order = if current.completed {
                self.get_order(order_id).await?.ok_or_else(raced)?
            } else {
                order
            };
            return Ok(ModifyOutcome::Modified {
                order: Box::new(order),
                lines: current.lines,
            });
        }
        if current.revision >= MAX_ORDER_REVISIONS {
            self.leave(order_id, lease, &current, reserved_at).await?;
            return Ok(ModifyOutcome::TooManyRevisions {
                max: MAX_ORDER_REVISIONS,
            });
        }

        // 1. The stock, under the new revision's key.
        let next = fence.revision + 1;
        let key = hold_key(order_id, next);
        let skus: Vec<&str> = plan.deltas.iter().map(|(sku, _)| sku.as_str()).collect();
        let mut stopped: Option<Result<ModifyOutcome>> = None;
        'skus: for (sku, delta) in &plan.deltas {
            loop {
                lease.check(order_id)?;
                let Some(row) = self.read_product(sku).await? else {
                    stopped = Some(Err(StoreError::Corrupt(format!(
                        "order {order_id} holds units of {sku}, which is not in the catalogue"
                    ))));
                    break 'skus;
                };
                // What an earlier attempt of this revision moved already (normally nothing:
                // reconciling moved it back).
                let take = delta - row.holds.get(&key).copied().unwrap_or(0);
                if take == 0 {
                    break;
                }
                // A discontinued product gives back, but no more units go out.
                let available = if row.product.discontinued {
                    0
                } else {
                    row.product.stock
                };
                if take > 0 && take > available {
                    stopped = Some(Ok(ModifyOutcome::Insufficient {
                        sku: sku.clone(),
                        available,
                    }));
                    break 'skus;
                }
                if self.move_stock(&row, &key, take, *delta).await? {
                    break;
                }
                // Lost the race for this product: let the winner's round finish.
                tokio::time::sleep(jitter(Duration::from_millis(2))).await;
            }
        }
        if let Some(stopped) = stopped {
            self.undo_moves(order_id, &key, &skus, lease).await?;
            self.leave(order_id, lease, &current, reserved_at).await?;
            return stopped;
        }

        // 2. The fence, announced: its outbox intent first, deleted if the fence is refused.
        // Kept whole, so that it is relayed even once a later revision replaced its items.
        let announce = self.announce_whole(
            &OutboxEvent::of(&OrderModified {
                event_id: OrderModified::event_id_for(order_id, next),
                order_id: order_id.to_string(),
                customer_id: order.customer_id.clone(),
                revision: next,
                items: items.clone(),
                occurred_at: at,
            })?,
            order_id,
        )?;
        announce.intend().await?;
        lease.check(order_id)?;
        let detail = change.detail(next);
        if !announce
            .decide(self.fence(
                order_id,
                (&items, &plan.prices()),
                fence.revision,
                at,
                detail,
            ))
            .await?
        {
            // A claim, a cancel or a ship came first: nothing changes.
            announce.settle().await;
            self.undo_moves(order_id, &key, &skus, lease).await?;
            self.leave(order_id, lease, &current, reserved_at).await?;
            let order = self.get_order(order_id).await?.ok_or_else(raced)?;
            if modifiable(&order) {
                return Err(raced()); // another modification: try again
            }
            return Ok(refused(&order));
        }

        // 3. The reservation, then the bookkeeping.
        let reservation = Reservation::Reserved {
            lines: plan.lines.clone(),
            at: reserved_at,
            released: false,
            revision: next,
        };
        self.decide(order_id, lease, &reservation).await?;
        if let Err(e) = self.drop_holds(&key, &skus).await {
            // Only bookkeeping: a stale entry moves no stock.
            tracing::warn!(order_id, error = %e, "Could not drop a modification's holds.");
        }
        let order = self.get_order(order_id).await?.ok_or_else(raced)?;
        Ok(ModifyOutcome::Modified {
            order: Box::new(order),
            lines: plan.lines,
        })
    }

    async fn claim_once(&self, order_id: &str, revision: i32) -> Result<PaymentClaim> {
        let Some(fence) = self.read_fence(order_id, false).await? else {
            return Ok(PaymentClaim::NotFound);
        };
        // A final step, a later revision or this claim never go back: answered at once. (The
        // read also keeps the claim from writing into a partition without an order.)
        if let Ok(Some(answer)) = claim_answer(order_id, revision, &fence) {
            return Ok(answer);
        }
        let lwt = if revision == 0 {
            self.lwt(&self.modify.claim_r0, (revision, order_id))
                .await?
        } else {
            self.lwt(&self.modify.claim_rn, (revision, order_id, revision))
                .await?
        };
        if lwt.applied {
            return Ok(PaymentClaim::Granted);
        }
        claim_answer(order_id, revision, &Fence::from_lwt(&lwt))?.ok_or_else(raced)
    }

    pub(super) async fn modify_order_retried(
        &self,
        order_id: &str,
        change: &OrderChange,
        at: i64,
    ) -> Result<ModifyOutcome> {
        let lease = Lease::new();
        retry("modify_order", || {
            self.modify_once(order_id, change, at, &lease)
        })
        .await
    }

    pub(super) async fn claim_payment_retried(
        &self,
        order_id: &str,
        revision: i32,
    ) -> Result<PaymentClaim> {
        retry("claim_payment", || self.claim_once(order_id, revision)).await
    }
}

// --- Orders awaiting a bank transfer -----------------------------------------------------

/// The one partition of `unpaid_orders`.
const SHARD: i32 = 0;
/// Most rows of one customer read for the cap (the cap is small; stale rows are few).
const CUSTOMER_ROWS: i32 = 200;

pub(super) struct UnpaidStatements {
    insert: PreparedStatement,
    insert_by_customer: PreparedStatement,
    delete: PreparedStatement,
    delete_by_customer: PreparedStatement,
    placed_at: PreparedStatement,
    page: PreparedStatement,
    of_customer: PreparedStatement,
    /// The cancel's final step, refused once the payment is claimed.
    expire: PreparedStatement,
}

impl UnpaidStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let q = Consistency::LocalQuorum;
        Ok(UnpaidStatements {
            insert: prepare(session, format!("INSERT INTO {ks}.unpaid_orders (shard, placed_at, order_id, customer_id) VALUES (?, ?, ?, ?)"), q).await?,
            insert_by_customer: prepare(session, format!("INSERT INTO {ks}.unpaid_orders_by_customer (customer_id, order_id, placed_at) VALUES (?, ?, ?)"), q).await?,
            delete: prepare(session, format!("DELETE FROM {ks}.unpaid_orders WHERE shard = ? AND placed_at = ? AND order_id = ?"), q).await?,
            delete_by_customer: prepare(session, format!("DELETE FROM {ks}.unpaid_orders_by_customer WHERE customer_id = ? AND order_id = ?"), q).await?,
            placed_at: prepare(session, format!("SELECT placed_at FROM {ks}.unpaid_orders_by_customer WHERE customer_id = ? AND order_id = ?"), q).await?,
            page: prepare(session, format!("SELECT order_id FROM {ks}.unpaid_orders WHERE shard = ? AND placed_at < ? LIMIT ?"), q).await?,
            of_customer: prepare(session, format!("SELECT order_id FROM {ks}.unpaid_orders_by_customer WHERE customer_id = ? LIMIT ?"), q).await?,
            expire: prepare(session, format!("UPDATE {ks}.orders SET lifecycle = ? WHERE order_id = ? IF lifecycle = null AND payment_claim = null"), q).await?,
        })
    }
}

impl ScyllaStore {
    /// The statements that list `order` as awaiting a transfer, for the batch that writes it;
    /// none when it does not await one.
    pub(super) fn unpaid_rows(
        &self,
        order: &OrderRecord,
        batch: &mut Batch,
        values: &mut Vec<Vec<Option<CqlValue>>>,
    ) {
        if !awaits_transfer(order) {
            return;
        }
        batch.append_statement(self.unpaid.insert.clone());
        values.push(vec![
            Some(CqlValue::Int(SHARD)),
            Some(CqlValue::BigInt(order.created_at)),
            text(&order.order_id),
            text(&order.customer_id),
        ]);
        batch.append_statement(self.unpaid.insert_by_customer.clone());
        values.push(vec![
            text(&order.customer_id),
            text(&order.order_id),
            Some(CqlValue::BigInt(order.created_at)),
        ]);
    }

    /// [`CreateOrder::TooManyUnpaid`] when `order` awaits a transfer and its customer has
    /// `max_unpaid` other orders awaiting one.
    pub(super) async fn unpaid_refusal(
        &self,
        order: &OrderRecord,
        max_unpaid: Option<u32>,
    ) -> Result<Option<CreateOrder>> {
        let Some(max) = max_unpaid.filter(|_| awaits_transfer(order)) else {
            return Ok(None);
        };
        let ids: Vec<(String,)> = self
            .rows(
                &self.unpaid.of_customer,
                (order.customer_id.as_str(), CUSTOMER_ROWS),
            )
            .await?;
        let others: Vec<&String> = ids
            .iter()
            .map(|(id,)| id)
            .filter(|id| **id != order.order_id)
            .collect();
        let orders = try_join_all(others.iter().map(|id| self.get_order(id))).await?;
        let open = orders
            .iter()
            .flatten()
            .filter(|o| awaits_transfer(o))
            .count();
        let open = u32::try_from(open).unwrap_or(u32::MAX);
        Ok((open >= max).then_some(CreateOrder::TooManyUnpaid { open }))
    }

    pub(super) async fn list_unpaid_impl(
        &self,
        placed_before: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let ids: Vec<(String,)> = self
            .rows(&self.unpaid.page, (SHARD, placed_before, limit))
            .await?;
        let orders = try_join_all(ids.iter().map(|(id,)| self.get_order(id))).await?;
        Ok(orders.into_iter().flatten().collect())
    }

    async fn expire_once(&self, order_id: &str, reason: &str, at: i64) -> Result<ExpireOutcome> {
        let Some(order) = self.get_order(order_id).await? else {
            return Ok(ExpireOutcome::NotFound);
        };
        if order.status != OrderStatus::Cancelled {
            if !awaits_transfer(&order) {
                return Ok(ExpireOutcome::NotAwaiting(order.status));
            }
            let mut batch = Batch::new(BatchType::Logged);
            batch.append_statement(self.unpaid.expire.clone());
            batch.append_statement(self.q.order_entry.clone());
            let status = OrderStatus::Cancelled;
            let values: Vec<Vec<Option<CqlValue>>> = vec![
                vec![text(status.as_str()), text(order_id)],
                vec![
                    text(order_id),
                    text(&status.event_id(order_id)),
                    text(status.as_str()),
                    Some(CqlValue::BigInt(at)),
                    text(reason),
                ],
            ];
            let lwt = self.lwt_batch(batch, values).await?;
            if !lwt.applied {
                match lwt.text("lifecycle").as_deref() {
                    Some("cancelled") => {}
                    Some(_) => return Ok(ExpireOutcome::NotAwaiting(OrderStatus::Shipped)),
                    None if lwt.value("payment_claim").is_some() => {
                        return Ok(ExpireOutcome::NotAwaiting(order.status))
                    }
                    // Not applied, yet nothing stopped it: a lost race with a timeout.
                    None => return Err(raced()),
                }
            }
        }
        // Idempotent: a repeat after a crash gives back whatever is still held.
        self.release(order_id).await?;
        let order = self.get_order(order_id).await?.ok_or_else(raced)?;
        Ok(ExpireOutcome::Cancelled(Box::new(order)))
    }

    pub(super) async fn expire_unpaid_retried(
        &self,
        order_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<ExpireOutcome> {
        retry("expire_unpaid_order", || {
            self.expire_once(order_id, reason, at)
        })
        .await
    }

    /// Deletes the order's rows of `unpaid_orders` (idempotent).
    pub(super) async fn forget_unpaid_impl(&self, order_id: &str) -> Result<()> {
        let Some(order) = self.get_order(order_id).await? else {
            return Ok(());
        };
        let customer_id = order.customer_id.as_str();
        let placed_at: Option<(Option<i64>,)> = self
            .first(&self.unpaid.placed_at, (customer_id, order_id))
            .await?;
        let placed_at = placed_at.and_then(|(p,)| p).unwrap_or(order.created_at);
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.unpaid.delete.clone());
        batch.append_statement(self.unpaid.delete_by_customer.clone());
        let values: Vec<Vec<Option<CqlValue>>> = vec![
            vec![
                Some(CqlValue::Int(SHARD)),
                Some(CqlValue::BigInt(placed_at)),
                text(order_id),
            ],
            vec![text(customer_id), text(order_id)],
        ];
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_is_idempotent(true);
        self.session
            .batch(&batch, values)
            .await
            .map_err(super::unavailable)?;
        Ok(())
    }

    /// After a claim or a cancel: the order no longer awaits a transfer. Only bookkeeping (the
    /// sweep forgets a row left behind), so a failure is logged, not returned.
    pub(super) async fn unpaid_settled(&self, order_id: &str) {
        if let Err(e) = self.forget_unpaid_impl(order_id).await {
            tracing::warn!(order_id, error = %e, "Could not drop an order from the unpaid list.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(revision: i32, payment_claim: Option<i32>, lifecycle: Option<&str>) -> Fence {
        Fence {
            items: None,
            revision,
            payment_claim,
            lifecycle: lifecycle.map(str::to_string),
            line_prices: None,
        }
    }

    #[test]
    fn hold_keys_name_the_revision() {
        assert_eq!(hold_key("o-1", 3), "o-1@r3");
        assert_ne!(hold_key("o-1", 1), hold_key("o-1", 2));
        assert_ne!(hold_key("o-1", 1), "o-1", "never the reservation's own key");
    }

    #[test]
    fn claims_are_answered_from_the_fence() {
        let answer = |asked, f: Fence| claim_answer("o", asked, &f).unwrap();
        assert_eq!(answer(0, fence(0, None, None)), None, "still to claim");
        assert_eq!(
            answer(0, fence(0, Some(0), None)),
            Some(PaymentClaim::Granted)
        );
        assert_eq!(
            answer(2, fence(2, Some(2), None)),
            Some(PaymentClaim::Granted)
        );
        assert_eq!(
            answer(0, fence(1, None, None)),
            Some(PaymentClaim::Stale { current: 1 })
        );
        assert_eq!(
            answer(1, fence(1, None, Some("cancelled"))),
            Some(PaymentClaim::Final(OrderStatus::Cancelled))
        );
        assert_eq!(
            answer(0, fence(0, Some(0), Some("shipped"))),
            Some(PaymentClaim::Final(OrderStatus::Shipped))
        );
        assert!(matches!(
            claim_answer("o", 2, &fence(1, None, None)),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            claim_answer("o", 1, &fence(1, Some(0), None)),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            claim_answer("o", 0, &fence(0, None, Some("lost"))),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn an_order_row_without_a_customer_is_no_order() {
        assert_eq!(
            Fence::from_row((None, None, Some(1), None, None, None)),
            None
        );
        assert_eq!(
            Fence::from_row((Some("c".into()), None, None, None, None, None)),
            Some(fence(0, None, None)),
            "revision null reads as 0"
        );
    }

    #[test]
    fn lwt_answers_decode_into_a_fence() {
        let lwt = Lwt {
            applied: false,
            columns: vec![
                ("[applied]".into(), Some(CqlValue::Boolean(false))),
                ("lifecycle".into(), None),
                ("revision".into(), Some(CqlValue::Int(2))),
                ("payment_claim".into(), Some(CqlValue::Int(2))),
            ],
        };
        assert_eq!(Fence::from_lwt(&lwt), fence(2, Some(2), None));
        let empty = Lwt {
            applied: false,
            columns: vec![("[applied]".into(), Some(CqlValue::Boolean(false)))],
        };
        assert_eq!(Fence::from_lwt(&empty), fence(0, None, None));
    }

    #[test]
    fn skus_are_listed_once() {
        let line = |sku: &str| ReservedLine {
            sku: sku.into(),
            name: String::new(),
            quantity: 1,
            unit_price_cents: 1,
            currency: "EUR".into(),
        };
        assert_eq!(skus_of(&[line("A"), line("B"), line("A")]), ["A", "B"]);
    }
}
