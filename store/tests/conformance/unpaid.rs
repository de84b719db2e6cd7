//! Orders awaiting a bank transfer: expiry and the per-customer cap.

use super::*;

/// A new order paid by bank transfer.
pub(crate) fn bank_order(customer_id: &str, created_at: i64) -> OrderRecord {
    OrderRecord {
        payment_method: Some("bank_transfer".into()),
        ..order(customer_id, created_at)
    }
}

/// The ids of the customer's orders in a list of unpaid orders (the store may hold others').
pub(crate) fn unpaid_of(orders: &[OrderRecord], customer_id: &str) -> Vec<String> {
    orders
        .iter()
        .filter(|o| o.customer_id == customer_id)
        .map(|o| o.order_id.clone())
        .collect()
}

/// Bank-transfer orders awaiting their transfer are listed oldest first by time placed; a
/// claimed, cancelled or card order is not. An expiry cancels with its reason and releases the
/// stock once, repeats answer alike, a claimed order is refused, and the order stays listed
/// until forgotten.
pub(crate) async fn check_unpaid_orders_are_listed_and_expire_once(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let customer = unique("customer");
    // Placed before every other check's orders, so a limit of 1 finds it on a shared store.
    let base = T0 - DAY_MS;
    let a = OrderRecord {
        items: vec![item(&sku, 3)],
        ..bank_order(&customer, base)
    };
    let card = order(&customer, base + 1);
    let b = bank_order(&customer, base + 2);
    let c = bank_order(&customer, base + 3);
    let late = bank_order(&customer, base + 100);
    for o in [&a, &card, &b, &c, &late] {
        assert_eq!(
            store
                .create_order(o.clone(), None, None, None)
                .await
                .unwrap(),
            CreateOrder::Created
        );
    }
    store
        .reserve(&a.order_id, &a.items, base + 5)
        .await
        .unwrap();
    store
        .apply_status(StatusUpdate {
            pricing: Some(pricing(3)),
            ..update(&a, OrderStatus::Validated, base + 6)
        })
        .await
        .unwrap();
    assert_eq!(stock(&*store, &sku).await, (7, 3));

    let cutoff = base + 100;
    let listed = store.list_unpaid_orders(cutoff, 100).await.unwrap();
    assert_eq!(
        unpaid_of(&listed, &customer),
        ids(&[a.clone(), b.clone(), c.clone()]),
        "oldest first, card orders and later ones left out"
    );
    let first = store.list_unpaid_orders(cutoff, 1).await.unwrap();
    assert_eq!(ids(&first), vec![a.order_id.clone()]);
    assert_eq!(
        unpaid_of(
            &store.list_unpaid_orders(cutoff + 1, 100).await.unwrap(),
            &customer
        )
        .last(),
        Some(&late.order_id)
    );

    // A claimed order (its transfer is being recorded) and a cancelled one leave the list.
    assert_eq!(
        store.claim_payment(&b.order_id, 0).await.unwrap(),
        PaymentClaim::Granted
    );
    let (_, _) = cancelled(
        store
            .cancel_order(&c.order_id, Some("changed my mind"), base + 7)
            .await
            .unwrap(),
    );
    assert_eq!(
        unpaid_of(
            &store.list_unpaid_orders(cutoff, 100).await.unwrap(),
            &customer
        ),
        vec![a.order_id.clone()]
    );

    // The claimed order is not expired.
    let refused = store
        .expire_unpaid_order(&b.order_id, "payment not received in time", base + 8)
        .await
        .unwrap();
    assert!(
        matches!(refused, ExpireOutcome::NotAwaiting(_)),
        "{refused:?}"
    );
    assert_ne!(
        store.get_order(&b.order_id).await.unwrap().unwrap().status,
        OrderStatus::Cancelled
    );

    // The expiry cancels with its reason and gives the stock back, once.
    let expired = |outcome: ExpireOutcome| match outcome {
        ExpireOutcome::Cancelled(order) => *order,
        other => panic!("expected Cancelled, got {other:?}"),
    };
    let reason = "payment not received in time";
    let first = expired(
        store
            .expire_unpaid_order(&a.order_id, reason, base + 9)
            .await
            .unwrap(),
    );
    assert_eq!(first.status, OrderStatus::Cancelled);
    let entry = first
        .timeline
        .iter()
        .find(|t| t.status == OrderStatus::Cancelled)
        .expect("a cancelled step");
    assert_eq!(
        (entry.detail.as_deref(), entry.at),
        (Some(reason), base + 9)
    );
    assert_eq!(stock(&*store, &sku).await, (10, 0));
    let again = expired(
        store
            .expire_unpaid_order(&a.order_id, "another reason", base + 20)
            .await
            .unwrap(),
    );
    assert_eq!(again, first, "a repeat answers as the first call did");
    assert_eq!(stock(&*store, &sku).await, (10, 0));
    assert_eq!(
        store.claim_payment(&a.order_id, 0).await.unwrap(),
        PaymentClaim::Final(OrderStatus::Cancelled),
        "an expired order takes no transfer"
    );

    // Listed until its expiry is announced and it is forgotten.
    assert_eq!(
        unpaid_of(
            &store.list_unpaid_orders(cutoff, 100).await.unwrap(),
            &customer
        ),
        vec![a.order_id.clone()]
    );
    store.forget_unpaid_order(&a.order_id).await.unwrap();
    store.forget_unpaid_order(&a.order_id).await.unwrap();
    assert!(unpaid_of(
        &store.list_unpaid_orders(cutoff, 100).await.unwrap(),
        &customer
    )
    .is_empty());
    assert_eq!(
        store
            .expire_unpaid_order(&new_id(), reason, base)
            .await
            .unwrap(),
        ExpireOutcome::NotFound
    );
}

/// An expiry racing the claim of the same order's transfer: exactly one wins (the cancel, or
/// the claim), never both; the stock matches the winner.
pub(crate) async fn check_racing_expiry_and_claim_one_wins(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 1000)]).await.unwrap();
    let customer = unique("customer");
    let mut orders = Vec::new();
    for i in 0..20 {
        let o = OrderRecord {
            items: vec![item(&sku, 1)],
            ..bank_order(&customer, T0 + i)
        };
        store
            .create_order(o.clone(), None, None, None)
            .await
            .unwrap();
        store.reserve(&o.order_id, &o.items, T0 + 30).await.unwrap();
        store
            .apply_status(StatusUpdate {
                pricing: Some(pricing(1)),
                ..update(&o, OrderStatus::Validated, T0 + 31)
            })
            .await
            .unwrap();
        orders.push(o);
    }
    let mut handles = Vec::new();
    for o in &orders {
        let barrier = Arc::new(Barrier::new(2));
        let (s1, b1, id1) = (store.clone(), barrier.clone(), o.order_id.clone());
        handles.push(tokio::spawn(async move {
            b1.wait().await;
            let outcome = s1
                .expire_unpaid_order(&id1, "payment not received in time", T0 + 40)
                .await
                .unwrap();
            matches!(outcome, ExpireOutcome::Cancelled(_))
        }));
        let (s2, b2, id2) = (store.clone(), barrier, o.order_id.clone());
        handles.push(tokio::spawn(async move {
            b2.wait().await;
            s2.claim_payment(&id2, 0).await.unwrap() == PaymentClaim::Granted
        }));
    }
    let results = join(handles).await;
    let mut held = 0;
    for (o, pair) in orders.iter().zip(results.chunks(2)) {
        let (expired, claimed) = (pair[0], pair[1]);
        assert!(expired != claimed, "exactly one of expiry and claim wins");
        let status = store.get_order(&o.order_id).await.unwrap().unwrap().status;
        assert_eq!(status == OrderStatus::Cancelled, expired);
        held += i64::from(claimed);
    }
    assert_eq!(stock(&*store, &sku).await, (1000 - held, held));
}

/// With a cap, a customer's next bank-transfer order is refused while they have that many
/// awaiting a transfer; card orders, other customers and keyed repeats are not affected, and a
/// place frees up once an order is cancelled or expired.
pub(crate) async fn check_unpaid_orders_are_capped_per_customer(store: Arc<dyn Store>) {
    let customer = unique("customer");
    let at = T0 + DAY_MS;
    let cap = Some(2);
    let key = IdempotencyKey {
        key: unique("key"),
        fingerprint: "first".into(),
        expires_at: at + DAY_MS,
    };
    let first = bank_order(&customer, at);
    assert_eq!(
        store
            .create_order(first.clone(), Some(key.clone()), None, cap)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    let second = bank_order(&customer, at + 1);
    assert_eq!(
        store
            .create_order(second.clone(), None, None, cap)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    let third = bank_order(&customer, at + 2);
    assert_eq!(
        store
            .create_order(third.clone(), None, None, cap)
            .await
            .unwrap(),
        CreateOrder::TooManyUnpaid { open: 2 }
    );
    assert_eq!(store.get_order(&third.order_id).await.unwrap(), None);
    // A repeat of a keyed order is answered, not refused.
    let repeat = store
        .create_order(bank_order(&customer, at + 3), Some(key), None, cap)
        .await
        .unwrap();
    assert_eq!(repeat, CreateOrder::Existing(Box::new(first.clone())));
    // Card orders, and other customers, are not capped.
    let card = order(&customer, at + 4);
    assert_eq!(
        store.create_order(card, None, None, cap).await.unwrap(),
        CreateOrder::Created
    );
    let stranger = bank_order(&unique("customer"), at + 5);
    assert_eq!(
        store.create_order(stranger, None, None, cap).await.unwrap(),
        CreateOrder::Created
    );
    // Without a cap nothing is refused.
    let uncapped = bank_order(&customer, at + 6);
    assert_eq!(
        store
            .create_order(uncapped.clone(), None, None, None)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    let fourth = bank_order(&customer, at + 7);
    assert_eq!(
        store
            .create_order(fourth.clone(), None, None, cap)
            .await
            .unwrap(),
        CreateOrder::TooManyUnpaid { open: 3 }
    );
    // Places free up as orders are cancelled, expired or claimed.
    cancelled(
        store
            .cancel_order(&uncapped.order_id, None, at + 8)
            .await
            .unwrap(),
    );
    assert!(matches!(
        store
            .expire_unpaid_order(&second.order_id, "payment not received in time", at + 9)
            .await
            .unwrap(),
        ExpireOutcome::Cancelled(_)
    ));
    assert_eq!(
        store
            .create_order(fourth.clone(), None, None, cap)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    assert_eq!(
        store.claim_payment(&first.order_id, 0).await.unwrap(),
        PaymentClaim::Granted
    );
    let fifth = bank_order(&customer, at + 10);
    assert_eq!(
        store.create_order(fifth, None, None, cap).await.unwrap(),
        CreateOrder::Created
    );
}
