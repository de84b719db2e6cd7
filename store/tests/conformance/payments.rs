//! Payments and invoices: the first payment wins, invoice numbers have no gaps.

use super::*;

// Payments and invoices

/// The first recorded payment of an order wins, also when several race.
pub(crate) async fn check_first_payment_wins(store: Arc<dyn Store>) {
    let order_id = new_id();
    assert_eq!(store.get_payment(&order_id).await.unwrap(), None);

    let barrier = Arc::new(Barrier::new(10));
    let handles: Vec<JoinHandle<PaymentRecord>> = (0..10)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let attempt = payment(&order_id, i % 2 == 0, &format!("ch_{i}"));
            tokio::spawn(async move {
                barrier.wait().await;
                store.record_payment(attempt).await.unwrap()
            })
        })
        .collect();
    let recorded = join(handles).await;
    let winner = recorded[0].clone();
    assert!(
        recorded.iter().all(|r| *r == winner),
        "every caller sees the one recorded payment: {recorded:#?}"
    );
    assert_eq!(
        store.get_payment(&order_id).await.unwrap(),
        Some(winner.clone())
    );

    // A later call with the opposite outcome still gets the first one back.
    let opposite = PaymentRecord {
        approved: !winner.approved,
        payment_id: None,
        reason: Some("card_declined".into()),
        at: T0 + 1000,
        ..winner.clone()
    };
    assert_eq!(store.record_payment(opposite).await.unwrap(), winner);
    assert_eq!(store.get_payment(&order_id).await.unwrap(), Some(winner));

    // Sequentially: declined first, then approved → declined stays.
    let declined_id = new_id();
    let declined = payment(&declined_id, false, "unused");
    assert_eq!(
        store.record_payment(declined.clone()).await.unwrap(),
        declined
    );
    let approved = payment(&declined_id, true, "ch_late");
    assert_eq!(store.record_payment(approved).await.unwrap(), declined);
    assert_eq!(
        store.get_payment(&declined_id).await.unwrap(),
        Some(declined)
    );
}

/// Invoice numbers are 1..=N without gaps across N concurrent orders, each order numbered once
/// even when its invoice is requested twice at the same time. Needs a fresh store.
pub(crate) async fn check_invoice_numbers_are_gapless(store: Arc<dyn Store>) {
    const ORDERS: usize = 20;
    let customer = unique("customer");
    let orders: Vec<OrderRecord> = (0..ORDERS).map(|_| order(&customer, T0)).collect();

    // Two concurrent requests per order.
    let barrier = Arc::new(Barrier::new(2 * ORDERS));
    let handles: Vec<JoinHandle<_>> = orders
        .iter()
        .flat_map(|o| [o, o])
        .enumerate()
        .map(|(i, o)| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let draft = draft(o, T0 + i as i64);
            tokio::spawn(async move {
                barrier.wait().await;
                store.create_invoice(draft).await.unwrap()
            })
        })
        .collect();
    let invoices = join(handles).await;
    for pair in invoices.chunks(2) {
        assert_eq!(pair[0], pair[1], "one invoice per order");
    }
    let sequences: BTreeSet<u64> = invoices.iter().map(|i| i.sequence).collect();
    assert_eq!(sequences, (1..=ORDERS as u64).collect(), "gapless from 1");
    for (invoice, o) in invoices.iter().step_by(2).zip(&orders) {
        assert_eq!(invoice.number, format!("INV-{:08}", invoice.sequence));
        assert_eq!(invoice.order_id, o.order_id);
        assert_eq!(invoice.customer_id, customer);
        assert_eq!(invoice.pricing, pricing(o.order_id.len() as i64));
        assert_eq!(
            store.get_invoice(&o.order_id).await.unwrap().as_ref(),
            Some(invoice)
        );
    }
    let first = invoices.iter().find(|i| i.sequence == 1).unwrap();
    assert_eq!(first.number, "INV-00000001");

    // Asking again returns the same invoice and consumes no number.
    for (invoice, o) in invoices.iter().step_by(2).zip(&orders) {
        let again = store.create_invoice(draft(o, T0 + 10_000)).await.unwrap();
        assert_eq!(&again, invoice);
    }
    let next = store
        .create_invoice(draft(&order(&customer, T0), T0 + 20_000))
        .await
        .unwrap();
    assert_eq!(next.sequence, ORDERS as u64 + 1);
    assert_eq!(next.number, "INV-00000021");
}
