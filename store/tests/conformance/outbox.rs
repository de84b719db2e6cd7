//! The outbox: each announcing change queues its event once, built from what was recorded; a
//! repeat queues nothing; relayed events are forgotten.

use super::*;
use orderflow_schemas::{
    AccountVerificationRequested, OrderAccepted, OrderCancelled, OrderModified, OrderPaid,
    OrderShipped,
};
use orderflow_store::{OutboxEvent, Queued};

/// The queued events of one order (or customer) in outbox order: the store may hold others'.
async fn queued_for(store: &dyn Store, key: &str) -> Vec<Queued> {
    store
        .outbox(100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|q| q.event.key == key)
        .collect()
}

/// The names of the queued events of one order, in outbox order.
async fn names_for(store: &dyn Store, key: &str) -> Vec<String> {
    queued_for(store, key)
        .await
        .into_iter()
        .map(|q| {
            q.event
                .name
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// The one queued event of type `E` of the order.
async fn the<E: orderflow_schemas::Event>(store: &dyn Store, key: &str) -> E {
    let mut of_type: Vec<E> = queued_for(store, key)
        .await
        .into_iter()
        .filter(|q| q.event.is::<E>())
        .map(|q| q.event.decode().unwrap())
        .collect();
    assert_eq!(of_type.len(), 1, "one {} queued for {key}", E::NAME);
    of_type.remove(0)
}

/// A new order queues its `OrderAccepted` as recorded; the same keyed request again queues
/// nothing; a cancel queues `OrderCancelled` once, with the first call's reason and time and
/// the refund of the approved charge; a second cancel queues nothing.
pub(crate) async fn check_orders_queue_their_events_once(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let customer = unique("customer");
    let key = IdempotencyKey {
        key: unique("key"),
        fingerprint: "request-1".into(),
        expires_at: T0 + DAY_MS,
    };
    let o = OrderRecord {
        items: vec![item(&sku, 2)],
        ..order(&customer, T0)
    };
    assert_eq!(
        store
            .create_order(o.clone(), Some(key.clone()), None, None)
            .await
            .unwrap(),
        CreateOrder::Created
    );
    let accepted: OrderAccepted = the(&*store, &o.order_id).await;
    assert_eq!(accepted.event_id, format!("{}:accepted", o.order_id));
    assert_eq!(accepted.customer_id, customer);
    assert_eq!(accepted.items, vec![item(&sku, 2)]);
    assert_eq!(accepted.payment.method, "card");
    assert_eq!(accepted.occurred_at, T0);

    // The same request again (a retry with the key) answers with the order and queues nothing.
    let retry = order(&customer, T0 + 1000);
    assert!(matches!(
        store
            .create_order(retry.clone(), Some(key), None, None)
            .await
            .unwrap(),
        CreateOrder::Existing(_)
    ));
    assert_eq!(names_for(&*store, &o.order_id).await, ["OrderAccepted"]);
    assert!(queued_for(&*store, &retry.order_id).await.is_empty());

    store
        .reserve(&o.order_id, &[item(&sku, 2)], T0 + 1)
        .await
        .unwrap();
    store
        .record_payment(payment(&o.order_id, true, "ch_1"))
        .await
        .unwrap();
    store
        .apply_status(update(&o, OrderStatus::Paid, T0 + 2))
        .await
        .unwrap();
    assert_eq!(
        names_for(&*store, &o.order_id).await,
        ["OrderAccepted"],
        "the stages' steps are not the API's to announce"
    );

    store
        .cancel_order(&o.order_id, Some("changed my mind"), T0 + 10)
        .await
        .unwrap();
    store
        .cancel_order(&o.order_id, Some("again"), T0 + 20)
        .await
        .unwrap();
    assert_eq!(
        names_for(&*store, &o.order_id).await,
        ["OrderAccepted", "OrderCancelled"]
    );
    let cancelled: OrderCancelled = the(&*store, &o.order_id).await;
    assert_eq!(cancelled.event_id, format!("{}:cancelled", o.order_id));
    assert_eq!(cancelled.reason.as_deref(), Some("changed my mind"));
    assert_eq!(cancelled.occurred_at, T0 + 10);
    assert!(cancelled.paid);
    assert_eq!(
        (cancelled.refund_cents, cancelled.currency.as_str()),
        (1500, "EUR")
    );
}

/// A ship queues `OrderShipped` once; a refused ship queues nothing.
pub(crate) async fn check_ship_queues_its_event_once(store: Arc<dyn Store>) {
    let o = order(&unique("customer"), T0);
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();
    assert!(matches!(
        store.ship_order(&o.order_id, T0 + 5).await.unwrap(),
        ShipOutcome::NotReady(OrderStatus::Accepted)
    ));
    assert_eq!(names_for(&*store, &o.order_id).await, ["OrderAccepted"]);
    store
        .apply_status(update(&o, OrderStatus::Paid, T0 + 6))
        .await
        .unwrap();
    store.ship_order(&o.order_id, T0 + 10).await.unwrap();
    store.ship_order(&o.order_id, T0 + 20).await.unwrap();
    assert_eq!(
        names_for(&*store, &o.order_id).await,
        ["OrderAccepted", "OrderShipped"]
    );
    let shipped: OrderShipped = the(&*store, &o.order_id).await;
    assert_eq!(shipped.event_id, format!("{}:shipped", o.order_id));
    assert_eq!(shipped.occurred_at, T0 + 10);
}

/// Each real modification queues its revision's `OrderModified` (new quantities or prices); a
/// change to what the order has already queues nothing. Recording a bank transfer queues
/// `OrderPaid` with the order's pricing once.
pub(crate) async fn check_modifications_and_transfers_queue_their_events(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 20)]).await.unwrap();
    let o = validated_order(&*store, &[item(&sku, 1)]).await;
    modified(
        store
            .modify_order(&o.order_id, vec![item(&sku, 3)], T0 + 10)
            .await
            .unwrap(),
    );
    modified(
        store
            .modify_order(&o.order_id, vec![item(&sku, 3)], T0 + 11)
            .await
            .unwrap(),
    );
    let r1: OrderModified = the(&*store, &o.order_id).await;
    assert_eq!(r1.event_id, format!("{}:modified:r1", o.order_id));
    assert_eq!((r1.revision, r1.items.clone()), (1, vec![item(&sku, 3)]));
    assert_eq!(r1.occurred_at, T0 + 10);

    modified(
        store
            .reprice_order(
                &o.order_id,
                vec![orderflow_store::LinePrice {
                    sku: sku.clone(),
                    unit_price_cents: 999,
                }],
                T0 + 20,
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        names_for(&*store, &o.order_id).await,
        ["OrderAccepted", "OrderModified", "OrderModified"]
    );
    let r2 = queued_for(&*store, &o.order_id).await.remove(2).event;
    let r2: OrderModified = r2.decode().unwrap();
    assert_eq!((r2.revision, r2.occurred_at), (2, T0 + 20));

    // Validation prices revision 2; the transfer pays it.
    store
        .apply_status(StatusUpdate {
            pricing: Some(pricing(3)),
            revision: 2,
            event_id: OrderStatus::Validated.revision_event_id(&o.order_id, 2),
            ..update(&o, OrderStatus::Validated, T0 + 30)
        })
        .await
        .unwrap();
    assert_eq!(
        store.claim_payment(&o.order_id, 2).await.unwrap(),
        PaymentClaim::Granted
    );
    let transfer = PaymentRecord {
        at: T0 + 40,
        ..payment(&o.order_id, true, "TRANSFER-1")
    };
    store.record_payment(transfer.clone()).await.unwrap();
    let paid = store.mark_paid(&transfer).await.unwrap().unwrap();
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(store.mark_paid(&transfer).await.unwrap().unwrap(), paid);
    let event: OrderPaid = the(&*store, &o.order_id).await;
    assert_eq!(event.event_id, format!("{}:paid", o.order_id));
    assert_eq!(event.payment_id, "TRANSFER-1");
    assert_eq!(event.total_cents, pricing(3).total_cents);
    assert_eq!(event.occurred_at, T0 + 40);
    assert_eq!(
        names_for(&*store, &o.order_id)
            .await
            .last()
            .map(String::as_str),
        Some("OrderPaid")
    );
}

/// A transfer recorded for an order cancelled meanwhile queues `OrderPaid` and the
/// cancellation again, now with the refund of the transfer.
pub(crate) async fn check_a_transfer_after_a_cancel_queues_the_refund(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 20)]).await.unwrap();
    let o = validated_order(&*store, &[item(&sku, 1)]).await;
    assert_eq!(
        store.claim_payment(&o.order_id, 0).await.unwrap(),
        PaymentClaim::Granted
    );
    store
        .cancel_order(&o.order_id, None, T0 + 10)
        .await
        .unwrap();
    let transfer = payment(&o.order_id, true, "TRANSFER-2");
    store.record_payment(transfer.clone()).await.unwrap();
    let order = store.mark_paid(&transfer).await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Cancelled);
    store.mark_paid(&transfer).await.unwrap();
    assert_eq!(
        names_for(&*store, &o.order_id).await,
        [
            "OrderAccepted",
            "OrderCancelled",
            "OrderPaid",
            "OrderCancelled"
        ]
    );
    let again: OrderCancelled = queued_for(&*store, &o.order_id)
        .await
        .remove(3)
        .event
        .decode()
        .unwrap();
    assert!(again.paid);
    assert_eq!(again.refund_cents, 1500);
    assert_eq!(again.occurred_at, T0 + 10);
}

/// A verification email's event is queued with the code kept for it; relayed events are
/// forgotten (others stay, in order), and forgetting again is harmless.
pub(crate) async fn check_relayed_events_are_forgotten(store: Arc<dyn Store>) {
    let customer = unique("customer");
    let mut events = Vec::new();
    for n in 0..3 {
        let event = AccountVerificationRequested {
            event_id: AccountVerificationRequested::event_id_for(&customer, n),
            customer_id: customer.clone(),
            email: "someone@example.com".into(),
            name: "Someone".into(),
            expires_at: T0 + 900_000,
            occurred_at: T0 + n,
        };
        store
            .put_verification_email(
                VerificationEmail {
                    event_id: event.event_id.clone(),
                    code: format!("12345{n}"),
                    expires_at: i64::MAX,
                },
                Some(OutboxEvent::of(&event).unwrap()),
            )
            .await
            .unwrap();
        events.push(event);
    }
    let queued = queued_for(&*store, &customer).await;
    let decoded: Vec<AccountVerificationRequested> =
        queued.iter().map(|q| q.event.decode().unwrap()).collect();
    assert_eq!(decoded, events, "queued in the order written");
    assert!(
        !queued.iter().any(|q| q.event.body.contains("12345")),
        "no code in the outbox"
    );

    let first = vec![queued[0].position.clone()];
    store.outbox_relayed(&first).await.unwrap();
    store.outbox_relayed(&first).await.unwrap();
    let left: Vec<String> = queued_for(&*store, &customer)
        .await
        .into_iter()
        .map(|q| q.event.event_id)
        .collect();
    assert_eq!(
        left,
        [events[1].event_id.clone(), events[2].event_id.clone()]
    );
    let rest: Vec<String> = queued[1..].iter().map(|q| q.position.clone()).collect();
    store.outbox_relayed(&rest).await.unwrap();
    assert!(queued_for(&*store, &customer).await.is_empty());
}
