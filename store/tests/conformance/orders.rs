//! Orders: idempotency keys, the read model, the lists, statuses that only move forward.

use super::*;

// Orders

/// An `Idempotency-Key` returns the first order for the same request, is refused for another
/// request, is scoped to its customer and is forgotten once expired.
pub(crate) async fn check_idempotency_keys(store: Arc<dyn Store>) {
    let customer = unique("customer");
    let key = IdempotencyKey {
        key: unique("key"),
        fingerprint: "request-1".into(),
        expires_at: T0 + DAY_MS,
    };

    let first = order(&customer, T0);
    let created = store
        .create_order(first.clone(), Some(key.clone()), None, None)
        .await
        .unwrap();
    assert_eq!(created, CreateOrder::Created);

    // The same request again: the first order, and the retry's order is not stored.
    let retry = order(&customer, T0 + 1000);
    let existing = store
        .create_order(retry.clone(), Some(key.clone()), None, None)
        .await
        .unwrap();
    assert_eq!(existing, CreateOrder::Existing(Box::new(first.clone())));
    assert_eq!(store.get_order(&retry.order_id).await.unwrap(), None);

    // The same key for a different request.
    let other_request = order(&customer, T0 + 2000);
    let reused = store
        .create_order(
            other_request.clone(),
            Some(IdempotencyKey {
                fingerprint: "request-2".into(),
                ..key.clone()
            }),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        reused,
        CreateOrder::KeyReused {
            order_id: first.order_id.clone()
        }
    );
    assert_eq!(
        store.get_order(&other_request.order_id).await.unwrap(),
        None
    );
    assert_eq!(
        ids(&store
            .list_customer_orders(&customer, None, 10)
            .await
            .unwrap()),
        vec![first.order_id.clone()]
    );

    // Another customer's key with the same name is independent.
    let stranger = unique("customer");
    let theirs = order(&stranger, T0 + 3000);
    assert_eq!(
        store
            .create_order(theirs.clone(), Some(key.clone()), None, None)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    assert_eq!(
        store.get_order(&theirs.order_id).await.unwrap(),
        Some(theirs)
    );

    // Expiry: the key still holds just before `expires_at`, and is free from `expires_at` on.
    let short_key = IdempotencyKey {
        key: unique("key"),
        fingerprint: "request-3".into(),
        expires_at: T0 + 1000,
    };
    let original = order(&customer, T0);
    assert_eq!(
        store
            .create_order(original.clone(), Some(short_key.clone()), None, None)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    let just_before = store
        .create_order(
            order(&customer, T0 + 999),
            Some(short_key.clone()),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(just_before, CreateOrder::Existing(Box::new(original)));
    let after_expiry = order(&customer, T0 + 1000);
    let renewed_key = IdempotencyKey {
        expires_at: T0 + 1000 + DAY_MS,
        ..short_key.clone()
    };
    assert_eq!(
        store
            .create_order(after_expiry.clone(), Some(renewed_key.clone()), None, None)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    assert_eq!(
        store.get_order(&after_expiry.order_id).await.unwrap(),
        Some(after_expiry.clone())
    );
    // …and the key now stands for the new order.
    let retry_new = store
        .create_order(order(&customer, T0 + 1500), Some(renewed_key), None, None)
        .await
        .unwrap();
    assert_eq!(retry_new, CreateOrder::Existing(Box::new(after_expiry)));
}

/// A customer's orders come newest first; pages chained with `before` cover every order once;
/// other customers' orders (even with a customer id that starts the same) never appear.
pub(crate) async fn check_customer_orders_page_newest_first(store: Arc<dyn Store>) {
    let customer = unique("customer");
    let similar = format!("{customer}x");
    let stranger = unique("customer");

    let mut mine = Vec::new();
    for i in 0..7 {
        let o = order(&customer, T0 + i);
        store
            .create_order(o.clone(), None, None, None)
            .await
            .unwrap();
        mine.push(o);
        for other in [&similar, &stranger] {
            let o = order(other, T0 + i);
            store.create_order(o, None, None, None).await.unwrap();
        }
    }
    let newest_first: Vec<String> = mine.iter().rev().map(|o| o.order_id.clone()).collect();

    let all = store
        .list_customer_orders(&customer, None, 100)
        .await
        .unwrap();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all[0], mine[6], "the full record is returned");

    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store
            .list_customer_orders(&customer, before.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        assert!(page.iter().all(|o| o.customer_id == customer));
        let Some(last) = page.last() else { break };
        before = Some(last.order_id.clone());
        pages.push(ids(&page));
        assert!(pages.len() <= 3, "paging does not end: {pages:?}");
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert_eq!(pages.concat(), newest_first);

    assert!(store
        .list_customer_orders(&customer, None, 0)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_customer_orders(&unique("nobody"), None, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_customer_orders(&similar, None, 100)
            .await
            .unwrap()
            .len(),
        7
    );
}

/// A UUIDv7 order id carrying the time `ms`, as ingest makes them.
pub(crate) fn id_at(ms: i64) -> String {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (ms / 1000) as u64,
        ((ms % 1000) * 1_000_000) as u32,
    );
    Uuid::new_v7(ts).to_string()
}

/// `list_orders` (the admin list): every customer's orders newest first, paged without overlap
/// or gap, narrowed by status, customer and creation time (from inclusive, to exclusive).
pub(crate) async fn check_admin_list_filters_and_pages(store: Arc<dyn Store>) {
    // A stretch of time no other check uses, so a shared store does not disturb the counts.
    let start = T0 + 400 * DAY_MS;
    let step = DAY_MS / 4;
    let (a, b) = (unique("customer"), unique("customer"));
    let mut all = Vec::new();
    for i in 0..9 {
        let at = start + i * step;
        let customer = if i % 2 == 0 { &a } else { &b };
        let o = order_with_id(&id_at(at), customer, at);
        store
            .create_order(o.clone(), None, None, None)
            .await
            .unwrap();
        all.push(o);
    }
    for i in [2, 5] {
        store
            .apply_status(update(
                &all[i],
                OrderStatus::Validated,
                all[i].created_at + 1,
            ))
            .await
            .unwrap();
    }
    let in_range = OrderFilter {
        from: Some(start),
        to: Some(start + 10 * DAY_MS),
        ..OrderFilter::default()
    };
    let newest_first = |pick: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..all.len())
            .rev()
            .filter(|i| pick(*i))
            .map(|i| all[i].order_id.clone())
            .collect()
    };

    let listed = store.list_orders(&in_range, None, 100).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&|_| true));
    assert_eq!(listed[3].status, OrderStatus::Validated, "the full record");

    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store
            .list_orders(&in_range, before.as_deref(), 4)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.order_id.clone());
        pages.push(ids(&page));
        assert!(pages.len() <= 3, "paging does not end: {pages:?}");
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![4, 4, 1]
    );
    assert_eq!(pages.concat(), newest_first(&|_| true));

    let validated = OrderFilter {
        status: Some(OrderStatus::Validated),
        ..in_range.clone()
    };
    let listed = store.list_orders(&validated, None, 100).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&|i| i == 2 || i == 5));
    let listed = store.list_orders(&validated, None, 1).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&|i| i == 5));
    let after = listed[0].order_id.clone();
    let listed = store
        .list_orders(&validated, Some(&after), 1)
        .await
        .unwrap();
    assert_eq!(ids(&listed), newest_first(&|i| i == 2));

    let only_a = OrderFilter {
        customer_id: Some(a.clone()),
        ..OrderFilter::default()
    };
    let listed = store.list_orders(&only_a, None, 100).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&|i| i % 2 == 0));
    let listed = store
        .list_orders(&only_a, Some(&all[6].order_id), 2)
        .await
        .unwrap();
    assert_eq!(
        ids(&listed),
        vec![all[4].order_id.clone(), all[2].order_id.clone()]
    );
    let a_validated = OrderFilter {
        status: Some(OrderStatus::Validated),
        ..only_a.clone()
    };
    let listed = store.list_orders(&a_validated, None, 100).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&|i| i == 2));

    let window = OrderFilter {
        from: Some(start + 2 * step),
        to: Some(start + 5 * step),
        ..OrderFilter::default()
    };
    let listed = store.list_orders(&window, None, 100).await.unwrap();
    assert_eq!(ids(&listed), newest_first(&|i| (2..5).contains(&i)));

    assert!(store
        .list_orders(&in_range, None, 0)
        .await
        .unwrap()
        .is_empty());
    let nobody = OrderFilter {
        customer_id: Some(unique("nobody")),
        ..OrderFilter::default()
    };
    assert!(store
        .list_orders(&nobody, None, 10)
        .await
        .unwrap()
        .is_empty());
}

/// `apply_status` ignores redelivered events, never moves the status back, keeps the timeline
/// in pipeline order and keeps pricing and invoice number when an update has none.
pub(crate) async fn check_status_moves_forward_only(store: Arc<dyn Store>) {
    let customer = unique("customer");
    let o = order(&customer, T0);
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();

    let invoiced = StatusUpdate {
        invoice_number: Some("INV-00000042".into()),
        detail: Some("INV-00000042".into()),
        ..update(&o, OrderStatus::Invoiced, T0 + 30)
    };
    let validated = StatusUpdate {
        pricing: Some(pricing(7)),
        ..update(&o, OrderStatus::Validated, T0 + 10)
    };
    let paid = StatusUpdate {
        detail: Some("ch_1".into()),
        ..update(&o, OrderStatus::Paid, T0 + 20)
    };

    // Out of order, with a redelivery of each.
    for u in [&invoiced, &validated, &validated, &paid, &invoiced, &paid] {
        store.apply_status(u.clone()).await.unwrap();
    }

    let got = store
        .get_order(&o.order_id)
        .await
        .unwrap()
        .expect("the order");
    assert_eq!(got.status, OrderStatus::Invoiced, "never moves back");
    let statuses: Vec<OrderStatus> = got.timeline.iter().map(|t| t.status).collect();
    assert_eq!(
        statuses,
        vec![
            OrderStatus::Accepted,
            OrderStatus::Validated,
            OrderStatus::Paid,
            OrderStatus::Invoiced
        ],
        "one entry per event, in pipeline order"
    );
    assert_eq!(
        got.timeline[3],
        TimelineEntry {
            status: OrderStatus::Invoiced,
            event_id: invoiced.event_id.clone(),
            at: T0 + 30,
            detail: Some("INV-00000042".into()),
        }
    );
    assert_eq!(got.pricing, Some(pricing(7)), "pricing kept");
    assert_eq!(
        got.invoice_number.as_deref(),
        Some("INV-00000042"),
        "invoice number kept"
    );
    assert_eq!(got.updated_at, T0 + 30);
    assert_eq!(
        (got.items, got.created_at, got.shipping_address),
        (o.items, o.created_at, o.shipping_address),
        "what the order was created with is kept"
    );
}

/// Many calls with one `Idempotency-Key` at once (the same request, each with its own order id,
/// as ingest makes them): exactly one order is written, every call answers with it (created,
/// existing) or "in progress", and a later call answers with it.
pub(crate) async fn check_one_idempotency_key_makes_one_order(store: Arc<dyn Store>) {
    const CALLS: usize = 20;
    let customer = unique("customer");
    let key = IdempotencyKey {
        key: unique("key"),
        fingerprint: "the-same-request".into(),
        expires_at: T0 + DAY_MS,
    };
    let barrier = Arc::new(Barrier::new(CALLS));
    let mut handles = Vec::new();
    for i in 0..CALLS {
        let (store, barrier, key) = (store.clone(), barrier.clone(), key.clone());
        let o = order(&customer, T0 + i as i64);
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let id = o.order_id.clone();
            (
                id,
                store.create_order(o, Some(key), None, None).await.unwrap(),
            )
        }));
    }
    let answers = join(handles).await;
    let listed = store
        .list_customer_orders(&customer, None, 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "one key, one order: {:?}", ids(&listed));
    let winner = listed[0].order_id.clone();
    let mut created = 0;
    for (id, answer) in &answers {
        match answer {
            CreateOrder::Created => {
                assert_eq!(*id, winner, "only the written order answers created");
                created += 1;
            }
            CreateOrder::Existing(o) => assert_eq!(o.order_id, winner),
            CreateOrder::InProgress => {}
            other => panic!("unexpected answer {other:?}"),
        }
        if *id != winner {
            assert_eq!(store.get_order(id).await.unwrap(), None, "order {id}");
        }
    }
    assert_eq!(created, 1);
    let later = store
        .create_order(order(&customer, T0 + 1000), Some(key), None, None)
        .await
        .unwrap();
    assert!(
        matches!(&later, CreateOrder::Existing(o) if o.order_id == winner),
        "{later:?}"
    );
}
