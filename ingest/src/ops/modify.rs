//! Changing the quantities of an unpaid order (paid by bank transfer, status `validated`).
//!
//! The change goes to the store ([`Store::modify_order`]): the reservation swaps to the new
//! quantities all or nothing, the order's revision goes up, its pricing is cleared, and its
//! `OrderModified` is queued for `orders.modified` in the same write; validation re-prices the
//! revision and produces its `OrderValidated` (event id `<order>:validated:r<n>`).
//!
//! [`Store::modify_order`]: orderflow_store::Store::modify_order

use orderflow_schemas::{now_millis, OrderItem, OrderStatus, PaymentMethod};
use orderflow_store::{ModifyOutcome, OrderRecord};
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

/// Why changes cannot apply to the order's items, field by field.
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
    /// The changes do not apply to the order's items.
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
    let Some(order) = state
        .store
        .get_order(order_id)
        .await?
        .filter(|o| caller.may_access(&o.customer_id))
    else {
        return Ok(Modified::NotFound);
    };
    let items = match apply_changes(&order, changes) {
        Ok(items) => items,
        Err(e) => return Ok(Modified::BadChange(e)),
    };
    if order.payment_method.as_deref() != Some(PaymentMethod::BANK_TRANSFER) {
        return Ok(Modified::NotBankTransfer {
            method: order.payment_method,
        });
    }
    let order = match state
        .store
        .modify_order(order_id, items, now_millis())
        .await?
    {
        ModifyOutcome::Modified { order, .. } => order,
        ModifyOutcome::NotModifiable { status, claimed } => {
            return Ok(Modified::NotModifiable { status, claimed })
        }
        ModifyOutcome::Insufficient { sku, available } => {
            return Ok(Modified::Insufficient { sku, available })
        }
        ModifyOutcome::UnknownItem { sku } => return Ok(Modified::UnknownItem { sku }),
        ModifyOutcome::TooManyRevisions { max } => return Ok(Modified::TooManyRevisions { max }),
        ModifyOutcome::NotFound => return Ok(Modified::NotFound),
    };
    state.orders.invalidate(order_id).await;
    announced(state);
    Ok(Modified::Modified(order))
}
