//! The stages' steps ([`StepStore`]): an effect and the status change it makes, refused for a
//! cancelled order.

use super::*;
use orderflow_store::Invoice;

/// What a test step records: `status` for the order, with the outcome's time.
fn record<T: 'static>(
    order: &OrderRecord,
    status: OrderStatus,
    at: impl Fn(&T) -> i64 + Send + Sync + 'static,
) -> StepRecord<T> {
    let order = order.clone();
    Box::new(move |outcome| StatusUpdate {
        detail: Some(format!("{status:?}")),
        ..update(&order, status, at(outcome))
    })
}

fn reserved_at(reservation: &Reservation) -> i64 {
    match reservation {
        Reservation::Reserved { at, .. } | Reservation::Rejected { at, .. } => *at,
    }
}

/// The timeline entries with this status.
fn entries(order: &OrderRecord, status: OrderStatus) -> usize {
    order.timeline.iter().filter(|t| t.status == status).count()
}

/// Each step applies its effect and records its status change, and a repeat answers the first
/// outcome, applies nothing more and records nothing twice: stock is taken once, the payment
/// and the invoice are the first ones, the card token is gone, the invoice number is on the
/// order.
pub(crate) async fn check_steps_record_their_status_with_their_effect(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let o = order(&unique("customer"), T0);
    let token = PaymentToken {
        token: "tok_conformance_step".into(),
        expires_at: T0 + DAY_MS,
    };
    store
        .create_order(o.clone(), None, Some(token), None)
        .await
        .unwrap();

    let items = [item(&sku, 3)];
    let mut first = None;
    for at in [T0 + 1, T0 + 5] {
        let step = store
            .reserve_step(
                &o.order_id,
                &items,
                at,
                record(&o, OrderStatus::Validated, reserved_at),
            )
            .await
            .unwrap();
        let Step::Done(reservation) = step else {
            panic!("reserved, got {step:?}");
        };
        assert_eq!(reserved_at(&reservation), T0 + 1, "the first reservation");
        assert!(first.is_none() || first.as_ref() == Some(&reservation));
        first = Some(reservation);
    }
    assert_eq!(stock(&*store, &sku).await, (7, 3), "taken once");
    let read = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Validated);
    assert_eq!(entries(&read, OrderStatus::Validated), 1);

    for (approved, at) in [(true, T0 + 10), (false, T0 + 20)] {
        let step = store
            .record_payment_step(
                PaymentRecord {
                    at,
                    ..payment(&o.order_id, approved, "ch_step")
                },
                record(&o, OrderStatus::Paid, |p: &PaymentRecord| p.at),
            )
            .await
            .unwrap();
        let Step::Done(recorded) = step else {
            panic!("recorded, got {step:?}");
        };
        assert!(recorded.approved, "the first payment answers");
        assert_eq!(recorded.at, T0 + 10);
    }
    assert_eq!(
        store.get_payment_token(&o.order_id, T0 + 30).await.unwrap(),
        None,
        "the token goes with the recorded outcome"
    );
    let read = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Paid);
    assert_eq!(entries(&read, OrderStatus::Paid), 1);

    let mut number = None;
    for at in [T0 + 40, T0 + 50] {
        let record: StepRecord<Invoice> = {
            let o = o.clone();
            Box::new(move |invoice: &Invoice| StatusUpdate {
                invoice_number: Some(invoice.number.clone()),
                ..update(&o, OrderStatus::Invoiced, invoice.issued_at)
            })
        };
        let step = store.invoice_step(draft(&o, at), record).await.unwrap();
        let Step::Done(invoice) = step else {
            panic!("invoiced, got {step:?}");
        };
        assert_eq!(invoice.issued_at, T0 + 40, "the first invoice");
        assert!(number.is_none() || number.as_ref() == Some(&invoice.number));
        number = Some(invoice.number);
    }
    let read = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Invoiced);
    assert_eq!(read.invoice_number, number);
    assert_eq!(entries(&read, OrderStatus::Invoiced), 1);
    let invoice = store.get_invoice(&o.order_id).await.unwrap().unwrap();
    assert_eq!(Some(invoice.number), number);
}

/// No step acts on a cancelled order or records a status for it: nothing is reserved and no
/// invoice made; a payment (the gateway charged it) is recorded, for the stage to refund, and
/// its card token forgotten, but the order stays `cancelled` with no `paid` entry.
pub(crate) async fn check_steps_do_nothing_for_a_cancelled_order(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let o = order(&unique("customer"), T0);
    let token = PaymentToken {
        token: "tok_conformance_cancelled".into(),
        expires_at: T0 + DAY_MS,
    };
    store
        .create_order(o.clone(), None, Some(token), None)
        .await
        .unwrap();
    store
        .cancel_order(&o.order_id, Some("changed my mind"), T0 + 1)
        .await
        .unwrap();
    let cancelled = store.get_order(&o.order_id).await.unwrap().unwrap();

    let step = store
        .reserve_step(
            &o.order_id,
            &[item(&sku, 3)],
            T0 + 2,
            record(&o, OrderStatus::Validated, reserved_at),
        )
        .await
        .unwrap();
    assert_eq!(step, Step::Cancelled);
    assert_eq!(stock(&*store, &sku).await, (10, 0), "nothing reserved");
    assert!(
        !store.release(&o.order_id).await.unwrap(),
        "nothing to release"
    );

    let step = store
        .record_payment_step(
            payment(&o.order_id, true, "ch_cancelled"),
            record(&o, OrderStatus::Paid, |p: &PaymentRecord| p.at),
        )
        .await
        .unwrap();
    assert_eq!(step, Step::Cancelled);
    let recorded = store.get_payment(&o.order_id).await.unwrap();
    assert_eq!(
        recorded.and_then(|p| p.payment_id).as_deref(),
        Some("ch_cancelled"),
        "the charge is recorded, to be refunded"
    );
    assert_eq!(
        store.get_payment_token(&o.order_id, T0 + 3).await.unwrap(),
        None
    );

    let record: StepRecord<Invoice> = {
        let o = o.clone();
        Box::new(move |invoice: &Invoice| update(&o, OrderStatus::Invoiced, invoice.issued_at))
    };
    let step = store.invoice_step(draft(&o, T0 + 4), record).await.unwrap();
    assert_eq!(step, Step::Cancelled);
    assert_eq!(store.get_invoice(&o.order_id).await.unwrap(), None);

    let read = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::Cancelled);
    assert_eq!(read.timeline, cancelled.timeline, "no step recorded");
}

/// A declined charge's step gives the order's reserved stock back in the same call as it
/// records the status, so an order that reads `payment_failed` holds no stock; a repeat gives
/// nothing back twice.
pub(crate) async fn check_a_declined_payment_step_gives_the_stock_back(store: Arc<dyn Store>) {
    let sku = unique("sku");
    store.put_products(vec![product(&sku, 10)]).await.unwrap();
    let o = order(&unique("customer"), T0);
    store
        .create_order(o.clone(), None, None, None)
        .await
        .unwrap();
    store
        .reserve_step(
            &o.order_id,
            &[item(&sku, 3)],
            T0 + 1,
            record(&o, OrderStatus::Validated, reserved_at),
        )
        .await
        .unwrap();
    assert_eq!(stock(&*store, &sku).await, (7, 3));

    for _ in 0..2 {
        let step = store
            .record_payment_step(
                payment(&o.order_id, false, "ch_declined"),
                record(&o, OrderStatus::PaymentFailed, |p: &PaymentRecord| p.at),
            )
            .await
            .unwrap();
        let Step::Done(recorded) = step else {
            panic!("recorded, got {step:?}");
        };
        assert!(!recorded.approved);
        assert_eq!(stock(&*store, &sku).await, (10, 0), "given back once");
    }
    let read = store.get_order(&o.order_id).await.unwrap().unwrap();
    assert_eq!(read.status, OrderStatus::PaymentFailed);
    assert_eq!(entries(&read, OrderStatus::PaymentFailed), 1);
}
