//! Cancel and ship on ScyllaDB:
//! `store/migrations/scylla/0005_order_lifecycle.cql`.
//!
//! The final step of an order is the static column `orders.lifecycle`, set by one conditional
//! batch on the order's partition: `UPDATE … SET lifecycle = ? IF lifecycle = null` together
//! with the step's timeline row. Of a racing cancel and ship exactly one applies; the loser
//! reads the winner from the LWT's answer. The timeline row is written by the same Paxos round,
//! so a read of the order (its status is the timeline's furthest step) sees the final step as
//! soon as the call returns. A cancel then releases the order's stock with the idempotent
//! [`Store::release`]; a repeated cancel (after a crash between the two) releases again, which
//! gives back whatever is still held and nothing twice.
//!
//! The call that sets the final step announces it: its outbox intent is written before the
//! conditional batch and deleted when the batch finds a final step already ([`super::outbox`]).

use scylla::{
    frame::types::Consistency,
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::CqlValue,
};

use super::{outbox::Announce, raced, retry, text, ScyllaStore};
use orderflow_schemas::{OrderCancelled, OrderShipped, OrderStatus};

use super::from_json;
use crate::{
    CancelOutcome, CatalogueStore, OrderStore, PaymentStore, RefundRecord, Result, ShipOutcome,
    StoreError,
};

pub(super) struct LifecycleStatements {
    /// Sets the final step unless there is one.
    finish: PreparedStatement,
    refund_get: PreparedStatement,
    refund_insert: PreparedStatement,
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

/// Prepares an idempotent statement.
pub(super) async fn prepare(
    session: &scylla::client::session::Session,
    cql: String,
    consistency: Consistency,
) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(cql.clone())
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot prepare `{cql}`: {e}")))?;
    statement.set_is_idempotent(true);
    statement.set_consistency(consistency);
    Ok(statement)
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

    pub(super) async fn get_refund_impl(&self, order_id: &str) -> Result<Option<RefundRecord>> {
        self.first::<(Option<String>,)>(&self.lifecycle.refund_get, (order_id,))
            .await?
            .and_then(|(r,)| r)
            .map(|r| from_json("refund", &r))
            .transpose()
    }

    pub(super) async fn record_refund_impl(&self, refund: RefundRecord) -> Result<RefundRecord> {
        let order_id = refund.order_id.clone();
        self.record_once(&self.lifecycle.refund_insert, "refund", &order_id, refund)
            .await
    }
}
