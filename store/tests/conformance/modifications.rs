//! Modifications and payment claims.

use super::*;
use orderflow_store::LinePrice;

/// A validated order of `items` with its stock reserved, as the validation stage leaves it.
pub(crate) async fn validated_order(store: &dyn Store, items: &[OrderItem]) -> OrderRecord {
    let o = OrderRecord {
        items: items.to_vec(),
        ..order(&unique("customer"), T0)
    };
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();
    let reservation = store.reserve(&o.order_id, items, T0 + 1).await.unwrap();
    assert!(matches!(reservation, Reservation::Reserved { .. }));
    store
        .apply_status(StatusUpdate {
            pricing: Some(pricing(1)),
            ..update(&o, OrderStatus::Validated, T0 + 2)
        })
        .await
        .unwrap();
    o
}

pub(crate) fn modified(outcome: ModifyOutcome) -> OrderRecord {
    match outcome {
        ModifyOutcome::Modified { order, .. } => *order,
        other => panic!("expected Modified, got {other:?}"),
    }
}

/// A modification swaps the reserved quantities all or nothing, keeps the unit prices, bumps
/// the revision (once per real change), clears the pricing and names what it refuses.
pub(crate) async fn check_modify_swaps_the_reservation_all_or_nothing(store: Arc<dyn Store>) {
    let (a, b) = (unique("sku-a"), unique("sku-b"));
    store
        .put_products(vec![product(&a, 10), product(&b, 5)])
        .await
        .unwrap();
    let o = validated_order(&*store, &[item(&a, 2), item(&b, 1)]).await;
    assert_eq!(stock(&*store, &a).await, (8, 2));
    assert_eq!(stock(&*store, &b).await, (4, 1));

    let ModifyOutcome::Modified {
        order: first,
        lines,
    } = store
        .modify_order(&o.order_id, vec![item(&a, 5), item(&b, 1)], T0 + 10)
        .await
        .unwrap()
    else {
        panic!("expected the first modification to apply");
    };
    assert_eq!(first.revision, 1);
    assert_eq!(first.items, vec![item(&a, 5), item(&b, 1)]);
    assert_eq!(first.pricing, None, "re-priced by validation");
    assert_eq!(first.status, OrderStatus::Validated);
    assert_eq!(reserved_quantity(&lines, &a), 5);
    assert_eq!(
        lines[0].unit_price_cents, 1250,
        "the price the order was placed at"
    );
    let entry = first
        .timeline
        .iter()
        .find(|t| t.event_id == format!("{}:modified:r1", o.order_id))
        .expect("the modification is on the timeline");
    assert_eq!(entry.at, T0 + 10);
    assert_eq!(stock(&*store, &a).await, (5, 5));
    assert_eq!(stock(&*store, &b).await, (4, 1));
    assert_eq!(store.get_order(&o.order_id).await.unwrap().unwrap(), *first);

    // Dropping B gives its unit back.
    let second = modified(
        store
            .modify_order(&o.order_id, vec![item(&a, 6)], T0 + 20)
            .await
            .unwrap(),
    );
    assert_eq!(second.revision, 2);
    assert_eq!(stock(&*store, &a).await, (4, 6));
    assert_eq!(stock(&*store, &b).await, (5, 0));

    // More than the stock: refused as a whole.
    assert_eq!(
        store
            .modify_order(&o.order_id, vec![item(&a, 11)], T0 + 30)
            .await
            .unwrap(),
        ModifyOutcome::Insufficient {
            sku: a.clone(),
            available: 4
        }
    );
    assert_eq!(stock(&*store, &a).await, (4, 6));
    // The same quantities again: nothing changes.
    let same = modified(
        store
            .modify_order(&o.order_id, vec![item(&a, 6)], T0 + 40)
            .await
            .unwrap(),
    );
    assert_eq!(same.revision, 2);
    assert_eq!(stock(&*store, &a).await, (4, 6));
    // Only quantities change: no new SKUs, no empty order, no zero quantities.
    assert_eq!(
        store
            .modify_order(&o.order_id, vec![item(&b, 1), item(&a, 1)], T0 + 50)
            .await
            .unwrap(),
        ModifyOutcome::UnknownItem { sku: b.clone() }
    );
    for bad in [vec![], vec![item(&a, 0)], vec![item(&a, 1), item(&a, 2)]] {
        assert!(matches!(
            store.modify_order(&o.order_id, bad, T0 + 60).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert_eq!(
        store
            .get_order(&o.order_id)
            .await
            .unwrap()
            .unwrap()
            .revision,
        2
    );

    // A cancel releases what the order holds now.
    cancelled(
        store
            .cancel_order(&o.order_id, None, T0 + 70)
            .await
            .unwrap(),
    );
    assert_eq!(stock(&*store, &a).await, (10, 0));
    assert_eq!(stock(&*store, &b).await, (5, 0));
    assert_eq!(
        store
            .modify_order(&o.order_id, vec![item(&a, 1)], T0 + 80)
            .await
            .unwrap(),
        ModifyOutcome::NotModifiable {
            status: OrderStatus::Cancelled,
            claimed: false
        }
    );

    // Not validated yet, or unknown.
    let accepted = order(&unique("customer"), T0);
    store
        .create_order(accepted.clone(), None, None, None)
        .await
        .unwrap();
    assert_eq!(
        store
            .modify_order(&accepted.order_id, vec![item(&a, 1)], T0)
            .await
            .unwrap(),
        ModifyOutcome::NotModifiable {
            status: OrderStatus::Accepted,
            claimed: false
        }
    );
    assert_eq!(
        store
            .modify_order(&new_id(), vec![item(&a, 1)], T0)
            .await
            .unwrap(),
        ModifyOutcome::NotFound
    );
}

/// A payment claim is granted for the current revision only (again and again), refused for an
/// earlier one and for a final order; once granted, the quantities are final. A late step of
/// an earlier revision does not price the current one.
pub(crate) async fn check_payment_claims_fence_modifications(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 20)]).await.unwrap();

    let claimed = validated_order(&*store, &[item(&sku, 1)]).await;
    assert_eq!(
        store.claim_payment(&claimed.order_id, 0).await.unwrap(),
        PaymentClaim::Granted
    );
    assert_eq!(
        store.claim_payment(&claimed.order_id, 0).await.unwrap(),
        PaymentClaim::Granted,
        "a redelivery claims again"
    );
    assert_eq!(
        store
            .modify_order(&claimed.order_id, vec![item(&sku, 2)], T0 + 10)
            .await
            .unwrap(),
        ModifyOutcome::NotModifiable {
            status: OrderStatus::Validated,
            claimed: true
        }
    );
    assert_eq!(stock(&*store, &sku).await, (19, 1));

    let o = validated_order(&*store, &[item(&sku, 1)]).await;
    modified(
        store
            .modify_order(&o.order_id, vec![item(&sku, 3)], T0 + 10)
            .await
            .unwrap(),
    );
    assert_eq!(
        store.claim_payment(&o.order_id, 0).await.unwrap(),
        PaymentClaim::Stale { current: 1 }
    );
    // Revision 0's late pricing is ignored; revision 1's is taken.
    store
        .apply_status(StatusUpdate {
            pricing: Some(pricing(1)),
            event_id: format!("{}:late", o.order_id),
            ..update(&o, OrderStatus::Validated, T0 + 11)
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_order(&o.order_id).await.unwrap().unwrap().pricing,
        None
    );
    store
        .apply_status(StatusUpdate {
            pricing: Some(pricing(3)),
            event_id: OrderStatus::Validated.revision_event_id(&o.order_id, 1),
            revision: 1,
            ..update(&o, OrderStatus::Validated, T0 + 12)
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_order(&o.order_id).await.unwrap().unwrap().pricing,
        Some(pricing(3))
    );
    assert_eq!(
        store.claim_payment(&o.order_id, 1).await.unwrap(),
        PaymentClaim::Granted
    );

    let gone = validated_order(&*store, &[item(&sku, 1)]).await;
    cancelled(
        store
            .cancel_order(&gone.order_id, None, T0 + 5)
            .await
            .unwrap(),
    );
    assert_eq!(
        store.claim_payment(&gone.order_id, 0).await.unwrap(),
        PaymentClaim::Final(OrderStatus::Cancelled)
    );
    assert_eq!(
        store.claim_payment(&new_id(), 0).await.unwrap(),
        PaymentClaim::NotFound
    );
}

/// A modification racing the payment claim of the same order: exactly one wins, and the
/// stock matches the winner (the new quantities held, or the old ones).
pub(crate) async fn check_racing_modify_and_claim_one_wins(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 1000)]).await.unwrap();
    let mut orders = Vec::new();
    for _ in 0..20 {
        orders.push(validated_order(&*store, &[item(&sku, 1)]).await);
    }
    let mut handles = Vec::new();
    for o in &orders {
        let barrier = Arc::new(Barrier::new(2));
        let (s1, b1, id1) = (store.clone(), barrier.clone(), o.order_id.clone());
        let sku1 = sku.clone();
        handles.push(tokio::spawn(async move {
            b1.wait().await;
            let outcome = s1
                .modify_order(&id1, vec![item(&sku1, 2)], T0 + 10)
                .await
                .unwrap();
            (matches!(outcome, ModifyOutcome::Modified { .. }), true)
        }));
        let (s2, b2, id2) = (store.clone(), barrier, o.order_id.clone());
        handles.push(tokio::spawn(async move {
            b2.wait().await;
            let claim = s2.claim_payment(&id2, 0).await.unwrap();
            (claim == PaymentClaim::Granted, false)
        }));
    }
    let results = join(handles).await;
    let mut held = 0;
    for pair in results.chunks(2) {
        let (modified, claimed) = (pair[0].0, pair[1].0);
        assert!(modified != claimed, "exactly one of modify and claim wins");
        held += if modified { 2 } else { 1 };
    }
    assert_eq!(stock(&*store, &sku).await, (1000 - held, held));
}

/// A stock adjustment under a key applies once: a repeat (also many at once) answers replayed
/// and moves nothing more; the key with another adjustment is refused; an expired key is free;
/// a refused adjustment can be tried again under its key.
pub(crate) async fn check_keyed_stock_adjustments_apply_once(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 5)]).await.unwrap();
    let key = |k: &str, expires_at: i64| {
        Some(AdjustmentKey {
            key: format!("{sku}-{k}"),
            expires_at,
        })
    };
    let later = orderflow_schemas::now_millis() + 60_000;

    let first = store.adjust_stock(&sku, 3, key("a", later)).await.unwrap();
    assert!(
        matches!(first, StockAdjustment::Adjusted(ref p) if p.stock == 8),
        "{first:?}"
    );
    let again = store.adjust_stock(&sku, 3, key("a", later)).await.unwrap();
    assert!(
        matches!(again, StockAdjustment::Replayed(ref p) if p.stock == 8),
        "{again:?}"
    );
    assert_eq!(
        store.adjust_stock(&sku, 4, key("a", later)).await.unwrap(),
        StockAdjustment::KeyReused
    );
    assert_eq!(stock(&*store, &sku).await, (8, 0));

    // Ten at once with one key: one moves the stock.
    let mut handles = Vec::new();
    for _ in 0..10 {
        let (store, sku, key) = (store.clone(), sku.clone(), key("b", later));
        handles.push(tokio::spawn(async move {
            store.adjust_stock(&sku, -2, key).await.unwrap()
        }));
    }
    let outcomes = join(handles).await;
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            StockAdjustment::Adjusted(_) | StockAdjustment::Replayed(_)
        )),
        "{outcomes:?}"
    );
    assert_eq!(stock(&*store, &sku).await, (6, 0), "applied once");

    // Refused, then tried again under the same key once there is stock.
    assert_eq!(
        store.adjust_stock(&sku, -7, key("c", later)).await.unwrap(),
        StockAdjustment::Insufficient { available: 6 }
    );
    store.adjust_stock(&sku, 1, None).await.unwrap();
    let retried = store.adjust_stock(&sku, -7, key("c", later)).await.unwrap();
    assert!(
        matches!(retried, StockAdjustment::Adjusted(ref p) if p.stock == 0),
        "{retried:?}"
    );

    // An expired key is free again.
    let past = orderflow_schemas::now_millis() - 1;
    store.adjust_stock(&sku, 1, key("d", past)).await.unwrap();
    let fresh = store.adjust_stock(&sku, 1, key("d", past)).await.unwrap();
    assert!(
        matches!(fresh, StockAdjustment::Adjusted(ref p) if p.stock == 2),
        "{fresh:?}"
    );
}

fn price(sku: &str, unit_price_cents: i64) -> LinePrice {
    LinePrice {
        sku: sku.into(),
        unit_price_cents,
    }
}

/// A repricing sets new unit prices on the reserved lines (the reservation that validation
/// prices the revision from), moves no stock, bumps the revision, clears the pricing, records
/// the timeline entry of the revision, keeps later quantity changes at the new price, and is
/// refused as a quantity change is (claimed, cancelled, unknown SKU, bad list).
pub(crate) async fn check_reprice_changes_unit_prices_of_an_unpaid_order(store: Arc<dyn Store>) {
    let (a, b) = (unique("sku-a"), unique("sku-b"));
    store
        .put_products(vec![product(&a, 10), product(&b, 5)])
        .await
        .unwrap();
    let o = validated_order(&*store, &[item(&a, 2), item(&b, 1)]).await;

    let ModifyOutcome::Modified { order, lines } = store
        .reprice_order(&o.order_id, vec![price(&b, 900)], T0 + 10)
        .await
        .unwrap()
    else {
        panic!("expected the repricing to apply");
    };
    assert_eq!(order.revision, 1);
    assert_eq!(
        order.items,
        vec![item(&a, 2), item(&b, 1)],
        "quantities stay"
    );
    assert_eq!(order.pricing, None, "re-priced by validation");
    let unit = |lines: &[orderflow_store::ReservedLine], sku: &str| {
        lines
            .iter()
            .find(|l| l.sku == sku)
            .unwrap()
            .unit_price_cents
    };
    assert_eq!((unit(&lines, &a), unit(&lines, &b)), (1250, 900));
    let entry = order
        .timeline
        .iter()
        .find(|t| t.event_id == format!("{}:modified:r1", o.order_id))
        .expect("the repricing is on the timeline");
    assert_eq!(entry.at, T0 + 10);
    assert!(entry.detail.as_deref().unwrap().contains(&b), "{entry:?}");
    assert_eq!(stock(&*store, &a).await, (8, 2), "no stock moves");
    assert_eq!(stock(&*store, &b).await, (4, 1));
    // Validation prices the revision from the reservation: the new price.
    let Reservation::Reserved {
        lines, revision, ..
    } = store
        .reserve(&o.order_id, &order.items, T0 + 11)
        .await
        .unwrap()
    else {
        panic!("the order holds its reservation");
    };
    assert_eq!((revision, unit(&lines, &b)), (1, 900));

    // A later quantity change keeps the adjusted price.
    let ModifyOutcome::Modified { lines, .. } = store
        .modify_order(&o.order_id, vec![item(&a, 2), item(&b, 2)], T0 + 20)
        .await
        .unwrap()
    else {
        panic!("expected the modification to apply");
    };
    assert_eq!(unit(&lines, &b), 900);
    assert_eq!(stock(&*store, &b).await, (3, 2));

    // Refusals.
    assert_eq!(
        store
            .reprice_order(&o.order_id, vec![price("nope", 1)], T0 + 30)
            .await
            .unwrap(),
        ModifyOutcome::UnknownItem { sku: "nope".into() }
    );
    for bad in [
        vec![],
        vec![price(&a, -1)],
        vec![price(&a, 1), price(&a, 2)],
    ] {
        assert!(matches!(
            store.reprice_order(&o.order_id, bad, T0 + 40).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert_eq!(
        store.claim_payment(&o.order_id, 2).await.unwrap(),
        PaymentClaim::Granted
    );
    assert_eq!(
        store
            .reprice_order(&o.order_id, vec![price(&a, 1)], T0 + 50)
            .await
            .unwrap(),
        ModifyOutcome::NotModifiable {
            status: OrderStatus::Validated,
            claimed: true
        }
    );
    let other = validated_order(&*store, &[item(&a, 1)]).await;
    cancelled(
        store
            .cancel_order(&other.order_id, None, T0 + 60)
            .await
            .unwrap(),
    );
    assert_eq!(
        store
            .reprice_order(&other.order_id, vec![price(&a, 1)], T0 + 70)
            .await
            .unwrap(),
        ModifyOutcome::NotModifiable {
            status: OrderStatus::Cancelled,
            claimed: false
        }
    );
    assert_eq!(
        store
            .reprice_order(&new_id(), vec![price(&a, 1)], T0)
            .await
            .unwrap(),
        ModifyOutcome::NotFound
    );
}

/// Of a repricing and a payment claim racing on the same order exactly one wins; the loser
/// changes nothing.
pub(crate) async fn check_racing_reprice_and_claim_one_wins(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 1000)]).await.unwrap();
    let mut orders = Vec::new();
    for _ in 0..10 {
        orders.push(validated_order(&*store, &[item(&sku, 1)]).await);
    }
    let mut handles = Vec::new();
    for o in &orders {
        let barrier = Arc::new(Barrier::new(2));
        let (s1, b1, id1) = (store.clone(), barrier.clone(), o.order_id.clone());
        let sku1 = sku.clone();
        handles.push(tokio::spawn(async move {
            b1.wait().await;
            let outcome = s1
                .reprice_order(&id1, vec![price(&sku1, 1)], T0 + 10)
                .await
                .unwrap();
            matches!(outcome, ModifyOutcome::Modified { .. })
        }));
        let (s2, b2, id2) = (store.clone(), barrier, o.order_id.clone());
        handles.push(tokio::spawn(async move {
            b2.wait().await;
            s2.claim_payment(&id2, 0).await.unwrap() == PaymentClaim::Granted
        }));
    }
    let results = join(handles).await;
    for (pair, o) in results.chunks(2).zip(&orders) {
        assert!(pair[0] != pair[1], "exactly one of reprice and claim wins");
        let revision = store
            .get_order(&o.order_id)
            .await
            .unwrap()
            .unwrap()
            .revision;
        assert_eq!(revision, i32::from(pair[0]));
    }
    assert_eq!(stock(&*store, &sku).await, (990, 10), "no stock moves");
}

/// An order changes at most [`MAX_ORDER_REVISIONS`] times: one more change is refused naming
/// the limit and changes nothing (its record and timeline stay bounded).
pub(crate) async fn check_an_order_changes_a_bounded_number_of_times(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 100)]).await.unwrap();
    let o = validated_order(&*store, &[item(&sku, 1)]).await;
    for revision in 1..=MAX_ORDER_REVISIONS {
        // Alternating 2 and 1 units: each one a real change.
        let quantity = 1 + revision % 2;
        let changed = modified(
            store
                .modify_order(
                    &o.order_id,
                    vec![item(&sku, quantity)],
                    T0 + 10 + i64::from(revision),
                )
                .await
                .unwrap(),
        );
        assert_eq!(changed.revision, revision);
    }
    let before = store.get_order(&o.order_id).await.unwrap().unwrap();
    let quantity = before.items[0].quantity;
    let refused = store
        .modify_order(&o.order_id, vec![item(&sku, quantity + 1)], T0 + 1000)
        .await
        .unwrap();
    assert_eq!(
        refused,
        ModifyOutcome::TooManyRevisions {
            max: MAX_ORDER_REVISIONS
        }
    );
    let price = store
        .reprice_order(
            &o.order_id,
            vec![LinePrice {
                sku: sku.clone(),
                unit_price_cents: 1,
            }],
            T0 + 1001,
        )
        .await
        .unwrap();
    assert_eq!(
        price,
        ModifyOutcome::TooManyRevisions {
            max: MAX_ORDER_REVISIONS
        }
    );
    assert_eq!(store.get_order(&o.order_id).await.unwrap().unwrap(), before);
    assert_eq!(
        stock(&*store, &sku).await,
        (100 - i64::from(quantity), i64::from(quantity))
    );
    // Asking for what it has already is no change, and still answers the order.
    let same = store
        .modify_order(&o.order_id, vec![item(&sku, quantity)], T0 + 1002)
        .await
        .unwrap();
    assert_eq!(modified(same), before);
}
