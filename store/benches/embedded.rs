//! The embedded store's hot operations, as the pipeline uses them: many concurrent callers
//! (one per message of a batch) sharing group commits.
//!
//! `cargo bench -p orderflow-store` prints the time per batch; divide the batch size by it for
//! operations per second.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orderflow_schemas::{OrderItem, OrderStatus};
use orderflow_store::{
    EmbeddedStore, Invoice, InvoiceDraft, OrderRecord, PaymentRecord, Pricing, Product,
    Reservation, StatusUpdate, StepRecord, Store, TimelineEntry,
};

/// Messages handled concurrently, as in one consume-loop batch.
const BATCH: usize = 256;

fn order(id: &str) -> OrderRecord {
    OrderRecord {
        order_id: id.into(),
        customer_id: "bench".into(),
        status: OrderStatus::Accepted,
        items: vec![OrderItem {
            sku: "SKU".into(),
            quantity: 1,
        }],
        shipping_address: None,
        payment_method: Some("card".into()),
        pricing: None,
        invoice_number: None,
        created_at: 1,
        updated_at: 1,
        timeline: vec![TimelineEntry {
            status: OrderStatus::Accepted,
            event_id: OrderStatus::Accepted.event_id(id),
            at: 1,
            detail: None,
        }],
        revision: 0,
        payment_claim: None,
    }
}

/// Validation's step for an order, as the stage records it.
fn validated_update(id: &str) -> StatusUpdate {
    StatusUpdate {
        order_id: id.to_string(),
        customer_id: "bench".into(),
        status: OrderStatus::Validated,
        event_id: OrderStatus::Validated.event_id(id),
        at: 2,
        detail: None,
        pricing: None,
        invoice_number: None,
        revision: 0,
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    runtime.block_on(async {
        store
            .put_products(vec![Product {
                sku: "SKU".into(),
                name: "Bench".into(),
                price_cents: 100,
                currency: "EUR".into(),
                stock: i64::MAX / 2,
                reserved: 0,
                discontinued: false,
            }])
            .await
            .unwrap();
    });
    let mut next = 0u64;
    let mut ids = move || {
        next += 1;
        (0..BATCH)
            .map(|i| format!("o{next}-{i}"))
            .collect::<Vec<_>>()
    };

    let mut group = c.benchmark_group("embedded_store");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);

    group.bench_function("create_order", |b| {
        b.iter_batched(
            &mut ids,
            |ids| {
                runtime.block_on(futures::future::join_all(
                    ids.iter()
                        .map(|id| store.create_order(order(id), None, None, None)),
                ))
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("reserve", |b| {
        let items = [OrderItem {
            sku: "SKU".into(),
            quantity: 1,
        }];
        b.iter_batched(
            &mut ids,
            |ids| {
                runtime.block_on(futures::future::join_all(
                    ids.iter().map(|id| store.reserve(id, &items, 1)),
                ))
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("apply_status", |b| {
        b.iter_batched(
            &mut ids,
            |ids| {
                runtime.block_on(futures::future::join_all(
                    ids.iter()
                        .map(|id| store.apply_status(validated_update(id))),
                ))
            },
            BatchSize::PerIteration,
        )
    });

    let existing = runtime.block_on(async {
        let ids = ids();
        for id in &ids {
            store
                .create_order(order(id), None, None, None)
                .await
                .unwrap();
        }
        ids
    });
    // Issue #5: changing the quantities of validated orders (a reservation swap, a revision)
    // and claiming their payment; the orders are set up outside the timing.
    let validated = |ids: Vec<String>| {
        runtime.block_on(async {
            let items = [OrderItem {
                sku: "SKU".into(),
                quantity: 1,
            }];
            for id in &ids {
                store
                    .create_order(order(id), None, None, None)
                    .await
                    .unwrap();
                store.reserve(id, &items, 1).await.unwrap();
                store.apply_status(validated_update(id)).await.unwrap();
            }
            ids
        })
    };
    group.bench_function("modify_order", |b| {
        let items = vec![OrderItem {
            sku: "SKU".into(),
            quantity: 2,
        }];
        b.iter_batched(
            || validated(ids()),
            |ids| {
                runtime.block_on(futures::future::join_all(
                    ids.iter()
                        .map(|id| store.modify_order(id, items.clone(), 3)),
                ))
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("claim_payment", |b| {
        b.iter_batched(
            || validated(ids()),
            |ids| {
                runtime.block_on(futures::future::join_all(
                    ids.iter().map(|id| store.claim_payment(id, 0)),
                ))
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("get_order", |b| {
        b.iter(|| {
            runtime.block_on(futures::future::join_all(
                existing.iter().map(|id| store.get_order(id)),
            ))
        })
    });
    group.finish();

    // Every store call one order costs on its way through the pipeline, in the pipeline's
    // order, for N orders in flight at once: the store's ceiling in orders per second. Group
    // commit makes it grow with the number in flight (more writes share each fsync).
    let mut lifecycle = c.benchmark_group("embedded_store_per_order");
    lifecycle.sample_size(10);
    for in_flight in [256usize, 1024, 4096] {
        lifecycle.throughput(Throughput::Elements(in_flight as u64));
        let mut next = 0u64;
        lifecycle.bench_function(format!("order_lifecycle/{in_flight}_in_flight"), |b| {
            b.iter_batched(
                || {
                    next += 1;
                    (0..in_flight)
                        .map(|i| format!("l{in_flight}-{next}-{i}"))
                        .collect::<Vec<_>>()
                },
                |ids| {
                    runtime.block_on(futures::future::join_all(
                        ids.iter().map(|id| one_order(&*store, id)),
                    ))
                },
                BatchSize::PerIteration,
            )
        });
    }
    lifecycle.finish();
}

/// What ingest, the three stages and the bridge (two sinks, two notifications) ask of the
/// store for one order that is accepted, validated, paid and invoiced.
async fn one_order(store: &dyn Store, id: &str) {
    fn status(id: &str, status: OrderStatus, at: i64) -> StatusUpdate {
        StatusUpdate {
            order_id: id.to_string(),
            customer_id: "bench".into(),
            status,
            event_id: status.event_id(id),
            at,
            detail: None,
            pricing: None,
            invoice_number: None,
            revision: 0,
        }
    }
    fn record<T: 'static>(id: &str, s: OrderStatus, at: i64) -> StepRecord<T> {
        let id = id.to_string();
        Box::new(move |_| status(&id, s, at))
    }
    let items = [OrderItem {
        sku: "SKU".into(),
        quantity: 1,
    }];
    let pricing = Pricing {
        lines: Vec::new(),
        currency: "EUR".into(),
        subtotal_cents: 100,
        tax_cents: 20,
        total_cents: 120,
    };
    store
        .create_order(order(id), None, None, None)
        .await
        .unwrap();
    // validation
    let validated: StepRecord<Reservation> = record(id, OrderStatus::Validated, 2);
    store.reserve_step(id, &items, 2, validated).await.unwrap();
    // payment: the check before the charge, a charge recorded already, the card token
    assert_ne!(
        store.order_status(id).await.unwrap(),
        Some(OrderStatus::Cancelled)
    );
    assert!(store.get_payment(id).await.unwrap().is_none());
    store.get_payment_token(id, 3).await.unwrap();
    let paid: StepRecord<PaymentRecord> = record(id, OrderStatus::Paid, 3);
    store
        .record_payment_step(
            PaymentRecord {
                order_id: id.to_string(),
                amount_cents: 120,
                currency: "EUR".into(),
                approved: true,
                payment_id: Some(format!("ch_{id}")),
                reason: None,
                at: 3,
            },
            paid,
        )
        .await
        .unwrap();
    // invoicing
    let invoiced: StepRecord<Invoice> = record(id, OrderStatus::Invoiced, 4);
    store
        .invoice_step(
            InvoiceDraft {
                order_id: id.to_string(),
                customer_id: "bench".into(),
                pricing,
                at: 4,
            },
            invoiced,
        )
        .await
        .unwrap();
    // bridge: order confirmed and invoice ready, through two sinks
    for event in [OrderStatus::Validated, OrderStatus::Invoiced] {
        let ids = [event.event_id(id)];
        for sink in ["log", "file"] {
            store.delivered(sink, &ids).await.unwrap();
            store.mark_delivered(sink, &ids).await.unwrap();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
