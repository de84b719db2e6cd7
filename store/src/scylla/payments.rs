//! [`PaymentStore`] on ScyllaDB.

use super::*;
use crate::PaymentStore;

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
        self.record_once(&self.q.payment_insert, "payment", &order_id, payment)
            .await
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
}
