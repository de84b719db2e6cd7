//! Reservations: all or nothing, never oversold, idempotent by order id.

use super::*;

// Reservations

/// 50 concurrent single-unit orders against a stock of 10: exactly 10 win, 40 are out of stock.
pub(crate) async fn check_reservations_never_oversell(store: Arc<dyn Store>) {
    const TASKS: usize = 50;
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let orders: Vec<String> = (0..TASKS).map(|_| Uuid::now_v7().to_string()).collect();

    let reserve_all = |at: i64| {
        let barrier = Arc::new(Barrier::new(TASKS));
        let handles: Vec<JoinHandle<Reservation>> = orders
            .iter()
            .map(|order_id| {
                let (store, barrier, order_id, sku) = (
                    store.clone(),
                    barrier.clone(),
                    order_id.clone(),
                    sku.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .reserve(&order_id, &[item(&sku, 1)], at)
                        .await
                        .unwrap()
                })
            })
            .collect();
        join(handles)
    };

    let outcomes = reserve_all(T0).await;
    let reserved = outcomes
        .iter()
        .filter(|r| matches!(r, Reservation::Reserved { .. }))
        .count();
    let out_of_stock = outcomes
        .iter()
        .filter(|r| rejection_code(r) == Some("out_of_stock"))
        .count();
    assert_eq!(
        (reserved, out_of_stock),
        (10, 40),
        "outcomes: {outcomes:#?}"
    );
    assert_eq!(stock(&*store, &sku).await, (0, 10));

    // Every order's outcome was recorded: the same 50 calls again change nothing.
    let again = reserve_all(T0 + 1).await;
    assert_eq!(again, outcomes);
    assert_eq!(stock(&*store, &sku).await, (0, 10));
}

/// One unavailable item rejects the whole order and reserves nothing for the others.
pub(crate) async fn check_reservation_is_all_or_nothing(store: Arc<dyn Store>) {
    let (a, b) = (unique("sku-a"), unique("sku-b"));
    store
        .put_products(vec![product(&a, 5), product(&b, 1)])
        .await
        .unwrap();

    let short = store
        .reserve(&new_id(), &[item(&a, 3), item(&b, 2)], T0)
        .await
        .unwrap();
    assert_eq!(rejection_code(&short), Some("out_of_stock"), "{short:?}");
    assert_eq!(stock(&*store, &a).await, (5, 0));
    assert_eq!(stock(&*store, &b).await, (1, 0));

    let unknown = unique("no-such-sku");
    let bad_sku = store
        .reserve(&new_id(), &[item(&a, 1), item(&unknown, 1)], T0)
        .await
        .unwrap();
    assert_eq!(rejection_code(&bad_sku), Some("unknown_sku"), "{bad_sku:?}");
    assert_eq!(stock(&*store, &a).await, (5, 0));

    let zero = store
        .reserve(&new_id(), &[item(&a, 1), item(&b, 0)], T0)
        .await
        .unwrap();
    assert_eq!(rejection_code(&zero), Some("invalid_order"), "{zero:?}");
    assert_eq!(stock(&*store, &a).await, (5, 0));

    let fits = store
        .reserve(&new_id(), &[item(&a, 3), item(&b, 1)], T0)
        .await
        .unwrap();
    let Reservation::Reserved {
        lines,
        at,
        released,
        revision,
    } = fits
    else {
        panic!("expected a reservation, got {fits:?}");
    };
    assert_eq!((at, released, revision), (T0, false, 0));
    assert_eq!(reserved_quantity(&lines, &a), 3);
    assert_eq!(reserved_quantity(&lines, &b), 1);
    let line = lines.iter().find(|l| l.sku == a).unwrap();
    assert_eq!(
        (
            line.name.as_str(),
            line.unit_price_cents,
            line.currency.as_str()
        ),
        (product(&a, 0).name.as_str(), 1250, "EUR"),
        "a line carries the catalogue's name and price"
    );
    assert_eq!(stock(&*store, &a).await, (2, 3));
    assert_eq!(stock(&*store, &b).await, (0, 1));
}

/// An order naming a SKU twice is checked and reserved as one demand of the summed quantity.
pub(crate) async fn check_reservation_sums_a_sku_listed_twice(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 3)]).await.unwrap();

    // Each line fits alone (2 ≤ 3); together they do not (4 > 3).
    let too_many = store
        .reserve(&new_id(), &[item(&sku, 2), item(&sku, 2)], T0)
        .await
        .unwrap();
    assert_eq!(
        rejection_code(&too_many),
        Some("out_of_stock"),
        "{too_many:?}"
    );
    assert_eq!(stock(&*store, &sku).await, (3, 0));

    let order_id = new_id();
    let fits = store
        .reserve(&order_id, &[item(&sku, 2), item(&sku, 1)], T0)
        .await
        .unwrap();
    let Reservation::Reserved { lines, .. } = &fits else {
        panic!("expected a reservation, got {fits:?}");
    };
    assert_eq!(reserved_quantity(lines, &sku), 3);
    assert_eq!(stock(&*store, &sku).await, (0, 3));

    // Releasing gives back all of it, once.
    assert!(store.release(&order_id).await.unwrap());
    assert_eq!(stock(&*store, &sku).await, (3, 0));
}

/// A second `reserve` for an order returns the first outcome; `release` gives stock back once.
pub(crate) async fn check_reserve_and_release_are_idempotent(store: Arc<dyn Store>) {
    let sku = unique("sku");
    let other_sku = unique("sku-other");
    store
        .put_products(vec![product(&sku, 5), product(&other_sku, 1)])
        .await
        .unwrap();

    let order_id = new_id();
    let first = store
        .reserve(&order_id, &[item(&sku, 2)], T0)
        .await
        .unwrap();
    assert!(matches!(first, Reservation::Reserved { .. }), "{first:?}");
    assert_eq!(stock(&*store, &sku).await, (3, 2));

    // A redelivery (later, even with other items) returns the recorded outcome.
    let again = store
        .reserve(&order_id, &[item(&sku, 2)], T0 + 100)
        .await
        .unwrap();
    assert_eq!(again, first);
    let changed = store
        .reserve(&order_id, &[item(&sku, 3)], T0 + 200)
        .await
        .unwrap();
    assert_eq!(changed, first);
    assert_eq!(stock(&*store, &sku).await, (3, 2));

    // Another order's reservation is untouched by this order's release.
    let neighbour = new_id();
    let kept = store
        .reserve(&neighbour, &[item(&sku, 1)], T0)
        .await
        .unwrap();
    assert!(matches!(kept, Reservation::Reserved { .. }), "{kept:?}");
    assert_eq!(stock(&*store, &sku).await, (2, 3));

    assert!(
        store.release(&order_id).await.unwrap(),
        "the first release returns stock"
    );
    assert_eq!(stock(&*store, &sku).await, (4, 1));
    assert!(
        !store.release(&order_id).await.unwrap(),
        "the second release is a no-op"
    );
    assert_eq!(stock(&*store, &sku).await, (4, 1));

    // A redelivered reservation after the release does not take the stock again.
    let after_release = store
        .reserve(&order_id, &[item(&sku, 2)], T0 + 300)
        .await
        .unwrap();
    assert!(
        matches!(after_release, Reservation::Reserved { .. }),
        "{after_release:?}"
    );
    assert_eq!(stock(&*store, &sku).await, (4, 1));

    // A rejected order is recorded as rejected, even once stock arrives, and has nothing to
    // release.
    let rejected_id = new_id();
    let rejected = store
        .reserve(&rejected_id, &[item(&other_sku, 5)], T0)
        .await
        .unwrap();
    assert_eq!(
        rejection_code(&rejected),
        Some("out_of_stock"),
        "{rejected:?}"
    );
    assert!(!store.release(&rejected_id).await.unwrap());
    assert_eq!(stock(&*store, &other_sku).await, (1, 0));
    store
        .put_products(vec![product(&other_sku, 10)])
        .await
        .unwrap();
    let retried = store
        .reserve(&rejected_id, &[item(&other_sku, 5)], T0 + 100)
        .await
        .unwrap();
    assert_eq!(retried, rejected);
    assert_eq!(stock(&*store, &other_sku).await, (10, 0));

    assert!(!store.release(&new_id()).await.unwrap(), "unknown order");
    assert_eq!(stock(&*store, &sku).await, (4, 1));
}
