//! Orders awaiting a bank transfer on ScyllaDB: `store/migrations/scylla/0008_unpaid_orders.cql`.
//!
//! An order paid by bank transfer gets a row in `unpaid_orders` (by time placed, one partition)
//! and in `unpaid_orders_by_customer` in the batch that writes it. The rows go when its payment
//! is claimed, it is cancelled, or its expiry is announced ([`Store::forget_unpaid_order`]);
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

use futures::future::try_join_all;
use orderflow_schemas::OrderStatus;
use scylla::{
    frame::types::Consistency,
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::CqlValue,
};

use super::{lifecycle::prepare, raced, retry, text, ScyllaStore};
use crate::{
    awaits_transfer, CatalogueStore, CreateOrder, ExpireOutcome, OrderRecord, OrderStore, Result,
};

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
