//! The bridge stage with the file sink: a consume-loop batch of events handled concurrently,
//! each decoded, checked against the delivered-markers, appended to the file (one fsync per
//! group of concurrent writes) and marked delivered.
//!
//! `cargo bench -p orderflow-bridge` prints the time per batch and events/s ("elem/s").

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orderflow_bridge::{file::FileSink, BridgeHandler, Routing, Sink};
use orderflow_kafka::{Handler, Incoming};
use orderflow_schemas::{wire, OrderLine, OrderStatus, OrderValidated, PaymentMethod, TopicKind};
use orderflow_store::{EmbeddedStore, Store};

/// Events per batch, each of its own order (so all run concurrently, as in the consume loop).
const BATCH: usize = 256;

fn message(i: usize, run: &str) -> Incoming {
    let order_id = format!("{run}-{i}");
    let event = OrderValidated {
        event_id: OrderStatus::Validated.event_id(&order_id),
        order_id: order_id.clone(),
        customer_id: "bench".into(),
        lines: vec![OrderLine {
            sku: "MUG-001".into(),
            name: "Orderflow mug".into(),
            quantity: 2,
            unit_price_cents: 1250,
            line_total_cents: 2500,
        }],
        currency: "EUR".into(),
        subtotal_cents: 2500,
        tax_cents: 500,
        total_cents: 3000,
        payment: PaymentMethod {
            method: "card".into(),
        },
        occurred_at: 1_700_000_000_000,
        revision: 0,
    };
    Incoming {
        topic: "orders.validated".into(),
        kind: Some(TopicKind::OrdersValidated),
        partition: 0,
        offset: i as i64,
        key: Some(order_id.into_bytes()),
        payload: wire::encode(&event).unwrap(),
        headers: vec![],
        schemas: orderflow_schemas::SchemaIds::builtin(),
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let file: Arc<dyn Sink> = Arc::new(FileSink::open(&dir.path().join("out.jsonl")).unwrap());
    let handler = Arc::new(BridgeHandler::new(
        store,
        Arc::new(Routing::notifications_to(vec![file])),
        0,
    ));
    let mut run = 0u64;
    let mut group = c.benchmark_group("bridge");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("file_sink_batch", |b| {
        b.iter_batched(
            || {
                run += 1;
                let run = format!("r{run}");
                (0..BATCH).map(|i| message(i, &run)).collect::<Vec<_>>()
            },
            |batch| {
                runtime.block_on(async {
                    let handled = batch.iter().map(|m| handler.handle(m));
                    for result in futures::future::join_all(handled).await {
                        result.unwrap();
                    }
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
