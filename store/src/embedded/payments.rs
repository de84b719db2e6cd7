//! [`PaymentStore`] on redb.

use super::*;
use crate::PaymentStore;

#[async_trait]
impl PaymentStore for EmbeddedStore {
    async fn get_payment_token(&self, order_id: &str, now: i64) -> Result<Option<PaymentToken>> {
        PAYMENT_TOKENS.get(&self.read()?, order_id, now)
    }

    async fn delete_payment_token(&self, order_id: &str) -> Result<()> {
        let order_id = order_id.to_string();
        self.write(move |txn| PAYMENT_TOKENS.remove(txn, &order_id))
            .await
    }

    async fn get_payment(&self, order_id: &str) -> Result<Option<PaymentRecord>> {
        let txn = self.read()?;
        let table = txn.open_table(PAYMENTS).map_err(unavailable)?;
        get_json(&table, "payment", order_id)
    }

    async fn record_payment(&self, payment: PaymentRecord) -> Result<PaymentRecord> {
        self.write(move |txn| record_payment_in(txn, &payment))
            .await
    }

    async fn get_refund(&self, order_id: &str) -> Result<Option<RefundRecord>> {
        let txn = self.read()?;
        let table = txn.open_table(REFUNDS).map_err(unavailable)?;
        get_json(&table, "refund", order_id)
    }

    async fn record_refund(&self, refund: RefundRecord) -> Result<RefundRecord> {
        self.write(move |txn| {
            let table = txn.open_table(REFUNDS).map_err(unavailable)?;
            if let Some(existing) = get_json(&*table, "refund", &refund.order_id)? {
                return Ok(existing);
            }
            drop(table);
            put_json(txn, REFUNDS, &refund.order_id, &refund)?;
            Ok(refund.clone())
        })
        .await
    }

    async fn claim_payment(&self, order_id: &str, revision: i32) -> Result<PaymentClaim> {
        let order_id = order_id.to_string();
        self.write(move |txn| claim_in(txn, &order_id, revision))
            .await
    }
}

/// Records the charge unless one is recorded, and forgets the card token; see
/// [`PaymentStore::record_payment`].
pub(super) fn record_payment_in(txn: &Tx, payment: &PaymentRecord) -> Result<PaymentRecord> {
    PAYMENT_TOKENS.remove(txn, &payment.order_id)?;
    let table = txn.open_table(PAYMENTS).map_err(unavailable)?;
    if let Some(existing) = get_json(&*table, "payment", &payment.order_id)? {
        return Ok(existing);
    }
    drop(table);
    put_json(txn, PAYMENTS, &payment.order_id, payment)?;
    Ok(payment.clone())
}
