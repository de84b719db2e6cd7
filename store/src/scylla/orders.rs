//! [`OrderStore`] on ScyllaDB.

use orderflow_schemas::{OrderAccepted, OrderPaid};

use super::*;
use crate::{OrderStore, OutboxEvent};

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
