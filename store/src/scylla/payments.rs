//! [`PaymentStore`] on ScyllaDB, with card orders' payment tokens
//! (`store/migrations/scylla/0009_secrets.cql`).
//!
//! A payment token is two static columns of the order's own partition (`payment_token`,
//! `payment_token_expires_at`), written right after the order (see
//! [`OrderStore::create_order`](crate::OrderStore::create_order) on ScyllaDB): a crash in
//! between leaves an order without a token, never a token without its order. Both carry a TTL
//! up to the token's expiry: whatever nobody deletes (the order never got charged) goes by
//! itself. Reads also check the expiry, so a token reads as gone from `expires_at` on whatever
//! the TTL's rounding.

use scylla::{frame::types::Consistency, statement::prepared::PreparedStatement, value::CqlValue};

use super::*;
use crate::PaymentStore;

pub(super) struct TokenStatements {
    /// Sets an order's payment token.
    token_put: PreparedStatement,
    token_get: PreparedStatement,
    token_delete: PreparedStatement,
}

impl TokenStatements {
    pub(super) async fn prepare(
        session: &scylla::client::session::Session,
        ks: &str,
    ) -> Result<Self> {
        let q = Consistency::LocalQuorum;
        Ok(TokenStatements {
            token_put: prepare(
                session,
                format!(
                    "UPDATE {ks}.orders USING TTL ? SET payment_token = ?, \
                     payment_token_expires_at = ? WHERE order_id = ?"
                ),
                q,
            )
            .await?,
            token_get: prepare(
                session,
                format!(
                    "SELECT payment_token, payment_token_expires_at FROM {ks}.orders \
                     WHERE order_id = ? LIMIT 1"
                ),
                q,
            )
            .await?,
            token_delete: prepare(
                session,
                format!(
                    "DELETE payment_token, payment_token_expires_at FROM {ks}.orders \
                     WHERE order_id = ?"
                ),
                q,
            )
            .await?,
        })
    }
}

#[async_trait]
impl PaymentStore for ScyllaStore {
    async fn get_payment_token(&self, order_id: &str, now: i64) -> Result<Option<PaymentToken>> {
        retry("get_payment_token", || {
            self.get_payment_token_impl(order_id, now)
        })
        .await
    }

    async fn delete_payment_token(&self, order_id: &str) -> Result<()> {
        retry("delete_payment_token", || {
            self.delete_payment_token_impl(order_id)
        })
        .await
    }

    async fn get_payment(&self, order_id: &str) -> Result<Option<PaymentRecord>> {
        self.first::<(Option<String>,)>(&self.q.payment_get, (order_id,))
            .await?
            .and_then(|(p,)| p)
            .map(|p| from_json("payment", &p))
            .transpose()
    }

    async fn record_payment(&self, payment: PaymentRecord) -> Result<PaymentRecord> {
        let order_id = payment.order_id.clone();
        let recorded = self
            .record_once(&self.q.payment_insert, "payment", &order_id, payment)
            .await?;
        // After the record: a failure here leaves the token to the caller's retry, which finds
        // the payment recorded and deletes it again.
        self.delete_payment_token(&order_id).await?;
        Ok(recorded)
    }

    async fn get_refund(&self, order_id: &str) -> Result<Option<RefundRecord>> {
        self.get_refund_impl(order_id).await
    }

    async fn claim_payment(&self, order_id: &str, revision: i32) -> Result<PaymentClaim> {
        let claim = self.claim_payment_retried(order_id, revision).await?;
        if claim == PaymentClaim::Granted {
            self.unpaid_settled(order_id).await;
        }
        Ok(claim)
    }

    async fn record_refund(&self, refund: RefundRecord) -> Result<RefundRecord> {
        self.record_refund_impl(refund).await
    }
}

impl ScyllaStore {
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

    /// The values of [`TokenStatements::token_put`] for an order created at `now`.
    fn token_values(order_id: &str, token: &PaymentToken, now: i64) -> Vec<Option<CqlValue>> {
        vec![
            Some(CqlValue::Int(ttl_until(token.expires_at, now))),
            text(&token.token),
            Some(CqlValue::BigInt(token.expires_at)),
            text(order_id),
        ]
    }

    pub(super) async fn put_payment_token_impl(
        &self,
        order_id: &str,
        token: &PaymentToken,
        now: i64,
    ) -> Result<()> {
        self.run(
            &self.tokens.token_put,
            Self::token_values(order_id, token, now),
        )
        .await
        .map(|_| ())
    }

    pub(super) async fn get_payment_token_impl(
        &self,
        order_id: &str,
        now: i64,
    ) -> Result<Option<PaymentToken>> {
        let row = self
            .first::<(Option<String>, Option<i64>)>(&self.tokens.token_get, (order_id,))
            .await?;
        Ok(match row {
            Some((Some(token), Some(expires_at))) if expires_at > now => {
                Some(PaymentToken { token, expires_at })
            }
            _ => None,
        })
    }

    pub(super) async fn delete_payment_token_impl(&self, order_id: &str) -> Result<()> {
        self.run(&self.tokens.token_delete, (order_id,))
            .await
            .map(|_| ())
    }
}
