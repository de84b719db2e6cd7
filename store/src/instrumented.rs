//! [`Instrumented`]: a [`Store`] that times every call of the store it wraps
//! (`orderflow_store_operation_seconds{operation}`) and counts the failed ones
//! (`orderflow_store_errors_total{operation}`); `operation` is the method's name.

use std::{future::Future, time::Instant};

use async_trait::async_trait;
use orderflow_schemas::{metrics, OrderItem, OrderStatus};

use crate::{
    Account, AccountStore, CatalogueStore, CreateOrder, DeliveryStore, IdempotencyKey, Invoice,
    InvoiceDraft, InvoiceStore, OrderRecord, OrderStore, OutboxEvent, OutboxStore, PaymentRecord,
    PaymentStore, PaymentToken, Product, ProductChange, Queued, RefreshToken, Reservation, Result,
    RotateOutcome, StatusUpdate, Step, StepRecord, StepStore, StockAdjustment, Store,
    VerificationCode, VerificationEmail, VerifyOutcome,
};

/// Wraps a store with metrics.
pub struct Instrumented<S: Store>(pub S);

impl<S: Store> Instrumented<S> {
    pub fn new(store: S) -> Self {
        Instrumented(store)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.0
    }
}

/// Runs one store call, recording its duration and whether it failed.
async fn timed<T>(operation: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let m = metrics::metrics();
    let started = Instant::now();
    let result = call.await;
    m.store_operation
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    // The operation's error count is served from its first call, at 0 while nothing failed.
    let errors = m.store_errors.with_label_values(&[operation]);
    if result.is_err() {
        errors.inc();
    }
    result
}

#[async_trait]
impl<S: Store> CatalogueStore for Instrumented<S> {
    async fn put_products(&self, products: Vec<Product>) -> Result<()> {
        timed("put_products", self.0.put_products(products)).await
    }

    async fn seed_products(&self, products: Vec<Product>) -> Result<usize> {
        timed("seed_products", self.0.seed_products(products)).await
    }

    async fn get_product(&self, sku: &str) -> Result<Option<Product>> {
        timed("get_product", self.0.get_product(sku)).await
    }

    async fn list_products(&self) -> Result<Vec<Product>> {
        timed("list_products", self.0.list_products()).await
    }

    async fn create_product(&self, product: Product) -> Result<bool> {
        timed("create_product", self.0.create_product(product)).await
    }

    async fn update_product(&self, sku: &str, change: ProductChange) -> Result<Option<Product>> {
        timed("update_product", self.0.update_product(sku, change)).await
    }

    async fn adjust_stock(
        &self,
        sku: &str,
        delta: i64,
        key: Option<crate::AdjustmentKey>,
    ) -> Result<StockAdjustment> {
        timed("adjust_stock", self.0.adjust_stock(sku, delta, key)).await
    }

    async fn reserve(&self, order_id: &str, items: &[OrderItem], at: i64) -> Result<Reservation> {
        timed("reserve", self.0.reserve(order_id, items, at)).await
    }

    async fn release(&self, order_id: &str) -> Result<bool> {
        timed("release", self.0.release(order_id)).await
    }
}

#[async_trait]
impl<S: Store> OrderStore for Instrumented<S> {
    async fn create_order(
        &self,
        order: OrderRecord,
        idempotency: Option<IdempotencyKey>,
        payment_token: Option<PaymentToken>,
        max_unpaid: Option<u32>,
    ) -> Result<CreateOrder> {
        timed(
            "create_order",
            self.0
                .create_order(order, idempotency, payment_token, max_unpaid),
        )
        .await
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        timed("get_order", self.0.get_order(order_id)).await
    }

    async fn order_status(&self, order_id: &str) -> Result<Option<OrderStatus>> {
        timed("order_status", self.0.order_status(order_id)).await
    }

    async fn list_customer_orders(
        &self,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        timed(
            "list_customer_orders",
            self.0.list_customer_orders(customer_id, before, limit),
        )
        .await
    }

    async fn list_orders(
        &self,
        filter: &crate::OrderFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        timed("list_orders", self.0.list_orders(filter, before, limit)).await
    }

    async fn apply_status(&self, update: StatusUpdate) -> Result<()> {
        timed("apply_status", self.0.apply_status(update)).await
    }

    async fn cancel_order(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
    ) -> Result<crate::CancelOutcome> {
        timed("cancel_order", self.0.cancel_order(order_id, reason, at)).await
    }

    async fn ship_order(&self, order_id: &str, at: i64) -> Result<crate::ShipOutcome> {
        timed("ship_order", self.0.ship_order(order_id, at)).await
    }

    async fn modify_order(
        &self,
        order_id: &str,
        items: Vec<OrderItem>,
        at: i64,
    ) -> Result<crate::ModifyOutcome> {
        timed("modify_order", self.0.modify_order(order_id, items, at)).await
    }

    async fn reprice_order(
        &self,
        order_id: &str,
        prices: Vec<crate::LinePrice>,
        at: i64,
    ) -> Result<crate::ModifyOutcome> {
        timed("reprice_order", self.0.reprice_order(order_id, prices, at)).await
    }

    async fn list_unpaid_orders(
        &self,
        placed_before: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        timed(
            "list_unpaid_orders",
            self.0.list_unpaid_orders(placed_before, limit),
        )
        .await
    }

    async fn mark_paid(&self, payment: &PaymentRecord) -> Result<Option<OrderRecord>> {
        timed("mark_paid", self.0.mark_paid(payment)).await
    }

    async fn expire_unpaid_order(
        &self,
        order_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<crate::ExpireOutcome> {
        timed(
            "expire_unpaid_order",
            self.0.expire_unpaid_order(order_id, reason, at),
        )
        .await
    }

    async fn forget_unpaid_order(&self, order_id: &str) -> Result<()> {
        timed("forget_unpaid_order", self.0.forget_unpaid_order(order_id)).await
    }
}

#[async_trait]
impl<S: Store> PaymentStore for Instrumented<S> {
    async fn get_payment_token(&self, order_id: &str, now: i64) -> Result<Option<PaymentToken>> {
        timed("get_payment_token", self.0.get_payment_token(order_id, now)).await
    }

    async fn delete_payment_token(&self, order_id: &str) -> Result<()> {
        timed(
            "delete_payment_token",
            self.0.delete_payment_token(order_id),
        )
        .await
    }

    async fn get_payment(&self, order_id: &str) -> Result<Option<PaymentRecord>> {
        timed("get_payment", self.0.get_payment(order_id)).await
    }

    async fn record_payment(&self, payment: PaymentRecord) -> Result<PaymentRecord> {
        timed("record_payment", self.0.record_payment(payment)).await
    }

    async fn get_refund(&self, order_id: &str) -> Result<Option<crate::RefundRecord>> {
        timed("get_refund", self.0.get_refund(order_id)).await
    }

    async fn record_refund(&self, refund: crate::RefundRecord) -> Result<crate::RefundRecord> {
        timed("record_refund", self.0.record_refund(refund)).await
    }

    async fn claim_payment(&self, order_id: &str, revision: i32) -> Result<crate::PaymentClaim> {
        timed("claim_payment", self.0.claim_payment(order_id, revision)).await
    }
}

#[async_trait]
impl<S: Store> InvoiceStore for Instrumented<S> {
    async fn create_invoice(&self, draft: InvoiceDraft) -> Result<Invoice> {
        timed("create_invoice", self.0.create_invoice(draft)).await
    }

    async fn get_invoice(&self, order_id: &str) -> Result<Option<Invoice>> {
        timed("get_invoice", self.0.get_invoice(order_id)).await
    }
}

#[async_trait]
impl<S: Store> StepStore for Instrumented<S> {
    async fn reserve_step(
        &self,
        order_id: &str,
        items: &[OrderItem],
        at: i64,
        record: StepRecord<Reservation>,
    ) -> Result<Step<Reservation>> {
        timed(
            "reserve_step",
            self.0.reserve_step(order_id, items, at, record),
        )
        .await
    }

    async fn record_payment_step(
        &self,
        payment: PaymentRecord,
        record: StepRecord<PaymentRecord>,
    ) -> Result<Step<PaymentRecord>> {
        timed(
            "record_payment_step",
            self.0.record_payment_step(payment, record),
        )
        .await
    }

    async fn invoice_step(
        &self,
        draft: InvoiceDraft,
        record: StepRecord<Invoice>,
    ) -> Result<Step<Invoice>> {
        timed("invoice_step", self.0.invoice_step(draft, record)).await
    }
}

#[async_trait]
impl<S: Store> AccountStore for Instrumented<S> {
    async fn create_account(&self, account: Account) -> Result<bool> {
        timed("create_account", self.0.create_account(account)).await
    }

    async fn get_account(&self, customer_id: &str) -> Result<Option<Account>> {
        timed("get_account", self.0.get_account(customer_id)).await
    }

    async fn get_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        timed("get_account_by_email", self.0.get_account_by_email(email)).await
    }

    async fn update_account(&self, account: Account) -> Result<bool> {
        timed("update_account", self.0.update_account(account)).await
    }

    async fn list_accounts(&self, after: Option<&str>, limit: usize) -> Result<Vec<Account>> {
        timed("list_accounts", self.0.list_accounts(after, limit)).await
    }

    async fn put_verification(&self, code: VerificationCode) -> Result<()> {
        timed("put_verification", self.0.put_verification(code)).await
    }

    async fn put_verification_email(
        &self,
        email: VerificationEmail,
        announce: Option<OutboxEvent>,
    ) -> Result<()> {
        timed(
            "put_verification_email",
            self.0.put_verification_email(email, announce),
        )
        .await
    }

    async fn get_verification_email(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>> {
        timed(
            "get_verification_email",
            self.0.get_verification_email(event_id, now),
        )
        .await
    }

    async fn delete_verification_email(&self, event_id: &str) -> Result<()> {
        timed(
            "delete_verification_email",
            self.0.delete_verification_email(event_id),
        )
        .await
    }

    async fn check_verification(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome> {
        timed(
            "check_verification",
            self.0.check_verification(customer_id, code_hash, now),
        )
        .await
    }

    async fn create_refresh_token(&self, token: RefreshToken) -> Result<()> {
        timed("create_refresh_token", self.0.create_refresh_token(token)).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome> {
        timed(
            "rotate_refresh_token",
            self.0
                .rotate_refresh_token(presented, next_hash, next_expires_at, now),
        )
        .await
    }

    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<bool> {
        timed(
            "revoke_refresh_family",
            self.0.revoke_refresh_family(token_hash),
        )
        .await
    }

    async fn revoke_customer_refresh_tokens(
        &self,
        customer_id: &str,
        keep: Option<&str>,
    ) -> Result<()> {
        timed(
            "revoke_customer_refresh_tokens",
            self.0.revoke_customer_refresh_tokens(customer_id, keep),
        )
        .await
    }

    async fn refresh_family_revoked(&self, customer_id: &str, family_id: &str) -> Result<bool> {
        timed(
            "refresh_family_revoked",
            self.0.refresh_family_revoked(customer_id, family_id),
        )
        .await
    }
}

#[async_trait]
impl<S: Store> DeliveryStore for Instrumented<S> {
    async fn delivered(&self, sink: &str, ids: &[String]) -> Result<Vec<bool>> {
        timed("delivered", self.0.delivered(sink, ids)).await
    }

    async fn mark_delivered(&self, sink: &str, ids: &[String]) -> Result<()> {
        timed("mark_delivered", self.0.mark_delivered(sink, ids)).await
    }
}

#[async_trait]
impl<S: Store> OutboxStore for Instrumented<S> {
    async fn outbox(&self, limit: usize) -> Result<Vec<Queued>> {
        timed("outbox", self.0.outbox(limit)).await
    }

    async fn outbox_relayed(&self, positions: &[String]) -> Result<()> {
        timed("outbox_relayed", self.0.outbox_relayed(positions)).await
    }
}

#[async_trait]
impl<S: Store> Store for Instrumented<S> {
    async fn healthcheck(&self) -> Result<()> {
        timed("healthcheck", self.0.healthcheck()).await
    }

    async fn set_marker(&self, name: &str, at: i64) -> Result<bool> {
        timed("set_marker", self.0.set_marker(name, at)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    fn count(operation: &str) -> u64 {
        metrics::metrics()
            .store_operation
            .with_label_values(&[operation])
            .get_sample_count()
    }

    #[tokio::test]
    async fn every_call_is_timed_and_failures_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Instrumented::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
        let (gets, checks) = (count("get_order"), count("healthcheck"));
        assert!(store.get_order("nope").await.unwrap().is_none());
        store.healthcheck().await.unwrap();
        assert_eq!(count("get_order"), gets + 1);
        assert_eq!(count("healthcheck"), checks + 1);

        let errors = || {
            metrics::metrics()
                .store_errors
                .with_label_values(&["test_failing"])
                .get()
        };
        let before = errors();
        let failed: Result<()> = timed("test_failing", async {
            Err(crate::StoreError::Unavailable("down".into()))
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(errors(), before + 1);
    }
}
