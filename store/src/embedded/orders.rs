//! [`OrderStore`] on redb.

use super::*;
use crate::OrderStore;

#[async_trait]
impl OrderStore for EmbeddedStore {
    async fn create_order(
        &self,
        order: OrderRecord,
        idempotency: Option<IdempotencyKey>,
        payment_token: Option<PaymentToken>,
        max_unpaid: Option<u32>,
    ) -> Result<CreateOrder> {
        let now = order.created_at;
        self.write(move |txn| {
            if let Some(key) = &idempotency {
                let ikey = compound(&order.customer_id, &key.key);
                let table = txn.open_table(IDEMPOTENCY.records).map_err(unavailable)?;
                let seen: Option<IdempotencyRecord> = get_json(&*table, "idempotency", &ikey)?;
                drop(table);
                if let Some(seen) = seen.filter(|s| s.expires_at > now) {
                    if seen.fingerprint != key.fingerprint {
                        return Ok(CreateOrder::KeyReused {
                            order_id: seen.order_id,
                        });
                    }
                    if let Some(existing) = order_in(txn, &seen.order_id)? {
                        return Ok(CreateOrder::Existing(Box::new(existing)));
                    }
                }
            }
            let unpaid = awaits_transfer(&order);
            if let Some(max) = max_unpaid.filter(|_| unpaid) {
                // Counted in this transaction: two racing orders cannot both take the last place.
                let open = count_unpaid_in(txn, &order.customer_id)?;
                if open >= max {
                    return Ok(CreateOrder::TooManyUnpaid { open });
                }
            }
            if let Some(key) = &idempotency {
                IDEMPOTENCY.purge(txn, now, PURGE_BATCH)?;
                IDEMPOTENCY.put(
                    txn,
                    &compound(&order.customer_id, &key.key),
                    &IdempotencyRecord {
                        order_id: order.order_id.clone(),
                        fingerprint: key.fingerprint.clone(),
                        expires_at: key.expires_at,
                    },
                    key.expires_at,
                )?;
            }
            put_json(txn, ORDERS, &order.order_id, &order)?;
            txn.open_table(CUSTOMER_ORDERS)
                .map_err(unavailable)?
                .insert(compound(&order.customer_id, &order.order_id).as_str(), ())
                .map_err(unavailable)?;
            if unpaid {
                index_unpaid_in(txn, &order)?;
            }
            if let Some(token) = &payment_token {
                PAYMENT_TOKENS.purge(txn, orderflow_schemas::now_millis(), PURGE_BATCH)?;
                PAYMENT_TOKENS.put(txn, &order.order_id, token, token.expires_at)?;
            }
            queue_in(txn, &OutboxEvent::of(&crate::outbox::accepted(&order))?)?;
            Ok(CreateOrder::Created)
        })
        .await
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        let txn = self.read()?;
        let table = txn.open_table(ORDERS).map_err(unavailable)?;
        get_json(&table, "order", order_id)
    }

    async fn order_status(&self, order_id: &str) -> Result<Option<OrderStatus>> {
        /// The one field of an order's record this reads; the others are skipped unparsed.
        #[derive(serde::Deserialize)]
        struct Status {
            status: OrderStatus,
        }
        let txn = self.read()?;
        let table = txn.open_table(ORDERS).map_err(unavailable)?;
        Ok(get_json::<Status, _>(&table, "order", order_id)?.map(|order| order.status))
    }

    async fn list_customer_orders(
        &self,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        let txn = self.read()?;
        let index = txn.open_table(CUSTOMER_ORDERS).map_err(unavailable)?;
        let orders = txn.open_table(ORDERS).map_err(unavailable)?;
        let start = compound(customer_id, "");
        let end = match before {
            Some(before) => compound(customer_id, before),
            None => format!("{customer_id}\u{1}"),
        };
        let mut out = Vec::new();
        for entry in index
            .range(start.as_str()..end.as_str())
            .map_err(unavailable)?
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(unavailable)?;
            let order_id = key
                .value()
                .rsplit('\u{0}')
                .next()
                .unwrap_or_default()
                .to_string();
            if let Some(order) = get_json(&orders, "order", &order_id)? {
                out.push(order);
            }
        }
        Ok(out)
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
        let txn = self.read()?;
        let orders = txn.open_table(ORDERS).map_err(unavailable)?;
        let mut out = Vec::new();
        let mut keep = |order: OrderRecord| {
            if filter.matches(&order) {
                out.push(order);
            }
            out.len() < limit
        };
        // One customer's orders through its index; everyone's in key (= id) order.
        if let Some(customer_id) = &filter.customer_id {
            let index = txn.open_table(CUSTOMER_ORDERS).map_err(unavailable)?;
            let start = compound(customer_id, "");
            let end = match before {
                Some(before) => compound(customer_id, before),
                None => format!("{customer_id}\u{1}"),
            };
            for entry in index
                .range(start.as_str()..end.as_str())
                .map_err(unavailable)?
                .rev()
            {
                let (key, _) = entry.map_err(unavailable)?;
                let order_id = key.value().rsplit('\u{0}').next().unwrap_or_default();
                if let Some(order) = get_json(&orders, "order", order_id)? {
                    if !keep(order) {
                        break;
                    }
                }
            }
        } else {
            let range = match before {
                Some(before) => orders.range(..before),
                None => orders.range::<&str>(..),
            };
            for entry in range.map_err(unavailable)?.rev() {
                let (_, value) = entry.map_err(unavailable)?;
                if !keep(from_bytes("order", value.value())?) {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn apply_status(&self, update: StatusUpdate) -> Result<()> {
        self.write(move |txn| apply_status_in(txn, &update)).await
    }

    async fn cancel_order(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
    ) -> Result<CancelOutcome> {
        let order_id = order_id.to_string();
        let reason = reason.map(str::to_string);
        self.write(move |txn| cancel_in(txn, &order_id, reason.as_deref(), at))
            .await
    }

    async fn ship_order(&self, order_id: &str, at: i64) -> Result<ShipOutcome> {
        let order_id = order_id.to_string();
        self.write(move |txn| ship_in(txn, &order_id, at)).await
    }

    async fn modify_order(
        &self,
        order_id: &str,
        items: Vec<OrderItem>,
        at: i64,
    ) -> Result<ModifyOutcome> {
        let order_id = order_id.to_string();
        let change = crate::OrderChange::Quantities(items);
        self.write(move |txn| modify_in(txn, &order_id, &change, at))
            .await
    }

    async fn reprice_order(
        &self,
        order_id: &str,
        prices: Vec<crate::LinePrice>,
        at: i64,
    ) -> Result<ModifyOutcome> {
        let order_id = order_id.to_string();
        let change = crate::OrderChange::Prices(prices);
        self.write(move |txn| modify_in(txn, &order_id, &change, at))
            .await
    }

    async fn mark_paid(&self, payment: &PaymentRecord) -> Result<Option<OrderRecord>> {
        let payment = payment.clone();
        self.write(move |txn| {
            let Some(order) = order_in(txn, &payment.order_id)? else {
                return Ok(None);
            };
            let event_id = OrderStatus::Paid.event_id(&order.order_id);
            let Some(paid) = crate::outbox::paid(&order, &payment) else {
                return Ok(Some(order));
            };
            if order.timeline.iter().any(|t| t.event_id == event_id) {
                return Ok(Some(order));
            }
            apply_status_in(txn, &StatusUpdate::paid(&order, &payment))?;
            queue_in(txn, &OutboxEvent::of(&paid)?)?;
            let order = order_in(txn, &payment.order_id)?;
            if let Some(order) = order
                .as_ref()
                .filter(|o| o.status == OrderStatus::Cancelled)
            {
                // Cancelled before the transfer was recorded: announced again with the refund.
                let refund = Some((payment.amount_cents, payment.currency.clone()));
                queue_in(txn, &OutboxEvent::of(&cancellation_event(order, refund))?)?;
            }
            Ok(order)
        })
        .await
    }

    async fn list_unpaid_orders(
        &self,
        placed_before: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        let txn = self.read()?;
        let index = txn.open_table(UNPAID).map_err(unavailable)?;
        let orders = txn.open_table(ORDERS).map_err(unavailable)?;
        let end = unpaid_key(placed_before, "");
        let mut out = Vec::new();
        for entry in index.range(..end.as_str()).map_err(unavailable)? {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(unavailable)?;
            let order_id = key.value().rsplit('\u{0}').next().unwrap_or_default();
            if let Some(order) = get_json(&orders, "order", order_id)? {
                out.push(order);
            }
        }
        Ok(out)
    }

    async fn expire_unpaid_order(
        &self,
        order_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<ExpireOutcome> {
        let order_id = order_id.to_string();
        let reason = reason.to_string();
        self.write(move |txn| expire_in(txn, &order_id, &reason, at))
            .await
    }

    async fn forget_unpaid_order(&self, order_id: &str) -> Result<()> {
        let order_id = order_id.to_string();
        self.write(move |txn| match order_in(txn, &order_id)? {
            Some(order) => unindex_unpaid_in(txn, &order),
            None => Ok(()),
        })
        .await
    }
}
