//! Changing an unpaid order (paid by bank transfer, status `validated`): the quantities of its
//! items ([`modify_order`]) or (admins) the unit prices of its lines ([`reprice_order`]).
//!
//! The change goes to the store ([`Store::modify_order`], [`Store::reprice_order`]): the
//! reservation swaps to the new quantities (all or nothing) or unit prices, the order's
//! revision goes up, its pricing is cleared, and its `OrderModified` is queued for
//! `orders.modified` in the same write; validation re-prices the revision and produces its
//! `OrderValidated` (event id `<order>:validated:r<n>`).
//!
//! [`Store::modify_order`]: orderflow_store::OrderStore::modify_order
//! [`Store::reprice_order`]: orderflow_store::OrderStore::reprice_order

use orderflow_schemas::{now_millis, OrderItem, OrderStatus, PaymentMethod};
use orderflow_store::{LinePrice, ModifyOutcome, OrderRecord};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{announced, OpError};
use crate::{
    auth::Caller,
    body::integer,
    orders::{MAX_ITEMS, MAX_QUANTITY},
    problem::FieldError,
    ApiState,
};

/// The highest unit price an adjustment may set, in cents (a million in the currency).
pub const MAX_UNIT_PRICE_CENTS: i64 = 100_000_000;

/// A new quantity for one item of the order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemChange {
    /// A SKU the order has (only quantities change).
    #[schema(max_length = 64, example = "MUG-001")]
    pub sku: String,
    /// The new quantity; 0 drops the item.
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 1000, example = 3)]
    pub quantity: i64,
}

/// A new unit price for one line of the order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceChange {
    /// A SKU the order has.
    #[schema(max_length = 64, example = "MUG-001")]
    pub sku: String,
    /// The new unit price, in cents of the order's currency (tax is added on top, as at
    /// placing).
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 100_000_000, example = 990)]
    pub unit_price_cents: i64,
}

/// Why changes cannot apply to the order's items (quantities) or lines (prices), field by
/// field.
#[derive(Debug)]
pub enum ChangeError {
    /// A value is out of range (or there is no change at all).
    Invalid(Vec<FieldError>),
    /// The changes do not fit the order's items: a SKU it does not have, a SKU twice, no item
    /// left.
    Refused(Vec<FieldError>),
}

/// What a change came to.
#[derive(Debug)]
pub enum Modified {
    /// The order with its new quantities and revision, announced.
    Modified(Box<OrderRecord>),
    /// No such order, or another customer's.
    NotFound,
    /// The order is not paid by bank transfer (a card is charged once validated).
    NotBankTransfer { method: Option<String> },
    /// The changes do not apply to the order's items or lines.
    BadChange(ChangeError),
    /// The order is not awaiting its transfer (`claimed`: its payment is being recorded).
    NotModifiable { status: OrderStatus, claimed: bool },
    /// The stock is short for `sku`.
    Insufficient { sku: String, available: i64 },
    /// The order no longer has `sku` (a change raced this one).
    UnknownItem { sku: String },
    /// The order has changed `max` times, as many as an order may.
    TooManyRevisions { max: i32 },
}

fn field_error(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// The order's items with the changes applied (each SKU once; dropped ones left out).
pub fn apply_changes(
    order: &OrderRecord,
    changes: &[ItemChange],
) -> Result<Vec<OrderItem>, ChangeError> {
    let mut invalid = Vec::new();
    let mut conflicts = Vec::new();
    if changes.is_empty() {
        invalid.push(field_error("items".into(), "must hold at least one change"));
    }
    if changes.len() > MAX_ITEMS {
        invalid.push(field_error(
            "items".into(),
            format!("must hold at most {MAX_ITEMS} changes"),
        ));
    }
    // The order's items, one per SKU (an order may name a SKU twice).
    let mut items: Vec<OrderItem> = Vec::with_capacity(order.items.len());
    for item in &order.items {
        match items.iter_mut().find(|i| i.sku == item.sku) {
            Some(i) => i.quantity += item.quantity,
            None => items.push(item.clone()),
        }
    }
    for (i, change) in changes.iter().enumerate().take(MAX_ITEMS) {
        if !(0..=MAX_QUANTITY).contains(&change.quantity) {
            invalid.push(field_error(
                format!("items[{i}].quantity"),
                format!("must be from 0 (drop the item) to {MAX_QUANTITY}"),
            ));
            continue;
        }
        if changes[..i].iter().any(|c| c.sku == change.sku) {
            conflicts.push(field_error(format!("items[{i}].sku"), "is listed twice"));
            continue;
        }
        match items.iter_mut().find(|item| item.sku == change.sku) {
            Some(item) => item.quantity = change.quantity as i32,
            None => conflicts.push(field_error(
                format!("items[{i}].sku"),
                "is not in this order: only the quantities of its items can change",
            )),
        }
    }
    items.retain(|item| item.quantity > 0);
    if !invalid.is_empty() {
        return Err(ChangeError::Invalid(invalid));
    }
    if conflicts.is_empty() && items.is_empty() {
        conflicts.push(field_error(
            "items".into(),
            "would leave the order empty: keep at least one item, or cancel the order",
        ));
    }
    if conflicts.is_empty() {
        Ok(items)
    } else {
        Err(ChangeError::Refused(conflicts))
    }
}

/// Applies `changes` to the order for `caller` (its customer or an admin) and announces the
/// new revision.
pub async fn modify_order(
    state: &ApiState,
    caller: &Caller,
    order_id: &str,
    changes: &[ItemChange],
) -> Result<Modified, OpError> {
    let order = state
        .store
        .get_order(order_id)
        .await?
        .filter(|o| caller.may_access(&o.customer_id));
    let items = match checked(order, |o| apply_changes(o, changes)) {
        Ok(items) => items,
        Err(refused) => return Ok(refused),
    };
    let outcome = state
        .store
        .modify_order(order_id, items, now_millis())
        .await?;
    Ok(changed(state, order_id, outcome).await)
}

/// The prices asked for, checked against the order: a value out of range is
/// [`ChangeError::Invalid`]; a SKU the order does not have, or one listed twice,
/// [`ChangeError::Refused`].
pub fn price_changes(
    order: &OrderRecord,
    changes: &[PriceChange],
) -> Result<Vec<LinePrice>, ChangeError> {
    let mut invalid = Vec::new();
    let mut conflicts = Vec::new();
    if changes.is_empty() {
        invalid.push(field_error("lines".into(), "must hold at least one line"));
    }
    if changes.len() > MAX_ITEMS {
        invalid.push(field_error(
            "lines".into(),
            format!("must hold at most {MAX_ITEMS} lines"),
        ));
    }
    for (i, change) in changes.iter().enumerate().take(MAX_ITEMS) {
        if !(0..=MAX_UNIT_PRICE_CENTS).contains(&change.unit_price_cents) {
            invalid.push(field_error(
                format!("lines[{i}].unit_price_cents"),
                format!("must be from 0 to {MAX_UNIT_PRICE_CENTS}"),
            ));
        } else if changes[..i].iter().any(|c| c.sku == change.sku) {
            conflicts.push(field_error(format!("lines[{i}].sku"), "is listed twice"));
        } else if !order.items.iter().any(|item| item.sku == change.sku) {
            conflicts.push(field_error(
                format!("lines[{i}].sku"),
                "is not in this order: only the prices of its lines can change",
            ));
        }
    }
    if !invalid.is_empty() {
        return Err(ChangeError::Invalid(invalid));
    }
    if !conflicts.is_empty() {
        return Err(ChangeError::Refused(conflicts));
    }
    Ok(changes
        .iter()
        .map(|c| LinePrice {
            sku: c.sku.clone(),
            unit_price_cents: c.unit_price_cents,
        })
        .collect())
}

/// Sets new unit prices on lines of the order (for an admin: any customer's order) and
/// announces the new revision. A repricing moves no stock: it never comes to
/// [`Modified::Insufficient`].
pub async fn reprice_order(
    state: &ApiState,
    order_id: &str,
    changes: &[PriceChange],
) -> Result<Modified, OpError> {
    let order = state.store.get_order(order_id).await?;
    let prices = match checked(order, |o| price_changes(o, changes)) {
        Ok(prices) => prices,
        Err(refused) => return Ok(refused),
    };
    let outcome = state
        .store
        .reprice_order(order_id, prices, now_millis())
        .await?;
    Ok(changed(state, order_id, outcome).await)
}

/// The change `check` makes of what is asked, for the order read (`None`: no order the caller
/// may see), or why the order cannot take it: no such order, changes that do not fit it (first),
/// or a payment method other than a bank transfer.
fn checked<T>(
    order: Option<OrderRecord>,
    check: impl FnOnce(&OrderRecord) -> Result<T, ChangeError>,
) -> Result<T, Modified> {
    let Some(order) = order else {
        return Err(Modified::NotFound);
    };
    let change = check(&order).map_err(Modified::BadChange)?;
    if order.payment_method.as_deref() != Some(PaymentMethod::BANK_TRANSFER) {
        return Err(Modified::NotBankTransfer {
            method: order.payment_method,
        });
    }
    Ok(change)
}

/// What the store's change came to; a change made drops the order from the read cache and
/// wakes the relay for the `OrderModified` the store queued.
async fn changed(state: &ApiState, order_id: &str, outcome: ModifyOutcome) -> Modified {
    let order = match outcome {
        ModifyOutcome::Modified { order, .. } => order,
        ModifyOutcome::NotModifiable { status, claimed } => {
            return Modified::NotModifiable { status, claimed }
        }
        ModifyOutcome::Insufficient { sku, available } => {
            return Modified::Insufficient { sku, available }
        }
        ModifyOutcome::UnknownItem { sku } => return Modified::UnknownItem { sku },
        ModifyOutcome::TooManyRevisions { max } => return Modified::TooManyRevisions { max },
        ModifyOutcome::NotFound => return Modified::NotFound,
    };
    state.orders.invalidate(order_id).await;
    announced(state, order_id);
    Modified::Modified(order)
}
