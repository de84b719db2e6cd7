//! The catalogue: seeding, products, stock adjustments.

use super::*;

/// Seeding inserts only SKUs the catalogue lacks and never touches the stock of the others.
pub(crate) async fn check_seeding_never_overwrites(store: Arc<dyn Store>) {
    let prefix = unique("seed");
    let (a, b, c) = (
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}-c"),
    );
    store.put_products(vec![product(&a, 5)]).await.unwrap();
    let reservation = store.reserve(&new_id(), &[item(&a, 2)], T0).await.unwrap();
    assert!(
        matches!(reservation, Reservation::Reserved { .. }),
        "{reservation:?}"
    );

    let seed = vec![
        Product {
            name: "renamed".into(),
            ..product(&a, 100)
        },
        product(&c, 8),
        product(&b, 7),
    ];
    assert_eq!(store.seed_products(seed.clone()).await.unwrap(), 2);
    let a_now = store.get_product(&a).await.unwrap().expect("a");
    assert_eq!(
        a_now,
        Product {
            stock: 3,
            reserved: 2,
            ..product(&a, 0)
        }
    );
    assert_eq!(stock(&*store, &b).await, (7, 0));
    assert_eq!(stock(&*store, &c).await, (8, 0));

    // Seeding again (a restart) inserts nothing and resets nothing.
    assert_eq!(store.seed_products(seed).await.unwrap(), 0);
    assert_eq!(stock(&*store, &a).await, (3, 2));

    let listed: Vec<String> = store
        .list_products()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.sku)
        .filter(|sku| sku.starts_with(&prefix))
        .collect();
    assert_eq!(listed, vec![a, b, c], "the catalogue is ordered by SKU");
}

// Catalogue administration

/// A product is created once per SKU, edited without touching its stock, and once discontinued
/// it stays readable and listed while new reservations treat it as unknown.
pub(crate) async fn check_products_are_created_edited_and_discontinued(store: Arc<dyn Store>) {
    let sku = unique("sku");
    assert!(store.create_product(product(&sku, 5)).await.unwrap());
    let other = Product {
        name: "someone else's".into(),
        ..product(&sku, 99)
    };
    assert!(
        !store.create_product(other).await.unwrap(),
        "a second product with the SKU is refused"
    );
    assert_eq!(
        store.get_product(&sku).await.unwrap(),
        Some(product(&sku, 5))
    );

    let reserved = store
        .reserve(&new_id(), &[item(&sku, 2)], T0)
        .await
        .unwrap();
    assert!(
        matches!(reserved, Reservation::Reserved { .. }),
        "{reserved:?}"
    );
    let renamed = store
        .update_product(
            &sku,
            ProductChange {
                name: Some("Renamed".into()),
                price_cents: Some(999),
                discontinued: None,
            },
        )
        .await
        .unwrap()
        .expect("the product exists");
    let expected = Product {
        name: "Renamed".into(),
        price_cents: 999,
        stock: 3,
        reserved: 2,
        ..product(&sku, 0)
    };
    assert_eq!(renamed, expected);
    assert_eq!(
        store.get_product(&sku).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        store
            .update_product(&unique("missing"), ProductChange::default())
            .await
            .unwrap(),
        None
    );

    let discontinue = |on: bool| ProductChange {
        discontinued: Some(on),
        ..ProductChange::default()
    };
    let gone = store
        .update_product(&sku, discontinue(true))
        .await
        .unwrap()
        .expect("the product exists");
    assert!(gone.discontinued);
    let rejected = store
        .reserve(&new_id(), &[item(&sku, 1)], T0)
        .await
        .unwrap();
    assert_eq!(
        rejection_code(&rejected),
        Some("unknown_sku"),
        "{rejected:?}"
    );
    assert_eq!(stock(&*store, &sku).await, (3, 2), "nothing was reserved");
    let listed = store.list_products().await.unwrap();
    assert!(
        listed.iter().any(|p| p.sku == sku && p.discontinued),
        "a discontinued product is still in the catalogue"
    );

    store
        .update_product(&sku, discontinue(false))
        .await
        .unwrap();
    let back = store
        .reserve(&new_id(), &[item(&sku, 1)], T0)
        .await
        .unwrap();
    assert!(matches!(back, Reservation::Reserved { .. }), "{back:?}");
}

/// Adjustments add to or take from the available units, never below zero, and leave the
/// reserved units alone.
pub(crate) async fn check_stock_adjustments_never_go_below_zero(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.create_product(product(&sku, 5)).await.unwrap();
    let order_id = new_id();
    store
        .reserve(&order_id, &[item(&sku, 2)], T0)
        .await
        .unwrap();

    let adjusted = |stock: i64| {
        StockAdjustment::Adjusted(Product {
            stock,
            reserved: 2,
            ..product(&sku, 0)
        })
    };
    assert_eq!(
        store.adjust_stock(&sku, 4, None).await.unwrap(),
        adjusted(7)
    );
    assert_eq!(
        store.adjust_stock(&sku, -8, None).await.unwrap(),
        StockAdjustment::Insufficient { available: 7 }
    );
    assert_eq!(
        stock(&*store, &sku).await,
        (7, 2),
        "a refused adjustment changes nothing"
    );
    assert_eq!(
        store.adjust_stock(&sku, -7, None).await.unwrap(),
        adjusted(0)
    );
    let none_left = store
        .reserve(&new_id(), &[item(&sku, 1)], T0)
        .await
        .unwrap();
    assert_eq!(rejection_code(&none_left), Some("out_of_stock"));

    // A release gives back to the adjusted stock.
    assert!(store.release(&order_id).await.unwrap());
    assert_eq!(stock(&*store, &sku).await, (2, 0));
    assert_eq!(
        store
            .adjust_stock(&unique("missing"), 1, None)
            .await
            .unwrap(),
        StockAdjustment::NotFound
    );
}

/// Adjustments and reservations racing on one product: none is lost and none applied twice,
/// so at the end the units add up, and the stock never went below zero.
pub(crate) async fn check_stock_adjustments_racing_reservations_never_oversell(
    store: Arc<dyn Store>,
) {
    const ORDERS: usize = 30;
    const ADJUSTMENTS: usize = 20;
    let sku = unique("sku");
    store.create_product(product(&sku, 10)).await.unwrap();
    let barrier = Arc::new(Barrier::new(ORDERS + ADJUSTMENTS));

    let reservations: Vec<JoinHandle<Reservation>> = (0..ORDERS)
        .map(|_| {
            let (store, barrier, sku) = (store.clone(), barrier.clone(), sku.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .reserve(&new_id(), &[item(&sku, 1)], T0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Half add 3 units, half take 2.
    let adjustments: Vec<JoinHandle<(i64, StockAdjustment)>> = (0..ADJUSTMENTS)
        .map(|i| {
            let (store, barrier, sku) = (store.clone(), barrier.clone(), sku.clone());
            let delta = if i % 2 == 0 { 3 } else { -2 };
            tokio::spawn(async move {
                barrier.wait().await;
                (delta, store.adjust_stock(&sku, delta, None).await.unwrap())
            })
        })
        .collect();
    let reserved = join(reservations)
        .await
        .iter()
        .filter(|r| matches!(r, Reservation::Reserved { .. }))
        .count() as i64;
    let mut applied = 0;
    for (delta, outcome) in join(adjustments).await {
        match outcome {
            StockAdjustment::Adjusted(p) => {
                assert!(p.stock >= 0, "{p:?}");
                applied += delta;
            }
            StockAdjustment::Insufficient { available } => {
                assert!(delta < 0 && available + delta < 0, "{delta} {available}");
            }
            other => panic!("unkeyed adjustments answer adjusted or insufficient: {other:?}"),
        }
    }
    let (available, held) = stock(&*store, &sku).await;
    assert_eq!(held, reserved, "every reservation's units are held, once");
    assert_eq!(
        available,
        10 + applied - reserved,
        "no adjustment or reservation was lost or applied twice"
    );
    assert!(available >= 0);
}
