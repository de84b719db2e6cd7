//! A store outage in the middle of a stream: the validation stage, on librdkafka's mock cluster
//! and a real embedded store that the test can cut off, must stop committing offsets, report
//! the outage on `/readyz` (which also requires its extra checks, such as the bridge's sinks),
//! retry, and once the store is back, produce every outcome exactly
//! once and reserve every order's stock exactly once.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use orderflow_kafka::{EventProducer, KafkaConfig};
use orderflow_processors::{run_stage, ProcessorSettings, Stage};
use orderflow_schemas::{
    decode, Address, OrderAccepted, OrderItem, OrderStatus, OrderValidated, PaymentMethod,
    TopicKind, Topics,
};
use orderflow_store::{
    Account, AccountStore, CatalogueStore, CreateOrder, DeliveryStore, EmbeddedStore,
    IdempotencyKey, Invoice, InvoiceDraft, InvoiceStore, OrderRecord, OrderStore, OutboxEvent,
    OutboxStore, PaymentRecord, PaymentStore, PaymentToken, Product, ProductChange, Queued,
    RefreshToken, Reservation, Result, RotateOutcome, StatusUpdate, StepStore, StockAdjustment,
    Store, StoreError, VerificationCode, VerificationEmail, VerifyOutcome,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::DefaultProducerContext,
    Message, Offset, TopicPartitionList,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const SKU: &str = "MUG-001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_pauses_the_stage_and_loses_nothing() {
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster starts");
    let topics = Topics::new(format!("t{}-", uuid::Uuid::now_v7().simple()));
    let mut kafka = KafkaConfig::new(cluster.bootstrap_servers(), topics);
    kafka
        .properties
        .push(("session.timeout.ms".into(), "6000".into()));
    for name in kafka.topics.all() {
        cluster.create_topic(&name, 1, 1).expect("topic created");
    }

    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path()).unwrap();
    embedded
        .put_products(vec![Product {
            sku: SKU.into(),
            name: "Mug".into(),
            price_cents: 1250,
            currency: "EUR".into(),
            stock: 10,
            reserved: 0,
            discontinued: false,
        }])
        .await
        .unwrap();
    let store = Arc::new(Switchable::new(embedded));
    let producer = EventProducer::new(&kafka).unwrap();

    // The stage, and a readiness endpoint on the same store and producer, as `orderflow
    // process` serves them.
    let shutdown = CancellationToken::new();
    let stage = {
        let (kafka, store, producer, shutdown) = (
            kafka.clone(),
            store.clone() as Arc<dyn Store>,
            producer.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            run_stage(
                Stage::Validation,
                &kafka,
                store,
                producer,
                &ProcessorSettings::default(),
                shutdown,
            )
            .await
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let readyz = format!("http://{}/readyz", listener.local_addr().unwrap());
    // An extra readiness condition (the bridge's sinks, in `orderflow bridge`), held up at
    // first.
    let sinks_up = Arc::new(AtomicBool::new(false));
    let sinks = orderflow_ingest::ReadyCheck {
        name: "sinks",
        check: Arc::new({
            let sinks_up = sinks_up.clone();
            move || {
                if sinks_up.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("sink queue unreachable".into())
                }
            }
        }),
    };
    tokio::spawn(orderflow_ingest::serve_metrics(
        listener,
        orderflow_ingest::Readiness::new(store.clone(), producer.clone()).with_checks(vec![sinks]),
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();

    // Before the outage: an order goes through.
    let first = accepted();
    producer.send(&first).await.unwrap();
    let validated = wait_for_validated(&kafka, 1).await;
    assert_eq!(validated, vec![first.order_id.clone()]);
    let not_ready = http.get(&readyz).send().await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let body = not_ready.text().await.unwrap();
    // It names the check that failed, not its internal error text.
    assert!(body.contains("not ready: sinks"), "{body}");
    assert!(!body.contains("sink queue unreachable"), "{body}");
    sinks_up.store(true, Ordering::SeqCst);
    let ready = http.get(&readyz).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    assert!(body.contains("\"sinks\":\"ok\""), "{body}");
    wait_until("the first order's offset is committed", || {
        committed(&kafka) == Some(1)
    })
    .await;

    // The store goes away; two more orders arrive.
    store.down.store(true, Ordering::SeqCst);
    let during: Vec<OrderAccepted> = (0..2).map(|_| accepted()).collect();
    for order in &during {
        producer.send(order).await.unwrap();
    }
    let refused_before = store.refused.load(Ordering::SeqCst);
    wait_until("the stage retries against the store", || {
        store.refused.load(Ordering::SeqCst) >= refused_before + 3
    })
    .await;
    let not_ready = http.get(&readyz).send().await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let body = not_ready.text().await.unwrap();
    assert!(body.contains("store"), "readiness names the store: {body}");
    assert_eq!(
        validated_ids(&kafka).len(),
        1,
        "nothing is validated during the outage"
    );
    assert_eq!(
        committed(&kafka),
        Some(1),
        "no offset is committed past what is done"
    );

    // The store is back: both orders go through, once each.
    store.down.store(false, Ordering::SeqCst);
    let mut expected: Vec<String> = std::iter::once(&first)
        .chain(&during)
        .map(|o| o.order_id.clone())
        .collect();
    expected.sort();
    let mut validated = wait_for_validated(&kafka, 3).await;
    validated.sort();
    assert_eq!(validated, expected);
    assert_eq!(http.get(&readyz).send().await.unwrap().status(), 200);
    wait_until("every offset is committed", || committed(&kafka) == Some(3)).await;
    let product = store.get_product(SKU).await.unwrap().unwrap();
    assert_eq!(
        (product.stock, product.reserved),
        (7, 3),
        "one unit reserved per order, once"
    );
    for order in &during {
        let record = store.get_order(&order.order_id).await.unwrap().unwrap();
        assert_eq!(record.status, OrderStatus::Validated);
    }

    // A moment later, still exactly three outcomes (nothing was produced twice).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(validated_ids(&kafka).len(), 3);

    shutdown.cancel();
    tokio::time::timeout(WAIT, stage)
        .await
        .expect("the stage stops")
        .unwrap()
        .expect("the stage ends cleanly");
}

/// The embedded store on a disk that stops writing: `/readyz` turns 503 naming the store (its
/// health check writes through the store's writer), and writes answer unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_embedded_store_cannot_write() {
    let cluster: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster starts");
    let topics = Topics::new(format!("t{}-", uuid::Uuid::now_v7().simple()));
    let kafka = KafkaConfig::new(cluster.bootstrap_servers(), topics);
    for name in kafka.topics.all() {
        cluster.create_topic(&name, 1, 1).expect("topic created");
    }
    let producer = EventProducer::new(&kafka).unwrap();
    let disk = Arc::new(FailingDisk::default());
    let store = EmbeddedStore::with_backend(
        DiskHandle(disk.clone()),
        &orderflow_store::EmbeddedConfig::default(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let readyz = format!("http://{}/readyz", listener.local_addr().unwrap());
    tokio::spawn(orderflow_ingest::serve_metrics(
        listener,
        orderflow_ingest::Readiness::new(Arc::new(store.clone()), producer),
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = http.get(&readyz).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    disk.failing.store(true, Ordering::SeqCst);
    let not_ready = http.get(&readyz).send().await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let body = not_ready.text().await.unwrap();
    assert!(body.contains("not ready: store"), "{body}");
    let write = store
        .put_products(vec![Product {
            sku: "MUG-002".into(),
            name: "Mug".into(),
            price_cents: 1250,
            currency: "EUR".into(),
            stock: 1,
            reserved: 0,
            discontinued: false,
        }])
        .await;
    assert!(
        matches!(write, Err(StoreError::Unavailable(_))),
        "{write:?}"
    );
    shutdown.cancel();
}

/// redb's in-memory storage, failing every write and sync once `failing` is set.
#[derive(Debug, Default)]
struct FailingDisk {
    memory: redb::backends::InMemoryBackend,
    failing: AtomicBool,
}

impl FailingDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the disk is gone"));
        }
        Ok(())
    }
}

/// The [`FailingDisk`] as the store's storage, while the test holds on to it.
#[derive(Debug)]
struct DiskHandle(Arc<FailingDisk>);

impl redb::StorageBackend for DiskHandle {
    fn len(&self) -> std::io::Result<u64> {
        self.0.memory.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.memory.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.check()?;
        self.0.memory.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.check()?;
        self.0.memory.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.check()?;
        self.0.memory.write(offset, data)
    }
}

fn accepted() -> OrderAccepted {
    let order_id = uuid::Uuid::now_v7().to_string();
    OrderAccepted {
        event_id: OrderStatus::Accepted.event_id(&order_id),
        order_id,
        customer_id: "c1".into(),
        items: vec![OrderItem {
            sku: SKU.into(),
            quantity: 1,
        }],
        shipping_address: Address {
            name: "Ada Lovelace".into(),
            line1: "1 Main St".into(),
            line2: None,
            city: "Berlin".into(),
            postal_code: "10115".into(),
            country: "DE".into(),
        },
        payment: PaymentMethod {
            method: "card".into(),
        },
        occurred_at: orderflow_schemas::now_millis(),
    }
}

/// The order ids of every `OrderValidated` on the topic so far.
fn validated_ids(kafka: &KafkaConfig) -> Vec<String> {
    let mut config = kafka.consumer_config(&format!("reader-{}", uuid::Uuid::now_v7()));
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
    let topic = kafka.topics.name(TopicKind::OrdersValidated);
    let (_, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (ids.len() as i64) < high && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let event: OrderValidated = decode(m.payload().unwrap()).unwrap();
            ids.push(event.order_id);
        }
    }
    ids
}

async fn wait_for_validated(kafka: &KafkaConfig, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let kafka = kafka.clone();
        let ids = tokio::task::spawn_blocking(move || validated_ids(&kafka))
            .await
            .unwrap();
        if ids.len() >= n || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The offset the validation stage's group has committed on `orders.accepted`.
fn committed(kafka: &KafkaConfig) -> Option<i64> {
    let group = format!("{}orderflow-validation", kafka.topics.prefix());
    let mut config = kafka.consumer_config(&group);
    config.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&kafka.topics.name(TopicKind::OrdersAccepted), 0);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .ok()?;
    let offsets: BTreeMap<i32, Offset> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    match offsets.get(&0) {
        Some(Offset::Offset(o)) => Some(*o),
        _ => None,
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real embedded store behind a switch: while `down`, every call fails as an unreachable
/// store does.
struct Switchable {
    inner: EmbeddedStore,
    down: AtomicBool,
    refused: AtomicUsize,
}

impl Switchable {
    fn new(inner: EmbeddedStore) -> Self {
        Switchable {
            inner,
            down: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
        }
    }

    fn up(&self) -> Result<&EmbeddedStore> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        Ok(&self.inner)
    }
}

#[async_trait]
impl CatalogueStore for Switchable {
    async fn put_products(&self, products: Vec<Product>) -> Result<()> {
        self.up()?.put_products(products).await
    }

    async fn seed_products(&self, products: Vec<Product>) -> Result<usize> {
        self.up()?.seed_products(products).await
    }

    async fn get_product(&self, sku: &str) -> Result<Option<Product>> {
        self.up()?.get_product(sku).await
    }

    async fn list_products(&self) -> Result<Vec<Product>> {
        self.up()?.list_products().await
    }

    async fn create_product(&self, product: Product) -> Result<bool> {
        self.up()?.create_product(product).await
    }

    async fn update_product(&self, sku: &str, change: ProductChange) -> Result<Option<Product>> {
        self.up()?.update_product(sku, change).await
    }

    async fn adjust_stock(
        &self,
        sku: &str,
        delta: i64,
        key: Option<orderflow_store::AdjustmentKey>,
    ) -> Result<StockAdjustment> {
        self.up()?.adjust_stock(sku, delta, key).await
    }

    async fn reserve(&self, order_id: &str, items: &[OrderItem], at: i64) -> Result<Reservation> {
        self.up()?.reserve(order_id, items, at).await
    }

    async fn release(&self, order_id: &str) -> Result<bool> {
        self.up()?.release(order_id).await
    }
}

#[async_trait]
impl OrderStore for Switchable {
    async fn create_order(
        &self,
        order: OrderRecord,
        idempotency: Option<IdempotencyKey>,
        payment_token: Option<PaymentToken>,
        max_unpaid: Option<u32>,
    ) -> Result<CreateOrder> {
        self.up()?
            .create_order(order, idempotency, payment_token, max_unpaid)
            .await
    }

    async fn get_order(&self, order_id: &str) -> Result<Option<OrderRecord>> {
        self.up()?.get_order(order_id).await
    }

    async fn list_customer_orders(
        &self,
        customer_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        self.up()?
            .list_customer_orders(customer_id, before, limit)
            .await
    }

    async fn list_orders(
        &self,
        filter: &orderflow_store::OrderFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        self.up()?.list_orders(filter, before, limit).await
    }

    async fn apply_status(&self, update: StatusUpdate) -> Result<()> {
        self.up()?.apply_status(update).await
    }

    async fn cancel_order(
        &self,
        order_id: &str,
        reason: Option<&str>,
        at: i64,
    ) -> Result<orderflow_store::CancelOutcome> {
        self.up()?.cancel_order(order_id, reason, at).await
    }

    async fn ship_order(&self, order_id: &str, at: i64) -> Result<orderflow_store::ShipOutcome> {
        self.up()?.ship_order(order_id, at).await
    }

    async fn modify_order(
        &self,
        order_id: &str,
        items: Vec<orderflow_schemas::OrderItem>,
        at: i64,
    ) -> Result<orderflow_store::ModifyOutcome> {
        self.up()?.modify_order(order_id, items, at).await
    }

    async fn reprice_order(
        &self,
        order_id: &str,
        prices: Vec<orderflow_store::LinePrice>,
        at: i64,
    ) -> Result<orderflow_store::ModifyOutcome> {
        self.up()?.reprice_order(order_id, prices, at).await
    }

    async fn list_unpaid_orders(
        &self,
        placed_before: i64,
        limit: usize,
    ) -> Result<Vec<OrderRecord>> {
        self.up()?.list_unpaid_orders(placed_before, limit).await
    }

    async fn mark_paid(&self, payment: &PaymentRecord) -> Result<Option<OrderRecord>> {
        self.up()?.mark_paid(payment).await
    }

    async fn expire_unpaid_order(
        &self,
        order_id: &str,
        reason: &str,
        at: i64,
    ) -> Result<orderflow_store::ExpireOutcome> {
        self.up()?.expire_unpaid_order(order_id, reason, at).await
    }

    async fn forget_unpaid_order(&self, order_id: &str) -> Result<()> {
        self.up()?.forget_unpaid_order(order_id).await
    }
}

#[async_trait]
impl PaymentStore for Switchable {
    async fn get_payment_token(&self, order_id: &str, now: i64) -> Result<Option<PaymentToken>> {
        self.up()?.get_payment_token(order_id, now).await
    }

    async fn delete_payment_token(&self, order_id: &str) -> Result<()> {
        self.up()?.delete_payment_token(order_id).await
    }

    async fn get_payment(&self, order_id: &str) -> Result<Option<PaymentRecord>> {
        self.up()?.get_payment(order_id).await
    }

    async fn record_payment(&self, payment: PaymentRecord) -> Result<PaymentRecord> {
        self.up()?.record_payment(payment).await
    }

    async fn get_refund(&self, order_id: &str) -> Result<Option<orderflow_store::RefundRecord>> {
        self.up()?.get_refund(order_id).await
    }

    async fn record_refund(
        &self,
        refund: orderflow_store::RefundRecord,
    ) -> Result<orderflow_store::RefundRecord> {
        self.up()?.record_refund(refund).await
    }

    async fn claim_payment(
        &self,
        order_id: &str,
        revision: i32,
    ) -> Result<orderflow_store::PaymentClaim> {
        self.up()?.claim_payment(order_id, revision).await
    }
}

#[async_trait]
impl InvoiceStore for Switchable {
    async fn create_invoice(&self, draft: InvoiceDraft) -> Result<Invoice> {
        self.up()?.create_invoice(draft).await
    }

    async fn get_invoice(&self, order_id: &str) -> Result<Option<Invoice>> {
        self.up()?.get_invoice(order_id).await
    }
}

/// The default steps: the separate calls above, each of which may meet the outage, as a store
/// without transactions (ScyllaDB) makes them.
impl StepStore for Switchable {}

#[async_trait]
impl AccountStore for Switchable {
    // Accounts.
    async fn create_account(&self, account: Account) -> Result<bool> {
        self.up()?.create_account(account).await
    }

    async fn get_account(&self, customer_id: &str) -> Result<Option<Account>> {
        self.up()?.get_account(customer_id).await
    }

    async fn get_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        self.up()?.get_account_by_email(email).await
    }

    async fn update_account(&self, account: Account) -> Result<bool> {
        self.up()?.update_account(account).await
    }

    async fn list_accounts(&self, after: Option<&str>, limit: usize) -> Result<Vec<Account>> {
        self.up()?.list_accounts(after, limit).await
    }

    async fn put_verification(&self, code: VerificationCode) -> Result<()> {
        self.up()?.put_verification(code).await
    }

    async fn put_verification_email(
        &self,
        email: VerificationEmail,
        announce: Option<OutboxEvent>,
    ) -> Result<()> {
        self.up()?.put_verification_email(email, announce).await
    }

    async fn get_verification_email(
        &self,
        event_id: &str,
        now: i64,
    ) -> Result<Option<VerificationEmail>> {
        self.up()?.get_verification_email(event_id, now).await
    }

    async fn delete_verification_email(&self, event_id: &str) -> Result<()> {
        self.up()?.delete_verification_email(event_id).await
    }

    async fn check_verification(
        &self,
        customer_id: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<VerifyOutcome> {
        self.up()?
            .check_verification(customer_id, code_hash, now)
            .await
    }

    async fn create_refresh_token(&self, token: RefreshToken) -> Result<()> {
        self.up()?.create_refresh_token(token).await
    }

    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<RotateOutcome> {
        self.up()?
            .rotate_refresh_token(presented, next_hash, next_expires_at, now)
            .await
    }

    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<bool> {
        self.up()?.revoke_refresh_family(token_hash).await
    }

    async fn revoke_customer_refresh_tokens(
        &self,
        customer_id: &str,
        keep: Option<&str>,
    ) -> Result<()> {
        self.up()?
            .revoke_customer_refresh_tokens(customer_id, keep)
            .await
    }

    async fn refresh_family_revoked(&self, customer_id: &str, family_id: &str) -> Result<bool> {
        self.up()?
            .refresh_family_revoked(customer_id, family_id)
            .await
    }
}

#[async_trait]
impl DeliveryStore for Switchable {
    async fn delivered(&self, sink: &str, ids: &[String]) -> Result<Vec<bool>> {
        self.up()?.delivered(sink, ids).await
    }

    async fn mark_delivered(&self, sink: &str, ids: &[String]) -> Result<()> {
        self.up()?.mark_delivered(sink, ids).await
    }
}

#[async_trait]
impl OutboxStore for Switchable {
    async fn outbox(&self, limit: usize) -> Result<Vec<Queued>> {
        self.up()?.outbox(limit).await
    }

    async fn outbox_relayed(&self, positions: &[String]) -> Result<()> {
        self.up()?.outbox_relayed(positions).await
    }
}

#[async_trait]
impl Store for Switchable {
    async fn healthcheck(&self) -> Result<()> {
        self.up()?.healthcheck().await
    }

    async fn set_marker(&self, name: &str, at: i64) -> Result<bool> {
        self.up()?.set_marker(name, at).await
    }
}
