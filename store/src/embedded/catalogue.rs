//! [`CatalogueStore`] on redb.

use super::*;
use crate::CatalogueStore;

#[async_trait]
impl CatalogueStore for EmbeddedStore {
    async fn put_products(&self, products: Vec<Product>) -> Result<()> {
        self.write(move |txn| {
            for p in &products {
                put_json(txn, PRODUCTS, &p.sku, p)?;
            }
            Ok(())
        })
        .await
    }

    async fn seed_products(&self, products: Vec<Product>) -> Result<usize> {
        self.write(move |txn| {
            let table = txn.open_table(PRODUCTS).map_err(unavailable)?;
            let mut new = Vec::new();
            for p in &products {
                if table.get(p.sku.as_str()).map_err(unavailable)?.is_none() {
                    new.push(p);
                }
            }
            drop(table);
            for p in &new {
                put_json(txn, PRODUCTS, &p.sku, *p)?;
            }
            Ok(new.len())
        })
        .await
    }

    async fn get_product(&self, sku: &str) -> Result<Option<Product>> {
        let txn = self.read()?;
        let table = txn.open_table(PRODUCTS).map_err(unavailable)?;
        get_json(&table, "product", sku)
    }

    async fn list_products(&self) -> Result<Vec<Product>> {
        let txn = self.read()?;
        let table = txn.open_table(PRODUCTS).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(unavailable)? {
            let (_, v) = entry.map_err(unavailable)?;
            out.push(from_bytes("product", v.value())?);
        }
        Ok(out)
    }

    async fn create_product(&self, product: Product) -> Result<bool> {
        Ok(self.seed_products(vec![product]).await? == 1)
    }

    async fn update_product(&self, sku: &str, change: ProductChange) -> Result<Option<Product>> {
        let sku = sku.to_string();
        self.write(move |txn| {
            let table = txn.open_table(PRODUCTS).map_err(unavailable)?;
            let Some(mut product) = get_json::<Product, _>(&*table, "product", &sku)? else {
                return Ok(None);
            };
            drop(table);
            change.apply(&mut product);
            put_json(txn, PRODUCTS, &sku, &product)?;
            Ok(Some(product))
        })
        .await
    }

    /// Runs on the single writer, like every reservation and release: no race to lose.
    async fn adjust_stock(
        &self,
        sku: &str,
        delta: i64,
        key: Option<AdjustmentKey>,
    ) -> Result<StockAdjustment> {
        let sku = sku.to_string();
        let now = orderflow_schemas::now_millis();
        self.write(move |txn| {
            let table = txn.open_table(PRODUCTS).map_err(unavailable)?;
            let Some(mut product) = get_json::<Product, _>(&*table, "product", &sku)? else {
                return Ok(StockAdjustment::NotFound);
            };
            drop(table);
            if let Some(key) = &key {
                let keys = txn
                    .open_table(ADJUSTMENT_KEYS.records)
                    .map_err(unavailable)?;
                let seen = get_json::<AdjustmentRecord, _>(&*keys, "adjustment key", &key.key)?;
                match seen {
                    Some(seen) if seen.expires_at > now => {
                        return Ok(if seen.sku == sku && seen.delta == delta {
                            StockAdjustment::Replayed(product)
                        } else {
                            StockAdjustment::KeyReused
                        });
                    }
                    _ => {}
                }
            }
            match product.stock.checked_add(delta) {
                Some(stock) if stock >= 0 => product.stock = stock,
                Some(_) => {
                    return Ok(StockAdjustment::Insufficient {
                        available: product.stock,
                    })
                }
                None => return Err(StoreError::Invalid(format!("stock of {sku} overflows"))),
            }
            put_json(txn, PRODUCTS, &sku, &product)?;
            if let Some(key) = &key {
                let record = AdjustmentRecord {
                    sku: sku.clone(),
                    delta,
                    expires_at: key.expires_at,
                };
                ADJUSTMENT_KEYS.purge(txn, now, PURGE_BATCH)?;
                ADJUSTMENT_KEYS.put(txn, &key.key, &record, key.expires_at)?;
            }
            Ok(StockAdjustment::Adjusted(product))
        })
        .await
    }

    async fn reserve(&self, order_id: &str, items: &[OrderItem], at: i64) -> Result<Reservation> {
        let order_id = order_id.to_string();
        let items = items.to_vec();
        self.write(move |txn| reserve_in(txn, &order_id, &items, at))
            .await
    }

    async fn release(&self, order_id: &str) -> Result<bool> {
        let order_id = order_id.to_string();
        self.write(move |txn| release_in(txn, &order_id)).await
    }
}

/// Reserves all items or none, as [`ReservationPlan`] plans; see [`CatalogueStore::reserve`].
pub(super) fn reserve_in(
    txn: &Tx,
    order_id: &str,
    items: &[OrderItem],
    at: i64,
) -> Result<Reservation> {
    let mut reservations = txn.open_table(RESERVATIONS).map_err(unavailable)?;
    if let Some(done) = get_json(&*reservations, "reservation", order_id)? {
        return Ok(done);
    }
    let mut products = txn.open_table(PRODUCTS).map_err(unavailable)?;
    // A reservation is one transaction on the single writer: never left part-way, so the
    // order holds nothing yet.
    let plan = ReservationPlan::new(
        items,
        |sku| get_json::<Product, _>(&*products, "product", sku),
        |_| false,
    )?;
    let reservation = match plan {
        Err(refusal) => refusal.at(at),
        Ok(plan) => {
            for (product, quantity) in &plan.takes {
                let taken = Product {
                    stock: product.stock - quantity,
                    reserved: product.reserved + quantity,
                    ..product.clone()
                };
                let bytes = to_bytes(&taken)?;
                products
                    .insert(taken.sku.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
            }
            plan.reserved(at)
        }
    };
    let bytes = to_bytes(&reservation)?;
    reservations
        .insert(order_id, bytes.as_slice())
        .map_err(unavailable)?;
    Ok(reservation)
}
