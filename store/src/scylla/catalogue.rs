//! [`CatalogueStore`] on ScyllaDB.

use super::*;
use crate::CatalogueStore;

#[async_trait]
impl CatalogueStore for ScyllaStore {
    async fn put_products(&self, products: Vec<Product>) -> Result<()> {
        for p in &products {
            retry("put_product", || async {
                match self.read_product(&p.sku).await? {
                    None => {
                        let lwt = self.insert_product(p).await?;
                        lwt.applied.then_some(()).ok_or_else(raced)
                    }
                    Some(row) => {
                        let lwt = self
                            .lwt(
                                &self.q.product_update,
                                (
                                    p.name.as_str(),
                                    p.price_cents,
                                    p.currency.as_str(),
                                    p.stock,
                                    p.reserved,
                                    p.discontinued,
                                    row.version + 1,
                                    p.sku.as_str(),
                                    row.version,
                                ),
                            )
                            .await?;
                        lwt.applied.then_some(()).ok_or_else(raced)
                    }
                }
            })
            .await?;
        }
        Ok(())
    }

    async fn seed_products(&self, products: Vec<Product>) -> Result<usize> {
        let mut new = 0;
        for p in &products {
            let lwt = retry("seed_product", || self.insert_product(p)).await?;
            new += usize::from(lwt.applied);
        }
        Ok(new)
    }

    async fn get_product(&self, sku: &str) -> Result<Option<Product>> {
        Ok(self.read_product(sku).await?.map(|row| row.product))
    }

    async fn list_products(&self) -> Result<Vec<Product>> {
        let pager = self
            .session
            .execute_iter(self.q.product_list.clone(), ())
            .await
            .map_err(unavailable)?;
        let mut products: Vec<Product> = pager
            .rows_stream::<ProductRow>()
            .map_err(corrupt)?
            .map_ok(|row| StockRow::from(row).product)
            .try_collect()
            .await
            .map_err(unavailable)?;
        products.sort_by(|a, b| a.sku.cmp(&b.sku));
        Ok(products)
    }

    async fn create_product(&self, product: Product) -> Result<bool> {
        let lwt = retry("create_product", || self.insert_product(&product)).await?;
        if lwt.applied {
            return Ok(true);
        }
        // Not applied: someone else's product, or ours from an attempt whose answer was lost
        // (then the row is exactly what we wrote, untouched since: version 0).
        let row = retry("create_product", || self.read_product(&product.sku)).await?;
        Ok(row.is_some_and(|row| row.version == 0 && row.product == product))
    }

    async fn update_product(&self, sku: &str, change: ProductChange) -> Result<Option<Product>> {
        retry("update_product", || async {
            let Some(row) = self.read_product(sku).await? else {
                return Ok(None);
            };
            let mut product = row.product.clone();
            change.apply(&mut product);
            let lwt = self
                .lwt(
                    &self.q.product_edit,
                    (
                        product.name.as_str(),
                        product.price_cents,
                        product.discontinued,
                        row.version + 1,
                        sku,
                        row.version,
                    ),
                )
                .await?;
            lwt.applied.then_some(Some(product)).ok_or_else(raced)
        })
        .await
    }

    /// A compare-and-set on `products.version`, as reservations move stock, so the two never
    /// overwrite each other. The change is recorded in `holds` under a key of its own, in the
    /// same write: when an attempt's answer is lost (a timeout), the next read tells whether it
    /// applied, so it is never applied twice. The entry is dropped afterwards.
    async fn adjust_stock(
        &self,
        sku: &str,
        delta: i64,
        key: Option<AdjustmentKey>,
    ) -> Result<StockAdjustment> {
        // An adjustment under a key claims the key first; a repeat that finds it done answers
        // from it, one that finds it pending goes on, and the product's hold of the key
        // (written by the same compare-and-set as the stock) stops a second move.
        let hold = match &key {
            Some(k) => {
                if let Some(answer) = self.claim_adjustment_key(k, sku, delta).await? {
                    return Ok(answer);
                }
                format!("adjust:key:{}", k.key)
            }
            None => format!("adjust:{}", Lease::new().owner),
        };
        let mut attempts = 0;
        let outcome = loop {
            let Some(row) = retry("adjust_stock", || self.read_product(sku)).await? else {
                return Ok(StockAdjustment::NotFound);
            };
            if row.holds.contains_key(&hold) {
                break StockAdjustment::Adjusted(row.product);
            }
            // The hold is cleared only after the key is marked done: a product read without the
            // hold, then a key found done, means another call applied it and cleaned up.
            if let Some(k) = &key {
                if self.adjustment_done(&k.key).await? {
                    return Ok(StockAdjustment::Replayed(row.product));
                }
            }
            let Some(stock) = row.product.stock.checked_add(delta) else {
                return Err(StoreError::Invalid(format!("stock of {sku} overflows")));
            };
            if stock < 0 {
                break StockAdjustment::Insufficient {
                    available: row.product.stock,
                };
            }
            let values = (
                stock,
                hold.as_str(),
                delta,
                row.version + 1,
                sku,
                row.version,
            );
            match self.lwt(&self.q.product_adjust, values).await {
                Ok(lwt) if lwt.applied => {
                    let mut product = row.product;
                    product.stock = stock;
                    break StockAdjustment::Adjusted(product);
                }
                // Lost the race (or the answer): read again.
                Ok(_) => {}
                Err(e) if e.is_retriable() => {}
                Err(e) => return Err(e),
            }
            attempts += 1;
            if attempts >= ATTEMPTS * 8 {
                return Err(StoreError::Unavailable(format!(
                    "the stock of {sku} is too contended; try again"
                )));
            }
            tokio::time::sleep(jitter(Duration::from_millis(2))).await;
        };
        match (&outcome, &key) {
            (StockAdjustment::Adjusted(_), Some(k)) => {
                // Done first, then the hold goes (with a version bump, see above).
                retry("adjust_stock", || async {
                    self.lwt(&self.q.adjustment_key_done, (k.key.as_str(),))
                        .await
                        .map(|_| ())
                })
                .await?;
                if let Err(e) = self.clear_adjustment_hold(sku, &hold).await {
                    tracing::warn!(sku, error = %e, "Could not clear a stock adjustment's hold.");
                }
            }
            (StockAdjustment::Adjusted(_), None) => {
                // Only bookkeeping: a stale entry changes no stock and no decision.
                if let Err(e) = self.drop_holds(&hold, &[sku]).await {
                    tracing::warn!(sku, error = %e, "Could not drop a stock adjustment's marker.");
                }
            }
            // A refused adjustment leaves its key pending: a retry of it goes on.
            _ => {}
        }
        Ok(outcome)
    }

    async fn reserve(&self, order_id: &str, items: &[OrderItem], at: i64) -> Result<Reservation> {
        let lease = Lease::new();
        retry("reserve", || self.reserve_once(order_id, items, at, &lease)).await
    }

    async fn release(&self, order_id: &str) -> Result<bool> {
        let lease = Lease::new();
        retry("release", || self.release_once(order_id, &lease)).await
    }
}

impl ScyllaStore {
    /// One attempt of [`CatalogueStore::reserve`], under the order's reservation lease: plans
    /// from the products as read ([`ReservationPlan`]), takes each SKU's units by
    /// compare-and-set with a hold naming the order (so that a retry after a crash takes
    /// nothing twice), and records the outcome. A refusal gives back what an earlier attempt
    /// took.
    pub(super) async fn reserve_once(
        &self,
        order_id: &str,
        items: &[OrderItem],
        at: i64,
        lease: &Lease,
    ) -> Result<Reservation> {
        match self.claim(order_id, lease, true).await? {
            Claim::Decided(outcome) => return Ok(outcome),
            Claim::Owned(Some(outcome)) => {
                self.let_go(order_id, lease).await?;
                return Ok(outcome);
            }
            Claim::Owned(None) => {}
            Claim::Missing => unreachable!("claim with create never answers Missing"),
        }
        let skus: Vec<&str> = ReservationPlan::demand(items)
            .into_iter()
            .map(|(sku, _)| sku)
            .collect();
        let mut rows: Vec<StockRow> = Vec::with_capacity(skus.len());
        for sku in &skus {
            rows.extend(self.read_product(sku).await?);
        }
        let row = |sku: &str| rows.iter().find(|row| row.product.sku == sku);
        let plan = ReservationPlan::new(
            items,
            |sku| Ok(row(sku).map(|row| row.product.clone())),
            |sku| row(sku).is_some_and(|row| holds(row, order_id)),
        )?;
        let outcome = match plan {
            Ok(plan) => match self.take(order_id, &plan.takes, &rows, lease).await? {
                Ok(()) => plan.reserved(at),
                Err(refusal) => refusal.at(at),
            },
            Err(refusal) => refusal.at(at),
        };
        if matches!(outcome, Reservation::Rejected { .. }) {
            self.give_back(order_id, &skus, lease).await?;
        }
        self.decide(order_id, lease, &outcome).await?;
        self.drop_holds(order_id, &skus).await?;
        Ok(outcome)
    }

    /// Takes each planned SKU's units, unless an earlier attempt of this order already did.
    /// The plan's read (`rows`) serves the first compare-and-set; a lost race reads again and
    /// checks again.
    async fn take(
        &self,
        order_id: &str,
        takes: &[(Product, i64)],
        rows: &[StockRow],
        lease: &Lease,
    ) -> Result<Result<(), Refusal>> {
        for (product, quantity) in takes {
            let sku = product.sku.as_str();
            let mut row = rows
                .iter()
                .find(|row| row.product.sku == sku)
                .cloned()
                .expect("the plan takes only products that were read");
            loop {
                lease.check(order_id)?;
                if holds(&row, order_id) {
                    break;
                }
                if let Err(refusal) =
                    ReservationPlan::check(sku, *quantity, Some(&row.product), false)
                {
                    return Ok(Err(refusal));
                }
                if self
                    .move_stock(&row, order_id, *quantity, *quantity)
                    .await?
                {
                    break;
                }
                // Lost the race for this product: let the winner's round finish.
                tokio::time::sleep(jitter(Duration::from_millis(2))).await;
                match self.read_product(sku).await? {
                    Some(now) => row = now,
                    None => return Ok(ReservationPlan::check(sku, *quantity, None, false)),
                }
            }
        }
        Ok(Ok(()))
    }
}

/// Whether the order holds units of the product already.
fn holds(row: &StockRow, order_id: &str) -> bool {
    row.holds.get(order_id).copied().unwrap_or(0) > 0
}
