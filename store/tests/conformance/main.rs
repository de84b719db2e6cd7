//! The conformance suite of the [`Store`] trait: what every implementation must do, written once.
//!
//! Each `check_*` function takes a fresh store as `Arc<dyn Store>` and asserts one part of the
//! contract (reservations, payments, invoices, idempotency keys, the order read model, delivery
//! markers, seeding). Ids, SKUs and customers are unique per check, so a check also holds on a
//! store shared with others; only [`check_invoice_numbers_are_gapless`] needs the store to be
//! fresh, because it expects the first invoice to be number 1.
//!
//! `conformance_tests!(open)` turns every check into a `#[tokio::test]`; `open` is an
//! `async fn() -> Option<(Arc<dyn Store>, Guard)>` that returns a fresh store and a guard kept
//! alive for the test (a temporary directory, a keyspace to drop), or `None` after saying loudly
//! why the test is skipped (no server address in the environment).
//!
//! The checks are in one file per area (`reservations.rs`, `orders.rs`, `accounts.rs`, ...);
//! the store's traits by area are in `store/src/lib.rs`.
//!
//! - [`embedded`]: the redb store in a temporary directory, plus
//!   [`embedded::restart_keeps_everything`], which only makes sense for a store on disk.
//! - [`scylla`]: ScyllaDB, each test in a fresh keyspace created by the real migrations and
//!   dropped afterwards. Needs `ORDERFLOW_TEST_SCYLLA=host:9042[,host:9042…]` (e.g. the
//!   docker-compose ScyllaDB); without it the tests print a loud notice and pass vacuously. A
//!   secured cluster: `ORDERFLOW_TEST_SCYLLA_USERNAME`, `_PASSWORD`, `_CA` (PEM) or `_TLS=1`.

use std::{collections::BTreeSet, sync::Arc};

use orderflow_schemas::{OrderItem, OrderLine, OrderStatus};
use orderflow_store::{
    Account, AdjustmentKey, CancelOutcome, CatalogueStore, CreateOrder, DeliveryStore,
    EmbeddedStore, ExpireOutcome, IdempotencyKey, InvoiceDraft, InvoiceStore, ModifyOutcome,
    OrderFilter, OrderRecord, OrderStore, PaymentClaim, PaymentRecord, PaymentStore, PaymentToken,
    Pricing, Product, ProductChange, RefreshToken, RefundRecord, Reservation, RotateOutcome,
    ShipOutcome, StatusUpdate, Step, StepRecord, StockAdjustment, Store, StoreError, TimelineEntry,
    VerificationCode, VerificationEmail, VerifyOutcome, MAX_ORDER_REVISIONS,
    MAX_VERIFICATION_ATTEMPTS,
};
use tokio::{sync::Barrier, task::JoinHandle};
use uuid::Uuid;

mod accounts;
mod catalogue;
mod deliveries;
mod lifecycle;
mod modifications;
mod orders;
mod outbox;
mod payments;
mod pruning;
mod reservations;
mod secrets;
mod steps;
mod unpaid;

use accounts::*;
use catalogue::*;
use deliveries::*;
use lifecycle::*;
use modifications::*;
use orders::*;
use outbox::*;
use payments::*;
use pruning::*;
use reservations::*;
use secrets::*;
use steps::*;
use unpaid::*;

/// A fixed "now" (ms), so times in assertions are exact.
const T0: i64 = 1_750_000_000_000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Generates one `#[tokio::test]` per check, each on a fresh store from `$open`.
macro_rules! conformance_tests {
    ($open:path) => {
        conformance_tests! { $open;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            reservations_never_oversell = check_reservations_never_oversell;
            [tokio::test]
            reservation_is_all_or_nothing = check_reservation_is_all_or_nothing;
            [tokio::test]
            reservation_sums_a_sku_listed_twice = check_reservation_sums_a_sku_listed_twice;
            [tokio::test]
            reserve_and_release_are_idempotent = check_reserve_and_release_are_idempotent;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            first_payment_wins = check_first_payment_wins;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            invoice_numbers_are_gapless = check_invoice_numbers_are_gapless;
            [tokio::test]
            idempotency_keys = check_idempotency_keys;
            [tokio::test]
            customer_orders_page_newest_first = check_customer_orders_page_newest_first;
            [tokio::test]
            status_moves_forward_only = check_status_moves_forward_only;
            [tokio::test]
            delivery_markers_are_per_sink = check_delivery_markers_are_per_sink;
            [tokio::test]
            seeding_never_overwrites = check_seeding_never_overwrites;
            // Catalogue administration.
            [tokio::test]
            products_are_created_edited_and_discontinued = check_products_are_created_edited_and_discontinued;
            [tokio::test]
            stock_adjustments_never_go_below_zero = check_stock_adjustments_never_go_below_zero;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            stock_adjustments_racing_reservations_never_oversell = check_stock_adjustments_racing_reservations_never_oversell;
            // Accounts.
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            account_emails_are_unique = check_account_emails_are_unique;
            [tokio::test]
            accounts_update_and_page = check_accounts_update_and_page;
            [tokio::test]
            verification_codes = check_verification_codes;
            [tokio::test]
            refresh_tokens_rotate_and_revoke = check_refresh_tokens_rotate_and_revoke;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            a_refresh_token_rotates_once = check_a_refresh_token_rotates_once;
            [tokio::test]
            markers_are_set_once = check_markers_are_set_once;
            // Order lifecycle.
            [tokio::test]
            admin_list_filters_and_pages = check_admin_list_filters_and_pages;
            // Cancel and ship.
            [tokio::test]
            cancel_releases_stock_once_and_repeats = check_cancel_releases_stock_once_and_repeats;
            [tokio::test]
            ship_only_when_paid_and_never_after_cancel = check_ship_only_when_paid_and_never_after_cancel;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            racing_cancel_and_ship_one_wins = check_racing_cancel_and_ship_one_wins;
            [tokio::test]
            shipping_takes_the_units_out_of_reserved = check_shipping_takes_the_units_out_of_reserved;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            first_refund_wins = check_first_refund_wins;
            // Modifications and payment claims.
            [tokio::test]
            modify_swaps_the_reservation_all_or_nothing = check_modify_swaps_the_reservation_all_or_nothing;
            [tokio::test]
            payment_claims_fence_modifications = check_payment_claims_fence_modifications;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            racing_modify_and_claim_one_wins = check_racing_modify_and_claim_one_wins;
            // Price adjustments, through the modification path.
            [tokio::test]
            reprice_changes_unit_prices_of_an_unpaid_order = check_reprice_changes_unit_prices_of_an_unpaid_order;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            racing_reprice_and_claim_one_wins = check_racing_reprice_and_claim_one_wins;
            [tokio::test]
            an_order_changes_a_bounded_number_of_times = check_an_order_changes_a_bounded_number_of_times;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            keyed_stock_adjustments_apply_once = check_keyed_stock_adjustments_apply_once;
            // One idempotency key, one order.
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            one_idempotency_key_makes_one_order = check_one_idempotency_key_makes_one_order;
            // Orders awaiting a bank transfer: expiry and the per-customer cap.
            [tokio::test]
            unpaid_orders_are_listed_and_expire_once = check_unpaid_orders_are_listed_and_expire_once;
            [tokio::test(flavor = "multi_thread", worker_threads = 2)]
            racing_expiry_and_claim_one_wins = check_racing_expiry_and_claim_one_wins;
            [tokio::test]
            unpaid_orders_are_capped_per_customer = check_unpaid_orders_are_capped_per_customer;
            // Secrets kept off the topics.
            [tokio::test]
            payment_tokens_live_with_their_order = check_payment_tokens_live_with_their_order;
            [tokio::test]
            verification_emails_live_until_sent = check_verification_emails_live_until_sent;
            // The outbox.
            [tokio::test]
            orders_queue_their_events_once = check_orders_queue_their_events_once;
            [tokio::test]
            ship_queues_its_event_once = check_ship_queues_its_event_once;
            [tokio::test]
            modifications_and_transfers_queue_their_events = check_modifications_and_transfers_queue_their_events;
            [tokio::test]
            a_transfer_after_a_cancel_queues_the_refund = check_a_transfer_after_a_cancel_queues_the_refund;
            [tokio::test]
            relayed_events_are_forgotten = check_relayed_events_are_forgotten;
            // The stages' steps.
            [tokio::test]
            steps_record_their_status_with_their_effect = check_steps_record_their_status_with_their_effect;
            [tokio::test]
            steps_do_nothing_for_a_cancelled_order = check_steps_do_nothing_for_a_cancelled_order;
            [tokio::test]
            a_declined_payment_step_gives_the_stock_back = check_a_declined_payment_step_gives_the_stock_back;
        }
    };
    ($open:path; $( [$($attr:tt)*] $name:ident = $check:ident; )*) => {
        $(
            #[$($attr)*]
            async fn $name() {
                let Some((store, _guard)) = $open().await else {
                    return;
                };
                $check(store).await;
            }
        )*
    };
}

mod embedded {
    use super::*;

    async fn open() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
        Some((Arc::new(store), dir))
    }

    conformance_tests!(open);

    fn fresh() -> (EmbeddedStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
        (store, dir)
    }

    #[tokio::test]
    async fn delivery_markers_expire() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        check_delivery_markers_expire(dir.path()).await;
    }

    #[tokio::test]
    async fn marking_deliveries_removes_expired_markers() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        check_marking_deliveries_removes_expired_markers(dir.path()).await;
    }

    #[tokio::test]
    async fn idempotency_keys_expire() {
        let (store, _dir) = fresh();
        check_idempotency_keys_expire(store).await;
    }

    #[tokio::test]
    async fn adjustment_keys_expire() {
        let (store, _dir) = fresh();
        check_adjustment_keys_expire(store).await;
    }

    #[tokio::test]
    async fn refresh_tokens_expire() {
        let (store, _dir) = fresh();
        check_refresh_tokens_expire(store).await;
    }

    #[tokio::test]
    async fn a_store_that_cannot_write_is_unhealthy() {
        check_a_store_that_cannot_write_is_unhealthy().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_write_queue_pushes_back() {
        check_a_full_write_queue_pushes_back().await;
    }

    /// Everything written survives dropping every handle and opening the directory again, and
    /// the invoice sequence continues where it stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_everything() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let sku = unique("sku");
        let customer = unique("customer");
        let first = order(&customer, T0);
        let key = IdempotencyKey {
            key: unique("key"),
            fingerprint: "fp".into(),
            expires_at: T0 + DAY_MS,
        };
        let other_order = Uuid::now_v7().to_string();

        let store = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
        store.put_products(vec![product(&sku, 10)]).await.unwrap();
        let created = store
            .create_order(first.clone(), Some(key.clone()), None, None)
            .await
            .unwrap();
        assert_eq!(created, CreateOrder::Created);
        store
            .apply_status(update(&first, OrderStatus::Validated, T0 + 10))
            .await
            .unwrap();
        let reservation = store
            .reserve(&first.order_id, &[item(&sku, 4)], T0 + 10)
            .await
            .unwrap();
        assert!(matches!(reservation, Reservation::Reserved { .. }));
        let paid = payment(&first.order_id, true, "ch_1");
        store.record_payment(paid.clone()).await.unwrap();
        let invoice = store.create_invoice(draft(&first, T0 + 30)).await.unwrap();
        let other_invoice = store
            .create_invoice(draft(&order_with_id(&other_order, &customer, T0), T0 + 31))
            .await
            .unwrap();
        assert_eq!((invoice.sequence, other_invoice.sequence), (1, 2));
        store
            .mark_delivered("file", std::slice::from_ref(&first.order_id))
            .await
            .unwrap();

        // A clone used by another task: the file is closed only when every handle is gone.
        let clone = store.clone();
        tokio::spawn(async move { clone.healthcheck().await })
            .await
            .unwrap()
            .unwrap();
        drop(store);

        let store = EmbeddedStore::open(dir.path()).expect("the store opens again");
        assert_eq!(stock(&store, &sku).await, (6, 4));
        let stored = store
            .get_order(&first.order_id)
            .await
            .unwrap()
            .expect("the order");
        assert_eq!(stored.status, OrderStatus::Validated);
        assert_eq!(stored.timeline.len(), 2);
        let listed = store
            .list_customer_orders(&customer, None, 10)
            .await
            .unwrap();
        assert_eq!(ids(&listed), vec![first.order_id.clone()]);
        // The idempotency key is remembered.
        let retry = store
            .create_order(
                order_with_id(&Uuid::now_v7().to_string(), &customer, T0 + 50),
                Some(key),
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(retry, CreateOrder::Existing(Box::new(stored)));
        // The reservation is remembered: a redelivery reserves nothing more.
        let again = store
            .reserve(&first.order_id, &[item(&sku, 4)], T0 + 60)
            .await
            .unwrap();
        assert_eq!(again, reservation);
        assert_eq!(stock(&store, &sku).await, (6, 4));
        assert_eq!(
            store.get_payment(&first.order_id).await.unwrap(),
            Some(paid)
        );
        assert_eq!(
            store.get_invoice(&first.order_id).await.unwrap(),
            Some(invoice.clone())
        );
        assert_eq!(
            store.create_invoice(draft(&first, T0 + 70)).await.unwrap(),
            invoice
        );
        let next = store
            .create_invoice(draft(&order(&customer, T0), T0 + 80))
            .await
            .unwrap();
        assert_eq!(next.sequence, 3);
        assert_eq!(next.number, "INV-00000003");
        assert_eq!(
            store
                .delivered("file", std::slice::from_ref(&first.order_id))
                .await
                .unwrap(),
            vec![true]
        );
    }
}

mod scylla {
    use std::{io::Write, sync::Once};

    use orderflow_store::scylla::{
        connect, current_version, latest_version, migrate, Replication, ScyllaConfig,
        ScyllaCredentials, ScyllaStore, ScyllaTls, MIGRATIONS,
    };

    use super::*;

    const ENV: &str = "ORDERFLOW_TEST_SCYLLA";

    /// Drops the test's keyspace when the test ends.
    struct KeyspaceGuard {
        config: ScyllaConfig,
    }

    impl Drop for KeyspaceGuard {
        fn drop(&mut self) {
            let config = self.config.clone();
            // The test's runtime is shutting down; drop the keyspace from a runtime of our own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    if let Ok(session) = connect(&config).await {
                        let _ = session
                            .query_unpaged(
                                format!("DROP KEYSPACE IF EXISTS {}", config.keyspace),
                                (),
                            )
                            .await;
                    }
                });
            })
            .join();
        }
    }

    /// The cluster's address, or `None` after a loud notice (once per test binary) that the
    /// ScyllaDB run is skipped.
    fn nodes() -> Option<Vec<String>> {
        static NOTICE: Once = Once::new();
        match std::env::var(ENV) {
            Ok(nodes) if !nodes.trim().is_empty() => {
                Some(nodes.split(',').map(|n| n.trim().to_string()).collect())
            }
            _ => {
                NOTICE.call_once(|| {
                    // Straight to stderr: the test harness does not capture it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n######## SKIPPED: the ScyllaDB conformance run needs {ENV}=host:9042 \
                         (e.g. `docker compose up -d scylla`); the ScyllaDB store was NOT tested \
                         ########\n"
                    );
                });
                None
            }
        }
    }

    /// A config for a keyspace of its own, with the cluster's credentials and TLS from the
    /// environment: `ORDERFLOW_TEST_SCYLLA_USERNAME`/`_PASSWORD`, `ORDERFLOW_TEST_SCYLLA_CA`
    /// (a PEM CA; TLS) or `ORDERFLOW_TEST_SCYLLA_TLS=1` (TLS, the system's CAs).
    fn fresh_config(nodes: Vec<String>) -> ScyllaConfig {
        let env = |name: &str| std::env::var(format!("{ENV}_{name}")).ok();
        let mut config =
            ScyllaConfig::new(nodes, format!("orderflow_test_{}", Uuid::now_v7().simple()));
        if let Some(username) = env("USERNAME") {
            config.credentials = Some(ScyllaCredentials {
                username,
                password: env("PASSWORD").unwrap_or_default(),
            });
        }
        let ca = env("CA").map(std::path::PathBuf::from);
        if ca.is_some() || env("TLS").is_some_and(|v| v == "1" || v == "true") {
            config.tls = Some(ScyllaTls { ca });
        }
        config
    }

    async fn open() -> Option<(Arc<dyn Store>, KeyspaceGuard)> {
        let config = fresh_config(nodes()?);
        let session = connect(&config).await.expect("ScyllaDB answers");
        migrate(&session, &config.keyspace, &Replication::Simple(1))
            .await
            .expect("the migrations apply");
        let store = ScyllaStore::with_session(session, &config)
            .await
            .expect("the store opens on the migrated keyspace");
        Some((Arc::new(store), KeyspaceGuard { config }))
    }

    conformance_tests!(open);

    /// The store refuses a keyspace without this build's schema, naming the fix; migrating
    /// twice applies nothing the second time.
    #[tokio::test]
    async fn migrations_are_required_and_idempotent() {
        let Some(nodes) = nodes() else { return };
        let config = fresh_config(nodes);
        let guard = KeyspaceGuard {
            config: config.clone(),
        };
        let session = connect(&config).await.expect("ScyllaDB answers");
        let refused = ScyllaStore::with_session(session, &config)
            .await
            .expect_err("no schema yet");
        assert!(
            refused.to_string().contains("orderflow migrate"),
            "{refused}"
        );

        let session = connect(&config).await.expect("ScyllaDB answers");
        let first = migrate(&session, &config.keyspace, &Replication::Simple(1))
            .await
            .unwrap();
        assert_eq!(first.version, latest_version());
        assert_eq!(first.applied.len(), MIGRATIONS.len());
        let again = migrate(&session, &config.keyspace, &Replication::Simple(1))
            .await
            .unwrap();
        assert!(again.applied.is_empty(), "{again:?}");
        assert_eq!(
            current_version(&session, &config.keyspace).await.unwrap(),
            latest_version()
        );
        let store = ScyllaStore::with_session(session, &config).await.unwrap();
        store.healthcheck().await.unwrap();
        drop(guard);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn new_id() -> String {
    Uuid::now_v7().to_string()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::now_v7())
}

fn product(sku: &str, stock: i64) -> Product {
    Product {
        sku: sku.into(),
        name: format!("Product {sku}"),
        price_cents: 1250,
        currency: "EUR".into(),
        stock,
        reserved: 0,
        discontinued: false,
    }
}

fn item(sku: &str, quantity: i32) -> OrderItem {
    OrderItem {
        sku: sku.into(),
        quantity,
    }
}

/// A new order (fresh UUIDv7 id) as ingest records it.
fn order(customer_id: &str, created_at: i64) -> OrderRecord {
    order_with_id(&new_id(), customer_id, created_at)
}

fn order_with_id(order_id: &str, customer_id: &str, created_at: i64) -> OrderRecord {
    OrderRecord {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        status: OrderStatus::Accepted,
        items: vec![item("any-sku", 1)],
        shipping_address: None,
        payment_method: Some("card".into()),
        pricing: None,
        invoice_number: None,
        created_at,
        updated_at: created_at,
        timeline: vec![TimelineEntry {
            status: OrderStatus::Accepted,
            event_id: OrderStatus::Accepted.event_id(order_id),
            at: created_at,
            detail: None,
        }],
        revision: 0,
        payment_claim: None,
    }
}

fn update(order: &OrderRecord, status: OrderStatus, at: i64) -> StatusUpdate {
    StatusUpdate {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        status,
        event_id: status.event_id(&order.order_id),
        at,
        detail: None,
        pricing: None,
        invoice_number: None,
        revision: 0,
    }
}

/// Pricing of `quantity` units at 12.50 plus 20 % tax.
fn pricing(quantity: i64) -> Pricing {
    let subtotal = 1250 * quantity;
    Pricing {
        lines: vec![OrderLine {
            sku: "any-sku".into(),
            name: "Any".into(),
            quantity: quantity as i32,
            unit_price_cents: 1250,
            line_total_cents: subtotal,
        }],
        currency: "EUR".into(),
        subtotal_cents: subtotal,
        tax_cents: subtotal / 5,
        total_cents: subtotal + subtotal / 5,
    }
}

fn draft(order: &OrderRecord, at: i64) -> InvoiceDraft {
    InvoiceDraft {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        pricing: pricing(order.order_id.len() as i64),
        at,
    }
}

fn payment(order_id: &str, approved: bool, charge: &str) -> PaymentRecord {
    PaymentRecord {
        order_id: order_id.into(),
        amount_cents: 1500,
        currency: "EUR".into(),
        approved,
        payment_id: approved.then(|| charge.to_string()),
        reason: (!approved).then(|| "insufficient_funds".to_string()),
        at: T0,
    }
}

/// (stock, reserved) of a product that must exist.
async fn stock(store: &dyn Store, sku: &str) -> (i64, i64) {
    let p = store
        .get_product(sku)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("product {sku} exists"));
    (p.stock, p.reserved)
}

fn rejection_code(reservation: &Reservation) -> Option<&str> {
    match reservation {
        Reservation::Rejected { code, .. } => Some(code.as_str()),
        Reservation::Reserved { .. } => None,
    }
}

/// Units of `sku` across a reservation's lines.
fn reserved_quantity(lines: &[orderflow_store::ReservedLine], sku: &str) -> i64 {
    lines
        .iter()
        .filter(|l| l.sku == sku)
        .map(|l| i64::from(l.quantity))
        .sum()
}

fn ids(orders: &[OrderRecord]) -> Vec<String> {
    orders.iter().map(|o| o.order_id.clone()).collect()
}

/// Awaits every task, in order; a panicking task fails the test.
async fn join<T>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("a task panicked"));
    }
    out
}
