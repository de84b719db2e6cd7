//! Cancel and ship, refunds.

use super::*;

/// The order a cancel answered with, and whether it said paid.
pub(crate) fn cancelled(outcome: CancelOutcome) -> (OrderRecord, bool) {
    match outcome {
        CancelOutcome::Cancelled { order, paid } => (*order, paid),
        other => panic!("expected Cancelled, got {other:?}"),
    }
}

/// A cancel sets the status with its timeline entry, gives the stock back once (a second cancel
/// answers the same and releases nothing more), says whether a charge was approved; a late
/// pipeline step never moves the order out of `cancelled`; an unknown order is `NotFound`. The
/// status alone ([`OrderStore::order_status`]) reads as the record's does.
pub(crate) async fn check_cancel_releases_stock_once_and_repeats(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let o = order(&unique("customer"), T0);
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();
    store
        .reserve(&o.order_id, &[item(&sku, 3)], T0 + 1)
        .await
        .unwrap();
    store
        .apply_status(update(&o, OrderStatus::Validated, T0 + 2))
        .await
        .unwrap();
    assert_eq!(stock(&*store, &sku).await, (7, 3));
    assert_eq!(
        store.order_status(&o.order_id).await.unwrap(),
        Some(OrderStatus::Validated)
    );
    assert_eq!(store.order_status(&unique("order")).await.unwrap(), None);

    let (first, paid) = cancelled(
        store
            .cancel_order(&o.order_id, Some("changed my mind"), T0 + 10)
            .await
            .unwrap(),
    );
    assert!(!paid);
    assert_eq!(first.status, OrderStatus::Cancelled);
    let entry = first.timeline.last().unwrap();
    assert_eq!(entry.event_id, format!("{}:cancelled", o.order_id));
    assert_eq!(entry.detail.as_deref(), Some("changed my mind"));
    assert_eq!(entry.at, T0 + 10);
    assert_eq!(stock(&*store, &sku).await, (10, 0), "stock released");

    let (again, _) = cancelled(
        store
            .cancel_order(&o.order_id, Some("other reason"), T0 + 20)
            .await
            .unwrap(),
    );
    assert_eq!(again.timeline, first.timeline, "the first cancel stands");
    assert_eq!(stock(&*store, &sku).await, (10, 0), "released once");
    assert!(!store.release(&o.order_id).await.unwrap());

    // A late step of the pipeline is recorded but does not move the status back.
    store
        .apply_status(update(&o, OrderStatus::Paid, T0 + 30))
        .await
        .unwrap();
    let got = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(got.status, OrderStatus::Cancelled);
    assert_eq!(
        store.order_status(&o.order_id).await.unwrap(),
        Some(OrderStatus::Cancelled)
    );

    // A paid order says so.
    let paid_order = order(&unique("customer"), T0);
    store
        .create_order(paid_order.clone(), None, None, None)
        .await
        .unwrap();
    store
        .record_payment(payment(&paid_order.order_id, true, "ch_1"))
        .await
        .unwrap();
    store
        .apply_status(update(&paid_order, OrderStatus::Paid, T0 + 5))
        .await
        .unwrap();
    let (_, paid) = cancelled(
        store
            .cancel_order(&paid_order.order_id, None, T0 + 6)
            .await
            .unwrap(),
    );
    assert!(paid);

    assert_eq!(
        store.cancel_order(&new_id(), None, T0).await.unwrap(),
        CancelOutcome::NotFound
    );
}

/// Ship only from paid or invoiced, idempotently; never a cancelled order, and a shipped order
/// cannot be cancelled.
pub(crate) async fn check_ship_only_when_paid_and_never_after_cancel(store: Arc<dyn Store>) {
    let o = order(&unique("customer"), T0);
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();
    store
        .apply_status(update(&o, OrderStatus::Validated, T0 + 1))
        .await
        .unwrap();
    assert_eq!(
        store.ship_order(&o.order_id, T0 + 2).await.unwrap(),
        ShipOutcome::NotReady(OrderStatus::Validated)
    );
    for (status, at) in [(OrderStatus::Paid, T0 + 3), (OrderStatus::Invoiced, T0 + 4)] {
        store.apply_status(update(&o, status, at)).await.unwrap();
    }
    let ShipOutcome::Shipped(shipped) = store.ship_order(&o.order_id, T0 + 10).await.unwrap()
    else {
        panic!("an invoiced order ships");
    };
    assert_eq!(shipped.status, OrderStatus::Shipped);
    let entry = shipped.timeline.last().unwrap();
    assert_eq!(entry.event_id, format!("{}:shipped", o.order_id));
    assert_eq!(entry.at, T0 + 10);
    let ShipOutcome::Shipped(again) = store.ship_order(&o.order_id, T0 + 20).await.unwrap() else {
        panic!("shipping twice answers the same");
    };
    assert_eq!(again.timeline, shipped.timeline);
    assert_eq!(
        store
            .cancel_order(&o.order_id, None, T0 + 30)
            .await
            .unwrap(),
        CancelOutcome::Shipped
    );
    let got = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(got.status, OrderStatus::Shipped);

    let c = order(&unique("customer"), T0);
    store
        .create_order(c.clone(), None, None, None)
        .await
        .unwrap();
    store
        .apply_status(update(&c, OrderStatus::Paid, T0 + 1))
        .await
        .unwrap();
    cancelled(store.cancel_order(&c.order_id, None, T0 + 2).await.unwrap());
    assert_eq!(
        store.ship_order(&c.order_id, T0 + 3).await.unwrap(),
        ShipOutcome::NotReady(OrderStatus::Cancelled)
    );
    assert_eq!(
        store.ship_order(&new_id(), T0).await.unwrap(),
        ShipOutcome::NotFound
    );
}

/// Shipping settles the order's reservation: the units leave `reserved` and do not come back
/// to the available stock, once, however often the ship is repeated.
pub(crate) async fn check_shipping_takes_the_units_out_of_reserved(store: Arc<dyn Store>) {
    let sku = unique("ship-sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let o = order(&unique("customer"), T0);
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();
    let items = [OrderItem {
        sku: sku.clone(),
        quantity: 3,
    }];
    let reserved = store.reserve(&o.order_id, &items, T0 + 1).await.unwrap();
    assert!(
        matches!(reserved, Reservation::Reserved { .. }),
        "{reserved:?}"
    );
    for (status, at) in [
        (OrderStatus::Validated, T0 + 1),
        (OrderStatus::Paid, T0 + 2),
        (OrderStatus::Invoiced, T0 + 3),
    ] {
        store.apply_status(update(&o, status, at)).await.unwrap();
    }
    let stock = |p: Product| (p.stock, p.reserved);
    let before = stock(store.get_product(&sku).await.unwrap().unwrap());
    assert_eq!(before, (7, 3));
    for at in [T0 + 10, T0 + 20] {
        assert!(matches!(
            store.ship_order(&o.order_id, at).await.unwrap(),
            ShipOutcome::Shipped(_)
        ));
        assert_eq!(
            stock(store.get_product(&sku).await.unwrap().unwrap()),
            (7, 0),
            "shipped units leave reserved once and do not return to stock"
        );
    }
    assert!(
        !store.release(&o.order_id).await.unwrap(),
        "nothing left to release"
    );
    assert_eq!(
        stock(store.get_product(&sku).await.unwrap().unwrap()),
        (7, 0)
    );
}

/// Of a cancel and a ship racing on a paid order, exactly one takes effect, and the order's
/// status agrees with the winner.
pub(crate) async fn check_racing_cancel_and_ship_one_wins(store: Arc<dyn Store>) {
    for round in 0..5 {
        let o = order(&unique("customer"), T0);
        store
            .create_order(o.clone(), None, None, None)
            .await
            .unwrap();
        store
            .apply_status(update(&o, OrderStatus::Paid, T0 + 1))
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (s1, b1, id1) = (store.clone(), barrier.clone(), o.order_id.clone());
        let cancel = tokio::spawn(async move {
            b1.wait().await;
            s1.cancel_order(&id1, None, T0 + 2).await.unwrap()
        });
        let (s2, b2, id2) = (store.clone(), barrier.clone(), o.order_id.clone());
        let ship = tokio::spawn(async move {
            b2.wait().await;
            s2.ship_order(&id2, T0 + 2).await.unwrap()
        });
        let (cancel, ship) = (cancel.await.unwrap(), ship.await.unwrap());
        let status = store.get_order(&o.order_id).await.unwrap().unwrap().status;
        match (cancel, ship) {
            (CancelOutcome::Cancelled { .. }, ShipOutcome::NotReady(OrderStatus::Cancelled)) => {
                assert_eq!(status, OrderStatus::Cancelled, "round {round}")
            }
            (CancelOutcome::Shipped, ShipOutcome::Shipped(_)) => {
                assert_eq!(status, OrderStatus::Shipped, "round {round}")
            }
            other => panic!("round {round}: both or neither won: {other:?}"),
        }
    }
}

/// One refund per order: of concurrent records the first wins and everyone reads it back.
pub(crate) async fn check_first_refund_wins(store: Arc<dyn Store>) {
    let order_id = new_id();
    assert_eq!(store.get_refund(&order_id).await.unwrap(), None);
    let refund = |n: i64| RefundRecord {
        order_id: order_id.clone(),
        payment_id: format!("pay_{order_id}"),
        refund_id: format!("ref_{n}"),
        amount_cents: 2400,
        currency: "EUR".into(),
        at: T0 + n,
    };
    let handles = (0..4)
        .map(|n| {
            let (store, r) = (store.clone(), refund(n));
            tokio::spawn(async move { store.record_refund(r).await.unwrap() })
        })
        .collect();
    let recorded = join(handles).await;
    assert!(recorded.iter().all(|r| *r == recorded[0]), "{recorded:?}");
    assert_eq!(
        store.get_refund(&order_id).await.unwrap().as_ref(),
        Some(&recorded[0])
    );
    assert_eq!(store.record_refund(refund(9)).await.unwrap(), recorded[0]);
}
